"""Metrics as pure functions plus dataset-level accumulators.

Every score is higher-is-better. Accumulators sum over the whole split (never an average of
per-batch averages), so every test sample counts equally.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from .spec import TaskSpec


class Metric(Protocol):
    name: str

    def update(self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> None: ...

    def compute(self) -> dict[str, float]: ...


def top1_correct(logits: torch.Tensor, target: torch.Tensor) -> int:
    return int((logits.argmax(dim=1) == target).sum())


class Top1:
    name = "top1"

    def __init__(self, task: TaskSpec):
        self.correct = 0
        self.total = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        self.correct += top1_correct(pred, target)
        self.total += int(target.numel())

    def compute(self) -> dict[str, float]:
        return {"top1": self.correct / max(self.total, 1), "n": float(self.total)}


METRICS: dict[str, Callable[[TaskSpec], Metric]] = {"top1": Top1}


def make_metric(task: TaskSpec) -> Metric:
    if task.metric not in METRICS:
        raise KeyError(f"task {task.name}: no metric {task.metric!r} (known: {sorted(METRICS)})")
    return METRICS[task.metric](task)
