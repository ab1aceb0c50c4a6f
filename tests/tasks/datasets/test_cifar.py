"""CIFAR-100 from a fixture in the release's exact format (python pickles, latin1 keys), fine classes and the
20 superclasses (``cifar100_coarse_cls``) read from the same files."""

import json
import pickle

import numpy as np
import pytest

from tasks.datasets.cifar import (
    CLASS_NAMES,
    COARSE_NAMES,
    FINE_TO_COARSE,
    SUPERCLASSES,
    read_pickle,
    superclass_problems,
)

from .fixtures_b import eval_fails_naming
from .util import assert_tiny_split_runs, check_ok, data_check, eval_record, harness

N = {"train": 60, "test": 20}


def write_cifar(root, n=N, drop_label=None, coarse=None):
    """The release's three pickles; each image's coarse label is its fine class's superclass (the release's
    grouping) except where ``coarse`` = {(split, index): coarse label} says otherwise."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = {}
    for split, k in n.items():
        y = [int(i % 7) for i in range(k)]  # 7 of the 100 classes present, a known histogram
        data = rng.integers(0, 256, size=(k, 3072), dtype=np.uint8)
        if split == "train":
            for i, c in enumerate(y):  # class c is brighter in channel c % 3: learnable
                data[i, (c % 3) * 1024:(c % 3 + 1) * 1024] //= 4
        if drop_label == split:
            y = y[:-1]
        labels[split] = y
        yc = [(coarse or {}).get((split, i), RELEASE_COARSE_OF_FINE[f]) for i, f in enumerate(y)]
        with open(folder / split, "wb") as fh:
            pickle.dump({"filenames": [f"img_{i}.png" for i in range(k)], "data": data, "fine_labels": y,
                         "coarse_labels": yc, "batch_label": f"{split} batch"}, fh, protocol=2)
    with open(folder / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": list(CLASS_NAMES), "coarse_label_names": RELEASE_COARSE_NAMES}, fh)
    return labels


# The release as its files hold it: meta's coarse_label_names, and the coarse label that the train and test pickles
# pair with each fine label 0..99 (an index array, independent of the loader's table of names).
RELEASE_COARSE_NAMES = [
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
    "household_furniture", "insects", "large_carnivores", "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes", "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates",
    "people", "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2"]
RELEASE_COARSE_OF_FINE = [
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10,
    12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17, 10, 3, 2, 12, 12, 16,
    12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13, 16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14,
    13]


@pytest.mark.parametrize(("task", "names", "label_of"), [
    ("cifar100_cls", CLASS_NAMES, lambda fine: fine),
    ("cifar100_coarse_cls", RELEASE_COARSE_NAMES, lambda fine: RELEASE_COARSE_OF_FINE[fine]),  # superclasses
])
def test_data_check_counts_and_histogram(tmp_path, task, names, label_of):
    labels = write_cifar(tmp_path)
    doc = check_ok(task, tmp_path)
    assert doc["root"] == str(tmp_path / "cifar-100-python")
    for split in ("train", "test"):
        entry = doc["splits"][split]
        assert entry["n"] == N[split] and entry["expected"] == {"train": 50_000, "test": 10_000}[split]
        assert entry["labels"]["classes"] == len(names)
        mapped = [label_of(f) for f in labels[split]]
        assert entry["labels"]["histogram"] == {name: mapped.count(c) for c, name in enumerate(names)}
    assert any("fewer than" in w for w in doc["warnings"])  # a subset is a warning, not an error


def test_eval_end_to_end(tmp_path):
    write_cifar(tmp_path)
    rec = eval_record("cifar100_cls", tmp_path, tmp_path / "out")
    assert rec["task"] == "cifar100_cls" and rec["status"] == "ok" and rec["metric"] == "top1"
    assert rec["n"]["test"] == N["test"] and rec["n"]["train"] + rec["n"]["val"] == N["train"]
    assert rec["val_split"].startswith("stratified 0.1 of 'train'")
    assert rec["resolution"] == 32 and rec["train_size"] == 50_000
    assert 0.0 <= rec["test"] <= 1.0


def test_a_missing_label_is_a_problem_naming_the_file(tmp_path):
    write_cifar(tmp_path, drop_label="train")
    rc, doc, err = data_check("cifar100_cls", tmp_path)
    assert rc == 1 and not doc["ok"]
    assert any(p.startswith(str(tmp_path / "cifar-100-python" / "train")) and "do not pair up" in p
               for p in doc["problems"])
    eval_fails_naming("cifar100_cls", tmp_path, tmp_path / "out", "do not pair up")


def test_empty_data_root_names_the_folder_and_the_layout_command(tmp_path):
    (tmp_path / "EMPTY").mkdir()
    proc = harness("eval", "--encoder", "resnet18", "--task", "cifar100_cls", "--data-root",
                   str(tmp_path / "EMPTY"), "--out", str(tmp_path / "out"), "--device", "cpu")
    assert proc.returncode == 1, proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.strip()]
    assert str(tmp_path / "EMPTY" / "cifar-100-python") in line and "harness data layout cifar100_cls" in line


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    path = tmp_path / "evil"
    path.write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(Exception, match="refused"):
        read_pickle(path)


def test_layout_lists_the_folder_and_counts(tmp_path):
    proc = harness("data", "layout", "cifar100_cls", "--data-root", str(tmp_path), "--json")
    doc = json.loads(proc.stdout)
    assert doc["folder"] == "cifar-100-python" and doc["counts"] == {"train": 50_000, "test": 10_000}
    assert doc["found"] is False and "meta" in doc["tree"]


def test_a_broken_test_split_fails_before_any_encoding(tmp_path):
    """The test split is listed (not read) before training: a missing label there costs seconds."""
    write_cifar(tmp_path, drop_label="test")
    cache = tmp_path / "cache"
    proc = harness("eval", "--encoder", "resnet18", "--task", "cifar100_cls", "--data-root", str(tmp_path),
                   "--out", str(tmp_path / "out"), "--device", "cpu", env={"HARNESS_CACHE": str(cache)})
    assert proc.returncode == 1 and "test" in proc.stderr and "do not pair up" in proc.stderr
    assert not list((cache / "features").rglob("*.h5")) if (cache / "features").exists() else True


def test_tiny_split_one_train_image_per_class_runs(tmp_path):
    """Issue 39: five train images of five classes left the stratified val empty (IndexError)."""
    labels = write_cifar(tmp_path, {"train": 5, "test": 4})
    assert sorted(labels["train"]) == [0, 1, 2, 3, 4]
    rec = assert_tiny_split_runs("cifar100_cls", tmp_path, tmp_path / "out", 5)
    assert rec["n"]["val"] == 1 and rec["n"]["test"] == 4


# ------------------------------------------------------------------ cifar100_coarse_cls: the 20 superclasses

def test_superclass_table_is_the_release_grouping():
    """The loader's table of names gives, for each fine label, the coarse label the release's files pair with it;
    20 superclasses of five fine classes each, every fine class in exactly one."""
    assert list(COARSE_NAMES) == RELEASE_COARSE_NAMES
    assert list(FINE_TO_COARSE) == RELEASE_COARSE_OF_FINE
    members = [f for group in SUPERCLASSES.values() for f in group]
    assert sorted(members) == sorted(CLASS_NAMES) and all(len(g) == 5 for g in SUPERCLASSES.values())


def test_a_fine_class_under_two_superclasses_is_one_line_naming_both(tmp_path):
    """One test image of 'bear' (fine 3, large_carnivores) labelled 'fish' (coarse 1): data check lists that fine
    class once, with the images under each superclass per file, though train alone is consistent; eval refuses
    the task in one line; the fine task, which reads no superclass, still runs on the same files."""
    labels = write_cifar(tmp_path, coarse={("test", 3): 1})
    assert labels["test"][3] == 3
    rc, doc, err = data_check("cifar100_coarse_cls", tmp_path)
    assert rc == 1 and not doc["ok"], err
    root = tmp_path / "cifar-100-python"
    n_bear = {split: labels[split].count(3) for split in ("train", "test")}
    assert doc["problems"] == [
        f"{root}: fine class 'bear' (3) is under 2 superclasses: 'fish' (test 1); 'large_carnivores' (train "
        f"{n_bear['train']}, test {n_bear['test'] - 1}); a fine class belongs to one superclass (the release's: "
        f"'large_carnivores')"]
    eval_fails_naming("cifar100_coarse_cls", tmp_path, tmp_path / "out",
                      "fine class 'bear' (3) is under 2 superclasses")
    assert data_check("cifar100_cls", tmp_path)[0] == 0


def test_superclass_problems_one_line_per_broken_fine_class():
    """Hand-made label arrays: a class split between superclasses across two files, a class moved wholesale to
    another superclass, and intact classes (no line); out-of-range pairs are the range check's business."""
    fine = {"train": np.array([0, 0, 1, 2, 2, 150]), "test": np.array([0, 1, 2, 2])}
    coarse = {"train": np.array([4, 4, 1, 0, 0, 3]), "test": np.array([3, 1, 0, 0])}
    lines = superclass_problems({k: (fine[k], coarse[k]) for k in fine})
    assert lines == [
        "fine class 'apple' (0) is under 2 superclasses: 'food_containers' (test 1); 'fruit_and_vegetables' "
        "(train 2); a fine class belongs to one superclass (the release's: 'fruit_and_vegetables')",
        "fine class 'baby' (2) is under superclass 'aquatic_mammals' in 4 images, but the release puts it under "
        "'people'"]


def test_coarse_eval_end_to_end(tmp_path):
    write_cifar(tmp_path)
    rec = eval_record("cifar100_coarse_cls", tmp_path, tmp_path / "out")
    assert rec["task"] == "cifar100_coarse_cls" and rec["status"] == "ok" and rec["metric"] == "top1"
    assert rec["n"]["test"] == N["test"] and rec["n"]["train"] + rec["n"]["val"] == N["train"]
    assert rec["chance"] == 0.05 and 0.0 <= rec["test"] <= 1.0
