"""Synthetic task records: declared chance levels and dataset samples agree with the data."""

import numpy as np
import pytest
import torch

from tasks import get_task
from tasks.spec import DataRequest


def _labels(task, split):
    ds = task.dataset(task, DataRequest(split=split, data_root=None, resolution=None, limit=None, train=False))
    return np.asarray(ds.targets), ds


@pytest.mark.parametrize("name", ["synth_shape_cls", "synth_count", "synth_num_steps"])
def test_declared_chance_is_train_majority_accuracy_on_test(name):
    task = get_task(name)
    train, _ = _labels(task, "train")
    test, ds = _labels(task, "test")
    majority = np.bincount(train, minlength=task.num_outputs).argmax()
    assert task.chance == pytest.approx(float((test == majority).mean()), abs=1e-9)
    assert train.min() >= 0 and train.max() < task.num_outputs
    sample = ds[0]
    assert sample["image"].shape == (3, 64, 64) and sample["image"].dtype == torch.float32
    assert 0.0 <= float(sample["image"].min()) and float(sample["image"].max()) <= 1.0
    assert sample["target"].dtype == torch.int64
