"""Label fractions (harness/subsets.py): stratified, seeded manifests drawn from the encoded features."""

import numpy as np
import pytest
import torch

import harness.runner as runner
from harness.cache import MemoryFeatures
from harness.common.errors import UsageError
from harness.runner import EvalOptions, run_eval
from harness.subsets import SubsetSpec, apply, draw, manifest, subset_spec
from tests.harness import toy

LABELS = np.repeat([0, 1, 2], [50, 30, 20])  # class sizes 50, 30, 20


def counts(labels, idx):
    return np.bincount(labels[idx], minlength=3).tolist()


def test_a_fraction_is_taken_per_class_and_seeded():
    idx = draw(LABELS, 100, SubsetSpec("fraction", 0.1), seed=0)
    assert counts(LABELS, idx) == [5, 3, 2] and list(idx) == sorted(idx) and len(set(idx)) == 10
    assert list(draw(LABELS, 100, SubsetSpec("fraction", 0.1), seed=0)) == list(idx)
    assert list(draw(LABELS, 100, SubsetSpec("fraction", 0.1), seed=1)) != list(idx)
    # every class keeps at least one sample; rounding is half up per class: 0.05 * [50, 30, 20] = [2.5, 1.5, 1]
    assert counts(LABELS, draw(LABELS, 100, SubsetSpec("fraction", 0.05), 0)) == [3, 2, 1]
    assert counts(LABELS, draw(LABELS, 100, SubsetSpec("fraction", 0.001), 0)) == [1, 1, 1]


def test_shots_and_vtab_size():
    assert counts(LABELS, draw(LABELS, 100, SubsetSpec("shots", 4), 0)) == [4, 4, 4]
    assert counts(LABELS, draw(LABELS, 100, SubsetSpec("shots", 25), 0)) == [25, 25, 20]
    # 40 (the 0.8 train share of --train-size 50) split 50:30:20 by largest remainder
    assert counts(LABELS, draw(LABELS, 100, SubsetSpec("size", 50), 0, total=40)) == [20, 12, 8]
    assert counts(LABELS, draw(LABELS, 100, SubsetSpec("size", 50), 0, total=7)) == [4, 2, 1]  # 3.5, 2.1, 1.4
    assert len(draw(None, 100, SubsetSpec("fraction", 0.25), 0)) == 25  # no classes: a plain random subset


def test_apply_draws_train_and_val_and_records_the_manifests():
    tr = MemoryFeatures({"embedding": torch.arange(100.0)[:, None]}, torch.as_tensor(LABELS))
    va_labels = np.repeat([0, 1, 2], [10, 6, 4])
    va = MemoryFeatures({"embedding": -torch.arange(20.0)[:, None]}, torch.as_tensor(va_labels))
    task = toy.toy_task()
    drawn = apply(task, SubsetSpec("size", 10), 3, [tr, tr], va)  # VTAB-style: 8 train + 2 val
    assert len(drawn.train) == 2 and all(len(t) == 8 for t in drawn.train)
    sub = drawn.train[0]
    assert torch.equal(sub.target, torch.as_tensor(LABELS)[sub.taps["embedding"][:, 0].long()])  # rows stay paired
    assert torch.equal(drawn.train[1].taps["embedding"], sub.taps["embedding"])  # the same samples in every copy
    assert len(drawn.val) == 2
    rec = drawn.record
    idx = draw(LABELS, 100, SubsetSpec("size", 10), 3, total=8)
    assert rec["train"] == manifest(idx, 100, LABELS) and rec["train"]["n"] == 8 and rec["train"]["of"] == 100
    assert rec["val"]["n"] == 2 and rec["fraction"] == pytest.approx(0.08) and rec["seed"] == 3
    short = apply(task, SubsetSpec("shots", 25), 0, [tr], va)
    assert len(short.train[0]) == 70 and "1 class(es) have fewer than 25" in short.notes[0]


@pytest.mark.parametrize("args", [(0.1, 5, None), (0.0, None, None), (1.5, None, None), (None, 0, None),
                                  (None, None, 1)])
def test_bad_options_are_usage_errors(args):
    with pytest.raises(UsageError):
        subset_spec(*args)


def test_a_tenth_of_train_from_a_warm_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))  # its own feature cache, cold
    """--train-fraction 0.1 after a full run: no split encoded again, 10% of each class trained on, recorded."""
    task = toy.toy_task()
    base = dict(encoder="resnet18", tasks=[task], out=tmp_path, device="cpu", grid="single", epochs=1)
    (full,) = run_eval(EvalOptions(**base))
    seen = []
    real = runner.fit_grid

    def spy(build, grid, seeds, train, *a, **k):
        seen.append(train[0].target.clone())
        return real(build, grid, seeds, train, *a, **k)

    monkeypatch.setattr(runner, "fit_grid", spy)
    (rec,) = run_eval(EvalOptions(**base, train_fraction=0.1))
    assert rec["cache"]["misses"] == 0 and rec["cache"]["hits"] == 3
    labels = toy.ToyDataset("train", 96).labels.numpy()  # class sizes 21, 37, 38 -> 2, 4, 4
    idx = draw(labels, 96, SubsetSpec("fraction", 0.1), seed=0)
    assert counts(labels, idx) == [2, 4, 4]
    assert torch.equal(seen[0], torch.as_tensor(labels[idx]))  # the head trained on exactly the manifest
    sub = rec["subset"]
    assert sub["kind"] == "fraction" and sub["value"] == 0.1 and sub["seed"] == 0 and sub["stratified"]
    assert sub["train"] == manifest(idx, 96, labels) and rec["n"]["train"] == 10
    assert (sub["train"]["min_per_class"], sub["train"]["max_per_class"]) == (2, 4)
    assert rec["run_key"]["subset"] == {"kind": "fraction", "value": 0.1} and "subset" not in full["run_key"]
    assert len(list(tmp_path.glob("*.json"))) == 2  # its own record, beside the full one
    # another seed draws another manifest
    (other,) = run_eval(EvalOptions(**base, train_fraction=0.1, seed=1))
    assert other["subset"]["train"]["hash"] != sub["train"]["hash"] and other["subset"]["train"]["n"] == 10
