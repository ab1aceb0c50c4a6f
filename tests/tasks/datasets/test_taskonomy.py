"""Taskonomy depth from a fixture in the release's layout with 16-bit z-buffer PNGs of known depth."""

import numpy as np
import pytest

from tasks.datasets.check import check_task
from tasks.datasets.taskonomy import building_split, read_depth
from tasks.registry import get_task
from tasks.spec import DataRequest

from .fixtures_pix import write_png16, write_rgb
from .util import check_ok, eval_record, harness

H, W = 24, 32
VIEWS = 3  # per building


def buildings() -> dict[str, str]:
    """The first names 'bldg<k>' that the name hash puts in each split, two for train."""
    found: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    k = 0
    while len(found["train"]) < 2 or not found["val"] or not found["test"]:
        name = f"bldg{k}"
        found[building_split(name)].append(name)
        k += 1
    return {"train": found["train"][:2], "val": found["val"][:1], "test": found["test"][:1]}


def depth_units() -> np.ndarray:
    """Rows 0-5 no depth (65535); below: left half 1.5 m (768 / 512), right half 3.25 m (1664 / 512).
    Valid fraction 0.75, mean 2.375 m, min 1.5, max 3.25."""
    d = np.full((H, W), 65535, np.uint16)
    d[6:, : W // 2], d[6:, W // 2:] = 768, 1664
    return d


def write_taskonomy(root):
    folder = root / "taskonomy"
    seed = 0
    for names in buildings().values():
        for b in names:
            for p in range(VIEWS):
                key = f"point_{p}_view_{p % 2}"
                write_rgb(folder / b / "rgb" / f"{key}_domain_rgb.png", (H, W), seed)
                write_png16(folder / b / "depth_zbuffer" / f"{key}_domain_depth_zbuffer.png", depth_units())
                seed += 1
    (folder / "README_not_a_building").mkdir()  # stray folders without rgb/ are not buildings
    return folder


def test_depth_png_decodes_to_known_metres(tmp_path):
    depth, valid = read_depth(write_png16(tmp_path / "d.png", depth_units()))
    assert depth.shape == (1, H, W) and valid.shape == (H, W) and float(valid.float().mean()) == 0.75
    assert depth[0, 10, 0] == 1.5 and depth[0, 10, -1] == 3.25 and depth[0, 0, 0] == 0.0 and not valid[0, 0]


def test_split_is_by_building_and_stable():
    assert building_split("allensville") == building_split("allensville")
    assert {building_split(f"b{k}") for k in range(50)} == {"train", "val", "test"}


def test_data_check_reports_the_known_depth(tmp_path):
    write_taskonomy(tmp_path)
    doc = check_ok("taskonomy_depth", tmp_path)
    assert {s: e["n"] for s, e in doc["splits"].items()} == {"train": 2 * VIEWS, "val": VIEWS, "test": VIEWS}
    for entry in doc["splits"].values():
        lab = entry["labels"]
        assert lab["unit"] == "m" and lab["valid_fraction"] == pytest.approx(0.75)
        assert lab["mean"] == pytest.approx(2.375) and lab["min"] == 1.5 and lab["max"] == 3.25


def test_samples_are_resized_to_224_with_depth_masked(tmp_path):
    write_taskonomy(tmp_path)
    task = get_task("taskonomy_depth")
    s = task.dataset(task, DataRequest("test", tmp_path, None, None, train=False))[0]
    assert s["image"].shape == (3, 224, 224) and s["target"].shape == (1, 224, 224)
    d = s["target"][0][s["valid"]]
    assert d.min() >= 1.5 - 1e-5 and d.max() <= 3.25 + 1e-5  # no blending with the 65535 rows
    assert not s["valid"][0].any() and s["valid"][-1].all()


def test_eval_end_to_end(tmp_path):
    write_taskonomy(tmp_path)
    rec = eval_record("taskonomy_depth", tmp_path, tmp_path / "out")
    assert rec["task"] == "taskonomy_depth" and rec["status"] == "ok" and rec["metric"] == "neg_l1"
    assert rec["n"] == {"train": 2 * VIEWS, "val": VIEWS, "test": VIEWS, "aug_copies": 1}
    assert rec["test"] <= 0.0 and rec["train_size"] == 39_995


def test_a_deleted_depth_is_a_problem_naming_it(tmp_path):
    folder = write_taskonomy(tmp_path)
    b = buildings()["train"][1]
    gone = folder / b / "depth_zbuffer" / "point_1_view_1_domain_depth_zbuffer.png"
    gone.unlink()
    task = get_task("taskonomy_depth")
    ds = task.dataset(task, DataRequest("train", tmp_path, None, None, train=True, strict=False))
    assert len(ds) == 2 * VIEWS - 1 and any(p.startswith(str(gone)) and "missing" in p for p in ds.problems)
    proc = harness("eval", "--encoder", "resnet18", "--task", "taskonomy_depth", "--data-root", str(tmp_path),
                   "--out", str(tmp_path / "out"), "--device", "cpu", "--resolution", "32", "--epochs", "1",
                   "--grid", "single")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and str(gone) in lines[0]


def test_a_depth_of_another_size_than_its_view_is_a_check_problem(tmp_path):
    folder = write_taskonomy(tmp_path)
    b = buildings()["test"][0]
    odd = write_png16(folder / b / "depth_zbuffer" / "point_2_view_0_domain_depth_zbuffer.png",
                      np.full((H // 2, W), 768, np.uint16))
    doc = check_task(get_task("taskonomy_depth"), tmp_path)
    assert doc["problems"] == [f"{odd}: {W} x {H // 2} (W x H), but point_2_view_0_domain_rgb.png, which it must "
                               f"match, is {W} x {H}; the files do not belong together (or one was resized)"]
