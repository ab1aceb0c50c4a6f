"""Synthetic tasks: datasets over the stored renders and their registry records."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ..registry import register_task
from ..spec import DataRequest, OptimConfig, SplitSpec, TaskSpec
from .render import SHAPE_NAMES
from .store import DEFAULT_SEED, DEFAULT_SIZES, load_split
from .world import ACTION_CLASSES, EGOMOTION_ACTIONS, MAX_OBJECTS, MAX_STEPS

DEFAULT_RESOLUTION = 64


class SyntheticDataset(Dataset):
    """One field of one stored synthetic split as (image, target) samples, held in memory."""

    def __init__(self, kind: str, image_field: str, target_field: str, split: str, n: int, size: int,
                 target_offset: int = 0, valid_field: str | None = None, seed: int = DEFAULT_SEED):
        fields = (image_field, target_field) + ((valid_field,) if valid_field else ())
        arrays = load_split(kind, split, n, size, seed, fields=fields)
        self.images = arrays[image_field]  # (N, [S,] H, W, 3) uint8
        self.targets = arrays[target_field]
        if target_offset:
            self.targets = self.targets - target_offset
        self.valid = arrays[valid_field] if valid_field else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        img = torch.from_numpy(np.ascontiguousarray(self.images[i])).movedim(-1, -3).float() / 255.0
        tgt = torch.as_tensor(self.targets[i])
        if tgt.dtype in (torch.uint8, torch.int16, torch.int32):
            tgt = tgt.long()
        if tgt.dim() == 3:  # (H, W, C) regression maps -> (C, H, W)
            tgt = tgt.movedim(-1, 0)
        elif tgt.dim() == 2 and tgt.is_floating_point():  # (H, W) depth -> (1, H, W)
            tgt = tgt.unsqueeze(0)
        sample = {"image": img, "target": tgt}
        if self.valid is not None:
            sample["valid"] = torch.from_numpy(self.valid[i].astype(bool))
        return sample

    @property
    def labels(self) -> np.ndarray:
        """Class labels (for stratified splits); only meaningful for image-level tasks."""
        return np.asarray(self.targets)


def synthetic_builder(kind: str, image_field: str, target_field: str, target_offset: int = 0,
                      valid_field: str | None = None):
    def build(task: TaskSpec, req: DataRequest) -> SyntheticDataset:
        n = DEFAULT_SIZES[kind][req.split]
        if req.limit is not None and req.split == "train":
            n = min(n, req.limit)
        size = req.resolution or task.default_resolution
        return SyntheticDataset(kind, image_field, target_field, req.split, n, size, target_offset, valid_field)

    return build


def _synthetic(**kw) -> TaskSpec:
    defaults = dict(
        suite="synth", default_resolution=DEFAULT_RESOLUTION, splits=SplitSpec("train", "val", "test"),
        optim=OptimConfig("adam", 3e-4), batch_size=64,
    )
    return register_task(TaskSpec(**{**defaults, **kw}))


# Chance level: test accuracy of always predicting the train split's majority class (default
# 64 px splits); tests/tasks/test_synthetic_tasks.py re-measures them from the data.
SYNTH_SHAPE_CLS = _synthetic(
    name="synth_shape_cls", paper_name="ImageNet / Caltech analogue", output="image", nature="semantic",
    head="linear", loss="ce", metric="top1", num_outputs=len(SHAPE_NAMES), class_names=SHAPE_NAMES,
    dataset=synthetic_builder("single", "image", "shape_cls"), epochs=30, chance=0.258, chance_kind="majority class",
    description="shape class of the largest visible object",
)
SYNTH_COUNT = _synthetic(
    name="synth_count", paper_name="CLEVR Count analogue", output="image", nature="structural",
    head="linear", loss="ce", metric="top1", num_outputs=MAX_OBJECTS,
    class_names=tuple(str(i) for i in range(1, MAX_OBJECTS + 1)),
    dataset=synthetic_builder("single", "image", "count", target_offset=1), epochs=30, chance=0.210,
    chance_kind="majority class", description="number of visible objects (1..6; class = count - 1)",
)
SYNTH_NUM_STEPS = _synthetic(
    name="synth_num_steps", paper_name="THOR Num. Steps analogue", output="image", nature="structural",
    head="linear", loss="ce", metric="top1", num_outputs=MAX_STEPS + 1,
    class_names=tuple(str(i) for i in range(MAX_STEPS + 1)),
    dataset=synthetic_builder("single", "image", "num_steps"), epochs=30, chance=0.222,
    chance_kind="majority class", description="free 0.25 m steps ahead of the camera, 0..4",
)

__all__ = ["ACTION_CLASSES", "EGOMOTION_ACTIONS", "SyntheticDataset", "synthetic_builder"]
