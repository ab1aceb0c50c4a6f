"""Shared vocabulary of the report: options (declared in harness/report_options.py, which imports no pandas),
what an analysis returns, the Skip signal."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..report_options import GROUP_FIELDS as GROUP_FIELDS  # re-exported: the report's modules import them from here
from ..report_options import ReportOptions as ReportOptions

CATEGORY_ORDER: tuple[str, ...] = ("semantic image-level", "structural image-level", "semantic pixelwise",
                                   "structural pixelwise")


META_FIELDS: tuple[str, ...] = ("method", "data", "size", "epochs", "balanced", "corruption")


ANOVA_FACTORS: tuple[str, ...] = ("method", "balanced", "size", "epochs")


NOT_SELF_SUPERVISED = frozenset({"supervised", "none"})  # methods that are not self-supervised pretraining


MIN_ENCODERS_FOR_CORRELATION = 3


class Skip(Exception):
    """An analysis lacks the data it needs; the message is the one-line reason."""


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
    reads: str = "main"  # main: the paper's protocol, one score per encoder x task; variants: every probe variant


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
    scores: pd.DataFrame  # one row per (encoder, task): score and the encoder's metadata (the paper's protocol)
    counts: dict[str, int]
    notes: list[str]
    variants: pd.DataFrame | None = None  # every probe variant: one row per (encoder, task, probe, tap, fraction,
    # run settings)
    other: pd.DataFrame | None = None  # the results of other run settings than the default protocol (listed only)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _label(value: Any) -> str | None:
    """A metadata value as a group label: 200.0 -> '200', True -> 'True', None -> None."""
    if _missing(value):
        return None
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _pairs(pairs: Iterable[tuple[str, str]], limit: int = 5) -> str:
    pairs = list(pairs)
    text = ", ".join(f"{e}/{t}" for e, t in pairs[:limit])
    return text + (f" and {len(pairs) - limit} more" if len(pairs) > limit else "")
