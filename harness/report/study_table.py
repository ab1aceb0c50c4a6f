"""A study's scores in its paper's table layout (``harness study run``, then ``harness report STUDY_FOLDER``).

What the layout is comes from the study's own ``study.json`` in the results folder (written by the run, so the
report needs nothing but the folder): which axes of an encoder (method, arch, widen, ...) or the task name the
rows and the columns, whether a cell is the embedding's score or the best tap's (``--tap all``), and whether the
paper adds cost rows. Cost rows (seed004's Table 1: FLOPs and CO2 per architecture) are the mean over the column's
pretraining runs of what each run's ``pretrain.json`` measured or declared, its energy estimate's basis in the
notes. Scores are read whatever the run settings (a small-scale study trains its heads on a few samples); the
settings are said in the notes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from .base import Outcome, ReportOptions, Skip, _missing
from .load import DEFAULT_TAP

STUDY_FILE = "study.json"  # as harness/study.py writes it (the report does not import the study layer)
COST_ROWS = ("params (M)", "GFLOPs", "train time (s)", "energy (Wh)", "CO2 (g)")


def _study_doc(results_dir: Path | None) -> dict[str, Any]:
    if results_dir is None:
        raise Skip("no results folder given to the analysis")
    path = Path(results_dir) / STUDY_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise Skip(f"no {STUDY_FILE} in the results folder (written by `harness study run`)") from None
    except (OSError, ValueError) as exc:
        raise Skip(f"{path} cannot be read: {exc}") from None
    if doc.get("kind") != "harness-study" or "table" not in doc:
        raise Skip(f"{path} is not a harness study description")
    return doc


def _key(axes: dict[str, Any], names: list[str]) -> str:
    return " / ".join(str(axes.get(n, "-")) for n in names)


def _pretrain_records(results_dir: Path, doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for e in doc["encoders"]:
        rel = e.get("pretrain_record")
        if not rel:
            continue
        try:
            rec = json.loads((Path(results_dir) / rel).read_text())
        except (OSError, ValueError):
            continue
        if rec.get("status") == "ok":
            out[e["name"]] = rec
    return out


def _cost_rows(doc: dict[str, Any], columns: list[str], records: dict[str, dict[str, Any]], col_names: list[str]
               ) -> tuple[pd.DataFrame, list[str]]:
    """Mean cost per column over its runs; the energy estimates' bases, each said once."""
    by_col: dict[str, list[dict[str, Any]]] = {}
    for e in doc["encoders"]:
        rec = records.get(e["name"])
        if rec is not None:
            by_col.setdefault(_key({**e["axes"]}, col_names), []).append(rec)
    rows = {name: {} for name in COST_ROWS}
    hows = set()
    for col in columns:
        recs = by_col.get(col, [])

        def mean(values: list[Any]) -> float:
            vals = [float(v) for v in values if not _missing(v)]
            return sum(vals) / len(vals) if vals else float("nan")

        rows["params (M)"][col] = mean([r.get("params") for r in recs]) / 1e6
        rows["GFLOPs"][col] = mean([r.get("flops") for r in recs]) / 1e9
        rows["train time (s)"][col] = mean([r.get("train_s") for r in recs])
        rows["energy (Wh)"][col] = mean([(r.get("energy") or {}).get("kwh") for r in recs]) * 1e3
        rows["CO2 (g)"][col] = mean([(r.get("energy") or {}).get("kg_co2") for r in recs]) * 1e3
        hows |= {(r.get("energy") or {}).get("how") for r in recs} - {None}
        res = {r.get("flops_resolution") for r in recs} - {None}
        if res:
            hows.add(f"FLOPs (multiply-adds) per image at {', '.join(map(str, sorted(res)))} px")
    return pd.DataFrame(rows).T.reindex(columns=columns), sorted(hows)


def study_table(scores: pd.DataFrame, opts: ReportOptions) -> Outcome:
    """Rows and columns as the study declares; a cell is the mean score of its encoders x tasks."""
    doc = _study_doc(opts.results_dir)
    layout = doc["table"]
    rows_by, cols_by = list(layout["rows"]), list(layout["columns"])
    encoders = {e["name"]: e for e in doc["encoders"]}

    def study_name(name: str) -> str | None:
        return name if name in encoders else (Path(name).stem if Path(name).stem in encoders else None)

    df = scores.loc[scores["probe"] == "head"].copy()
    df["study_encoder"] = df["encoder"].map(study_name)
    df = df.loc[df["study_encoder"].notna() & df["task"].isin(doc["tasks"])]
    if df.empty:
        raise Skip(f"no scores yet for study {doc['study']}'s encoders on {', '.join(doc['tasks'])}")
    notes = [f"{doc['study']} ({doc['scale']} scale): {doc['title']}. {layout.get('caption', '')}".strip()]
    if layout["cell"] == "best_tap":
        df = df.loc[df.groupby(["study_encoder", "task"])["score"].idxmax()]
    else:
        df = df.loc[df["tap"].isna() | (df["tap"] == DEFAULT_TAP)]
    settings = sorted(set(df["settings"]))
    notes.append(f"eval settings: {'; '.join(settings)}")
    df = df.drop_duplicates(["study_encoder", "task"], keep="last")
    cells = []
    for _, r in df.iterrows():
        axes = {**encoders[r["study_encoder"]]["axes"], "task": r["task"], "encoder": r["study_encoder"]}
        cells.append({"row": _key(axes, rows_by), "column": _key(axes, cols_by), "score": r["score"],
                      "tap": r["tap"] if not _missing(r["tap"]) else DEFAULT_TAP})
    cells_df = pd.DataFrame(cells)
    row_order = list(dict.fromkeys(_key({**e["axes"], "encoder": e["name"]}, rows_by) for e in doc["encoders"]
                                   if "task" not in rows_by))
    col_order = (list(doc["tasks"]) if cols_by == ["task"] else
                 list(dict.fromkeys(_key({**e["axes"], "encoder": e["name"]}, cols_by) for e in doc["encoders"])))
    wide = cells_df.pivot_table(index="row", columns="column", values="score", aggfunc="mean")
    wide = wide.reindex(index=[r for r in row_order if r in wide.index] or list(wide.index),
                        columns=[c for c in col_order if c in wide.columns] or list(wide.columns))
    label = " / ".join(rows_by)
    table = wide.reset_index().rename(columns={"row": label})
    table.columns.name = None
    tables = {"study": table}
    if layout["cell"] == "best_tap":
        taps = cells_df.pivot_table(index="row", columns="column", values="tap", aggfunc="first")
        tables["best_tap"] = taps.reindex(index=wide.index, columns=wide.columns).reset_index().rename(
            columns={"row": label})
    if layout.get("cost") and cols_by != ["task"]:
        cost, hows = _cost_rows(doc, list(wide.columns), _pretrain_records(opts.results_dir, doc), cols_by)
        if not cost.isna().all().all():
            cost = cost.reset_index().rename(columns={"index": label})
            tables["study"] = pd.concat([table, cost], ignore_index=True)
            notes += ["cost rows: mean over each column's pretraining runs", *hows]
    missing = int(wide.isna().sum().sum())
    if missing:
        notes.append(f"{missing} cell(s) without a score yet")
    return Outcome(tables, notes=notes, summary={"study": doc["study"], "scale": doc["scale"],
                                                 "cells": int(wide.notna().sum().sum()), "missing": missing})


def study_markdown(outcome: Outcome) -> str:
    from .writers import markdown_table

    parts = [markdown_table(outcome.tables["study"])]
    if "best_tap" in outcome.tables:
        parts += ["\nBest tap per cell:\n", markdown_table(outcome.tables["best_tap"])]
    return "\n".join(parts) + "".join(f"\n- {n}" for n in outcome.notes) + "\n"


def summary_table(doc: dict[str, Any]):
    """What `harness report` prints: a study's table in its paper's layout when the folder holds a study,
    otherwise the encoders x tasks ranks."""
    from rich.table import Table

    from .ranks import summary_table as ranks_table

    entry = doc["analyses"].get("study_table") or {}
    if entry.get("status") != "ok":
        return ranks_table(doc)
    rows = entry["tables"]["study"]
    table = Table(title=entry["notes"][0] if entry.get("notes") else "study",
                  caption="; ".join(entry.get("notes", [])[1:]) or None)
    columns = list(rows[0]) if rows else []
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right", overflow="fold")
    taps = {r[columns[0]]: r for r in entry["tables"].get("best_tap", [])}
    for r in rows:
        cells = [str(r[columns[0]])]
        for col in columns[1:]:
            v = r[col]
            tap = (taps.get(r[columns[0]]) or {}).get(col)
            cells.append("-" if v is None else f"{v:.4g}" + (f" [{tap}]" if tap else ""))
        table.add_row(*cells)
    return table
