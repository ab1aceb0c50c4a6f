"""DTD from a fixture in the release's layout (images/<class>/*.jpg, labels/{train,val,test}1.txt)."""

from tasks.datasets.dtd import CLASS_NAMES

from .fixtures_a import write_dtd
from .fixtures_b import eval_fails_naming
from .util import check_ok, data_check, eval_record

# Per label file, images per class; "woven" appears in test1 only (its index must not depend on that).
SPLITS = {"train": {"banded": 3, "zigzagged": 2, "polka-dotted": 1},
          "val": {"banded": 2, "zigzagged": 2, "polka-dotted": 1},
          "test": {"banded": 2, "zigzagged": 3, "polka-dotted": 1, "woven": 1}}


def _hist(per_class: dict[str, int]) -> dict[str, int]:
    return {c: per_class.get(c, 0) for c in CLASS_NAMES}


def test_data_check_counts_and_histogram(tmp_path):
    write_dtd(tmp_path, SPLITS)
    doc = check_ok("dtd_cls", tmp_path)
    train, test = doc["splits"]["train"], doc["splits"]["test"]
    assert (train["n"], test["n"]) == (11, 7) and (train["expected"], test["expected"]) == (3_760, 1_880)
    assert train["labels"]["classes"] == 47 and len(CLASS_NAMES) == 47
    # train = train1 + val1
    assert train["labels"]["histogram"] == _hist({"banded": 5, "zigzagged": 4, "polka-dotted": 2})
    assert test["labels"]["histogram"] == _hist(SPLITS["test"])
    assert CLASS_NAMES.index("woven") == 44


def test_eval_end_to_end(tmp_path):
    write_dtd(tmp_path, SPLITS)
    rec = eval_record("dtd_cls", tmp_path, tmp_path / "out")
    assert rec["status"] == "ok" and rec["task"] == "dtd_cls"
    assert rec["n"]["test"] == 7 and rec["n"]["train"] + rec["n"]["val"] == 11
    assert rec["train_size"] == 3_760 and 0.0 <= rec["test"] <= 1.0


def test_a_deleted_image_and_a_bad_line_are_named(tmp_path):
    base = write_dtd(tmp_path, SPLITS)
    gone = base / "images" / "zigzagged" / "zigzagged_0003.jpg"  # listed in val1.txt
    gone.unlink()
    with open(base / "labels" / "test1.txt", "a") as fh:
        fh.write("plaid/plaid_0001.jpg\n")
    rc, doc, _ = data_check("dtd_cls", tmp_path)
    assert rc == 1 and not doc["ok"]
    assert f"{gone}: listed in labels/val1.txt but missing" in doc["problems"]
    assert any("'plaid' is not a DTD class" in p for p in doc["problems"])
    eval_fails_naming("dtd_cls", tmp_path, tmp_path / "out", f"{gone.name}: listed in labels/val1.txt but missing")


def test_a_missing_label_file_names_it(tmp_path):
    base = write_dtd(tmp_path, SPLITS)
    (base / "labels" / "val1.txt").unlink()
    rc, doc, _ = data_check("dtd_cls", tmp_path)
    assert rc == 1 and any(str(base / "labels" / "val1.txt") in p and "harness data layout dtd_cls" in p
                           for p in doc["problems"])
