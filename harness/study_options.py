"""The options of ``harness study plan`` and ``study run``, declared once: each field is also its command-line
option (harness.common.options), so that the command line and Python callers build the same checked object.
Importing this module imports no torch (nor ``harness.study``'s declarations): the command line is built from it
at start-up.

``StudyOptions`` holds what both commands take (the NAME argument is its ``study``, not an option);
``StudyPlanOptions`` adds plan's ``--gpu``, ``StudyRunOptions`` the sweep's executor settings and ``--dry-run``."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

from .common.errors import UsageError
from .common.options import check, option
from .sweep import ExecutorSettings

SCALES: dict[str, str] = {
    "paper": "the paper's settings: its data (an image folder you give with --data), epochs and tasks",
    "small": "what a 2-core CPU runs in minutes: --preset small recipes on the synthetic corpus, 32 px, a few "
             "images, 1 epoch, heads trained briefly on the synthetic tasks",
}


def check_scale(scale: str) -> None:
    if scale not in SCALES:
        raise UsageError(f"--scale {scale!r}: use {' or '.join(SCALES)}")


def parse_only(items: list[str] | None) -> dict[str, set[str]]:
    """``--only method=rotnet,arch=resnet18`` (repeatable; ``|`` between values of one axis)."""
    out: dict[str, set[str]] = {}
    for item in items or []:
        for part in filter(None, (p.strip() for p in item.split(","))):
            key, sep, value = part.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise UsageError(f"--only {item!r}: use AXIS=VALUE[,AXIS=VALUE], e.g. method=rotnet,arch=resnet18")
            out.setdefault(key.strip(), set()).update(v.strip() for v in value.split("|"))
    return out


@dataclass(kw_only=True)
class StudyOptions:
    """What ``study plan`` and ``study run`` both take."""

    study: str  # not an option: the NAME argument
    scale: str = option("--scale", default="paper", help="paper: the paper's settings; small: minutes on a CPU")
    # typer reads Optional[...] on every supported Python
    only: dict[str, set[str]] = option("--only", default_factory=dict, typed=Optional[list[str]],  # noqa: UP045
                                       given=None, parse=parse_only, help="cut the grid: AXIS=VALUE[,AXIS=VALUE] "
                                       "(repeatable; '|' between values), e.g. method=rotnet,arch=resnet18")
    epochs: int | None = option("--epochs", default=None, min=1, help="pretraining epochs (default: the scale's)")
    data: str | None = option("--data", default=None, help="pretraining image folder (paper scale)")
    out: Path | None = option("--out", default=None, help="the study's folder (default: studies/NAME, "
                              "studies/NAME_SCALE below the paper scale)")
    device: str | None = option("--device", default=None, help="cpu, cuda, cuda:N (default: best available)")
    gpu: str | None = None  # the GPU named in the estimate (default: the one measured): plan's --gpu

    def __post_init__(self) -> None:
        """Bad values are usage errors now, before the study's grid is built."""
        check(self)
        check_scale(self.scale)

    @property
    def folder(self) -> Path:
        if self.out is not None:
            return Path(self.out)
        return Path("studies") / (self.study if self.scale == "paper" else f"{self.study}_{self.scale}")

    def sweep_settings(self) -> dict[str, Any]:
        """The sweep's executor settings (SweepOptions' fields of the same names): its defaults, to plan."""
        return {}


@dataclass(kw_only=True)
class StudyPlanOptions(StudyOptions):
    """``study plan``'s options."""

    gpu: str | None = option("--gpu", default=None, help="the GPU to estimate for, by name (H200, ...; default: the "
                             "one measured)")


@dataclass(kw_only=True)
class StudyRunOptions(StudyOptions, ExecutorSettings):
    """``study run``'s options: the study's, the sweep's executor settings (passed to both rounds) and --dry-run."""

    dry_run: bool = option("--dry-run", default=False, help="the plan; run nothing")
    poll_s: float = 1.0  # not an option: how often the local executor looks at its jobs

    def sweep_settings(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in SWEEP_SETTINGS}


SWEEP_SETTINGS = (*(f.name for f in fields(ExecutorSettings)), "poll_s")
