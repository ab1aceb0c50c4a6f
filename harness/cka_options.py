"""The options of ``harness cka``, declared once: each field is also its command-line option
(harness.common.options), so that the command line and Python callers build the same checked object. Importing
this module imports no torch: the command line is built from it at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from .common.errors import UsageError
from .common.options import check, option

Kernel = Literal["linear", "rbf"]
Estimator = Literal["biased", "unbiased"]  # biased: Kornblith et al.; unbiased: minibatch HSIC, Nguyen et al.
FeatureMode = Literal["flatten", "pool"]  # what a spatial tap becomes: flattened, or averaged over space
KERNELS: tuple[str, ...] = get_args(Kernel)
ESTIMATORS: tuple[str, ...] = get_args(Estimator)
FEATURE_MODES: tuple[str, ...] = get_args(FeatureMode)


def min_batch(estimator: str) -> int:
    """Smallest batch an estimator is defined on (unbiased HSIC divides by n(n-3))."""
    return 4 if estimator == "unbiased" else 2


@dataclass
class CKAOptions:
    encoders: list[str] = option("--encoder", "-e", help="catalog name or checkpoint path (repeatable)")
    data: str = option("--data", default="synthetic", help="synthetic, a task name (task:NAME), or an image folder "
                       "(folder:PATH, one sub-folder per class)")
    limit: int = option("--limit", default=1024, min=1, help="N images, class-balanced (N // classes each)")
    resolution: int | None = option("--resolution", default=None, min=16, help="input size (default: the data's "
                                    "own; 112 for folders)")
    out: Path = option("--out", default=Path("results/cka"), help="where cka.json and the heatmaps go")
    batch_size: int = option("--batch-size", default=64, help="minibatch size (>= 4 for unbiased)")
    estimator: Estimator = option("--estimator", default="unbiased", help="unbiased (minibatch, Nguyen et al.) or "
                                  "biased")
    kernel: Kernel = option("--kernel", default="linear", help="linear or rbf")
    rbf_threshold: float = option("--rbf-threshold", default=1.0, help="RBF bandwidth / median distance")
    feature_mode: FeatureMode = option("--features", default="flatten", help="flatten spatial maps, or pool them")
    taps: list[str] | None = option("--tap", default=None, parse=lambda taps: list(taps) if taps else None,
                                    help="tap to compare (repeatable; default all)")
    seed: int = option("--seed", default=0, help="seed of the balanced subset")
    encoder_seed: int = option("--encoder-seed", default=0, help="seed of a random-init encoder")
    device: str | None = option("--device", default=None, help="cpu, cuda, cuda:N (default: best available)")
    data_root: Path | None = option("--data-root", default=None, help="where real datasets live")
    split: str | None = option("--split", default=None, help="split of a task / synthetic data")
    num_workers: int = option("--workers", default=0, min=0, help="DataLoader workers")
    heatmaps: bool = True  # not an option: whether run_cka draws the heatmaps

    def __post_init__(self) -> None:
        """Bad values are usage errors now, before any encoder is built."""
        check(self)
        if not self.encoders:
            raise UsageError("give at least one --encoder")
        if self.batch_size < min_batch(self.estimator):
            raise UsageError(f"--batch-size {self.batch_size}: minibatch CKA with the {self.estimator} estimator "
                             f"needs batches of at least {min_batch(self.estimator)} images")
