"""SUN397 from a fixture in the release's layout (ClassName.txt, <letter>/<class>[/<sub>]/sun_*.jpg,
Partitions/), with the built-in 80% split and with TFDS's split lists."""

from tasks.datasets.paper_split import proportional_quotas
from tasks.datasets.sun397 import CLASS_NAMES

from .fixtures_a import write_sun397
from .fixtures_b import eval_fails_naming
from .util import check_ok, data_check, eval_record

# 0.8 x 15 = 12 train: floors 4 + 4 + 2 = 10, the 2 owed go to the largest remainders (0.8, 0.8).
COUNTS = {"abbey": 6, "balcony/exterior": 6, "balcony/interior": 3}
TRAIN = {"abbey": 5, "balcony/exterior": 5, "balcony/interior": 2}


def _hist(per_class: dict[str, int]) -> dict[str, int]:
    return {c: per_class.get(c, 0) for c in CLASS_NAMES}


def test_the_paper_count_on_the_full_release():
    # Any 397 class counts summing to the release's 108,754 give the paper's 87,003 train images.
    counts = [274] * 396 + [108_754 - 274 * 396]
    assert proportional_quotas(counts, 0.8).sum() == 87_003
    assert len(CLASS_NAMES) == 397 and CLASS_NAMES.index("balcony/interior") == 29


def test_data_check_counts_and_histogram(tmp_path):
    write_sun397(tmp_path, COUNTS, list(CLASS_NAMES))
    doc = check_ok("sun397_cls", tmp_path)
    train, test = doc["splits"]["train"], doc["splits"]["test"]
    assert (train["n"], test["n"]) == (12, 3) and (train["expected"], test["expected"]) == (87_003, 21_751)
    assert train["labels"]["classes"] == 397
    assert train["labels"]["histogram"] == _hist(TRAIN)
    assert test["labels"]["histogram"] == _hist({c: COUNTS[c] - TRAIN[c] for c in COUNTS})


def test_tfds_lists_define_the_split_when_present(tmp_path):
    base, files = write_sun397(tmp_path, COUNTS, list(CLASS_NAMES), partitions=False)
    every = [f for fs in files.values() for f in fs]
    (base / "sun397_tfds_tr.txt").write_text("\n".join(files["abbey"][:4]) + "\n")
    (base / "sun397_tfds_va.txt").write_text("\n".join(files["balcony/interior"]) + "\n")
    (base / "sun397_tfds_te.txt").write_text("\n".join(files["balcony/exterior"] + files["abbey"][4:]) + "\n")
    assert len(every) == 15
    rc, doc, err = data_check("sun397_cls", tmp_path)
    assert rc == 0, err
    assert doc["splits"]["train"]["labels"]["histogram"] == _hist({"abbey": 4, "balcony/interior": 3})
    assert doc["splits"]["test"]["labels"]["histogram"] == _hist({"abbey": 2, "balcony/exterior": 6})


def test_eval_end_to_end(tmp_path):
    write_sun397(tmp_path, COUNTS, list(CLASS_NAMES))
    rec = eval_record("sun397_cls", tmp_path, tmp_path / "out")
    assert rec["status"] == "ok" and rec["task"] == "sun397_cls"
    assert rec["n"]["test"] == 3 and rec["n"]["train"] + rec["n"]["val"] == 12
    assert rec["train_size"] == 87_003 and 0.0 <= rec["test"] <= 1.0


def test_a_deleted_image_a_stray_folder_and_a_wrong_class_list(tmp_path):
    base, files = write_sun397(tmp_path, COUNTS, list(CLASS_NAMES))
    gone = base / files["balcony/interior"][1].lstrip("/")  # named by Partitions/Testing_01.txt
    gone.unlink()
    (base / "b" / "balcony" / "attic").mkdir()
    rc, doc, _ = data_check("sun397_cls", tmp_path)
    assert rc == 1 and not doc["ok"]
    assert any(p == f"{gone}: listed in Partitions/Testing_01.txt but missing" for p in doc["problems"]), doc
    assert f"{base / 'b' / 'balcony' / 'attic'}: not a SUN397 class folder (see ClassName.txt)" in doc["problems"]
    eval_fails_naming("sun397_cls", tmp_path, tmp_path / "out", "(and 1 more)")
    # a class list that is not the release's is refused with its first difference
    (base / "ClassName.txt").write_text("/a/abbey\n/a/alley\n")
    rc, doc, _ = data_check("sun397_cls", tmp_path)
    assert rc == 1 and any("line 2: 'alley' where the release has 'airplane_cabin'" in p for p in doc["problems"])
