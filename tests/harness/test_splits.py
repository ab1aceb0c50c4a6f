import numpy as np

from harness.splits import carve_val


def test_carved_val_is_disjoint_deterministic_and_stratified():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    tr, va = carve_val(len(labels), 0.2, seed=3, labels=labels)
    assert not set(tr) & set(va) and len(tr) + len(va) == len(labels)
    assert np.bincount(labels[va]).tolist() == [2, 4, 6, 8]
    tr2, va2 = carve_val(len(labels), 0.2, seed=3, labels=labels)
    assert np.array_equal(va, va2) and np.array_equal(tr, tr2)
    _, va3 = carve_val(len(labels), 0.2, seed=4, labels=labels)
    assert not np.array_equal(va, va3)


def test_unlabelled_carve_and_singleton_classes():
    tr, va = carve_val(50, 0.1, seed=0)
    assert len(va) == 5 and not set(tr) & set(va)
    tr, va = carve_val(3, 0.5, seed=0, labels=np.array([0, 1, 1]))
    assert 0 in tr  # a class with one sample keeps it for training
