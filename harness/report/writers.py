"""Writing a report: JSON-safe tables, markdown, CSV and PNG files, the summary table and lines."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..common.atomic import atomic_path
from .base import AnalysisResult, ReportOptions, _missing
from .load import PROTOCOL


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
    """The figure at 120 dpi, cropped to what it draws (never clipped: the canvas grows to its labels)."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight", pad_inches=0.08)


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
    if doc.get("other_settings"):
        lines += ["", "## Results of other run settings (not in the paper's views)", "",
                  f"Records whose settings differ from the default protocol ({PROTOCOL}) are never used in the "
                  f"paper's views, whatever their date; label-fraction, tap and probe curves show them as curves of "
                  f"their own.", "",
                  markdown_table(pd.DataFrame(doc["other_settings"]))]
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


def status_lines(doc: dict[str, Any]) -> list[str]:
    """One line per analysis (written, or skipped with its reason), then the record counts."""
    lines = []
    for name, a in doc["analyses"].items():
        lines.append(f"{name}: " + ("ok" if a["status"] == "ok" else f"skipped: {a['reason']}"))
    lines += doc["notes"]
    lines.append(f"wrote {doc['out']}/report.json, report.md, {len(doc['files']) - 2} table and figure file(s)")
    return lines
