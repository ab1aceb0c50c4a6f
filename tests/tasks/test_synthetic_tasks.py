"""Synthetic task records: declared chance levels and dataset samples agree with the data."""

import numpy as np
import pytest
import torch

from tasks import get_task
from tasks.spec import DataRequest


def _labels(task, split):
    ds = task.dataset(task, DataRequest(split=split, data_root=None, resolution=None, limit=None, train=False))
    return np.asarray(ds.targets), ds


@pytest.mark.parametrize("name", ["synth_shape_cls", "synth_shape_coarse_cls", "synth_count", "synth_num_steps"])
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


@pytest.mark.parametrize("split", ["train", "test"])
def test_the_coarse_shape_label_is_a_function_of_the_fine_label(split):
    """synth_shape_coarse_cls reads the same renders as synth_shape_cls: image for image the same pixels, and
    each fine shape falls in exactly one family, the one its declared rule names (box and cylinder extruded,
    sphere and cone tapered); both families occur, so the coarse task is not constant."""
    fine_task, coarse_task = get_task("synth_shape_cls"), get_task("synth_shape_coarse_cls")
    assert coarse_task.coarse_of == fine_task.name and coarse_task.chance is not None
    fine, fine_ds = _labels(fine_task, split)
    coarse, coarse_ds = _labels(coarse_task, split)
    assert len(fine) == len(coarse) > 0
    for i in (0, len(fine) // 2, len(fine) - 1):
        assert torch.equal(fine_ds[i]["image"], coarse_ds[i]["image"])
    rule = {"box": "extruded", "cylinder": "extruded", "sphere": "tapered", "cone": "tapered"}
    for f in np.unique(fine):
        families = np.unique(coarse[fine == f])
        assert len(families) == 1, (fine_task.class_names[f], families)
        assert coarse_task.class_names[families[0]] == rule[fine_task.class_names[f]]
    assert set(np.unique(coarse)) == {0, 1} and coarse_task.num_outputs == 2
