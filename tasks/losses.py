"""Training losses by name: ``loss(pred, target, valid, task) -> scalar``."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .spec import TaskSpec

Loss = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", TaskSpec], torch.Tensor]


def cross_entropy(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None, task: TaskSpec) -> torch.Tensor:
    return F.cross_entropy(pred, target)


LOSSES: dict[str, Loss] = {"ce": cross_entropy}


def get_loss(task: TaskSpec) -> Loss:
    if task.loss not in LOSSES:
        raise KeyError(f"task {task.name}: no loss {task.loss!r} (known: {sorted(LOSSES)})")
    return LOSSES[task.loss]
