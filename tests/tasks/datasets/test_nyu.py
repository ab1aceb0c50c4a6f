"""NYU depth and walkable from a MATLAB v7.3 (HDF5) fixture written as MATLAB lays it out, and from
the reference's exported folders."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.datasets.base import DataMissing
from tasks.datasets.check import check_task
from tasks.datasets.nyu import NyuMat, split_indices
from tasks.registry import get_task
from tasks.spec import DataRequest

from .fixtures_b import deleted_is_named
from .fixtures_pix import write_mat73, write_rgb
from .util import check_ok, data_check, eval_record, harness

N, H, W = 10, 24, 32
NAMES = ["wall", "floor", "ceiling", "rug", "floor mat", "chair"]  # ids 1..6


def known_depth() -> np.ndarray:
    """Left half 2.0 m, right half 4.5 m, bottom 4 rows 0 (no depth): valid 20/24, mean 3.25 m."""
    d = np.zeros((H, W), np.float32)
    d[:20, : W // 2], d[:20, W // 2:] = 2.0, 4.5
    return d


def known_labels() -> np.ndarray:
    """Rows 0-5 wall, 6-11 ceiling, 12-17 floor, 18-20 rug, 21-23 unlabelled (0): walkable 9/24 = 0.375,
    not walkable 0.5, ignored 0.125."""
    lab = np.zeros((H, W), np.uint16)
    lab[0:6], lab[6:12], lab[12:18], lab[18:21] = 1, 3, 2, 4
    return lab


def write_nyu_mat(root, n=N):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, H, W, 3), dtype=np.uint8)
    depths = np.stack([known_depth()] * n)
    labels = np.stack([known_labels()] * n)
    write_mat73(root / "nyu" / "nyu_depth_v2_labeled.mat", images, depths, labels, NAMES)
    return images


EXPORT_STEMS = {"train": ["0", "1", "2"], "test": ["10", "11"]}


def write_nyu_export(root, stems=EXPORT_STEMS):
    for split, names in stems.items():
        folder = root / "nyu" / split
        for k, stem in enumerate(names):
            write_rgb(folder / "images" / f"{stem}.png", (H, W), seed=k)
            (folder / "depths").mkdir(parents=True, exist_ok=True)
            Image.fromarray(known_depth(), "F").save(folder / "depths" / f"{stem}.tiff")
            (folder / "walkable").mkdir(parents=True, exist_ok=True)
            walk = np.where(np.isin(known_labels(), [2, 4]), 255, 0).astype(np.uint8)
            Image.fromarray(walk, "L").save(folder / "walkable" / f"{stem}.png")
    return root / "nyu"


def test_the_paper_split_is_seeded_and_sized():
    train, test = split_indices(1_449, "train"), split_indices(1_449, "test")
    assert len(train) == 1_159 and len(test) == 290
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(1_449))
    assert np.array_equal(train, split_indices(1_449, "train"))


def test_mat_v73_is_read_with_axes_transposed(tmp_path):
    images = write_nyu_mat(tmp_path)
    mat = NyuMat(tmp_path / "nyu" / "nyu_depth_v2_labeled.mat")
    assert mat.n == N and mat.size == (H, W) and mat.names == tuple(NAMES)
    assert mat.walkable_ids().tolist() == [2, 4, 5]
    assert torch.equal(mat.image(3), torch.from_numpy(images[3]).permute(2, 0, 1).float() / 255)
    assert np.array_equal(mat.depth(3), known_depth()) and np.array_equal(mat.labels(3), known_labels())
    task = get_task("nyu_depth")
    ds = task.dataset(task, DataRequest("test", tmp_path, None, None, train=False))
    s = ds[0]
    assert s["image"].shape == (3, H, W) and s["target"].shape == (1, H, W)
    assert s["target"][0, 0, 0] == 2.0 and s["target"][0, 0, -1] == 4.5 and not s["valid"][-1].any()
    walk = get_task("nyu_walkable")
    w = walk.dataset(walk, DataRequest("train", tmp_path, None, None, train=True))[0]
    assert w["target"].dtype == torch.int64 and w["target"][0, 0] == 0 and w["target"][12, 0] == 1
    assert w["target"][-1, 0] == 255 and not w["valid"][-1, 0]


def test_data_check_reports_known_depth_and_walkable_share(tmp_path):
    write_nyu_mat(tmp_path)
    doc = check_ok("nyu_depth", tmp_path)
    assert {s: e["n"] for s, e in doc["splits"].items()} == {"train": 8, "test": 2}
    assert doc["splits"]["train"]["expected"] == 1_159 and doc["splits"]["test"]["expected"] == 290
    for entry in doc["splits"].values():
        lab = entry["labels"]
        assert lab["unit"] == "m" and lab["valid_fraction"] == pytest.approx(20 / 24)
        assert lab["mean"] == pytest.approx(3.25) and lab["min"] == 2.0 and lab["max"] == 4.5
    doc = check_task(get_task("nyu_walkable"), tmp_path)  # what `data check --json` prints, in process
    assert doc["ok"], doc["problems"]
    for entry in doc["splits"].values():
        assert entry["labels"] == {"classes": 2, "fractions": pytest.approx(
            {"not walkable": 0.5, "walkable": 0.375, "ignore": 0.125})}


def test_eval_depth_end_to_end_at_native_resolution(tmp_path):
    write_nyu_mat(tmp_path)
    proc = harness("eval", "--encoder", "resnet18", "--task", "nyu_depth", "--data-root", str(tmp_path),
                   "--out", str(tmp_path / "out"), "--epochs", "1", "--grid", "single", "--device", "cpu", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    rec = doc[0] if isinstance(doc, list) else doc
    assert rec["status"] == "ok" and rec["metric"] == "neg_l1" and rec["test"] <= 0.0
    assert rec["output_resolution"] == [H, W] and rec["n"]["test"] == 2 and rec["n"]["train"] + rec["n"]["val"] == 8


def test_eval_walkable_end_to_end(tmp_path):
    write_nyu_mat(tmp_path)
    rec = eval_record("nyu_walkable", tmp_path, tmp_path / "out")
    assert rec["status"] == "ok" and rec["metric"] == "miou" and 0.0 <= rec["test"] <= 1.0
    assert rec["train_size"] == 1_159 and rec["n"]["test"] == 2


def test_reference_export_is_read_when_there_is_no_mat(tmp_path):
    write_nyu_export(tmp_path)
    doc = check_task(get_task("nyu_depth"), tmp_path)
    assert doc["ok"], doc["problems"]
    assert {s: e["n"] for s, e in doc["splits"].items()} == {"train": 3, "test": 2}
    assert doc["splits"]["test"]["labels"]["mean"] == pytest.approx(3.25)
    assert doc["splits"]["test"]["labels"]["valid_fraction"] == pytest.approx(20 / 24)
    task = get_task("nyu_walkable")
    ds = task.dataset(task, DataRequest("test", tmp_path, None, None, train=False))
    assert [p[0].name for p in ds.items] == ["10.png", "11.png"]
    target, valid = ds.native_target(0)
    assert target.mean() == pytest.approx(0.375) and valid.all()  # the export has no unlabelled pixels


def test_a_deleted_export_depth_is_a_problem_naming_it(tmp_path):
    folder = write_nyu_export(tmp_path)
    ds = deleted_is_named("nyu_depth", tmp_path, folder / "train" / "depths" / "1.tiff", "train", train=True)
    assert [p[0].name for p in ds.items] == ["0.png", "2.png"]


def test_no_mat_and_no_export_names_the_file(tmp_path):
    (tmp_path / "nyu").mkdir()
    task = get_task("nyu_depth")
    with pytest.raises(DataMissing, match="nyu_depth_v2_labeled.mat.*harness data layout nyu_depth"):
        task.dataset(task, DataRequest("train", tmp_path, None, None, train=True))


def test_a_file_that_is_not_v73_is_one_line(tmp_path):
    (tmp_path / "nyu").mkdir()
    (tmp_path / "nyu" / "nyu_depth_v2_labeled.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 200)
    task = get_task("nyu_depth")
    with pytest.raises(Exception, match="not readable as a MATLAB v7.3"):
        task.dataset(task, DataRequest("train", tmp_path, None, None, train=True))


def test_a_label_past_the_releases_names_is_refused_naming_frame_and_value(tmp_path):
    """Every NYU label is 0 (unlabelled) or the index of one of the file's names; the walkable map would
    silently call any other id 'not walkable'."""
    labels = np.stack([known_labels()] * N)
    frame = int(split_indices(N, "train")[1])  # a train frame: the second one listed
    labels[frame, 0, :2] = len(NAMES) + 1
    write_mat73(tmp_path / "nyu" / "nyu_depth_v2_labeled.mat", np.zeros((N, H, W, 3), np.uint8),
                np.stack([known_depth()] * N), labels, NAMES)
    rc, doc, _ = data_check("nyu_walkable", tmp_path)
    assert rc == 1 and doc["problems"] == [
        f"{tmp_path / 'nyu' / 'nyu_depth_v2_labeled.mat'} frame {frame + 1}: label {len(NAMES) + 1} at 2 pixel(s): "
        f"the release's labels are 0 (unlabelled) or 1..{len(NAMES)} (its names)"]
    assert data_check("nyu_depth", tmp_path)[0] == 0  # depth reads no labels


def test_export_depths_and_masks_the_release_never_writes_are_refused(tmp_path):
    folder = write_nyu_export(tmp_path)
    depth = known_depth()
    depth[0, 0], depth[1, 1] = np.nan, -1.0
    bad_depth = folder / "train" / "depths" / "1.tiff"
    Image.fromarray(depth, "F").save(bad_depth)
    walk = np.zeros((H, W), np.uint8)
    walk[0], walk[1] = 255, 128  # a mask holds 0 and one value
    bad_mask = folder / "test" / "walkable" / "11.png"
    Image.fromarray(walk, "L").save(bad_mask)
    depth_doc = check_task(get_task("nyu_depth"), tmp_path)
    assert depth_doc["problems"] == [f"{bad_depth}: depth -1, nan at 2 pixel(s): the release's depths are metres >= 0"]
    walk_doc = check_task(get_task("nyu_walkable"), tmp_path)
    assert len(walk_doc["problems"]) == 1 and walk_doc["problems"][0].startswith(f"{bad_mask}: values 0, 128, 255")
