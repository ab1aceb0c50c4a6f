"""What the pixelwise loaders share: native decoding and the valid masks of their targets.

A pixelwise split decodes a sample at its native resolution (``decode_image`` and
``decode_target``: the target and its valid mask exactly as the files hold them, which is also
what ``harness data check`` summarises through ``native_target``), then sizes and augments it
through ``TransformedSplit``, the path every loader shares (``tasks.transforms.apply_transform``
with the split's ``TransformSpec`` and per-sample seed; ``--resolution R`` resizes to R x R).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.common.errors import HarnessError

from ..transforms import TargetKind
from .base import TaskDataset, TransformedSplit, load_image

IGNORE = 255  # the ignore index of every pixelwise class map


class PixelSplit(TransformedSplit):
    """Base of the file-backed pixelwise splits. Each item is a tuple of paths, the image first and the
    files that must share its size after it (an image and its label map; a pair's frames and its flow),
    which is what ``where``, ``decode_image`` and ``sized_files`` read unless a subclass says otherwise;
    subclasses implement ``decode_target(i)``: (target, valid) at native resolution."""

    decodes_files = True
    kind: TargetKind = "class_map"

    def where(self, i: int) -> str:
        """The file a problem with sample ``i`` names."""
        return str(self.items[i][0])

    def sized_files(self, i: int) -> tuple[Path, ...]:
        return self.items[i]

    def decode_image(self, i: int) -> torch.Tensor:
        """(3, H, W) or (S, 3, H, W) float in [0, 1] at native size."""
        return load_image(self.items[i][0], None)

    def decode_target(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, i: int) -> dict[str, torch.Tensor]:
        """Sample ``i`` at native resolution, before any transform; image and target must agree in size."""
        image = self.decode_image(i)
        target, valid = self.decode_target(i)
        if tuple(image.shape[-2:]) != tuple(target.shape[-2:]):
            raise HarnessError(decoded_mismatch(self, i, tuple(image.shape[-2:]), tuple(target.shape[-2:])))
        return {"image": image, "target": target, "valid": valid}

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
