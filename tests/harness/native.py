"""A pixelwise test task whose samples come in two sizes, and a head whose prediction is fixed,
so that the metric at native size can be computed by hand.

Truth: class 1 in the first ``STRIPE`` columns of every sample, class 0 elsewhere.
Prediction: class 1 in the first quarter (``W // 4`` columns), class 0 elsewhere.
At native size a 40 x 64 sample has 8 true-positive columns and 8 false-positive ones, a
56 x 36 sample 8 and 1; resized to any common size the counts (and the mIoU) change.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from heads.pyramid import Level
from heads.registry import HEADS, HeadEntry
from tasks.datasets.base import TaskDataset
from tasks.registry import TASKS
from tasks.spec import DataRequest, SplitSpec, TaskSpec, TransformSpec

STRIPE = 8
SIZES = {"train": [(40, 64)] * 3 + [(56, 36)] * 3, "val": [(40, 64), (56, 36)] * 2,
         "test": [(40, 64), (56, 36), (40, 64), (56, 36), (40, 64)]}
NAME = "native_two_sizes"
HEAD = "fixed_quarter"


class TwoSizes(TaskDataset):
    def __init__(self, split: str, transform: TransformSpec | None = None, aug: tuple[int, int] | None = None):
        self.sizes = SIZES[split]
        self.split, self.transform, self.aug = split, transform, aug  # aug: (seed, copy) on train

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        h, w = self.sizes[i]
        g = torch.Generator().manual_seed(1000 * len(self.split) + i)
        target = torch.zeros(h, w, dtype=torch.int64)
        target[:, :STRIPE] = 1
        sample = {"image": torch.rand(3, h, w, generator=g), "target": target}
        if self.transform is not None:
            from tasks.transforms import apply_transform, transform_seed

            seed = transform_seed(*self.aug, i) if self.aug is not None else None
            sample = apply_transform(sample, self.transform, "class_map", seed)
        return sample

    def native_target(self, i: int):
        return self[i]["target"].numpy(), None


class FixedQuarter(nn.Module):
    """Predicts class 1 in the first quarter of the columns at whatever size it is asked for; its one
    weight is multiplied by zero, so training cannot change the prediction."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, feats: dict[str, torch.Tensor], size: tuple[int, int] | None = None) -> torch.Tensor:
        x = feats["block1"]
        h, w = size if size is not None else x.shape[-2:]
        logits = torch.zeros(x.shape[0], 2, h, w, device=x.device)
        logits[:, 0] = 1.0
        logits[:, 1, :, : w // 4] = 2.0
        return logits + self.w * 0.0 * x.float().mean()


def hand_miou(split: str = "test", sizes: list[tuple[int, int]] | None = None) -> float:
    """mIoU over a split from the pixel counts at each sample's own size (or at ``sizes``)."""
    tp1 = fp1 = tn = fn1 = 0
    for h, w in sizes or SIZES[split]:
        q = w // 4
        tp1 += h * min(q, STRIPE)
        fp1 += h * max(q - STRIPE, 0)
        fn1 += h * max(STRIPE - q, 0)
        tn += h * (w - max(q, STRIPE))
    iou1 = tp1 / (tp1 + fp1 + fn1)
    iou0 = tn / (tn + fp1 + fn1)
    return (iou0 + iou1) / 2


def native_task(train_transform: TransformSpec = TransformSpec()) -> TaskSpec:
    def build(task: TaskSpec, req: DataRequest) -> TwoSizes:
        spec = task.train_transform if req.train else task.eval_transform
        return TwoSizes(req.split, spec, (req.seed, req.aug_copy) if req.train and spec.random else None)

    return TaskSpec(name=NAME, paper_name="two sizes", output="pixel", nature="semantic", head=HEAD,
                    loss="pixel_ce", metric="miou", dataset=build, num_outputs=2, class_names=("other", "stripe"),
                    epochs=1, batch_size=4, suite="test", splits=SplitSpec("train", "val", "test"), ignore_index=255,
                    train_transform=train_transform)


@contextlib.contextmanager
def registered(task: TaskSpec) -> Iterator[TaskSpec]:
    """``task`` and the fixed head in the registries for the duration (so `harness eval` finds them)."""
    HEADS.discover()
    TASKS.discover()
    HEADS._items[HEAD] = HeadEntry(HEAD, lambda t, taps: [Level(4, 1, "block1")], lambda taps, t: FixedQuarter(),
                                   "test head")
    TASKS._items[task.name] = task
    try:
        yield task
    finally:
        TASKS._items.pop(task.name, None)
        HEADS._items.pop(HEAD, None)
