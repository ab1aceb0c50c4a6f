"""Metrics and losses against float64 hand computations and scikit-learn."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix as sk_confusion

from tasks.losses import masked_l1, pixel_cross_entropy
from tasks.metrics import (
    FlowScore,
    MeanIoU,
    NegativeL1,
    binary_iou,
    confusion_matrix,
    flow_outliers,
    iou_per_class,
    mean_iou,
)


def _task(n: int = 4, ignore_index: int | None = None, names: tuple[str, ...] = ()) -> SimpleNamespace:
    return SimpleNamespace(num_outputs=n, ignore_index=ignore_index, class_names=names, name="t")


def test_confusion_matrix_and_miou_match_sklearn_with_ignore_and_mask():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (6, 9, 11), generator=g)
    target[target == 4] = 255  # 4 -> ignored label
    pred = torch.randint(0, 4, (6, 9, 11), generator=g)
    valid = torch.rand(6, 9, 11, generator=g) > 0.2
    cm = confusion_matrix(pred, target, 4, ignore_index=255, valid=valid)
    keep = (target != 255) & valid
    ref = sk_confusion(target[keep].numpy(), pred[keep].numpy(), labels=[0, 1, 2, 3])
    np.testing.assert_array_equal(cm.numpy(), ref)
    ref = ref.astype(np.float64)
    tp = np.diag(ref)
    iou = tp / (ref.sum(0) + ref.sum(1) - tp)
    assert mean_iou(cm) == pytest.approx(iou.mean(), rel=1e-12)


def test_class_absent_from_truth_and_prediction_is_not_a_free_one():
    target = torch.tensor([[0, 0, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 1]])
    cm = confusion_matrix(pred, target, 3)  # class 2 appears nowhere
    iou = iou_per_class(cm)
    assert math.isnan(iou[2])
    assert mean_iou(cm) == pytest.approx((1 / 2 + 2 / 3) / 2)  # not (1/2 + 2/3 + 1) / 3
    assert math.isnan(mean_iou(torch.zeros(3, 3, dtype=torch.int64)))  # nothing to score


def test_miou_is_dataset_level_not_a_mean_over_batches():
    metric = MeanIoU(_task(2, names=("bg", "fg")))
    # Image 1: tiny object missed; image 2: large object found. Per-image averaging would differ.
    t1, p1 = torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 4, dtype=torch.long)
    t1[0, 0, 0] = 1
    t2, p2 = torch.ones(1, 4, 4, dtype=torch.long), torch.ones(1, 4, 4, dtype=torch.long)
    t2[0, 0, :2] = 0
    for t, p in ((t1, p1), (t2, p2)):
        metric.update(F.one_hot(p, 2).permute(0, 3, 1, 2).float(), t)  # logits -> argmax
    cm = np.array([[15, 2], [1, 14]], dtype=np.float64)  # rows: truth, columns: prediction
    tp = np.diag(cm)
    expected = (tp / (cm.sum(0) + cm.sum(1) - tp)).mean()
    out = metric.compute()
    assert out["miou"] == pytest.approx(expected)
    assert out["iou_fg"] == pytest.approx(14 / 17) and out["pixels"] == 32


def test_binary_iou_edge_cases():
    a = torch.tensor([[1, 1, 0, 0]], dtype=torch.bool)
    b = torch.tensor([[0, 1, 1, 0]], dtype=torch.bool)
    assert binary_iou(a, b) == pytest.approx(1 / 3)
    assert math.isnan(binary_iou(torch.zeros(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool)))
    assert binary_iou(torch.zeros(4, dtype=torch.bool), torch.ones(4, dtype=torch.bool)) == 0.0
    # invalid pixels do not count either way
    assert binary_iou(a, b, valid=torch.tensor([[False, True, False, True]])) == 1.0


def test_negative_l1_ignores_invalid_pixels_and_counts_every_sample():
    g = torch.Generator().manual_seed(1)
    target = torch.rand(5, 1, 6, 7, generator=g, dtype=torch.float64) * 10
    pred = target + torch.randn(5, 1, 6, 7, generator=g, dtype=torch.float64)
    valid = target[:, 0] > 2
    pred[~valid.unsqueeze(1)] = 1e6  # would dominate if counted
    metric = NegativeL1(_task(1))
    for sl in (slice(0, 2), slice(2, 5)):  # uneven batches
        metric.update(pred[sl].float(), target[sl].float(), valid[sl])
    diffs = [abs(float(pred[i, 0, y, x]) - float(target[i, 0, y, x]))
             for i in range(5) for y in range(6) for x in range(7) if valid[i, y, x]]
    out = metric.compute()
    assert out["neg_l1"] == pytest.approx(-sum(diffs) / len(diffs), rel=1e-5)
    assert out["pixels"] == len(diffs)


def test_flow_outlier_thresholds_and_score():
    # Per pixel: EPE 4 with |gt| 100 -> inlier (5% is 5 px); EPE 4 with |gt| 10 -> outlier;
    # EPE 2.9 with |gt| 0 -> inlier (needs > 3 px); EPE 5 with |gt| 50 -> outlier (5% is 2.5 px).
    gt = torch.tensor([[100.0, 0.0], [10.0, 0.0], [0.0, 0.0], [30.0, 40.0], [1.0, 1.0]])
    pred = torch.tensor([[104.0, 0.0], [10.0, 4.0], [2.9, 0.0], [33.0, 44.0], [1e3, 1e3]])
    def to_map(v):
        return v.T.reshape(1, 2, 1, 5)

    out = flow_outliers(to_map(pred), to_map(gt))[0, 0].tolist()
    assert out == [False, True, False, True, True]
    metric = FlowScore(_task(2))
    valid = torch.tensor([[[True, True, True, True, False]]])  # the wild last pixel is invalid
    metric.update(to_map(pred), to_map(gt), valid)
    res = metric.compute()
    assert res["fl_all"] == pytest.approx(2 / 4) and res["one_minus_fl_all"] == pytest.approx(0.5)
    assert res["epe"] == pytest.approx((4 + 4 + 2.9 + 5) / 4)
    zero = FlowScore(_task(2))
    zero.update(torch.zeros(1, 2, 1, 5), to_map(gt))  # zero-flow baseline: outlier where |gt| > 3
    assert zero.compute()["fl_all"] == pytest.approx(3 / 5)


def test_pixel_cross_entropy_averages_over_kept_pixels_only():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 4, 5), generator=g)
    target[0, 0, :] = 255
    valid = torch.ones(2, 4, 5, dtype=torch.bool)
    valid[1, :, 0] = False
    loss = pixel_cross_entropy(logits, target, valid, _task(3, ignore_index=255))
    logp = torch.log_softmax(logits, dim=1)
    terms = [-float(logp[b, target[b, y, x], y, x]) for b in range(2) for y in range(4) for x in range(5)
             if target[b, y, x] != 255 and valid[b, y, x]]
    assert float(loss) == pytest.approx(sum(terms) / len(terms), rel=1e-10)


def test_masked_l1_and_empty_mask():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 100.0]]]], requires_grad=True)
    target = torch.zeros(1, 1, 2, 2)
    valid = torch.tensor([[[True, True], [True, False]]])
    assert float(masked_l1(pred, target, valid, _task(1)).detach()) == pytest.approx(2.0)
    empty = masked_l1(pred, target, torch.zeros_like(valid), _task(1))
    assert float(empty.detach()) == 0.0
    empty.backward()  # still differentiable
    # two channels (flow): the mask covers both
    p2, t2 = torch.ones(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)
    p2[0, 1, 1, 1] = 50
    assert float(masked_l1(p2, t2, valid, _task(2))) == pytest.approx(1.0)
