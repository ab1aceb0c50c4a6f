"""Loading result records into one long table, with each encoder's metadata from its record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from ..common.errors import HarnessError, UsageError
from .base import CATEGORY_ORDER, META_FIELDS, LoadedResults, _finite, _pairs


def _is_record(obj: Any) -> bool:
    return (isinstance(obj, dict) and isinstance(obj.get("encoder"), str) and isinstance(obj.get("task"), str)
            and isinstance(obj.get("status"), str) and "test" in obj)


def encoder_metadata(name: str, info: dict | None = None) -> dict[str, Any]:
    """method, data, size, epochs, balanced: from the encoder card the record carries
    (``encoder_info``), never from the catalog, so a report reads the same wherever it runs.
    Records written before the card had those fields fall back to what they did carry."""
    from encoders.registry import METHOD_SPELLING, info_from_meta

    info = dict(info or {})
    if "balanced" not in info:  # an older record: rebuild the card from its checkpoint metadata
        meta = (info.get("extra") or {}).get("meta") or {}
        card = info_from_meta(name, str(info.get("arch", "?")), meta, str(info.get("source", ""))).__dict__
        if not meta:
            card.update(method=info.get("method", "none"), data=info.get("data", "-"),
                        epochs=(info.get("extra") or {}).get("epochs"))
        info = {**card, "meta_source": "checkpoint" if meta else "encoder_info"}
    method = info.get("method")
    method = None if method in (None, "", "unknown", "user") else METHOD_SPELLING.get(str(method).lower(), method)
    data = info.get("data")
    epochs = info.get("epochs")
    return {"method": method, "data": None if data in (None, "", "-", "unknown") else str(data),
            "size": info.get("size"), "epochs": epochs if _finite(epochs) else None, "balanced": info.get("balanced"),
            "corruption": info.get("corruption"),
            "meta_source": info.get("meta_source", "record")}


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


DEFAULT_TAP = "embedding"
VARIANT_KEYS = ("probe", "tap", "pool_dims", "subset")  # run-key entries naming a probe variant, not a setting


def variant_fields(rec: dict[str, Any]) -> dict[str, Any]:
    """The probe variant of a record (harness/probes.py, harness/subsets.py): probe, tap and its depth
    and pooled grid, label fraction. Records written before these fields read as the default: the
    task's head on its own input, on the full train split."""
    subset = rec.get("subset") or {}
    tap = rec.get("tap") or (DEFAULT_TAP if rec.get("head") in ("linear", "fusion") else None)
    pool = rec.get("pool") or {}
    grid = pool.get("grid")
    return {"probe": rec.get("probe") or "head", "tap": tap,
            "tap_index": rec.get("tap_index") if _finite(rec.get("tap_index")) else None,
            "pool_grid": "x".join(str(g) for g in grid) if grid else None,
            "subset_kind": subset.get("kind"), "subset_value": subset.get("value"),
            "fraction": float(subset["fraction"]) if _finite(subset.get("fraction")) else 1.0,
            "n_train": (rec.get("n") or {}).get("train")}


def _variant(fields: dict[str, Any]) -> str:
    tap = None if fields["tap"] in (None, DEFAULT_TAP) else fields["tap"]
    return json.dumps([fields["probe"], tap, fields["subset_kind"], fields["subset_value"]])


def is_default(scores: pd.DataFrame) -> pd.Series:
    """Rows of the paper's protocol: the task's head, on its own input, trained on the full train split."""
    return ((scores["probe"] == "head") & (scores["tap"].isna() | (scores["tap"] == DEFAULT_TAP))
            & scores["subset_kind"].isna())


def load_results(results_dir: Path, exclude: Path | None = None) -> LoadedResults:
    """Every ok record under ``results_dir`` (recursively), the newest per (encoder, task, probe
    variant); records that differ only in the head-training seed (a sweep's ``--seeds``) are averaged.

    ``scores`` holds the paper's protocol only (the task's head on the full train split), one row per
    (encoder, task), for the main analyses; ``variants`` every probe, tap and label fraction.

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
        key = dict(rec.get("run_key") or {})
        seed = key.pop("seed", rec.get("seed"))
        for k in VARIANT_KEYS:
            key.pop(k, None)
        variant = variant_fields(rec)
        rows.append({"encoder": rec["encoder"], "task": rec["task"], "seed": seed, "variant": _variant(variant),
                     **variant,
                     "settings": json.dumps(key, sort_keys=True, default=str),
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
    df = df.sort_values(["encoder", "task", "variant", "_created"], kind="mergesort", na_position="first")
    # The newest settings per (encoder, task, variant); within them, the newest record per seed, averaged over seeds.
    unit = ["encoder", "task", "variant"]
    newest = df.groupby(unit, sort=False)["settings"].transform("last")
    same = (df["settings"] == newest) & ~df.duplicated([*unit, "settings", "seed"], keep="last")
    if (~same).any():
        pairs = sorted(set(zip(df.loc[~same, "encoder"], df.loc[~same, "task"], strict=True)))
        counts["superseded"] = int((~same).sum())
        notes.append(f"{len(pairs)} encoder/task pair(s) have several ok records (different run settings); "
                     f"the newest ('created') is used: {_pairs(pairs)}")
    df = df.loc[same]
    seeds = df.groupby(unit, sort=False)["score"].transform("size")
    if (seeds > 1).any():
        pairs = sorted(set(zip(df.loc[seeds > 1, "encoder"], df.loc[seeds > 1, "task"], strict=True)))
        notes.append(f"{len(pairs)} encoder/task pair(s) averaged over head-training seeds: {_pairs(pairs)}")
    df = df.assign(score=df.groupby(unit, sort=False)["score"].transform("mean"), seeds=seeds)
    df = df.drop_duplicates(unit, keep="last")
    df = df.drop(columns=["_created", "settings", "seed", "variant"]).reset_index(drop=True)
    default = is_default(df)
    variants, df = df, df.loc[default].reset_index(drop=True)
    counts["variants"] = int((~default).sum())
    if counts["variants"]:
        notes.append(f"{counts['variants']} result(s) of other probes, taps or label fractions: in the tap, "
                     f"fraction and probe analyses only")
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
    return LoadedResults(df, counts, notes, variants)


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
