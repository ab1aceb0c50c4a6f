"""Analyses of probe variants (harness/probes.py, harness/subsets.py): the score per tap (how deep
the best layer is, Kolesnikov et al.), the score per label fraction (Cole et al.'s low-label
regime, VTAB-1k), and the probes side by side. They read every variant; the paper's analyses read
only the default protocol (the task's head on the full train split).

A curve joins only results of the same run settings (``settings``: 'default', or the options that
differ from the task's own, such as '--limit 500'): results of other settings make a curve of their
own, labelled by them, never a point on another."""

from __future__ import annotations

import pandas as pd

from .base import Outcome, ReportOptions, Skip, _pairs
from .load import DEFAULT_TAP

TAP_COLUMNS = ["encoder", "task", "probe", "settings", "tap", "tap_index", "pool_grid", "score"]
FRACTION_COLUMNS = ["encoder", "task", "probe", "settings", "subset_kind", "subset_value", "fraction", "n_train",
                    "score"]
CURVE = ["encoder", "task", "probe", "settings"]  # one curve: everything but its own variable


def _depth(rows: pd.DataFrame) -> pd.Series:
    """A tap's depth: its recorded index; a record without one (written before taps were recorded)
    takes its encoder's deepest known index + 1 when it is the embedding, else stays unknown."""
    depth = rows["tap_index"].astype("float64")
    deepest = rows.groupby("encoder")["tap_index"].transform("max").astype("float64")
    emb = depth.isna() & (rows["tap"] == DEFAULT_TAP)
    return depth.where(~emb, deepest.fillna(-1) + 1)


def tap_curve(scores: pd.DataFrame, opts: ReportOptions) -> Outcome:
    """Per encoder x task x probe x settings probed at >= 2 taps (full train split): the score at each tap,
    by depth."""
    rows = scores[scores["subset_kind"].isna() & scores["tap"].notna()].copy()
    if rows.empty:
        raise Skip("no result names its tap")
    rows["tap_index"] = _depth(rows)
    n_taps = rows.groupby(CURVE)["tap"].transform("nunique")
    rows = rows[n_taps >= 2]
    if rows.empty:
        raise Skip("no encoder x task probed at >= 2 taps (harness eval --tap all)")
    rows = rows.sort_values(["task", "encoder", "probe", "settings", "tap_index", "tap"], kind="mergesort")
    table = rows[TAP_COLUMNS].reset_index(drop=True)
    best = (table.loc[table.groupby(CURVE, sort=False)["score"].idxmax()]
            [[*CURVE, "tap", "score"]].reset_index(drop=True))
    curves = best[CURVE].itertuples(index=False)
    not_last = [(e, t) for (e, t, _, _), tap in zip(curves, best["tap"], strict=True) if tap != DEFAULT_TAP]
    notes = [f"the best tap is not the embedding for {_pairs(not_last)}"] if not_last else []
    return Outcome({"taps": table, "best": best}, notes, {"curves": len(best)})


def fraction_curve(scores: pd.DataFrame, opts: ReportOptions) -> Outcome:
    """Per encoder x task x probe x settings with label-fraction results (default tap): the score at each
    fraction of the train split used, with the full split (fraction 1) of the same settings where its result
    is there."""
    default_tap = scores["tap"].isna() | (scores["tap"] == DEFAULT_TAP)
    rows = scores[default_tap].copy()
    with_subset = rows.loc[rows["subset_kind"].notna(), CURVE].drop_duplicates()
    if with_subset.empty:
        raise Skip("no label-fraction results (harness eval --train-fraction / --shots / --train-size)")
    rows = rows.merge(with_subset, on=CURVE)
    rows = rows.sort_values(["task", "encoder", "probe", "settings", "fraction"], kind="mergesort")
    table = rows[FRACTION_COLUMNS].reset_index(drop=True)
    full = int(table["subset_kind"].isna().sum())
    notes = [] if full == len(with_subset) else [
        f"{len(with_subset) - full} curve(s) lack the full-train-split result (fraction 1)"]
    return Outcome({"fractions": table}, notes, {"curves": len(with_subset), "points": len(table)})


def probe_comparison(scores: pd.DataFrame, opts: ReportOptions) -> Outcome:
    """Encoder x task x settings rows, one column per probe (default tap, full train split), where >= 2
    probes ran."""
    rows = scores[(scores["tap"].isna() | (scores["tap"] == DEFAULT_TAP)) & scores["subset_kind"].isna()]
    wide = rows.pivot_table(index=["encoder", "task", "settings"], columns="probe", values="score",
                            aggfunc="first")
    wide = wide[wide.notna().sum(axis=1) >= 2]
    if wide.empty:
        raise Skip("no encoder x task scored by >= 2 probes (harness eval --probe knn / logreg)")
    order = [p for p in ("head", "knn", "logreg") if p in wide.columns] + sorted(
        c for c in wide.columns if c not in ("head", "knn", "logreg"))
    table = wide[order].reset_index()
    table.columns.name = None
    return Outcome({"probes": table}, [], {"pairs": len(table)})
