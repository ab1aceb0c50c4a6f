"""The declarative task record: everything the runner needs to evaluate an encoder on a task.

One record fits every row of the paper's task table (image-level or pixelwise, semantic or
structural, 1/2/6 frames, any head, loss and metric, crops in training and full resolution
at evaluation) as well as the synthetic suite; the dataset is a builder function so that
each dataset family lives in its own module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from torch.utils.data import Dataset

Output = Literal["image", "pixel"]
Nature = Literal["semantic", "structural"]


@dataclass(frozen=True)
class OptimConfig:
    """One point of a task's hyperparameter grid."""

    optimizer: Literal["adam", "sgd", "adamw"] = "adam"
    lr: float = 3e-4
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    schedule: Literal["none", "cosine", "step"] = "none"

    @property
    def label(self) -> str:
        return f"{self.optimizer}_lr{self.lr:g}_wd{self.weight_decay:g}_{self.schedule}"


# The paper's grid search used 4 optimizer/learning-rate sets (Appendix C).
DEFAULT_GRID: tuple[OptimConfig, ...] = (
    OptimConfig("adam", 3e-4),
    OptimConfig("adam", 1e-3),
    OptimConfig("adam", 1e-4),
    OptimConfig("sgd", 1e-2, schedule="cosine"),
)


@dataclass(frozen=True)
class TransformSpec:
    """How images are sized for training and for evaluation.

    ``resize``: (H, W) every image is resized to (aspect not kept, as in the reference), or
    None to keep the native size. ``crop``: random crop (H, W) at training time (pixelwise
    tasks train on crops and evaluate on full frames); ``scale``: random rescale range
    applied before the crop; ``hflip``: random horizontal flip.
    """

    resize: tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    scale: tuple[float, float] | None = None
    hflip: bool = False

    @property
    def random(self) -> bool:
        return self.crop is not None or self.scale is not None or self.hflip

    @property
    def label(self) -> str:
        return (f"resize{self.resize}_crop{self.crop}_scale{self.scale}_flip{int(self.hflip)}"
                .replace(" ", ""))


@dataclass(frozen=True)
class SplitSpec:
    """Which splits are official. ``val=None`` means: carve ``val_fraction`` of train
    deterministically (seeded, stratified for classification)."""

    train: str = "train"
    val: str | None = "val"
    test: str = "test"
    val_fraction: float = 0.1


@dataclass(frozen=True)
class DataLayout:
    """Where a real task's dataset lives under the data root and what is read there, as
    released (docs/data.md); ``harness data layout`` prints it."""

    folder: str  # one folder per family under the data root
    tree: str  # the expected tree (indented lines), official names unchanged
    url: str  # official download page
    counts: dict[str, int]  # expected samples per split, by the split names the task reads
    notes: str = ""


@dataclass(frozen=True)
class DataRequest:
    """What a dataset builder is asked for. ``split`` is a split name of the release (or a
    paper-defined ``train`` / ``test``), as the task's SplitSpec names it."""

    split: str
    data_root: Path | None
    resolution: int | None  # None: the task's own default
    limit: int | None  # at most this many samples (applied to train)
    train: bool  # random augmentation on (train) or off (val/test)
    aug_copy: int = 0  # which augmented copy of train: seeds the random transforms
    seed: int = 0
    strict: bool = True  # a listing problem fails at once (eval); False collects them (data check)


DatasetBuilder = Callable[["TaskSpec", DataRequest], Dataset]


@dataclass(frozen=True)
class TaskSpec:
    """A registered end task.

    Samples yielded by the dataset are dicts: ``image`` float [0, 1], (3, H, W) or
    (S, 3, H, W) for ``frames`` = S > 1; ``target`` (class index, (H, W) class map, or
    (C, H, W) regression map); optional ``valid`` (H, W) bool mask for pixelwise targets.
    """

    name: str
    paper_name: str
    output: Output
    nature: Nature
    head: str
    loss: str
    metric: str
    dataset: DatasetBuilder
    num_outputs: int  # classes, or regression channels (1 depth, 2 flow)
    frames: int = 1
    # regression heads predict target / output_scale (their output is multiplied by it): large-valued targets
    # such as flow in pixels are learnt at unit scale, as FlowNet and PWC-Net divide flow by 20
    output_scale: float = 1.0
    ignore_index: int | None = None
    class_names: tuple[str, ...] = ()
    epochs: int = 100
    batch_size: int = 64
    optim: OptimConfig = OptimConfig()
    grid: tuple[OptimConfig, ...] = DEFAULT_GRID
    splits: SplitSpec = SplitSpec()
    train_transform: TransformSpec = TransformSpec()
    eval_transform: TransformSpec = TransformSpec()
    aug_copies: int = 1  # augmented copies of train encoded when train_transform is random
    default_resolution: int = 224
    chance: float | None = None  # the metric of a trivial predictor (majority / mean / zero)
    chance_kind: str = ""
    suite: str = "real"
    train_size: int | None = None  # the paper's figure, for the record
    description: str = ""
    layout: DataLayout | None = None  # real datasets: folder, tree, URL, expected counts
    extra_tests: tuple[str, ...] = ()  # tasks whose test split this task's head is also evaluated on
    head_from: str | None = None  # a test-only task: the task whose head (trained, selected) it evaluates
    # label granularity (Cole et al.): the task whose classes this task's classes group, on the same images; the
    # report pairs the two per encoder
    coarse_of: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def category(self) -> str:
        return f"{self.nature} {'image-level' if self.output == 'image' else 'pixelwise'}"

    def split_sizes(self) -> dict[str, int]:
        """Samples per split when read in full: the release's counts, or the synthetic suite's."""
        if self.layout is not None:
            return dict(self.layout.counts)
        sizes = self.extra.get("split_sizes", {})
        return dict(sizes() if callable(sizes) else sizes)

    @property
    def is_classification(self) -> bool:
        return self.loss in ("ce", "pixel_ce")

    def summary(self) -> dict:
        return {"name": self.name, "output": self.output, "nature": self.nature, "head": self.head,
                "metric": self.metric, "epochs": self.epochs, "frames": self.frames,
                "loss": self.loss, "num_outputs": self.num_outputs, "suite": self.suite,
                "category": self.category, "chance": self.chance, "chance_kind": self.chance_kind,
                "paper_name": self.paper_name, "coarse_of": self.coarse_of}
