"""Analyses over many result records (`harness report`): the paper's views of an encoders x tasks table.

Records are read into one long table (one row per encoder x task, with the encoder's metadata
from the catalog or its checkpoint). Each analysis is a pure function of that table that
returns named tables, and an optional function draws its figure from those tables, so the
numbers can be tested without matplotlib and the figures never compute anything. An analysis
that lacks the data it needs raises ``Skip`` with a one-line reason; it is never faked.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .common.atomic import atomic_path, write_json
from .common.errors import HarnessError, UsageError

DEFAULT_BASELINE = "supervised_in"
IMAGENET_TASK = "imagenet_cls"
CATEGORY_ORDER: tuple[str, ...] = ("semantic image-level", "structural image-level", "semantic pixelwise",
                                   "structural pixelwise")
META_FIELDS: tuple[str, ...] = ("method", "data", "size", "epochs", "balanced", "corruption")
GROUP_FIELDS: tuple[str, ...] = ("method", "data", "epochs", "balanced", "corruption")
ANOVA_FACTORS: tuple[str, ...] = ("method", "balanced", "size", "epochs")
NOT_SELF_SUPERVISED = frozenset({"supervised", "none"})  # methods that are not self-supervised pretraining
MIN_ENCODERS_FOR_CORRELATION = 3


class Skip(Exception):
    """An analysis lacks the data it needs; the message is the one-line reason."""


@dataclass(frozen=True)
class ReportOptions:
    baseline: str = DEFAULT_BASELINE
    group_by: str = "method"
    a: str | None = None  # group A value; None: the most frequent value of ``group_by``
    b: str | None = None
    imagenet_task: str = IMAGENET_TASK


@dataclass
class Outcome:
    """What an analysis found: named tables (the first is the main one), notes and headline numbers."""

    tables: dict[str, pd.DataFrame]
    notes: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def table(self) -> pd.DataFrame:
        return next(iter(self.tables.values()))


@dataclass(frozen=True)
class Analysis:
    name: str  # file stem of its outputs
    title: str
    needs: str  # the data it needs, said to the user when it is skipped
    compute: Callable[[pd.DataFrame, ReportOptions], Outcome]
    plot: Callable[[Outcome, ReportOptions], Any] | None = None  # -> matplotlib Figure
    markdown: Callable[[Outcome], str] | None = None  # default: every table as is


@dataclass
class AnalysisResult:
    analysis: Analysis
    outcome: Outcome | None = None
    reason: str | None = None  # set when skipped
    files: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return "ok" if self.outcome is not None else "skipped"


@dataclass
class LoadedResults:
    scores: pd.DataFrame  # one row per (encoder, task): score and the encoder's metadata
    counts: dict[str, int]
    notes: list[str]


# ---- loading records ---------------------------------------------------------------------------------------

def _is_record(obj: Any) -> bool:
    return (isinstance(obj, dict) and isinstance(obj.get("encoder"), str) and isinstance(obj.get("task"), str)
            and isinstance(obj.get("status"), str) and "test" in obj)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _size_label(images: Any) -> str | None:
    """Image count as the catalog writes dataset sizes (1.3M, 0.5M)."""
    if not _finite(images) or images <= 0:
        return None
    if images >= 1e5:
        return f"{images / 1e6:.2g}M"
    return f"{images / 1e3:.3g}K" if images >= 1e3 else str(int(images))


def encoder_metadata(name: str, info: dict | None = None) -> dict[str, Any]:
    """method, data, size, epochs, balanced: from the catalog for its names, else from the record's
    ``encoder_info`` and the checkpoint metadata ``harness pretrain`` stores in ``extra.meta``.
    Unknown fields are None."""
    from encoders.catalog import CATALOG

    info = info or {}
    entry = CATALOG.get(name) or CATALOG.get(str(info.get("name", "")))
    if entry is not None:
        return {"method": entry.method, "data": None if entry.data == "-" else entry.data, "size": entry.size,
                "epochs": entry.epochs, "balanced": entry.balanced, "corruption": "none", "meta_source": "catalog"}
    extra = info.get("extra") or {}
    meta = extra.get("meta") or {}
    spelled = {e.method.lower(): e.method for e in CATALOG.values()}  # mocov2 -> MoCov2, as the catalog writes it
    method = meta.get("method") or info.get("method")
    method = None if method in (None, "", "unknown") else spelled.get(str(method).lower(), str(method))
    data = meta.get("data") or info.get("data")
    data = None if data in (None, "", "-", "unknown") else str(data)
    epochs = meta.get("epochs", extra.get("epochs"))
    balanced = meta.get("balanced")
    if balanced is None and meta.get("data"):
        # harness pretrain's data description ends with the subset variant; lin / log are the unbalanced ones
        balanced = not str(meta["data"]).endswith(("-lin", "-log"))
    return {"method": method, "data": data, "size": _size_label(meta.get("images")) or meta.get("size"),
            "epochs": epochs if _finite(epochs) else None, "balanced": balanced,
            "corruption": meta.get("corrupt", "none") if meta else None,  # harness pretrain --corrupt
            "meta_source": "checkpoint" if meta else ("encoder_info" if method or data else "none")}


def _task_category(task: str) -> str | None:
    """For records written before categories were recorded: the registry's, if the task is registered."""
    try:
        from tasks.registry import get_task

        return get_task(task).category
    except (HarnessError, KeyError, ImportError):
        return None


def _inside(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _pairs(pairs: Iterable[tuple[str, str]], limit: int = 5) -> str:
    pairs = list(pairs)
    text = ", ".join(f"{e}/{t}" for e, t in pairs[:limit])
    return text + (f" and {len(pairs) - limit} more" if len(pairs) > limit else "")


def load_results(results_dir: Path, exclude: Path | None = None) -> LoadedResults:
    """Every ok record under ``results_dir`` (recursively), the newest per (encoder, task).

    Failed records, unreadable files and JSON files that are not records are counted, not used.
    Raises UsageError when the folder is missing or holds no usable record.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise UsageError(f"results directory {results_dir} does not exist (give the --out folder of 'harness eval')")
    files = sorted(p for p in results_dir.rglob("*.json") if p.is_file() and not _inside(p, exclude))
    counts = {"files": len(files), "ok": 0, "failed": 0, "not_records": 0, "no_score": 0, "superseded": 0}
    rows, failed_pairs = [], set()
    for path in files:
        try:
            rec = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            counts["not_records"] += 1
            continue
        if not _is_record(rec):
            counts["not_records"] += 1
            continue
        if rec["status"] != "ok":
            counts["failed"] += 1
            failed_pairs.add((rec["encoder"], rec["task"]))
            continue
        if not _finite(rec.get("test")):
            counts["no_score"] += 1
            continue
        counts["ok"] += 1
        rows.append({"encoder": rec["encoder"], "task": rec["task"],
                     "category": rec.get("category") or _task_category(rec["task"]),
                     "metric": rec.get("metric"), "score": float(rec["test"]), "created": rec.get("created"),
                     "record_version": rec.get("record_version"), "file": str(path.relative_to(results_dir)),
                     **encoder_metadata(rec["encoder"], rec.get("encoder_info"))})
    if not rows:
        found = (f"{counts['files']} .json file(s): {counts['failed']} failed, {counts['not_records']} not records, "
                 f"{counts['no_score']} without a test score")
        raise UsageError(f"no usable result records under {results_dir} ({found}); "
                         f"write some with 'harness eval --out {results_dir}'")

    notes = []
    df = pd.DataFrame(rows)
    df["_created"] = pd.to_datetime(df["created"], utc=True, errors="coerce", format="ISO8601")
    df = df.sort_values(["encoder", "task", "_created"], kind="mergesort", na_position="first")
    dup = df.duplicated(["encoder", "task"], keep="last")
    if dup.any():
        pairs = sorted(set(zip(df.loc[dup, "encoder"], df.loc[dup, "task"], strict=True)))
        counts["superseded"] = int(dup.sum())
        notes.append(f"{len(pairs)} encoder/task pair(s) have several ok records (different run settings); "
                     f"the newest ('created') is used: {_pairs(pairs)}")
    df = df.loc[~dup].drop(columns="_created").reset_index(drop=True)
    if counts["failed"]:
        only_failed = sorted(failed_pairs - set(zip(df["encoder"], df["task"], strict=True)))
        notes.append(f"{counts['failed']} failed record(s) skipped"
                     + (f"; no ok result for {_pairs(only_failed)}" if only_failed else ""))
    if counts["not_records"] or counts["no_score"]:
        notes.append(f"{counts['not_records'] + counts['no_score']} .json file(s) ignored (not result records, "
                     f"or no test score)")
    versions = sorted({v for v in df["record_version"] if _finite(v)})
    if len(versions) > 1:
        notes.append(f"records of several record versions are mixed: {versions}")
    unknown = df.loc[df["category"].isna(), "task"].unique()
    if len(unknown):
        notes.append(f"unknown category for task(s) {', '.join(sorted(unknown))}: left out of per-category views")
    return LoadedResults(df, counts, notes)


# ---- shared views --------------------------------------------------------------------------------------------

def _category_rank(category: Any) -> int:
    return CATEGORY_ORDER.index(category) if category in CATEGORY_ORDER else len(CATEGORY_ORDER)


def task_categories(scores: pd.DataFrame) -> pd.Series:
    """Task -> category, tasks in category order (the paper's four), then by name."""
    cats = scores.drop_duplicates("task").set_index("task")["category"]
    order = sorted(cats.index, key=lambda t: (_category_rank(cats[t]), str(cats[t]), t))
    return cats.loc[order]


def score_matrix(scores: pd.DataFrame) -> pd.DataFrame:
    """Encoders x tasks (NaN where missing), tasks in category order, encoders by name."""
    wide = scores.pivot(index="encoder", columns="task", values="score")
    wide = wide.reindex(columns=list(task_categories(scores).index)).sort_index()
    wide.columns.name = None
    return wide.astype("float64")


def encoder_table(scores: pd.DataFrame) -> pd.DataFrame:
    """One row per encoder: its metadata (None / NaN where unknown)."""
    cols = [*META_FIELDS, "meta_source"]
    return scores.drop_duplicates("encoder").set_index("encoder")[cols].sort_index()


def _label(value: Any) -> str | None:
    """A metadata value as a group label: 200.0 -> '200', True -> 'True', None -> None."""
    if _missing(value):
        return None
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _require_baseline(scores: pd.DataFrame, opts: ReportOptions) -> None:
    if opts.baseline not in set(scores["encoder"]):
        raise Skip(f"no results for the baseline encoder {opts.baseline!r} (choose one with --baseline)")


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


# ---- 1. best self-supervised encoder vs the supervised baseline ----------------------------------------------

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


def _colors(labels: Iterable[Any]) -> dict[Any, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    uniq = sorted({str(v) for v in labels})
    return {v: cmap(i % 10) for i, v in enumerate(uniq)}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _legend(ax, colors: dict[Any, Any], title: str) -> None:
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=c, label=k) for k, c in colors.items()], title=title, fontsize="small",
              loc="upper left", bbox_to_anchor=(1.01, 1))


def plot_baseline_gain(outcome: Outcome, opts: ReportOptions):
    t = outcome.table
    colors = _colors(t["best_data"].fillna("unknown"))
    fig = _figure(7, 1.2 + 0.3 * len(t))
    ax = fig.add_subplot()
    y = np.arange(len(t))[::-1]
    ax.barh(y, t["improvement_pct"].fillna(0), color=[colors[str(d)] for d in t["best_data"].fillna("unknown")])
    names = [f"{task} ({enc})" for task, enc in zip(t["task"], t["best_encoder"], strict=True)]
    ax.set_yticks(y, names, fontsize="small")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"% improvement of the best self-supervised encoder over {opts.baseline}")
    _legend(ax, colors, "pretraining data")
    return fig


# ---- 2. each task vs ImageNet top-1 ---------------------------------------------------------------------------

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


def plot_imagenet_correlation(outcome: Outcome, opts: ReportOptions):
    pts = outcome.tables["points"]
    cats = outcome.tables["categories"]
    panels = list(cats["category"]) or ["all"]
    fig = _figure(4.2 * len(panels), 4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colors = _colors(pts["task"])
    for ax, cat in zip(axes, panels, strict=True):
        sel = pts if cat == "all" else pts[pts["category"] == cat]
        for t, grp in sel.groupby("task"):
            ax.scatter(grp["imagenet_top1"], grp["z"], color=colors[str(t)], label=t, s=18)
        row = cats[cats["category"] == cat]
        stats = (f"\nPearson {row['pearson_r'].iloc[0]:.2f}, Spearman {row['spearman_rho'].iloc[0]:.2f}"
                 if len(row) else "")
        ax.set_title(f"{cat}{stats}", fontsize="small")
        ax.set_xlabel(f"{opts.imagenet_task} (ImageNet top-1)")
        ax.set_ylabel("task score (z-scored per task)")
        ax.legend(fontsize="x-small")
    return fig


# ---- 3. task x task correlations --------------------------------------------------------------------------------

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


def plot_task_correlation(outcome: Outcome, opts: ReportOptions):
    n = len(outcome.table)
    fig = _figure(2 * (2.5 + 0.35 * n), 2 + 0.35 * n)
    axes = fig.subplots(1, 2)
    for ax, (method, mat) in zip(axes, outcome.tables.items(), strict=True):
        tasks = list(mat["task"])
        values = mat[tasks].to_numpy(dtype=float)
        im = ax.imshow(values, cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_xticks(range(n), tasks, rotation=90, fontsize="x-small")
        ax.set_yticks(range(n), tasks, fontsize="x-small")
        cats = list(mat["category"])
        for i in range(1, n):  # lines between categories
            if cats[i] != cats[i - 1]:
                ax.axhline(i - 0.5, color="black", linewidth=1)
                ax.axvline(i - 0.5, color="black", linewidth=1)
        ax.set_title(f"{method.capitalize()} over encoders", fontsize="small")
    fig.colorbar(im, ax=list(axes), shrink=0.8)
    return fig


# ---- 4. group A minus group B -----------------------------------------------------------------------------------

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


def plot_group_difference(outcome: Outcome, opts: ReportOptions):
    t, s = outcome.table, outcome.summary
    colors = _colors(t["category"].fillna("unknown"))
    fig = _figure(1.5 + 0.45 * len(t), 4.5)
    ax = fig.add_subplot()
    ax.bar(range(len(t)), t["difference"], color=[colors[str(c)] for c in t["category"].fillna("unknown")])
    ax.set_xticks(range(len(t)), t["task"], rotation=60, ha="right", fontsize="small")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel(f"mean score, {s['a']} minus {s['b']}")
    ax.set_title(f"{s['group_by']}: {s['a']} ({len(s['encoders_a'])}) minus {s['b']} ({len(s['encoders_b'])})",
                 fontsize="small")
    _legend(ax, colors, "category")
    return fig


# ---- 5. normalised scores per category --------------------------------------------------------------------------

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


def plot_normalised_distribution(outcome: Outcome, opts: ReportOptions):
    norm = outcome.tables["scores"]
    cats = list(outcome.table["category"])
    fig = _figure(1.5 + 1.8 * len(cats), 4.5)
    ax = fig.add_subplot()
    ax.boxplot([norm.loc[norm["category"] == c, "normalised"].to_numpy() for c in cats])
    ax.set_xticks(range(1, len(cats) + 1), [c.replace(" ", "\n") for c in cats], fontsize="small")
    ax.axhline(0, color="black", linewidth=0.8, linestyle="--")
    ax.set_ylabel(f"(score - {opts.baseline}) / task std")
    return fig


# ---- 6. factorial ANOVA --------------------------------------------------------------------------------------------

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


def plot_anova(outcome: Outcome, opts: ReportOptions):
    t = outcome.table.dropna(subset=["p_value"])
    fig = _figure(6, 1.2 + 0.45 * len(t))
    ax = fig.add_subplot()
    y = np.arange(len(t))[::-1]
    p = np.clip(t["p_value"].to_numpy(dtype=float), 1e-300, 1)
    ax.barh(y, -np.log10(p), color=["tab:red" if v < 0.05 else "tab:gray" for v in p])
    ax.set_yticks(y, t["term"])
    ax.axvline(-np.log10(0.05), color="black", linestyle="--", linewidth=0.8, label="p = 0.05")
    ax.set_xlabel("-log10 p (type-2 ANOVA on the normalised score)")
    ax.legend(fontsize="small")
    return fig


# ---- 7. encoders x tasks with ranks -------------------------------------------------------------------------------

def rank_table(scores: pd.DataFrame, opts: ReportOptions) -> Outcome:
    """Every score with its rank on the task (1 = best, ties averaged) and each encoder's mean rank."""
    wide = score_matrix(scores)
    ranks = wide.rank(axis=0, ascending=False, method="average")
    table = pd.DataFrame(index=wide.index)
    for task in wide.columns:
        table[task] = wide[task]
        table[f"{task}_rank"] = ranks[task]
    table["mean_rank"] = ranks.mean(axis=1, skipna=True)
    table["n_tasks"] = wide.notna().sum(axis=1)
    table = table.reset_index(names="encoder").sort_values(["mean_rank", "encoder"], kind="mergesort")
    notes = []
    partial = int((table["n_tasks"] < wide.shape[1]).sum())
    if partial:
        notes.append(f"{partial} encoder(s) lack some tasks: their mean rank is over the tasks they have")
    return Outcome({"ranks": table.reset_index(drop=True)}, notes,
                   {"encoders": len(table), "tasks": wide.shape[1], "best": table["encoder"].iloc[0]})


def rank_display(outcome: Outcome) -> pd.DataFrame:
    """The rank table as text cells, 'score (rank)', for markdown and the terminal."""
    t = outcome.table
    tasks = [c[: -len("_rank")] for c in t.columns if c.endswith("_rank") and c != "mean_rank"]
    out = pd.DataFrame({"encoder": t["encoder"]})
    for task in tasks:
        pairs = zip(t[task], t[f"{task}_rank"], strict=True)
        out[task] = ["-" if math.isnan(s) else f"{s:.4g} ({r:g})" for s, r in pairs]
    out["mean rank"] = [f"{v:.2f}" for v in t["mean_rank"]]
    return out


def _rank_markdown(outcome: Outcome) -> str:
    return markdown_table(rank_display(outcome))


ANALYSES: tuple[Analysis, ...] = (
    Analysis("baseline_gain", "Best self-supervised encoder vs the supervised baseline (% improvement)",
             "the baseline encoder (--baseline) and >= 1 encoder with a self-supervised method",
             baseline_gain, plot_baseline_gain),
    Analysis("imagenet_correlation", "Task scores vs ImageNet top-1 (Pearson, Spearman)",
             "the ImageNet task (--imagenet-task) scored for >= 3 encoders, and another task",
             imagenet_correlation, plot_imagenet_correlation),
    Analysis("task_correlation", "Task x task correlations over encoders",
             ">= 3 encoders and >= 2 tasks with >= 3 non-constant scores", task_correlation, plot_task_correlation),
    Analysis("group_difference", "Group A minus group B, mean score per task",
             "encoders in two groups of --group-by (method, data, epochs, balanced)",
             group_difference, plot_group_difference),
    Analysis("normalised_scores", "Normalised scores per category: (score - baseline) / task std",
             "the baseline encoder and another encoder on the same tasks", normalised_distribution,
             plot_normalised_distribution),
    Analysis("anova", "Factorial ANOVA of the normalised score (type 2)",
             "the baseline encoder and encoders differing in method, balance, size or epochs", anova, plot_anova),
    Analysis("ranks", "Encoders x tasks with rank per task and mean rank", "any results", rank_table,
             markdown=_rank_markdown),
)


# ---- running and writing ---------------------------------------------------------------------------------------------

def run_analyses(scores: pd.DataFrame, opts: ReportOptions,
                 analyses: Iterable[Analysis] = ANALYSES) -> list[AnalysisResult]:
    results = []
    for analysis in analyses:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                results.append(AnalysisResult(analysis, outcome=analysis.compute(scores, opts)))
        except Skip as exc:
            results.append(AnalysisResult(analysis, reason=str(exc)))
    return results


def _cell(value: Any) -> Any:
    """A JSON-safe scalar: NaN / NA -> None, numpy scalars -> Python."""
    if isinstance(value, (list, tuple)):
        return [_cell(v) for v in value]
    if _missing(value):
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def table_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(k): _cell(v) for k, v in row.items()} for row in df.to_dict(orient="records")]


def _fmt(value: Any) -> str:
    if _missing(value):
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def markdown_table(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body]) + "\n"


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _write_csv(path: Path, df: pd.DataFrame) -> None:
    with atomic_path(path, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False, float_format="%.10g")


def _write_png(path: Path, fig) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def _clear_stale(out: Path, name: str) -> None:
    """Outputs of an earlier run of this analysis (a skipped analysis must not leave an old figure)."""
    for p in [*out.glob(f"{name}.*"), *out.glob(f"{name}-*.*")]:
        if p.is_file() and p.suffix in (".csv", ".md", ".png"):
            p.unlink()


def _table_file(name: str, table_name: str) -> str:
    return name if table_name == name else f"{name}-{table_name}"


def write_outputs(out: Path, results: list[AnalysisResult], opts: ReportOptions) -> None:
    """Per analysis: a CSV and a markdown file per table, and a PNG; each file published atomically."""
    out.mkdir(parents=True, exist_ok=True)
    for res in results:
        a = res.analysis
        _clear_stale(out, a.name)
        if res.outcome is None:
            continue
        for tname, df in res.outcome.tables.items():
            stem = _table_file(a.name, tname)
            _write_csv(out / f"{stem}.csv", df)
            _write_text(out / f"{stem}.md", markdown_table(df))
            res.files += [f"{stem}.csv", f"{stem}.md"]
        if a.markdown is not None:
            _write_text(out / f"{a.name}.md", a.markdown(res.outcome))
            if f"{a.name}.md" not in res.files:
                res.files.append(f"{a.name}.md")
        if a.plot is not None:
            fig = a.plot(res.outcome, opts)
            _write_png(out / f"{a.name}.png", fig)
            res.files.append(f"{a.name}.png")


def report_markdown(doc: dict[str, Any], results: list[AnalysisResult]) -> str:
    lines = [f"# Report on {doc['results_dir']}", "",
             f"{doc['records']['used']} results: {len(doc['encoders'])} encoders x {len(doc['tasks'])} tasks "
             f"({doc['records']['failed']} failed records skipped).", ""]
    lines += [f"- {n}" for n in doc["notes"]]
    for i, res in enumerate(results, 1):
        a = res.analysis
        lines += ["", f"## {i}. {a.title}", ""]
        if res.outcome is None:
            lines.append(f"Skipped: {res.reason}.")
            continue
        lines += [f"- {n}" for n in res.outcome.notes]
        if res.outcome.notes:
            lines.append("")
        if a.plot is not None:
            lines += [f"![{a.name}]({a.name}.png)", ""]
        if a.markdown is not None:
            lines.append(a.markdown(res.outcome))
        else:
            for tname, df in res.outcome.tables.items():
                if len(res.outcome.tables) > 1:
                    lines += [f"### {tname}", ""]
                lines += [markdown_table(df), f"([{_table_file(a.name, tname)}.csv]"
                                              f"({_table_file(a.name, tname)}.csv))", ""]
    return "\n".join(lines) + "\n"


def build_report(results_dir: Path, out: Path | None = None, opts: ReportOptions | None = None) -> dict[str, Any]:
    """Load the records, run every analysis, write report.json, report.md, tables and figures to ``out``.

    Returns the report document (what report.json holds)."""
    from . import __version__

    opts = opts or ReportOptions()
    if opts.group_by not in GROUP_FIELDS:
        raise UsageError(f"--group-by {opts.group_by!r}: use one of {', '.join(GROUP_FIELDS)}")
    if (opts.a is None) != (opts.b is None):
        raise UsageError("give both --a and --b (or neither)")
    results_dir = Path(results_dir)
    out = Path(out) if out is not None else results_dir / "report"
    # the report folder's own JSON is not a record, unless the records live in it (--out RESULTS_DIR)
    loaded = load_results(results_dir, exclude=None if _inside(results_dir, out) else out)
    scores = loaded.scores
    results = run_analyses(scores, opts)
    write_outputs(out, results, opts)
    cats = task_categories(scores)
    metrics = scores.drop_duplicates("task").set_index("task")["metric"]
    encs = encoder_table(scores)
    doc = {
        "results_dir": str(results_dir), "out": str(out), "harness": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "options": {"baseline": opts.baseline, "group_by": opts.group_by, "a": opts.a, "b": opts.b,
                    "imagenet_task": opts.imagenet_task},
        "records": {**loaded.counts, "used": len(scores)},
        "notes": loaded.notes,
        "encoders": table_records(encs.reset_index()),
        "tasks": [{"name": t, "category": _cell(c), "metric": _cell(metrics[t])} for t, c in cats.items()],
        "analyses": {},
    }
    for res in results:
        a = res.analysis
        entry: dict[str, Any] = {"title": a.title, "status": res.status, "needs": a.needs}
        if res.outcome is None:
            entry["reason"] = res.reason
        else:
            entry.update(notes=res.outcome.notes, summary={k: _cell(v) for k, v in res.outcome.summary.items()},
                         tables={k: table_records(v) for k, v in res.outcome.tables.items()}, files=res.files)
        doc["analyses"][a.name] = entry
    _write_text(out / "report.md", report_markdown(doc, results))
    doc["files"] = ["report.json", "report.md", *(f for r in results for f in r.files)]
    write_json(out / "report.json", doc)
    return doc


def summary_table(doc: dict[str, Any]):
    """The encoders x tasks table with mean rank, as a rich Table (from report.json's ranks table)."""
    from rich.table import Table

    ranks = pd.DataFrame(doc["analyses"]["ranks"]["tables"]["ranks"])
    display = rank_display(Outcome({"ranks": ranks.astype({c: float for c in ranks.columns if c != "encoder"})}))
    table = Table(title=f"{len(display)} encoders x {len(doc['tasks'])} tasks",
                  caption="score (rank on the task, 1 = best), sorted by mean rank")
    for col in display.columns:
        if col == "encoder":
            table.add_column(col, no_wrap=True)
        else:
            table.add_column(col, justify="right", overflow="fold")
    for row in display.itertuples(index=False):
        table.add_row(*map(str, row))
    return table


def status_lines(doc: dict[str, Any]) -> list[str]:
    """One line per analysis (written, or skipped with its reason), then the record counts."""
    lines = []
    for name, a in doc["analyses"].items():
        lines.append(f"{name}: " + ("ok" if a["status"] == "ok" else f"skipped: {a['reason']}"))
    lines += doc["notes"]
    lines.append(f"wrote {doc['out']}/report.json, report.md, {len(doc['files']) - 2} table and figure file(s)")
    return lines
