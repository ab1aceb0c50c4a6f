"""ImageNet (train/<wnid>/, val/<wnid>/ or a flat val/ with the devkit) and ImageNetV2 from fixtures
in the released layouts; one head trained on ImageNet and tested on both test sets; the image-level
tasks of this family listed by `harness tasks --json`; features larger than the RAM budget streamed."""

import json

import pytest

from tasks.datasets.imagenet import WNIDS

from .fixtures_a import write_imagenet, write_imagenetv2
from .util import check_ok, data_check, harness

# 3 of the 1000 classes: their indices come from the full sorted WNID list, not from the folders.
A, B, C = "n01440764", "n02102040", "n15075141"  # indices 0, 217, 999
TRAIN = {A: 4, B: 5, C: 3}
VAL = {A: 2, B: 1, C: 2}
FLAT = [B, A, C, C, A, B]  # the WNID of flat val image 1, 2, ...
DEVKIT_IDS = {A: 449, B: 7, C: 1000}  # ILSVRC2012_IDs are not the sorted order
V2 = {0: 10, 999: 10}


def _hist(per_class: dict[str, int]) -> dict[str, int]:
    return {w: per_class.get(w, 0) for w in WNIDS}


def _run(*args: str):
    proc = harness("eval", "--encoder", "resnet18", "--resolution", "32", "--epochs", "1", "--grid", "single",
                   "--device", "cpu", "--json", *args, env={"HARNESS_QUIET": ""})  # the log counts trainings
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    return (doc if isinstance(doc, list) else [doc]), proc.stderr


def test_class_indices_are_the_sorted_wnids():
    assert len(WNIDS) == 1000 and list(WNIDS) == sorted(WNIDS)
    assert (WNIDS.index(A), WNIDS.index(B), WNIDS.index(C)) == (0, 217, 999)


def test_data_check_with_val_in_class_folders(tmp_path):
    write_imagenet(tmp_path, TRAIN, val=VAL)
    doc = check_ok("imagenet_cls", tmp_path)
    assert set(doc["splits"]) == {"train", "val"}
    train, val = doc["splits"]["train"], doc["splits"]["val"]
    assert (train["n"], val["n"]) == (12, 5) and (train["expected"], val["expected"]) == (1_281_167, 50_000)
    assert train["labels"]["classes"] == 1000
    assert train["labels"]["histogram"] == _hist(TRAIN) and val["labels"]["histogram"] == _hist(VAL)


def test_flat_val_labelled_by_the_devkit_and_a_deleted_image(tmp_path):
    write_imagenet(tmp_path, TRAIN, flat_val=FLAT, devkit_ids=DEVKIT_IDS)
    rc, doc, err = data_check("imagenet_cls", tmp_path)
    assert rc == 0, err
    assert doc["splits"]["val"]["labels"]["histogram"] == _hist({A: 2, B: 2, C: 2})
    gone = tmp_path / "imagenet" / "val" / "ILSVRC2012_val_00000004.JPEG"
    gone.unlink()
    rc, doc, _ = data_check("imagenet_cls", tmp_path)
    assert rc == 1 and not doc["ok"]
    assert doc["problems"] == [f"{gone}: missing (line 4 of ILSVRC2012_validation_ground_truth.txt labels it)"]
    # the other images keep their own labels: nothing shifted
    assert doc["splits"]["val"]["labels"]["histogram"] == _hist({A: 2, B: 2, C: 1})
    proc = harness("eval", "--encoder", "resnet18", "--task", "imagenet_cls", "--data-root", str(tmp_path),
                   "--out", str(tmp_path / "out"), "--device", "cpu", "--resolution", "32", "--epochs", "1",
                   "--grid", "single")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "ILSVRC2012_val_00000004.JPEG: missing" in lines[0]


def test_a_flat_val_without_the_devkit_names_the_ground_truth(tmp_path):
    write_imagenet(tmp_path, TRAIN, flat_val=FLAT, devkit_ids=DEVKIT_IDS)
    gt = tmp_path / "imagenet" / "ILSVRC2012_devkit_t12" / "data" / "ILSVRC2012_validation_ground_truth.txt"
    gt.unlink()
    rc, doc, _ = data_check("imagenet_cls", tmp_path)
    assert rc == 1 and any(str(gt) in p and "harness data layout imagenet_cls" in p for p in doc["problems"])


def test_a_folder_that_is_no_class_and_a_misplaced_image(tmp_path):
    base = write_imagenet(tmp_path, TRAIN, val=VAL)
    (base / "train" / "n99999999").mkdir()
    stray = base / "train" / A / f"{B}_1.JPEG"
    stray.write_bytes((base / "train" / B / f"{B}_1000.JPEG").read_bytes())
    rc, doc, _ = data_check("imagenet_cls", tmp_path)
    assert rc == 1
    assert f"{base / 'train' / 'n99999999'}: not one of the 1000 ILSVRC-2012 class folders" in doc["problems"]
    assert any(p.startswith(f"{stray}: a file of another class") for p in doc["problems"])


def test_imagenet_v2_data_check_and_a_missing_image(tmp_path):
    base = write_imagenetv2(tmp_path, V2)
    rc, doc, err = data_check("imagenet_v2_cls", tmp_path)
    assert rc == 0, err
    assert list(doc["splits"]) == ["test"]
    test = doc["splits"]["test"]
    assert test["n"] == 20 and test["expected"] == 10_000
    assert test["labels"]["histogram"] == _hist({A: 10, C: 10})  # folder 0 = n01440764, folder 999 = n15075141
    next(iter((base / "999").iterdir())).unlink()
    rc, doc, _ = data_check("imagenet_v2_cls", tmp_path)
    assert rc == 1 and f"{base / '999'}: holds 9 images; each class of the matched-frequency release holds 10" \
        in doc["problems"]


def test_one_head_two_test_sets(tmp_path):
    """--task imagenet_cls trains once and tests on val and on ImageNetV2 (its data is there);
    --task imagenet_v2_cls alone trains the same head once and reports v2 only."""
    write_imagenet(tmp_path, TRAIN, val=VAL)
    write_imagenetv2(tmp_path, V2)
    recs, err = _run("--task", "imagenet_cls", "--data-root", str(tmp_path), "--out", str(tmp_path / "out"))
    assert [r["task"] for r in recs] == ["imagenet_cls", "imagenet_v2_cls"]
    assert err.count("train imagenet_cls: chose") == 1  # one training
    main, v2 = recs
    assert main["trained_on"] == v2["trained_on"] == "imagenet_cls"
    assert main["n"]["test"] == 5 and v2["n"]["test"] == 20
    assert main["n"]["train"] == v2["n"]["train"] and main["n"]["train"] + main["n"]["val"] == 12
    assert main["n"]["val"] == 3  # 1% stratified: at least one per class
    assert v2["val"] == main["val"] and v2["config"] == main["config"] and v2["epoch"] == main["epoch"]
    assert any("head trained on imagenet_cls train and selected on its val; tested on imagenet_v2_cls" in n
               for n in v2["notes"])
    assert main["train_size"] == 1_281_167 and main["transform"]["eval"].startswith("resize(224,224)")

    out2 = tmp_path / "out2"
    recs, err = _run("--task", "imagenet_v2_cls", "--data-root", str(tmp_path), "--out", str(out2))
    assert [r["task"] for r in recs] == ["imagenet_v2_cls"]
    assert err.count("train imagenet_cls: chose") == 1
    assert recs[0]["trained_on"] == "imagenet_cls" and recs[0]["n"]["test"] == 20
    assert recs[0]["test"] == pytest.approx(v2["test"])  # the same seeded training, the same head


def test_without_v2_data_one_record_and_features_over_the_ram_budget_stream_from_disk(tmp_path):
    write_imagenet(tmp_path, TRAIN, val=VAL)
    recs, _ = _run("--task", "imagenet_cls", "--data-root", str(tmp_path), "--out", str(tmp_path / "out"),
                   "--ram-budget-gb", "0.000001")
    assert [r["task"] for r in recs] == ["imagenet_cls"]  # no ImageNetV2 folder: no v2 record
    rec = recs[0]
    assert rec["status"] == "ok" and rec["n"]["test"] == 5
    streamed = [n for n in rec["notes"] if "streamed from the disk cache" in n]
    assert {n.split(":")[0] for n in streamed} == {"train", "val", "test"}, rec["notes"]


# The registry rows of this family and the other image-level tasks of part A (Tables 1 and 2).
TABLE = {
    "imagenet_cls": ("semantic image-level", "linear", "top1", 100, 1000, 1_281_167),
    "imagenet_v2_cls": ("semantic image-level", "linear", "top1", 100, 1000, 1_281_167),
    "caltech_cls": ("semantic image-level", "linear", "top1", 5000, 102, 3_060),
    "sun397_cls": ("semantic image-level", "linear", "top1", 250, 397, 87_003),
    "eurosat_cls": ("semantic image-level", "linear", "top1", 200, 10, 21_600),
    "dtd_cls": ("semantic image-level", "linear", "top1", 100, 47, 3_760),
}


def test_tasks_json_lists_them_as_the_table(tmp_path):
    write_imagenetv2(tmp_path, {0: 1})
    proc = harness("tasks", "--json", "--data-root", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    for name, (category, head, metric, epochs, outputs, train_size) in TABLE.items():
        r = rows[name]
        assert (r["category"], r["head"], r["metric"], r["epochs"], r["num_outputs"], r["train_size"]) == \
            (category, head, metric, epochs, outputs, train_size), name
        assert r["loss"] == "ce" and r["frames"] == 1 and r["suite"] == "paper"
        assert r["data"] == ("found" if name == "imagenet_v2_cls" else "missing")
