"""Training losses by name: ``loss(pred, target, valid, task) -> scalar``.

Pixelwise losses average over valid pixels only (the reference averaged over invalid depth
pixels too); a batch without a valid pixel gives a zero loss that still has a gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from harness.common.registry import Registry

from .spec import TaskSpec

Loss = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", TaskSpec], torch.Tensor]


def cross_entropy(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None, task: TaskSpec) -> torch.Tensor:
    return F.cross_entropy(pred, target)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    n = mask.sum()
    if int(n) == 0:
        return like.sum() * 0.0
    return (values * mask).sum() / n


def pixel_cross_entropy(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None,
                        task: TaskSpec) -> torch.Tensor:
    """Per-pixel CE on (B, C, H, W) logits, skipping ``ignore_index`` and pixels with ``valid`` False."""
    ignore = task.ignore_index if task.ignore_index is not None else -100
    mask = target != ignore
    if valid is not None:
        mask &= valid.bool()
    per_pixel = F.cross_entropy(pred, torch.where(mask, target, torch.zeros_like(target)), reduction="none")
    return _masked_mean(per_pixel, mask.to(per_pixel.dtype), pred)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None, task: TaskSpec) -> torch.Tensor:
    """Mean |pred - target| over valid pixels and all channels of (B, C, H, W) maps."""
    diff = (pred - target).abs()
    if valid is None:
        return diff.mean()
    mask = valid.bool().reshape(target.shape[0], 1, *target.shape[-2:]).expand_as(diff)
    return _masked_mean(diff, mask.to(diff.dtype), pred)


LOSSES: Registry[Loss] = Registry("loss")
for _name, _loss in {"ce": cross_entropy, "pixel_ce": pixel_cross_entropy, "l1": masked_l1}.items():
    LOSSES.register(_name, _loss)


def get_loss(task: TaskSpec) -> Loss:
    return LOSSES[task.loss]
