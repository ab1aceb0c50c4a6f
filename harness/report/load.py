"""Loading result records into one long table, with each encoder's metadata from its record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from ..common.errors import HarnessError, UsageError
from .base import CATEGORY_ORDER, META_FIELDS, LoadedResults, _finite, _label, _missing, _pairs


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
DEFAULT_SETTINGS = "default"  # the settings label of the default protocol
PROTOCOL = "the task's head on its full train split, with the task's epochs, grid, resolution and batch size, no " \
           "--limit"
ANY = object()  # a budget entry the task ignores (augmented copies of a task without random augmentation)


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


def variant_label(row: dict[str, Any] | pd.Series) -> str:
    """'head', 'knn, block3', 'head, fraction 0.1': a result's probe variant in words."""
    parts = [row["probe"]]
    if row["tap"] not in (None, DEFAULT_TAP) and not _missing(row["tap"]):
        parts.append(str(row["tap"]))
    if not _missing(row["subset_kind"]):
        parts.append(f"{row['subset_kind']} {_label(row['subset_value'])}")
    return ", ".join(parts)


# --------------------------------------------------------------------------- the protocol's budget

# Run-key entries that set a result's budget, with the option that sets them. A record is of the
# default protocol when each is the task's own (unset, or set to the task's value).
BUDGET: tuple[tuple[str, str], ...] = (("limit", "--limit"), ("epochs", "--epochs"), ("grid", "--grid"),
                                       ("resolution", "--resolution"), ("batch_size", "--batch-size"),
                                       ("aug_copies", "--aug-copies"), ("head", "head"))


def task_defaults(task: str) -> dict[str, Any] | None:
    """The task's own budget (registry): epochs, batch size and augmented copies of the task whose head
    is trained (a test-only task's source), its resolution and head. None for an unregistered task."""
    try:
        from tasks.registry import get_task

        target = get_task(task)
        source = get_task(target.head_from) if target.head_from else target
    except (HarnessError, KeyError, ImportError):
        return None
    return {"limit": None, "epochs": source.epochs, "grid": "full", "resolution": target.default_resolution,
            "batch_size": source.batch_size,
            "aug_copies": source.aug_copies if source.train_transform.random else ANY, "head": target.head}


def budget_of(rec: dict[str, Any], key: dict[str, Any], defaults: dict[str, Any] | None) -> tuple[dict, list[str]]:
    """(the record's budget with the task's own values as None, the options that differ in words).

    An unregistered task's epochs cannot be judged: they stay in the budget, not in the words."""
    budget, differs = {}, []
    for name, option in BUDGET:
        value = key.get(name, rec.get(name) if name in ("epochs", "head") else None)
        own = None if name == "grid" and value == "full" else value
        if defaults is None:
            if name == "epochs" or (name == "head" and value is not None):
                budget[name] = value  # unknown own value: grouped by, not called different
                continue
        elif defaults[name] is ANY or value == defaults[name]:
            own = None
        if own is not None:
            budget[name] = own
            shown = f"{option} {own}"
            if defaults is not None and defaults[name] is not None and name != "grid":
                shown += f" (task: {defaults[name]})"
            differs.append(shown)
    return budget, differs


def is_default(scores: pd.DataFrame) -> pd.Series:
    """Rows of the paper's protocol: the task's head, on its own input, trained on the full train split
    for the task's budget."""
    return ((scores["probe"] == "head") & (scores["tap"].isna() | (scores["tap"] == DEFAULT_TAP))
            & scores["subset_kind"].isna() & (scores["settings"] == DEFAULT_SETTINGS))


def _read(results_dir: Path, exclude: Path | None) -> tuple[list[dict], dict[str, int], set]:
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
        budget, differs = budget_of(rec, key, task_defaults(rec["task"]))
        for name, _ in BUDGET:
            key.pop(name, None)
        variant = variant_fields(rec)
        rows.append({"encoder": rec["encoder"], "task": rec["task"], "seed": seed, "variant": _variant(variant),
                     **variant,
                     "settings": ", ".join(differs) or DEFAULT_SETTINGS,
                     "budget": json.dumps(budget, sort_keys=True, default=str),
                     "weights": str(key.pop("encoder", None) or rec.get("encoder_fingerprint") or ""),
                     "incidental": json.dumps(key, sort_keys=True, default=str),
                     "category": rec.get("category") or _task_category(rec["task"]),
                     "metric": rec.get("metric"), "score": float(rec["test"]), "created": rec.get("created"),
                     "arch": (rec.get("encoder_info") or {}).get("arch"),
                     "record_version": rec.get("record_version"), "file": str(path.relative_to(results_dir)),
                     **encoder_metadata(rec["encoder"], rec.get("encoder_info"))})
    return rows, counts, failed_pairs


def _differing(df: pd.DataFrame) -> str:
    """The run-key entries that differ among a group's records, in words ('head_precision: auto / fp32')."""
    keys = [json.loads(v) for v in df["incidental"].unique()]
    names = sorted({k for d in keys for k in d if len({json.dumps(x.get(k), default=str) for x in keys}) > 1})
    return "; ".join(f"{k}: {' / '.join(sorted({str(x.get(k)) for x in keys}))}" for k in names)


def _with_settings(pairs: list[tuple[str, str, str]], limit: int = 5) -> str:
    text = "; ".join(f"{e}/{t} ({s})" for e, t, s in pairs[:limit])
    return text + (f" and {len(pairs) - limit} more" if len(pairs) > limit else "")


def _unknown_epochs(df: pd.DataFrame, unit: list[str], notes: list[str]) -> pd.DataFrame:
    """An unregistered task's default-looking records that differ in epochs: those with the most epochs are
    taken as its protocol (the fuller budget, never the newer); the others are labelled by their epochs."""
    default = df["settings"] == DEFAULT_SETTINGS
    epochs = pd.to_numeric(df["budget"].map(lambda b: json.loads(b).get("epochs")), errors="coerce")
    most = epochs.where(default).groupby([df[u] for u in unit]).transform("max")
    fewer = default & epochs.notna() & most.notna() & (epochs < most)
    if fewer.any():
        df = df.copy()
        df.loc[fewer, "settings"] = [f"--epochs {e:g} (another record has {m:g}; the task's own is unknown)"
                                     for e, m in zip(epochs[fewer], most[fewer], strict=True)]
        pairs = sorted(set(zip(df.loc[fewer, "encoder"], df.loc[fewer, "task"], strict=True)))
        notes.append(f"{len(pairs)} encoder/task pair(s) of unregistered tasks have records of several epochs; the "
                     f"most epochs are taken as the protocol: {_pairs(pairs)}")
    return df


def load_results(results_dir: Path, exclude: Path | None = None) -> LoadedResults:
    """Every ok record under ``results_dir`` (recursively), one result per (encoder, task, probe variant,
    run settings).

    ``scores`` holds the paper's protocol only (``PROTOCOL``), one row per (encoder, task), for the main
    analyses; ``variants`` every probe, tap and label fraction, each labelled by its run ``settings``
    ('default', or the options that differ from the task's own, such as '--limit 500'), so that a curve
    joins only results of the same settings; ``other`` every result of other settings, which the paper's
    views never use, whatever their date.

    Within one (encoder, task, variant, settings): the records of the encoder's newest weights; of repeats
    of the same seed the newest (a re-run replaces a run); the mean over head-training seeds.

    Failed records, unreadable files and JSON files that are not records are counted, not used.
    Raises UsageError when the folder is missing or holds no usable record.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise UsageError(f"results directory {results_dir} does not exist (give the --out folder of 'harness eval')")
    rows, counts, failed_pairs = _read(results_dir, exclude)
    if not rows:
        found = (f"{counts['files']} .json file(s): {counts['failed']} failed, {counts['not_records']} not records, "
                 f"{counts['no_score']} without a test score")
        raise UsageError(f"no usable result records under {results_dir} ({found}); "
                         f"write some with 'harness eval --out {results_dir}'")

    notes: list[str] = []
    df = pd.DataFrame(rows)
    df["_created"] = pd.to_datetime(df["created"], utc=True, errors="coerce", format="ISO8601")
    df = df.sort_values(["encoder", "task", "variant", "_created"], kind="mergesort", na_position="first")
    df = _unknown_epochs(df, ["encoder", "task", "variant"], notes)
    unit = ["encoder", "task", "variant", "settings", "budget"]
    # The encoder's newest weights (a name re-used for new weights means those), then per seed the newest record.
    newest = df.groupby(unit, sort=False)["weights"].transform("last")
    old_weights = df["weights"] != newest
    if old_weights.any():
        pairs = sorted(set(zip(df.loc[old_weights, "encoder"], df.loc[old_weights, "task"], strict=True)))
        notes.append(f"{len(pairs)} encoder/task pair(s) have records of earlier weights under the same encoder "
                     f"name (another fingerprint); the current weights' are used: {_pairs(pairs)}")
    repeat = ~old_weights & df.duplicated([*unit, "weights", "seed"], keep="last")
    if repeat.any():
        keyed = df.loc[~old_weights].groupby([*unit, "seed"], sort=False)
        differ = sorted({d for _, g in keyed if len(g) > 1 for d in [_differing(g)] if d})
        pairs = sorted(set(zip(df.loc[repeat, "encoder"], df.loc[repeat, "task"], strict=True)))
        notes.append(f"{len(pairs)} encoder/task pair(s) have repeated records of the same settings and seed; "
                     f"a re-run replaces the earlier run (the newest of each seed is used)"
                     + (f" (they differ only in {'; '.join(differ)})" if differ else "") + f": {_pairs(pairs)}")
    counts["superseded"] = int((old_weights | repeat).sum())
    df = df.loc[~old_weights & ~repeat]
    seeds = df.groupby(unit, sort=False)["score"].transform("size")
    averaged = (seeds > 1) & (df["settings"] == DEFAULT_SETTINGS)
    if averaged.any():
        pairs = sorted(set(zip(df.loc[averaged, "encoder"], df.loc[averaged, "task"], strict=True)))
        notes.append(f"{len(pairs)} encoder/task pair(s) averaged over head-training seeds: {_pairs(pairs)}")
    df = df.assign(score=df.groupby(unit, sort=False)["score"].transform("mean"), seeds=seeds)
    df = df.drop_duplicates(unit, keep="last")
    df = df.drop(columns=["_created", "seed", "variant", "budget", "weights", "incidental"]).reset_index(drop=True)

    protocol = df["settings"] == DEFAULT_SETTINGS
    other = df.loc[~protocol].reset_index(drop=True)
    counts["other_settings"] = len(other)
    if len(other):
        found = other[["encoder", "task", "settings"]].drop_duplicates()
        covered = set(zip(df.loc[protocol, "encoder"], df.loc[protocol, "task"], strict=True))
        alone = sorted({(e, t) for e, t in zip(found["encoder"], found["task"], strict=True)} - covered)
        notes.append(f"{len(other)} result(s) of other run settings than the default protocol ({PROTOCOL}) are "
                     f"listed in report.md (other_settings in report.json), never used in the paper's views: "
                     f"{_with_settings(sorted(found.itertuples(index=False, name=None)))}"
                     + (f"; no default-protocol result for {_pairs(alone)}" if alone else ""))
    default = is_default(df)
    variants, df = df, df.loc[default].reset_index(drop=True)
    counts["variants"] = int((~default & protocol).sum())
    if counts["variants"]:
        notes.append(f"{counts['variants']} result(s) of other probes, taps or label fractions: in the tap, "
                     f"fraction and probe analyses only")
    if counts["failed"]:
        only_failed = sorted(failed_pairs - set(zip(variants["encoder"], variants["task"], strict=True)))
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
    return LoadedResults(df, counts, notes, variants, other)


OTHER_COLUMNS = ["encoder", "task", "variant", "settings", "score", "seeds", "n_train", "file"]


def other_table(other: pd.DataFrame | None) -> pd.DataFrame:
    """The results of other run settings, one row each: what they are and the settings that differ."""
    if other is None or other.empty:
        return pd.DataFrame(columns=OTHER_COLUMNS)
    table = other.assign(variant=[variant_label(r) for _, r in other.iterrows()])
    return table.sort_values(["encoder", "task", "variant", "settings"], kind="mergesort")[OTHER_COLUMNS] \
        .reset_index(drop=True)


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
