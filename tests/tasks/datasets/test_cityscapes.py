"""Cityscapes from a fixture in the release's layout: labelIds PNGs with a known trainId share."""

import numpy as np
import pytest
import torch
from torchvision.datasets import Cityscapes

from harness.common.errors import HarnessError
from tasks.datasets import pixelwise
from tasks.datasets.base import DataMissing, resolve_data_root
from tasks.datasets.check import check_task
from tasks.datasets.cityscapes import CLASS_NAMES, LABEL_TO_TRAIN, label_to_train, read_label_ids
from tasks.registry import get_task
from tasks.spec import DataRequest

from .fixtures_b import eval_fails_naming
from .fixtures_pix import write_grey8, write_rgb
from .util import check_ok, data_check, eval_proc, eval_record

H, W = 40, 56
CITIES = {"train": {"aachen": 2, "bremen": 2}, "val": {"lindau": 2}}


def label_ids() -> np.ndarray:
    """Rows 0-9 road (7), 10-19 car (26), 20-29 sky (23), 30-39: left half unlabeled (0), right half
    parking (9): trainIds road, car, sky a quarter each; a quarter ignored (void and a class the
    benchmark does not evaluate)."""
    lab = np.zeros((H, W), np.uint8)
    lab[0:10], lab[10:20], lab[20:30] = 7, 26, 23
    lab[30:40, : W // 2], lab[30:40, W // 2:] = 0, 9
    return lab


def write_cityscapes(root, cities=CITIES):
    folder = root / "cityscapes"
    seed = 0
    for split, per_city in cities.items():
        for city, k in per_city.items():
            for j in range(k):
                stem = f"{city}_{j:06d}_000019"
                write_rgb(folder / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", (H, W), seed)
                write_grey8(folder / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", label_ids())
                # the other gtFine files of the release sit beside it and are not read
                write_grey8(folder / "gtFine" / split / city / f"{stem}_gtFine_instanceIds.png", label_ids())
                seed += 1
    return folder


def test_label_table_is_the_official_one():
    official = {c.id: c.train_id for c in Cityscapes.classes if c.id >= 0}
    assert LABEL_TO_TRAIN == {k: (255 if v in (255, -1) else v) for k, v in official.items()}
    assert CLASS_NAMES == tuple(c.name for c in sorted(Cityscapes.classes, key=lambda c: c.train_id)
                                if 0 <= c.train_id < 19)
    assert label_to_train(np.array([7, 26, 0, 9, 33, 34, 200])).tolist() == [0, 13, 255, 255, 18, 255, 255]


def test_data_check_reports_the_known_trainid_shares(tmp_path):
    write_cityscapes(tmp_path)
    doc = check_ok("cityscapes_seg", tmp_path)
    assert {s: doc["splits"][s]["n"] for s in ("train", "val")} == {"train": 4, "val": 2}
    assert doc["splits"]["train"]["expected"] == 2_975 and doc["splits"]["val"]["expected"] == 500
    for split in ("train", "val"):
        labels = doc["splits"][split]["labels"]
        assert labels["classes"] == 19
        fr = labels["fractions"]
        expected = {name: 0.0 for name in CLASS_NAMES} | {"road": 0.25, "car": 0.25, "sky": 0.25, "ignore": 0.25}
        assert fr == pytest.approx(expected)


def test_samples_native_and_train_transform(tmp_path):
    write_cityscapes(tmp_path)
    task = get_task("cityscapes_seg")
    test = task.dataset(task, DataRequest("val", resolve_data_root(tmp_path), None, None, train=False))
    s = test[0]
    assert s["image"].shape == (3, H, W) and s["image"].dtype == torch.float32
    assert s["target"].shape == (H, W) and s["target"].dtype == torch.int64
    assert s["target"][0, 0] == 0 and s["target"][15, 3] == 13 and s["target"][35, 0] == 255
    assert torch.equal(s["valid"], s["target"] != 255)
    quick = task.dataset(task, DataRequest("train", tmp_path, 32, None, train=True, aug_copy=1))
    q = quick[0]
    assert q["image"].shape == (3, 32, 32) and q["target"].shape == (32, 32)
    assert set(q["target"].unique().tolist()) <= {0, 13, 10, 255}


def test_eval_end_to_end(tmp_path):
    write_cityscapes(tmp_path)
    rec = eval_record("cityscapes_seg", tmp_path, tmp_path / "out")
    assert rec["task"] == "cityscapes_seg" and rec["status"] == "ok" and rec["metric"] == "miou"
    assert rec["n"]["test"] == 2 and rec["n"]["train"] + rec["n"]["val"] == 4
    assert rec["train_size"] == 3_475 and rec["output_resolution"] == [32, 32]
    assert 0.0 <= rec["test"] <= 1.0


def test_a_deleted_label_is_a_problem_naming_it(tmp_path):
    folder = write_cityscapes(tmp_path)
    gone = folder / "gtFine" / "train" / "bremen" / "bremen_000001_000019_gtFine_labelIds.png"
    gone.unlink()
    rc, doc, _ = data_check("cityscapes_seg", tmp_path)
    assert rc == 1 and not doc["ok"]
    assert any(p.startswith(str(gone)) and "missing" in p for p in doc["problems"])
    assert doc["splits"]["train"]["n"] == 3  # the other pairs are unaffected, nothing shifted
    eval_fails_naming("cityscapes_seg", tmp_path, tmp_path / "out", str(gone))


def test_missing_folder_names_it_and_the_layout_command(tmp_path):
    (tmp_path / "cityscapes" / "leftImg8bit" / "train").mkdir(parents=True)
    task = get_task("cityscapes_seg")
    with pytest.raises(DataMissing) as info:
        task.dataset(task, DataRequest("train", tmp_path, None, None, train=True))
    line = str(info.value)
    assert "\n" not in line
    assert str(tmp_path / "cityscapes" / "gtFine" / "train") in line and "harness data layout cityscapes_seg" in line


def test_a_label_map_of_another_size_fails_check_from_headers_as_eval_refuses_it(tmp_path, monkeypatch):
    """Issue 39: check said ok where eval refused. Now check compares each image with its label map, from
    the files' headers (no image decoded), and prints the line eval fails with."""
    folder = write_cityscapes(tmp_path)
    lab = folder / "gtFine" / "train" / "bremen" / "bremen_000001_000019_gtFine_labelIds.png"
    write_grey8(lab, np.full((H + 8, W), 7, np.uint8))
    rc, doc, _ = data_check("cityscapes_seg", tmp_path)
    assert rc == 1 and not doc["ok"]
    (problem,) = [p for p in doc["problems"] if p.startswith(f"{lab}: ")]
    assert f"{lab}: {W} x {H + 8} (W x H), but bremen_000001_000019_leftImg8bit.png" in problem
    assert f"is {W} x {H};" in problem

    def no_decoding(*args, **kwargs):
        raise AssertionError("data check decoded an image to learn its size")

    monkeypatch.setattr(pixelwise, "load_image", no_decoding)  # what every pixel split decodes with
    assert problem in check_task(get_task("cityscapes_seg"), tmp_path)["problems"]
    monkeypatch.undo()
    proc = eval_proc("cityscapes_seg", tmp_path, tmp_path / "out")
    lines = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert proc.returncode == 1 and lines == [f"error: task cityscapes_seg: {problem}"], proc.stderr[-3000:]


def test_sample_checks_the_sizes_of_the_sampled_pairs_only(tmp_path):
    folder = write_cityscapes(tmp_path, {"train": {"aachen": 6}, "val": {"lindau": 1}})
    for j in range(6):  # every train label the wrong size: any sample of them finds as many problems
        write_grey8(folder / "gtFine" / "train" / "aachen" / f"aachen_{j:06d}_000019_gtFine_labelIds.png",
                    np.zeros((H, W + 4), np.uint8))
    assert sum("(W x H)" in p for p in check_task(get_task("cityscapes_seg"), tmp_path)["problems"]) == 6
    assert sum("(W x H)" in p for p in check_task(get_task("cityscapes_seg"), tmp_path, sample=2)["problems"]) == 2


def test_a_label_id_the_release_never_writes_is_refused_naming_file_and_value(tmp_path):
    """Issue 39: labelIds of 200 gave `ok` (ignored); the release's label images hold 0..33 only."""
    folder = write_cityscapes(tmp_path)
    lab = folder / "gtFine" / "train" / "aachen" / "aachen_000001_000019_gtFine_labelIds.png"
    bad = label_ids()
    bad[:2, :3], bad[5, 5] = 200, 34
    write_grey8(lab, bad)
    with pytest.raises(HarnessError, match=r"label id 34, 200 at 7 pixel\(s\): the release's labelIds are 0\.\.33"):
        read_label_ids(lab)
    assert read_label_ids(folder / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelIds.png").max() == 26
    rc, doc, err = data_check("cityscapes_seg", tmp_path)
    assert rc == 1 and [p for p in doc["problems"] if p.startswith(f"{lab}: label id 34, 200")], doc["problems"]
    assert "(and" not in err and str(lab) in err  # one problem, named in the error line
