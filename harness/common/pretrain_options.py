"""The options of ``harness pretrain``, declared once: each field is also its command-line option
(harness.common.options), so that the command line, ``harness study`` (which passes pretrain's options to its
jobs) and Python callers build the same checked object.

It lives in harness.common, not beside the training loop, because both ends need it without the other: the
command line is built from it at start-up, where nothing may import torch (every module of ``encoders`` does),
and encoders/pretrain/train.py, which may import only harness.common of the harness, runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import UsageError
from .options import check, option

SYNTH = "synth"  # the synthetic-shapes corpus (encoders/pretrain/data.py's SYNTH)
_REPEATED = Optional[list[str]]  # noqa: UP045 - typer reads Optional on every Python; None: not given


def _data(values: list[str] | None) -> list[str]:
    """--data as given, or the synthetic corpus when not given."""
    return list(values) if values else [SYNTH]


def _settings(items: list[str] | None) -> dict[str, str]:
    """--set KEY=VALUE, repeated -> {KEY: VALUE} (the method's settings, as text: base.apply_overrides types them)."""
    overrides = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--set {item!r}: use KEY=VALUE")
        overrides[key.strip()] = value.strip()
    return overrides


@dataclass
class PretrainOptions:
    method: str = option("--method", "-m", help="mocov2, mocov1, swav, simclr, byol")
    data: list[str] = option("--data", default_factory=lambda: [SYNTH], typed=_REPEATED, given=None, parse=_data,
                             help="'synth' (default) or an image folder (repeat to combine)")
    variant: str = option("--variant", default="full", help="full, half, quarter, lin, log")
    manifest: Path | None = option("--manifest", default=None, help="reuse a saved manifest.json")
    # presets.py: a bundle of the settings below; explicit ones win
    preset: str | None = option("--preset", default=None, help="'small': the CPU recipe per method (which learn on "
                                "synth: encoders/pretrain/README.md); options and --set override it")
    # corrupt.py
    corrupt: str | None = option("--corrupt", default=None, help="corrupt the pretraining images first: jpeg:Q, "
                                 "downsample:F, saltpepper:P, blur:S")
    arch: str = option("--arch", default="resnet18", help="any architecture `harness encoders` lists (resnet18, "
                       "resnetv2_50, revnet50, vgg19_bn, mobilenet_v2, shufflenet_v2_x1_0, squeezenet1_1, "
                       "efficientnet_lite0, vit_small_patch16, ...) or a widened BASE_xK (resnet50_x8)")
    epochs: int | None = option("--epochs", default=None, min=1, help="default: the method's")
    batch_size: int | None = option("--batch-size", default=None, min=2, help="global batch")  # None: the method's
    lr: float | None = option("--lr", default=None, help="default: published lr x batch/ref")
    limit: int | None = option("--limit", default=None, min=1, help="at most N training images")
    resolution: int | None = option("--resolution", default=None, min=16, help="crop size")  # None: 64 synth, 224
    seed: int = option("--seed", default=0)
    device: str | None = option("--device", default=None, help="cpu, cuda, cuda:N (default: best available)")
    out: Path = option("--out", default=Path("runs/pretrain"), help="runs folder: each run in OUT/NAME/ (manifest, "
                       "last.pt to resume, the encoder NAME.pt)")
    name: str | None = option("--name", default=None, help="run (and encoder) name")
    overrides: dict[str, str] = option("--set", default_factory=dict, typed=_REPEATED, given=None, parse=_settings,
                                       help="method setting KEY=VALUE, e.g. queue=4096, temperature=0.2, optim.lr=0.1")
    save_every: int = option("--save-every", default=0, min=0, help="also checkpoint every N steps")  # 0: epoch ends
    knn_every: int | None = option("--knn-every", default=None, min=0, help="epochs between kNN checks (default 1, "
                                   "or the preset's)")  # 0: never
    workers: int = option("--workers", default=0, min=0, help="DataLoader workers")
    amp: bool | None = option("--amp/--no-amp", default=None, help="default: on for CUDA")
    resume: bool = option("--resume/--no-resume", default=True, help="continue from last.pt")
    # not options of the command line: the kNN monitor's size, and the memory format
    knn_bank: int = 1000
    knn_queries: int = 250
    knn_k: int = 20
    channels_last: bool | None = None  # None: on for CUDA and for float32 on a CPU

    def __post_init__(self) -> None:
        """Out-of-range values are usage errors now, before any data is read."""
        check(self)
