"""CIFAR-100 from a fixture in the release's exact format (python pickles, latin1 keys)."""

import json
import pickle

import numpy as np
import pytest

from tasks.datasets.cifar import CLASS_NAMES, read_pickle

from .util import assert_tiny_split_runs, data_check, eval_record, harness

N = {"train": 60, "test": 20}


def write_cifar(root, n=N, drop_label=None):
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
        with open(folder / split, "wb") as fh:
            pickle.dump({"filenames": [f"img_{i}.png" for i in range(k)], "data": data, "fine_labels": y,
                         "coarse_labels": [0] * len(y), "batch_label": f"{split} batch"}, fh, protocol=2)
    with open(folder / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": list(CLASS_NAMES), "coarse_label_names": [f"c{i}" for i in range(20)]}, fh)
    return labels


def test_data_check_counts_and_histogram(tmp_path):
    labels = write_cifar(tmp_path)
    rc, doc, err = data_check("cifar100_cls", tmp_path)
    assert rc == 0, err
    assert doc["ok"] and doc["problems"] == [] and doc["root"] == str(tmp_path / "cifar-100-python")
    for split in ("train", "test"):
        entry = doc["splits"][split]
        assert entry["n"] == N[split] and entry["expected"] == {"train": 50_000, "test": 10_000}[split]
        hist = entry["labels"]["histogram"]
        assert entry["labels"]["classes"] == 100 and len(hist) == 100
        expected = {CLASS_NAMES[c]: labels[split].count(c) for c in range(100)}
        assert hist == expected
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
    proc = harness("eval", "--encoder", "resnet18", "--task", "cifar100_cls", "--data-root", str(tmp_path),
                   "--out", str(tmp_path / "out"), "--device", "cpu")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "do not pair up" in lines[0]


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
