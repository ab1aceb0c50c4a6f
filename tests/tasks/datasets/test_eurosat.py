"""EuroSAT from a fixture in the RGB release's layout (2750/<Class>/<Class>_<i>.jpg)."""

import numpy as np

from tasks.datasets.eurosat import CLASS_NAMES, RELEASE_COUNTS
from tasks.datasets.paper_split import proportional_quotas

from .fixtures_a import write_eurosat
from .fixtures_b import eval_fails_naming
from .util import check_ok, data_check, eval_record

# 3 of the 10 classes present; 80% of each is train: 4 + 4 + 8 = 16 of 20.
COUNTS = {"AnnualCrop": 5, "Forest": 5, "Pasture": 10}
TRAIN = {"AnnualCrop": 4, "Forest": 4, "Pasture": 8}


def _hist(per_class: dict[str, int]) -> dict[str, int]:
    return {c: per_class.get(c, 0) for c in CLASS_NAMES}


def test_the_paper_split_sizes_on_the_full_release():
    quotas = proportional_quotas(list(RELEASE_COUNTS.values()), 0.8)
    assert sum(RELEASE_COUNTS.values()) == 27_000
    assert quotas.tolist() == [2400, 2400, 2400, 2000, 2000, 1600, 2000, 2400, 2000, 2400]
    assert quotas.sum() == 21_600  # the paper's train size
    # Largest remainders get the images still owed: floor(0.5 x 9) = 4 = 1 + 1 + 1 + one more for class 0.
    assert proportional_quotas([3, 3, 3], 0.5).tolist() == [2, 1, 1]
    assert proportional_quotas(np.array([1, 2, 7]), 0.8).tolist() == [1, 1, 6]


def test_data_check_counts_and_histogram(tmp_path):
    write_eurosat(tmp_path, COUNTS)
    doc = check_ok("eurosat_cls", tmp_path)
    train, test = doc["splits"]["train"], doc["splits"]["test"]
    assert (train["n"], test["n"]) == (16, 4)
    assert (train["expected"], test["expected"]) == (21_600, 5_400)
    assert train["labels"]["classes"] == 10
    assert train["labels"]["histogram"] == _hist(TRAIN)
    assert test["labels"]["histogram"] == _hist({c: COUNTS[c] - TRAIN[c] for c in COUNTS})


def test_eval_end_to_end(tmp_path):
    write_eurosat(tmp_path, COUNTS)
    rec = eval_record("eurosat_cls", tmp_path, tmp_path / "out")
    assert rec["status"] == "ok" and rec["task"] == "eurosat_cls" and rec["metric"] == "top1"
    assert rec["n"]["test"] == 4 and rec["n"]["train"] + rec["n"]["val"] == 16
    assert rec["train_size"] == 21_600 and rec["epochs"] == 1
    assert rec["transform"]["eval"] == "resize(224,224)_cropNone_scaleNone_flip0"
    assert 0.0 <= rec["test"] <= 1.0


def test_a_deleted_image_is_named(tmp_path):
    base = write_eurosat(tmp_path, COUNTS)
    (base / "Forest" / "Forest_2.jpg").unlink()
    (base / "Lava").mkdir()  # not a EuroSAT class
    (base / "Lava" / "Lava_1.jpg").write_bytes((base / "Forest" / "Forest_1.jpg").read_bytes())
    rc, doc, _ = data_check("eurosat_cls", tmp_path)
    assert rc == 1 and not doc["ok"]
    assert any(p.startswith(f"{base / 'Forest' / 'Forest_2.jpg'}: missing") for p in doc["problems"])
    assert any(p.startswith(f"{base / 'Lava'}: not a EuroSAT class") for p in doc["problems"])
    line = eval_fails_naming("eurosat_cls", tmp_path, tmp_path / "out", "Lava: not a EuroSAT class")
    assert "(and 1 more)" in line
