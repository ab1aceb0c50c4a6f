"""Analysis: encoders x tasks with a rank per task and the mean rank."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from .base import Outcome, ReportOptions
from .load import score_matrix
from .writers import markdown_table


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


def summary_table(doc: dict[str, Any]):
    """The encoders x tasks table with mean rank, as a rich Table (from report.json's ranks table)."""
    from rich.table import Table

    if doc["analyses"]["ranks"]["status"] != "ok":  # only other probes, taps, label fractions or run settings
        table = Table("encoders x tasks")
        table.add_row(f"not made: {doc['analyses']['ranks'].get('reason', '')}")
        return table
    ranks = pd.DataFrame(doc["analyses"]["ranks"]["tables"]["ranks"])
    display = rank_display(Outcome({"ranks": ranks.astype({c: float for c in ranks.columns if c != "encoder"})}))
    table = Table(title=f"{len(display)} encoders x {len(doc['tasks'])} tasks",
                  caption="score (rank on the task, 1 = best), sorted by mean rank")
    for col in display.columns:
        if col == "encoder":
            table.add_column(col, overflow="fold")
        else:
            table.add_column(col, justify="right", overflow="fold")
    for row in display.itertuples(index=False):
        table.add_row(*map(str, row))
    return table
