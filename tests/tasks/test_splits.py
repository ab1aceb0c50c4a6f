import numpy as np
import pytest

from tasks.splits import carve_problem, carve_val


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


def test_a_carve_never_leaves_train_or_val_empty():
    """Every size from 2 up, with and without labels, including tiny subsets where every class has a single
    sample (the stratified rule alone would leave val empty: issue 39's 5 pairs of 5 classes)."""
    rng = np.random.default_rng(0)
    for n in range(2, 30):
        label_sets = [None, np.arange(n), np.zeros(n, int), rng.integers(0, max(1, n // 2), n)]
        for labels in label_sets:
            for fraction in (0.01, 0.1, 0.5, 0.99):
                tr, va = carve_val(n, fraction, seed=n, labels=labels)
                assert len(tr) >= 1 and len(va) >= 1, (n, fraction, labels)
                assert sorted(np.concatenate([tr, va]).tolist()) == list(range(n))


def test_singleton_classes_give_val_its_share_and_other_classes_keep_their_rule():
    tr, va = carve_val(5, 0.1, seed=0, labels=np.arange(5))  # 5 samples of 5 classes
    assert len(va) == 1 and len(tr) == 4  # max(1, round(0.5)) to val
    tr, va = carve_val(20, 0.25, seed=1, labels=np.arange(20))
    assert len(va) == 5
    # one class with 4 samples among singletons: only it gives to val (round(0.25 * 4) = 1), each class keeps one
    labels = np.array([0, 0, 0, 0, 1, 2, 3])
    tr, va = carve_val(7, 0.25, seed=2, labels=labels)
    assert labels[va].tolist() == [0] and set(labels[tr]) == {0, 1, 2, 3}


def test_below_two_samples_there_is_no_carve_and_the_problem_says_why():
    for n in (0, 1):
        with pytest.raises(ValueError, match=f"train: {n} sample"):
            carve_val(n, 0.1, seed=0)
    assert carve_problem("train", 2) is None
    assert carve_problem("trainval", 1) == ("trainval: 1 sample, too few to carve a validation split from (at least "
                                            "2 are needed: one to train the head on, one to select it on)")
