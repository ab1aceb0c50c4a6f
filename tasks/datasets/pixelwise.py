"""What the pixelwise loaders share: native decoding, one transform call, per-sample seeds.

A pixelwise split decodes a sample at its native resolution (``decode_image`` and
``decode_target``: the target and its valid mask exactly as the files hold them, which is also
what ``harness data check`` summarises through ``native_target``), then sizes and augments it
through ``tasks.transforms.apply_transform`` alone, with the task's train or eval
``TransformSpec``. Random transforms are seeded per sample and augmented copy, from
(``req.seed``, ``req.aug_copy``, index), so copy k is the same in every run and differs from
copy k + 1; evaluation passes no seed (no random transform).

``--resolution R`` (``DataRequest.resolution``) is for quick runs: every image, train and
eval alike, is resized to R x R (crop and random scale dropped, flip kept), so a smoke test
of a 1024 x 2048 task costs what a 32 x 32 one does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from harness.common.errors import HarnessError

from ..spec import DataRequest, TaskSpec, TransformSpec
from ..transforms import TargetKind, apply_transform
from .base import Problems, TaskDataset

IGNORE = 255  # the ignore index of every pixelwise class map


def transform_spec(task: TaskSpec, req: DataRequest) -> TransformSpec:
    """The task's train or eval transform, or R x R for ``--resolution R``."""
    spec = task.train_transform if req.train else task.eval_transform
    if req.resolution:
        return TransformSpec(resize=(req.resolution, req.resolution), hflip=spec.hflip)
    return spec


def sample_seed(req: DataRequest, index: int) -> int | None:
    """The seed of sample ``index``'s random transform in augmented copy ``req.aug_copy``; None
    for evaluation splits (no random transform)."""
    if not req.train:
        return None
    return int(np.random.SeedSequence([req.seed, req.aug_copy, index]).generate_state(1, np.uint64)[0] >> 1)


class PixelSplit(TaskDataset):
    """Base of the file-backed pixelwise splits: subclasses list the samples and implement
    ``decode_image(i)`` ((3, H, W) or (S, 3, H, W) float in [0, 1]) and ``decode_target(i)``
    ((target, valid) at native resolution) plus ``where(i)`` (the file a problem names)."""

    decodes_files = True
    kind: TargetKind = "class_map"

    def __init__(self, task: TaskSpec, req: DataRequest, problems: Problems):
        self.task_name = task.name
        self.req = req
        self.spec = transform_spec(task, req)
        self.problems = problems.items

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def where(self, i: int) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode_image(self, i: int) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode_target(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def native(self, i: int) -> dict[str, torch.Tensor]:
        """Sample ``i`` at native resolution, before any transform."""
        image = self.decode_image(i)
        target, valid = self.decode_target(i)
        if tuple(image.shape[-2:]) != tuple(target.shape[-2:]):
            raise HarnessError(decoded_mismatch(self, i, tuple(image.shape[-2:]), tuple(target.shape[-2:])))
        return {"image": image, "target": target, "valid": valid}

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return apply_transform(self.native(i), self.spec, self.kind, sample_seed(self.req, i))

    def native_target(self, i: int) -> tuple[Any, np.ndarray | None]:
        target, valid = self.decode_target(i)
        return target.numpy(), valid.numpy()


def decoded_mismatch(ds: TaskDataset, i: int, image_hw: tuple[int, ...], target_hw: tuple[int, ...]) -> str:
    """The line for a sample whose decoded image and label differ in size: the one ``data check``
    prints (read from the headers) where the sample has files, else the decoded shapes."""
    problem = ds.size_problem(i) if ds.sized_files(i) else None
    where = ds.where(i) if hasattr(ds, "where") else f"sample {i}"
    return problem or (f"{where}: image is {image_hw[1]} x {image_hw[0]} (W x H) but its label is {target_hw[1]} x "
                       f"{target_hw[0]}; the files do not belong together (or one was resized)")


def class_map_sample(labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W) int64 class map (``IGNORE`` where there is no label) and its valid mask."""
    target = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
    return target, target != IGNORE


def depth_sample(depth_m: np.ndarray, valid: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, H, W) float32 depth in metres (0 where invalid) and the (H, W) valid mask."""
    valid = np.asarray(valid, dtype=bool) & np.isfinite(depth_m) & (depth_m > 0)
    depth = np.where(valid, depth_m, 0.0).astype(np.float32)
    return torch.from_numpy(depth)[None], torch.from_numpy(valid)
