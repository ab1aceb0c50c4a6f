"""Analyses of correlation: each task against ImageNet top-1, and task against task."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .base import MIN_ENCODERS_FOR_CORRELATION, Outcome, ReportOptions, Skip
from .load import _category_rank, score_matrix, task_categories


def _ptp_zero(values: np.ndarray) -> bool:
    return bool(np.ptp(values) == 0)


def _correlations(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from scipy import stats

    nan = {"pearson_r": math.nan, "pearson_p": math.nan, "spearman_rho": math.nan, "spearman_p": math.nan}
    if len(x) < MIN_ENCODERS_FOR_CORRELATION or _ptp_zero(x) or _ptp_zero(y):
        return nan
    pr = stats.pearsonr(x, y)
    sr = stats.spearmanr(x, y)
    return {"pearson_r": float(pr.statistic), "pearson_p": float(pr.pvalue),
            "spearman_rho": float(sr.statistic), "spearman_p": float(sr.pvalue)}


def imagenet_correlation(scores: pd.DataFrame, opts: ReportOptions) -> Outcome:
    """Pearson and Spearman of each task's score with ImageNet top-1 over encoders, per task and per category.

    Per category the points of all its tasks are pooled after z-scoring each task over its encoders
    (ddof=1), so that tasks with different metrics share one axis."""
    wide = score_matrix(scores)
    task = opts.imagenet_task
    if task not in wide.columns:
        raise Skip(f"no {task!r} results (ImageNet top-1 is that task's test score; --imagenet-task picks another)")
    n_in = int(wide[task].notna().sum())
    if n_in < MIN_ENCODERS_FOR_CORRELATION:
        raise Skip(f"needs >= {MIN_ENCODERS_FOR_CORRELATION} encoders with a {task!r} score, found {n_in}")
    others = [t for t in wide.columns if t != task]
    if not others:
        raise Skip(f"no task besides {task!r}")
    cats = task_categories(scores)
    rows, points, notes = [], [], []
    for t in others:
        pair = wide[[task, t]].dropna()
        x, y = pair[task].to_numpy(), pair[t].to_numpy()
        rows.append({"task": t, "category": cats[t], "n": len(pair), **_correlations(x, y)})
        if len(pair) >= MIN_ENCODERS_FOR_CORRELATION and not _ptp_zero(y):
            z = (y - y.mean()) / y.std(ddof=1)
            points += [{"encoder": e, "task": t, "category": cats[t], "imagenet_top1": xi, "score": yi, "z": zi}
                       for e, xi, yi, zi in zip(pair.index, x, y, z, strict=True)]
    table = pd.DataFrame(rows)
    if table["pearson_r"].isna().all():
        raise Skip(f"no task shares >= {MIN_ENCODERS_FOR_CORRELATION} encoders (with non-constant scores) "
                   f"with {task!r}")
    short = table.loc[table["pearson_r"].isna(), "task"].tolist()
    if short:
        notes.append(f"no correlation (fewer than {MIN_ENCODERS_FOR_CORRELATION} shared encoders or constant "
                     f"scores) for: {', '.join(short)}")
    pts = pd.DataFrame(points, columns=["encoder", "task", "category", "imagenet_top1", "score", "z"])
    cat_rows = []
    for cat, grp in pts.dropna(subset=["category"]).groupby("category", sort=False):
        cat_rows.append({"category": cat, "tasks": grp["task"].nunique(), "n_points": len(grp),
                         **_correlations(grp["imagenet_top1"].to_numpy(), grp["z"].to_numpy())})
    categories = pd.DataFrame(cat_rows, columns=["category", "tasks", "n_points", "pearson_r", "pearson_p",
                                                 "spearman_rho", "spearman_p"])
    if not categories.empty:
        categories = categories.iloc[sorted(range(len(categories)),
                                            key=lambda i: _category_rank(categories["category"].iloc[i]))]
        categories = categories.reset_index(drop=True)
    return Outcome({"tasks": table, "categories": categories, "points": pts}, notes,
                   {"imagenet_task": task, "encoders_with_imagenet": n_in})


def task_correlation(scores: pd.DataFrame, opts: ReportOptions) -> Outcome:
    """Pearson and Spearman between tasks over encoders (pairwise complete, >= 3 shared encoders)."""
    wide = score_matrix(scores)
    n_enc = len(wide)
    if n_enc < MIN_ENCODERS_FOR_CORRELATION:
        raise Skip(f"needs >= {MIN_ENCODERS_FOR_CORRELATION} encoders, found {n_enc}")
    keep = [t for t in wide.columns
            if wide[t].notna().sum() >= MIN_ENCODERS_FOR_CORRELATION and not _ptp_zero(wide[t].dropna().to_numpy())]
    dropped = [t for t in wide.columns if t not in keep]
    if len(keep) < 2:
        raise Skip(f"needs >= 2 tasks with >= {MIN_ENCODERS_FOR_CORRELATION} non-constant encoder scores, "
                   f"found {len(keep)}")
    notes = ([f"{len(dropped)} task(s) with fewer than {MIN_ENCODERS_FOR_CORRELATION} encoders or constant scores "
              f"left out: {', '.join(dropped)}"] if dropped else [])
    sub = wide[keep]
    cats = task_categories(scores).loc[keep]
    tables = {}
    for method in ("pearson", "spearman"):
        mat = sub.corr(method=method, min_periods=MIN_ENCODERS_FOR_CORRELATION)
        mat.index.name = "task"
        mat = mat.reset_index()
        mat.insert(1, "category", list(cats))
        tables[method] = mat
    return Outcome(tables, notes, {"encoders": n_enc, "tasks": len(keep)})
