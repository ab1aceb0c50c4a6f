"""Self-describing result records (one JSON per encoder x task x seed), written atomically."""

from __future__ import annotations

import datetime as _dt
import json
import platform
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .common import interrupt
from .common.atomic import write_json

RECORD_VERSION = 2  # 2: the linear head standardises its input (parameter-free BatchNorm)


def versions() -> dict[str, str]:
    import numpy
    import torch
    import torchvision

    from . import __version__

    return {"harness": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": numpy.__version__, "python": platform.python_version()}


def slug(text: str) -> str:
    """A file-name-safe form of an encoder name or path."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "encoder"


@dataclass
class EvalRecord:
    encoder: str
    task: str
    metric: str
    test: float | None
    val: float | None
    config: dict[str, Any]
    epoch: int | None
    seed: int
    head_params: int
    resolution: int | None
    timings: dict[str, float]
    cache: dict[str, int]
    versions: dict[str, str] = field(default_factory=versions)
    status: str = "ok"
    error: str | None = None
    encoder_fingerprint: str = ""
    encoder_info: dict[str, Any] = field(default_factory=dict)
    category: str = ""
    head: str = ""
    taps: list[dict] = field(default_factory=list)  # head inputs: {input, stride, channels, tap, how}
    encoder_cost: dict[str, Any] | None = None  # the encoder's params and FLOPs (multiply-adds) per test image
    output_resolution: list[int] | None = None
    epochs: int | None = None
    secondary: dict[str, Any] = field(default_factory=dict)
    n: dict[str, int] = field(default_factory=dict)
    val_split: str = ""
    transform: dict[str, str] = field(default_factory=dict)
    grid: list[dict[str, Any]] = field(default_factory=list)
    chance: float | None = None
    device: str = ""
    notes: list[str] = field(default_factory=list)
    run_key: dict[str, Any] = field(default_factory=dict)
    train_size: int | None = None  # the paper's train size for the task (its own n is in ``n``)
    trained_on: str = ""  # the task whose head was trained and selected (differs for test-only tasks)
    probe: str = "head"  # head: the task's head over the grid; knn; logreg (harness/probes.py)
    tap: str | None = None  # the tap probed ("embedding" for the single-layer and fusion heads); None: dense heads
    tap_index: int | None = None  # its depth among the encoder's declared blocks
    pool: dict[str, Any] | None = None  # a spatial tap's pooling: mode, dims, grid, features
    subset: dict[str, Any] | None = None  # a label fraction: kind, value, seed, manifests (size, hash)
    head_precision: str = "fp32"  # what the head trained and was tested in (autocast; weights fp32)
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    record_version: int = RECORD_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write_to(self, target: Path) -> Path:
        interrupt.check()  # an interrupt swallowed mid-task (harness/common/interrupt.py) records nothing
        write_json(Path(target), self.to_dict())
        return Path(target)


def read_record(path: Path) -> dict[str, Any]:
    with open(path) as fh:
        return json.load(fh)
