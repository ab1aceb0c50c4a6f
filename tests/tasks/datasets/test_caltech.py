"""Caltech-101 from a fixture in the release's layout (101_ObjectCategories/<class>/image_NNNN.jpg),
with the built-in 30-per-class split and with the reference's JSON lists."""

from tasks.datasets.caltech import CLASS_NAMES

from .fixtures_a import write_caltech
from .fixtures_b import eval_fails_naming
from .util import assert_tiny_split_runs, check_ok, data_check, eval_record

# 3 of the 102 folders (BACKGROUND_Google counted); 30 of each class are train.
COUNTS = {"BACKGROUND_Google": 32, "Faces": 31, "yin_yang": 33}


def _hist(per_class: dict[str, int]) -> dict[str, int]:
    return {c: per_class.get(c, 0) for c in CLASS_NAMES}


def test_class_map_is_the_release_folders_sorted():
    assert len(CLASS_NAMES) == 102 and list(CLASS_NAMES) == sorted(CLASS_NAMES)
    assert CLASS_NAMES[0] == "BACKGROUND_Google" and CLASS_NAMES.index("accordion") == 5


def test_data_check_counts_and_histogram(tmp_path):
    write_caltech(tmp_path, COUNTS)
    doc = check_ok("caltech_cls", tmp_path)
    train, test = doc["splits"]["train"], doc["splits"]["test"]
    assert (train["n"], test["n"]) == (90, 6) and (train["expected"], test["expected"]) == (3_060, 6_084)
    assert train["labels"]["classes"] == 102
    assert train["labels"]["histogram"] == _hist({c: 30 for c in COUNTS})
    assert test["labels"]["histogram"] == _hist({"BACKGROUND_Google": 2, "Faces": 1, "yin_yang": 3})


def test_the_reference_lists_define_the_split_when_present(tmp_path):
    lists = {"train": ["Faces/image_0001.jpg", "Faces/image_0002.jpg", "yin_yang/image_0003.jpg"],
             "test": ["Faces/image_0003.jpg", "yin_yang/image_0001.jpg"]}
    write_caltech(tmp_path, {"Faces": 3, "yin_yang": 3}, lists)
    rc, doc, err = data_check("caltech_cls", tmp_path)
    assert rc == 0, err
    assert doc["splits"]["train"]["labels"]["histogram"] == _hist({"Faces": 2, "yin_yang": 1})
    assert doc["splits"]["test"]["labels"]["histogram"] == _hist({"Faces": 1, "yin_yang": 1})
    # a listed image that is gone is named
    (tmp_path / "caltech101" / "101_ObjectCategories" / "Faces" / "image_0003.jpg").unlink()
    rc, doc, _ = data_check("caltech_cls", tmp_path)
    assert rc == 1
    path = tmp_path / "caltech101" / "101_ObjectCategories" / "Faces" / "image_0003.jpg"
    assert f"{path}: listed in caltech101_test.json but missing" in doc["problems"]


def test_eval_end_to_end(tmp_path):
    write_caltech(tmp_path, COUNTS)
    rec = eval_record("caltech_cls", tmp_path, tmp_path / "out")
    assert rec["status"] == "ok" and rec["task"] == "caltech_cls"
    assert rec["n"]["test"] == 6 and rec["n"]["train"] + rec["n"]["val"] == 90
    assert rec["val_split"].startswith("stratified 0.1 of 'train'") and rec["train_size"] == 3_060
    assert 0.0 <= rec["test"] <= 1.0


def test_a_deleted_image_is_named(tmp_path):
    base = write_caltech(tmp_path, COUNTS)
    (base / "Faces" / "image_0017.jpg").unlink()
    rc, doc, _ = data_check("caltech_cls", tmp_path)
    assert rc == 1 and not doc["ok"]
    missing = base / "Faces" / "image_0017.jpg"
    assert any(p.startswith(f"{missing}: missing") for p in doc["problems"])
    # Faces now has 30 images, too few for 30 train + a test image: also said
    assert any(p.startswith(f"{base / 'Faces'}: 30 images") for p in doc["problems"])
    eval_fails_naming("caltech_cls", tmp_path, tmp_path / "out", "image_0017.jpg: missing")


def test_tiny_split_one_listed_train_image_per_class_runs(tmp_path):
    """Issue 39: the reference's lists with one train image per class left the stratified val empty."""
    lists = {"train": ["Faces/image_0001.jpg", "yin_yang/image_0001.jpg", "Leopards/image_0001.jpg"],
             "test": ["Faces/image_0002.jpg", "yin_yang/image_0002.jpg"]}
    write_caltech(tmp_path, {"Faces": 2, "yin_yang": 2, "Leopards": 1}, lists)
    rec = assert_tiny_split_runs("caltech_cls", tmp_path, tmp_path / "out", 3)
    assert rec["n"]["val"] == 1 and rec["n"]["test"] == 2
