"""Analyses over many result records (`harness report`): the paper's views of an encoders x tasks table.

Records are read into one long table (one row per encoder x task, with the encoder's metadata
as its record carries it). Each analysis is a pure function of that table that
returns named tables, and an optional function draws its figure from those tables, so the
numbers can be tested without matplotlib and the figures never compute anything. An analysis
that lacks the data it needs raises ``Skip`` with a one-line reason; it is never faked.

Modules: ``load`` (records -> table), one per analysis family (``ranks``, ``baseline``,
``correlations``, ``groups``, ``arch_rank``), ``plots`` (figures from tables), ``writers`` (files, markdown,
the summary); this module holds the ANALYSES table and runs it.
"""

from __future__ import annotations

import datetime as _dt
import warnings
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from ..common.atomic import write_json
from ..common.errors import UsageError
from .arch_rank import arch_rank, arch_rank_markdown, plot_arch_rank
from .base import GROUP_FIELDS, Analysis, AnalysisResult, ReportOptions, Skip
from .baseline import baseline_gain, normalised_distribution
from .correlations import imagenet_correlation, task_correlation
from .granularity import granularity, plot_granularity
from .groups import anova, group_difference
from .load import _inside, encoder_metadata, encoder_table, load_results, other_table, task_categories
from .plots import (
    plot_anova,
    plot_baseline_gain,
    plot_fraction_curve,
    plot_group_difference,
    plot_imagenet_correlation,
    plot_normalised_distribution,
    plot_probe_comparison,
    plot_ranks,
    plot_tap_curve,
    plot_task_correlation,
)
from .ranks import _rank_markdown, rank_table
from .study_table import study_markdown, study_table, summary_table
from .variants import fraction_curve, probe_comparison, tap_curve
from .writers import _cell, _write_text, report_markdown, status_lines, table_records, write_outputs

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
    Analysis("ranks", "Encoders x tasks with rank per task and mean rank", "any results", rank_table, plot_ranks,
             markdown=_rank_markdown),
    Analysis("arch_rank", "Architectures ranked per task and pretraining method, Kendall's tau-b between rankings",
             ">= 2 architectures (encoder_info.arch) and >= 2 rankings: tasks or pretraining methods, each scored "
             "for >= 2 architectures", arch_rank, plot_arch_rank, markdown=arch_rank_markdown),
    Analysis("granularity", "Fine vs coarse labels per encoder, relative to each task's chance (label granularity)",
             "an encoder scored on a fine task and on its coarse twin (e.g. synth_shape_cls and "
             "synth_shape_coarse_cls, cifar100_cls and cifar100_coarse_cls)", granularity, plot_granularity),
    Analysis("study_table", "A study's scores in its paper's table layout (harness study run)",
             "a study folder: its study.json and the records of its encoders", study_table, markdown=study_markdown,
             reads="variants"),
    Analysis("tap_curve", "Score per tap, shallow to deep (linear probes on pooled taps)",
             "an encoder x task probed at >= 2 taps (harness eval --tap all)", tap_curve, plot_tap_curve,
             reads="variants"),
    Analysis("fraction_curve", "Score against the fraction of train labels used",
             "label-fraction results (harness eval --train-fraction, --shots or --train-size)", fraction_curve,
             plot_fraction_curve, reads="variants"),
    Analysis("probe_comparison", "The task's head, kNN and logistic regression side by side",
             "an encoder x task scored by >= 2 probes (harness eval --probe knn / logreg)", probe_comparison,
             plot_probe_comparison, reads="variants"),
)

MAIN_ONLY = "no results of the default protocol (the task's head and budget, no --limit); only other probes, taps, " \
            "label fractions or run settings (listed in report.md)"


def run_analyses(scores: pd.DataFrame, opts: ReportOptions, analyses: Iterable[Analysis] = ANALYSES,
                 variants: pd.DataFrame | None = None) -> list[AnalysisResult]:
    """Run each analysis on what it reads: ``scores`` (the paper's protocol, one row per encoder x
    task) or ``variants`` (every probe, tap and label fraction; default: ``scores``)."""
    results = []
    for analysis in analyses:
        data = variants if analysis.reads == "variants" and variants is not None else scores
        try:
            if data.empty:
                raise Skip(MAIN_ONLY if analysis.reads == "main" else "no results")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                results.append(AnalysisResult(analysis, outcome=analysis.compute(data, opts)))
        except Skip as exc:
            results.append(AnalysisResult(analysis, reason=str(exc)))
    return results


def build_report(results_dir: Path, out: Path | None = None, opts: ReportOptions | None = None) -> dict[str, Any]:
    """Load the records, run every analysis, write report.json, report.md, tables and figures to ``out``.

    Returns the report document (what report.json holds)."""
    from .. import __version__

    opts = opts or ReportOptions()
    if opts.group_by not in GROUP_FIELDS:
        raise UsageError(f"--group-by {opts.group_by!r}: use one of {', '.join(GROUP_FIELDS)}")
    if (opts.a is None) != (opts.b is None):
        raise UsageError("give both --a and --b (or neither)")
    results_dir = Path(results_dir)
    opts = replace(opts, results_dir=results_dir)
    out = Path(out) if out is not None else results_dir / "report"
    # the report folder's own JSON is not a record, unless the records live in it (--out RESULTS_DIR)
    loaded = load_results(results_dir, exclude=None if _inside(results_dir, out) else out)
    results = run_analyses(loaded.scores, opts, variants=loaded.variants)
    write_outputs(out, results, opts)
    scores = loaded.scores if not loaded.scores.empty else loaded.variants
    used = len(loaded.scores)
    cats = task_categories(scores)
    metrics = scores.drop_duplicates("task").set_index("task")["metric"]
    encs = encoder_table(scores)
    doc = {
        "results_dir": str(results_dir), "out": str(out), "harness": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "options": {"baseline": opts.baseline, "group_by": opts.group_by, "a": opts.a, "b": opts.b,
                    "imagenet_task": opts.imagenet_task},
        "records": {**loaded.counts, "used": used},
        "notes": loaded.notes,
        "other_settings": table_records(other_table(loaded.other)),
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


__all__ = ["ANALYSES", "Analysis", "ReportOptions", "Skip", "build_report", "encoder_metadata", "group_difference",
           "load_results", "run_analyses", "status_lines", "summary_table"]
