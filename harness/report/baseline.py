"""Analyses against a baseline encoder: % gain of the best self-supervised encoder, normalised scores."""

from __future__ import annotations

import math

import pandas as pd

from .base import NOT_SELF_SUPERVISED, Outcome, ReportOptions, Skip
from .load import _category_rank, encoder_table, score_matrix, task_categories


def _require_baseline(scores: pd.DataFrame, opts: ReportOptions) -> None:
    if opts.baseline not in set(scores["encoder"]):
        raise Skip(f"no results for the baseline encoder {opts.baseline!r} (choose one with --baseline)")


def normalised_scores(scores: pd.DataFrame, baseline: str) -> tuple[pd.DataFrame, list[str]]:
    """(score - baseline's score) / std of the task's scores over encoders (ddof=1), baseline rows left out
    (they are 0 by construction). Tasks without a baseline score or with constant scores are dropped."""
    wide = score_matrix(scores)
    cats = task_categories(scores)
    notes, rows = [], []
    no_base, flat = [], []
    for task in wide.columns:
        col = wide[task].dropna()
        if baseline not in col.index:
            no_base.append(task)
            continue
        std = float(col.std(ddof=1)) if len(col) >= 2 else math.nan
        if not std > 0:
            flat.append(task)
            continue
        base = float(col[baseline])
        for enc, score in col.drop(baseline).items():
            rows.append({"encoder": enc, "task": task, "category": cats[task], "score": float(score),
                         "baseline_score": base, "task_std": std, "normalised": (float(score) - base) / std})
    if no_base:
        notes.append(f"{len(no_base)} task(s) without a {baseline} score dropped: {', '.join(no_base)}")
    if flat:
        notes.append(f"{len(flat)} task(s) with fewer than 2 scores or constant scores dropped: {', '.join(flat)}")
    cols = ["encoder", "task", "category", "score", "baseline_score", "task_std", "normalised"]
    return pd.DataFrame(rows, columns=cols), notes


def baseline_gain(scores: pd.DataFrame, opts: ReportOptions) -> Outcome:
    """Per task: the best self-supervised encoder's % improvement over the baseline, (best - base) / |base|."""
    _require_baseline(scores, opts)
    meta = encoder_table(scores)
    others = meta.drop(index=opts.baseline)
    unknown = int(others["method"].isna().sum())
    ssl = others.index[others["method"].notna() & ~others["method"].isin(sorted(NOT_SELF_SUPERVISED))]
    if len(ssl) == 0:
        raise Skip("no self-supervised encoder in the results (a method other than supervised / none)")
    notes = [f"{unknown} encoder(s) with an unknown method left out"] if unknown else []
    wide = score_matrix(scores)
    cats = task_categories(scores)
    rows, missing = [], []
    for task in wide.columns:
        base = wide.at[opts.baseline, task]
        candidates = wide.loc[ssl, task].dropna()
        if math.isnan(base) or candidates.empty:
            missing.append(task)
            continue
        best = candidates.idxmax()
        gain = (candidates[best] - base) / abs(base) * 100 if base != 0 else math.nan
        rows.append({"task": task, "category": cats[task], "baseline": opts.baseline, "baseline_score": base,
                     "best_encoder": best, "best_method": meta.at[best, "method"], "best_data": meta.at[best, "data"],
                     "best_score": candidates[best], "improvement_pct": gain})
    if not rows:
        raise Skip(f"no task has both a {opts.baseline} score and a self-supervised score")
    if missing:
        notes.append(f"{len(missing)} task(s) without both scores left out: {', '.join(missing)}")
    table = pd.DataFrame(rows)
    if (table["baseline_score"] == 0).any():
        notes.append("% improvement undefined (NaN) where the baseline scores 0")
    wins = int((table["improvement_pct"] > 0).sum())
    return Outcome({"baseline_gain": table}, notes,
                   {"tasks": len(table), "tasks_where_ssl_beats_baseline": wins,
                    "self_supervised_encoders": len(ssl)})


def normalised_distribution(scores: pd.DataFrame, opts: ReportOptions) -> Outcome:
    """Distribution per category of (score - baseline score) / std of the task's scores."""
    _require_baseline(scores, opts)
    norm, notes = normalised_scores(scores, opts.baseline)
    if norm.empty:
        raise Skip(f"no task has a {opts.baseline} score and at least one other, non-constant score")
    rows = []
    for cat, grp in norm.dropna(subset=["category"]).groupby("category", sort=False):
        v = grp["normalised"]
        rows.append({"category": cat, "tasks": grp["task"].nunique(), "encoders": grp["encoder"].nunique(),
                     "n": len(v), "mean": v.mean(), "median": v.median(), "q1": v.quantile(0.25),
                     "q3": v.quantile(0.75), "min": v.min(), "max": v.max(), "share_above_baseline": (v > 0).mean()})
    summary = pd.DataFrame(rows)
    if summary.empty:
        raise Skip("no task with a known category")
    summary = summary.iloc[sorted(range(len(summary)), key=lambda i: _category_rank(summary["category"].iloc[i]))]
    notes.append(f"std over all encoders with a score on the task (ddof=1, {opts.baseline} included); "
                 f"{opts.baseline}'s own rows (0 by construction) left out")
    return Outcome({"categories": summary.reset_index(drop=True), "scores": norm}, notes,
                   {"baseline": opts.baseline, "points": len(norm)})
