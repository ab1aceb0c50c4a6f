"""The options of ``harness eval``, declared once: each field is also its command-line option
(harness.common.options), so that eval, sweep (which passes eval's options to every job) and Python
callers build the same checked object. Importing this module imports no torch: the command line is
built from it at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .common.errors import UsageError
from .common.options import PRECISIONS, Precision, check, option

if TYPE_CHECKING:
    from tasks.spec import TaskSpec

    from .subsets import SubsetSpec

Grid = Literal["full", "single"]  # full: the task's grid; single: its default configuration only
Probe = Literal["head", "knn", "logreg"]  # harness/probes.py
Decode = Literal["auto", "cpu", "device"]  # where JPEGs are decoded (harness/decode.py)

# The probes' defaults (harness/probes.py uses the same numbers for its own functions' defaults).
POOL_DIMS = 9000  # Kolesnikov et al.: spatial taps pooled to about 9000 features
KNN_K = 20
KNN_T = 0.07


def _tasks(names: list[str]) -> list[TaskSpec]:
    from tasks.registry import resolve_tasks

    return resolve_tasks(names)


@dataclass(kw_only=True)
class EvalOptions:
    encoders: tuple[str, ...] = option("--encoder", "-e", default=(), given=..., help="catalog name or checkpoint "
                                       "path (repeatable: each task's images are decoded once for all)")
    tasks: list[TaskSpec] = option("--task", "-t", help="task or suite name (repeatable)", typed=list[str],
                                   parse=_tasks)
    out: Path = option("--out", default=Path("results"), help="where result records go")
    epochs: int | None = option("--epochs", default=None, min=1, help="override the task's epochs")
    limit: int | None = option("--limit", default=None, min=1, help="at most N training samples")
    resolution: int | None = option("--resolution", default=None, min=16, help="input size")
    seed: int = option("--seed", default=0, help="head-training seed")
    encoder_seed: int = option("--encoder-seed", default=0, help="seed of a random-init encoder")
    device: str | None = option("--device", default=None, help="cpu, cuda, cuda:N (default: best available)")
    data_root: Path | None = option("--data-root", default=None, help="where real datasets live")
    batch_size: int | None = option("--batch-size", default=None, min=1, help="samples per batch, for encoding and "
                                    "head training (default: the task's)")
    grid: Grid = option("--grid", default="full", help="full: the task's 4-config grid; single: its default")
    num_workers: int | None = option("--workers", default=None, min=0, help="DataLoader workers for encoding "
                                     "(default: the machine's cores for datasets read from files, 0 for in-memory "
                                     "ones)")
    seeds: int = option("--seeds", default=1, min=1, help="head-training seeds (mean and std recorded)")
    aug_copies: int | None = option("--aug-copies", default=None, min=1, help="augmented train copies to encode")
    precision: Precision = option("--precision", default="auto", help=f"{' | '.join(PRECISIONS)} for encoding")
    decode: Decode = option("--decode", default="auto", help="where JPEGs are decoded: auto (on a CUDA device when "
                            "it can), cpu (the loader's workers) or device")
    head_precision: Precision = option("--head-precision", default="auto", help=f"{' | '.join(PRECISIONS)} for "
                                       "head training (auto: bf16 on GPUs, and on CPUs with native bf16 for the "
                                       "dense heads; fp32 otherwise)")
    use_cache: bool = option("--no-cache", default=True, given=False, parse=lambda no_cache: not no_cache,
                             help="neither read nor write the feature cache")
    ram_budget_gb: float = option("--ram-budget-gb", default=8.0, help="features kept in memory")
    disk_budget_gb: float = option("--disk-budget-gb", default=20.0,
                                   help="max size of one cache entry; above: encode on the fly")
    force: bool = option("--force", default=False, help="redo tasks that already have a record")
    fmt: str | None = option("--format", default=None, help="checkpoint format (default: detected)")
    weights_dir: Path | None = option("--weights-dir", default=None, help="where encoder weights live (default: "
                                      "$HARNESS_WEIGHTS or <cache>/weights)")
    download: bool = option("--download", default=False, help="fetch missing catalog weights first")
    # probes (harness/probes.py) and label fractions (harness/subsets.py); defaults: the paper's protocol
    probe: Probe = option("--probe", default="head", help="head: the task's head over its grid; knn: weighted kNN "
                          "on the L2-normalised embedding; logreg: scikit-learn L-BFGS logistic regression, C swept "
                          "on val")
    tap: str | None = option("--tap", default=None, help="probe a declared tap (spatial ones average-pooled to about "
                             "--pool-dims features), or 'all': one record per tap")
    pool_dims: int = option("--pool-dims", default=POOL_DIMS, min=1, help="features a pooled spatial tap keeps "
                            "(Kolesnikov et al.: 9000)")
    train_fraction: float | None = option("--train-fraction", default=None, help="train on this fraction of each "
                                          "class (seeded, stratified)")
    shots: int | None = option("--shots", default=None, help="train on N samples per class")
    train_size: int | None = option("--train-size", default=None, help="N samples in all, as VTAB-1k: 0.8 N from "
                                    "train, 0.2 N from val")
    knn_k: tuple[int, ...] = option("--knn-k", default=(KNN_K,), help="kNN neighbours (repeatable: chosen on val; "
                                    "default 20)")
    knn_t: tuple[float, ...] = option("--knn-t", default=(KNN_T,), help="kNN temperature (repeatable; default 0.07)")
    logreg_c: tuple[float, ...] = option("--logreg-c", default=(), help="logistic-regression C values to choose "
                                         "from on val (default: CLIP's sweep over 1e-6..1e6)")
    # not options of eval: the encoder of this run (the first of ``encoders``, or the one a Python caller
    # names), the root's --debug, and notes a caller adds to every record
    encoder: str = ""
    debug: bool = False
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Bad values are usage errors now, before any encoding."""
        check(self)
        self.encoders = tuple(dict.fromkeys(self.encoders))  # an encoder named twice runs once
        self.encoder = self.encoder or (self.encoders[0] if self.encoders else "")
        if not self.encoder:
            raise UsageError("name an encoder (--encoder)")
        if min(self.knn_k, default=1) < 1 or min(self.knn_t, default=1) <= 0:
            raise UsageError("--knn-k must be >= 1 and --knn-t > 0")
        if self.logreg_c and min(self.logreg_c) <= 0:
            raise UsageError("--logreg-c must be > 0")
        self.subset  # noqa: B018 - one label-fraction option, in range

    @property
    def subset(self) -> SubsetSpec | None:
        from . import subsets

        return subsets.subset_spec(self.train_fraction, self.shots, self.train_size)
