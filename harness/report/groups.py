"""Analyses of groups of encoders: group A minus group B per task, and the factorial ANOVA."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from ..common.errors import UsageError
from .base import ANOVA_FACTORS, GROUP_FIELDS, Outcome, ReportOptions, Skip, _label
from .baseline import _require_baseline, normalised_scores
from .load import encoder_table, score_matrix, task_categories


def _pick(value: str, present: Iterable[str]) -> str | None:
    return next((p for p in present if p.lower() == str(value).lower()), None)


def group_difference(scores: pd.DataFrame, opts: ReportOptions) -> Outcome:
    """Per task: mean score of group A minus mean score of group B (groups by method, data, epochs or balance)."""
    if opts.group_by not in GROUP_FIELDS:
        raise UsageError(f"--group-by {opts.group_by!r}: use one of {', '.join(GROUP_FIELDS)}")
    key = opts.group_by
    labels = encoder_table(scores)[key].map(_label)
    notes = []
    unknown = int(labels.isna().sum())
    if unknown:
        notes.append(f"{unknown} encoder(s) with unknown {key} dropped")
    labels = labels.dropna()
    counts = labels.value_counts()
    ordered = sorted(counts.index, key=lambda v: (-counts[v], v))
    present = ", ".join(f"{v} ({counts[v]})" for v in ordered) or "none"
    if opts.a is not None or opts.b is not None:
        if opts.a is None or opts.b is None:
            raise UsageError("give both --a and --b (or neither)")
        a, b = _pick(opts.a, ordered), _pick(opts.b, ordered)
        for asked, found in ((opts.a, a), (opts.b, b)):
            if found is None:
                raise Skip(f"no encoder with {key} {asked!r}; present: {present}")
    else:
        if len(ordered) < 2:
            raise Skip(f"needs encoders with 2 different {key} values, found: {present}")
        a, b = ordered[0], ordered[1]
    if a == b:
        raise Skip(f"--a and --b are the same {key} ({a})")
    wide = score_matrix(scores)
    cats = task_categories(scores)
    members = {g: list(labels.index[labels == g]) for g in (a, b)}
    rows, missing = [], []
    for task in wide.columns:
        ga, gb = wide.loc[members[a], task].dropna(), wide.loc[members[b], task].dropna()
        if ga.empty or gb.empty:
            missing.append(task)
            continue
        mean_a, mean_b = float(ga.mean()), float(gb.mean())
        rows.append({"task": task, "category": cats[task], "group_a": a, "mean_a": mean_a, "n_a": len(ga),
                     "group_b": b, "mean_b": mean_b, "n_b": len(gb), "difference": mean_a - mean_b})
    if not rows:
        raise Skip(f"no task has scores from both {key} {a} and {key} {b}")
    if missing:
        notes.append(f"{len(missing)} task(s) without both groups left out: {', '.join(missing)}")
    table = pd.DataFrame(rows)
    return Outcome({"group_difference": table}, notes,
                   {"group_by": key, "a": a, "b": b, "encoders_a": members[a], "encoders_b": members[b],
                    "tasks_where_a_wins": int((table["difference"] > 0).sum()), "tasks": len(table)})


def _design(data: pd.DataFrame, terms: list[str]) -> np.ndarray:
    import patsy

    return np.asarray(patsy.dmatrix(" + ".join(terms) if terms else "1", data), dtype=float)


def _full_rank(x: np.ndarray) -> bool:
    return bool(np.linalg.matrix_rank(x) == x.shape[1])


def anova(scores: pd.DataFrame, opts: ReportOptions) -> Outcome:
    """Type-2 ANOVA of the normalised score on C(task) + method + balanced + size + epochs (all categorical).

    A factor enters only with >= 2 levels among the encoders whose value is known, and only if it is not
    confounded with the factors already in (a rank-deficient design has no type-2 test)."""
    _require_baseline(scores, opts)
    norm, notes = normalised_scores(scores, opts.baseline)
    if norm.empty:
        raise Skip(f"no task has a {opts.baseline} score and at least one other, non-constant score")
    meta = encoder_table(scores)
    data = norm.join(meta[list(ANOVA_FACTORS)].map(_label), on="encoder")
    terms = ["C(task)"] if data["task"].nunique() >= 2 else []
    factors = []
    for f in ANOVA_FACTORS:
        known = data[data[f].notna()]
        levels = known[f].nunique()
        if levels < 2:
            notes.append(f"{f} left out: {levels} level(s) among the encoders")
            continue
        if not _full_rank(_design(known, [*terms, f"C({f})"])):
            notes.append(f"{f} left out: confounded with {', '.join(factors + (['task'] if terms else [])) or '-'}")
            continue
        lost = data["encoder"].nunique() - known["encoder"].nunique()
        if lost:
            notes.append(f"{lost} encoder(s) with unknown {f} dropped")
        data, terms, factors = known, [*terms, f"C({f})"], [*factors, f]
    for f in list(factors):  # dropping rows for a later factor may leave an earlier one with one level
        if data[f].nunique() < 2:
            factors.remove(f)
            terms.remove(f"C({f})")
            notes.append(f"{f} left out: one level left after dropping encoders with unknown values")
    if not factors:
        raise Skip(f"no encoder factor ({', '.join(ANOVA_FACTORS)}) with >= 2 levels among encoders with known "
                   f"values")
    if len(data) <= _design(data, terms).shape[1]:  # no residual degrees of freedom
        raise Skip(f"too few observations ({len(data)}) for the model {' + '.join(terms)}")
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    formula = "normalised ~ " + " + ".join(terms)
    model = smf.ols(formula, data=data).fit()
    table = anova_lm(model, typ=2).reset_index(names="term")
    table["term"] = table["term"].str.replace(r"^C\((.*)\)$", r"\1", regex=True)
    table = table.rename(columns={"PR(>F)": "p_value"})
    return Outcome({"anova": table}, notes,
                   {"formula": formula, "observations": len(data), "encoders": data["encoder"].nunique(),
                    "tasks": data["task"].nunique(), "r_squared": float(model.rsquared), "factors": factors})
