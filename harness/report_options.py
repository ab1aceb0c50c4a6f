"""The options of ``harness report``, declared once: each field is also its command-line option
(harness.common.options), so that the command line and Python callers build the same checked object. Importing
this module imports no pandas (``harness.report`` does): the command line is built from it at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from .common.errors import UsageError
from .common.options import check, option

DEFAULT_BASELINE = "supervised_in"
IMAGENET_TASK = "imagenet_cls"

GroupBy = Literal["method", "data", "epochs", "balanced", "corruption"]  # encoder metadata --group-by compares
GROUP_FIELDS: tuple[str, ...] = get_args(GroupBy)


@dataclass(frozen=True)
class ReportOptions:
    baseline: str = option("--baseline", default=DEFAULT_BASELINE, help="the supervised baseline encoder")
    group_by: GroupBy = option("--group-by", default="method", help=f"{', '.join(GROUP_FIELDS[:-1])} or "
                               f"{GROUP_FIELDS[-1]} (A minus B)")
    a: str | None = option("--a", default=None, help="group A (default: the most frequent value)")
    b: str | None = option("--b", default=None, help="group B (default: the second most frequent)")
    imagenet_task: str = option("--imagenet-task", default=IMAGENET_TASK, help="the task whose test score is "
                                "ImageNet top-1")
    # not an option: the records' folder (the command's RESULTS_DIR, set by build_report): for a study's study.json
    results_dir: Path | None = None

    def __post_init__(self) -> None:
        """Bad values are usage errors now, before any record is read."""
        if self.group_by not in GROUP_FIELDS:  # this line, not check's: what the report has always said
            raise UsageError(f"--group-by {self.group_by!r}: use one of {', '.join(GROUP_FIELDS)}")
        check(self)
        if (self.a is None) != (self.b is None):
            raise UsageError("give both --a and --b (or neither)")
