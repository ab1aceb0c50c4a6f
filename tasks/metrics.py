"""Metrics as pure functions plus dataset-level accumulators.

Every score is higher-is-better. Accumulators keep running sums (a confusion matrix, summed
errors and pixel counts) over the whole split, never an average of per-batch averages, so
every test sample counts equally and memory does not grow with the split's size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch

from harness.common.registry import Registry

from .spec import TaskSpec


class Metric(Protocol):
    name: str

    def update(self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> None: ...

    def compute(self) -> dict[str, float]: ...


# ---------------------------------------------------------------- pure functions

def top1_correct(logits: torch.Tensor, target: torch.Tensor) -> int:
    return int((logits.argmax(dim=1) == target).sum())


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None = None,
                     valid: torch.Tensor | None = None) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts, rows = truth, columns = prediction.

    Pixels whose truth is ``ignore_index`` (or outside 0..n-1) or whose ``valid`` is False are dropped.
    """
    keep = (target >= 0) & (target < num_classes)
    if ignore_index is not None:
        keep &= target != ignore_index
    if valid is not None:
        keep &= valid.bool()
    t, p = target[keep].long(), pred[keep].long()
    return torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes).cpu()


def iou_per_class(cm: torch.Tensor) -> torch.Tensor:
    """IoU = TP / (TP + FP + FN) per class, float64; NaN for a class absent from truth and prediction."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))


def mean_iou(cm: torch.Tensor) -> float:
    """Mean over classes present in truth or prediction (absent-in-both is not a free 1.0); NaN if none."""
    iou = iou_per_class(cm)
    present = ~iou.isnan()
    return float(iou[present].mean()) if present.any() else math.nan


def binary_iou(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> float:
    """IoU of the positive class of two boolean masks; NaN when both are empty (undefined)."""
    pred, target = pred.bool(), target.bool()
    if valid is not None:
        pred, target = pred & valid.bool(), target & valid.bool()
    union = int((pred | target).sum())
    return int((pred & target).sum()) / union if union else math.nan


def end_point_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel Euclidean flow error, (B, 2, H, W) -> (B, H, W)."""
    return torch.linalg.vector_norm(pred.double() - target.double(), dim=1)


def flow_outliers(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KITTI Fl outliers: end-point error > 3 px AND > 5% of the true flow magnitude."""
    epe = end_point_error(pred, target)
    mag = torch.linalg.vector_norm(target.double(), dim=1)
    return (epe > 3.0) & (epe > 0.05 * mag)


def _pixel_mask(target: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """(B, H, W) bool mask for a (B, C, H, W) target: all True unless ``valid`` says otherwise."""
    if valid is None:
        return torch.ones(target.shape[0], *target.shape[-2:], dtype=torch.bool, device=target.device)
    return valid.bool().reshape(target.shape[0], *target.shape[-2:])


# ---------------------------------------------------------------- accumulators

class RunningSums:
    """An accumulator of running sums over the split: each of ``START``'s names an attribute, at its start value
    (0 for a count, 0.0 for a sum of floats) when the accumulator is made."""

    START: dict[str, float] = {}

    def __init__(self, task: TaskSpec):
        self.__dict__.update(self.START)


class Top1(RunningSums):
    name = "top1"
    START = {"correct": 0, "total": 0}

    def update(self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        self.correct += top1_correct(pred, target)
        self.total += int(target.numel())

    def compute(self) -> dict[str, float]:
        return {"top1": self.correct / max(self.total, 1), "n": float(self.total)}


class MeanIoU:
    """Dataset-level confusion matrix; ``update`` takes logits (B, C, H, W) and a class map (B, H, W)."""

    name = "miou"

    def __init__(self, task: TaskSpec):
        self.num_classes = task.num_outputs
        self.ignore_index = task.ignore_index
        self.class_names = task.class_names
        self.cm = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        labels = pred.argmax(dim=1) if pred.dim() == target.dim() + 1 else pred
        self.cm += confusion_matrix(labels, target, self.num_classes, self.ignore_index, valid)

    def compute(self) -> dict[str, float]:
        iou = iou_per_class(self.cm)
        total = int(self.cm.sum())
        out = {"miou": mean_iou(self.cm), "pixel_acc": float(self.cm.diag().sum()) / total if total else math.nan,
               "pixels": float(total)}
        for i, v in enumerate(iou.tolist()):
            name = self.class_names[i] if i < len(self.class_names) else str(i)
            out[f"iou_{name}"] = v
        return out


class NegativeL1(RunningSums):
    """Minus the mean absolute error over valid pixels (and channels), summed over the split."""

    name = "neg_l1"
    START = {"abs_sum": 0.0, "count": 0}

    def update(self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        mask = _pixel_mask(target, valid).unsqueeze(1).expand_as(target)
        self.abs_sum += float((pred.double() - target.double()).abs()[mask].sum())
        self.count += int(mask.sum())

    def compute(self) -> dict[str, float]:
        l1 = self.abs_sum / self.count if self.count else math.nan
        return {"neg_l1": -l1, "l1": l1, "pixels": float(self.count)}


class FlowScore(RunningSums):
    """1 - Fl-all over valid pixels, plus the mean end-point error (KITTI 2015 definitions)."""

    name = "one_minus_fl_all"
    START = {"outliers": 0, "epe_sum": 0.0, "count": 0}

    def update(self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        mask = _pixel_mask(target, valid)
        self.outliers += int(flow_outliers(pred, target)[mask].sum())
        self.epe_sum += float(end_point_error(pred, target)[mask].sum())
        self.count += int(mask.sum())

    def compute(self) -> dict[str, float]:
        if not self.count:
            return {"one_minus_fl_all": math.nan, "fl_all": math.nan, "epe": math.nan, "pixels": 0.0}
        fl = self.outliers / self.count
        return {"one_minus_fl_all": 1.0 - fl, "fl_all": fl, "epe": self.epe_sum / self.count,
                "pixels": float(self.count)}


METRICS: Registry[Callable[[TaskSpec], Metric]] = Registry("metric")
for _name, _metric in {"top1": Top1, "miou": MeanIoU, "neg_l1": NegativeL1, "one_minus_fl_all": FlowScore}.items():
    METRICS.register(_name, _metric)


def make_metric(task: TaskSpec) -> Metric:
    return METRICS[task.metric](task)
