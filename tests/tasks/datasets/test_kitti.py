"""KITTI flow 2015 from a fixture of true 16-bit PNGs carrying a known flow field."""


import numpy as np
import pytest
import torch
from PIL import Image

from tasks.datasets.kitti import read_flow
from tasks.datasets.png16 import read_png16
from tasks.registry import get_task
from tasks.spec import DataRequest

from .fixtures_b import check_and_decode_refuse, deleted_is_named, size_mismatch
from .fixtures_pix import write_grey8, write_png16, write_rgb
from .util import assert_split_too_small, assert_tiny_split_runs, check_ok, data_check, eval_record, harness

H, W = 24, 40
N = 10  # ids 000000..000009: 9 train (first 90%), 1 test


def flow_samples(h=H, w=W) -> np.ndarray:
    """Top half (u, v) = (3.5, -1.25) px, bottom half (-2.0, 0.5); the left 3/4 of the columns valid,
    the rest invalid with garbage in R and G. Over valid pixels: u_mean 0.75, v_mean -0.375."""
    s = np.zeros((h, w, 3), np.uint16)
    top, bottom = slice(0, h // 2), slice(h // 2, h)
    s[top, :, 0], s[top, :, 1] = 2**15 + 3.5 * 64, 2**15 - 1.25 * 64
    s[bottom, :, 0], s[bottom, :, 1] = 2**15 - 2.0 * 64, 2**15 + 0.5 * 64
    s[:, : 3 * w // 4, 2] = 1
    s[:, 3 * w // 4:, :2] = 12345
    return s


def write_kitti(root, n=N, sizes=None):
    folder = root / "kitti" / "training"
    for i in range(n):
        size = sizes[i] if sizes else (H, W)
        write_rgb(folder / "image_2" / f"{i:06d}_10.png", size, seed=2 * i)
        write_rgb(folder / "image_2" / f"{i:06d}_11.png", size, seed=2 * i + 1)
        write_png16(folder / "flow_occ" / f"{i:06d}_10.png", flow_samples(*size))
        write_grey8(folder / "disp_occ_0" / f"{i:06d}_10.png", np.zeros(size))  # other folders are not read
    return root / "kitti"


def test_flow_png_keeps_16_bits_and_decodes_the_known_vector(tmp_path):
    path = write_png16(tmp_path / "f.png", flow_samples())
    assert read_png16(path, 3).dtype == np.uint16 and np.array_equal(read_png16(path, 3), flow_samples())
    with Image.open(path) as img:  # what PIL would have given: 8 bits, silently
        assert img.mode == "RGB" and not np.array_equal(np.asarray(img).astype(np.uint16), flow_samples())
    flow, valid = read_flow(path)
    assert flow.shape == (2, H, W) and valid.shape == (H, W) and valid.mean() == 0.75
    assert flow[:, 0, 0].tolist() == [3.5, -1.25] and flow[:, -1, 0].tolist() == [-2.0, 0.5]
    assert (flow[:, ~valid] == 0).all()
    eight_bit = write_rgb(tmp_path / "8bit.png", (H, W))
    with pytest.raises(Exception, match="8-bit PNG where the release has 16-bit"):
        read_flow(eight_bit)


def test_data_check_reports_the_known_flow(tmp_path):
    write_kitti(tmp_path)
    doc = check_ok("kitti_flow", tmp_path)
    assert doc["splits"]["train"]["n"] == 9 and doc["splits"]["test"]["n"] == 1
    assert doc["splits"]["train"]["expected"] == 180 and doc["splits"]["test"]["expected"] == 20
    for split in ("train", "test"):
        labels = doc["splits"][split]["labels"]
        assert labels["valid_fraction"] == pytest.approx(0.75)
        assert labels["u_mean"] == pytest.approx(0.75) and labels["v_mean"] == pytest.approx(-0.375)
        assert labels["frames"] == 2


def test_samples_are_frame_pairs_with_flow(tmp_path):
    write_kitti(tmp_path)
    task = get_task("kitti_flow")
    test = task.dataset(task, DataRequest("test", tmp_path, None, None, train=False))
    assert len(test) == 1 and test.items[0][2].name == "000009_10.png"  # the last pair is the test split
    s = test[0]
    assert s["image"].shape == (2, 3, H, W) and s["target"].shape == (2, H, W) and s["valid"].shape == (H, W)
    assert s["target"][:, 0, 0].tolist() == [3.5, -1.25]
    frame_t = torch.from_numpy(np.array(Image.open(test.items[0][0]))).permute(2, 0, 1).float() / 255
    assert torch.allclose(s["image"][0], frame_t)
    half = task.dataset(task, DataRequest("test", tmp_path, 20, None, train=False))[0]  # --resolution 20
    assert half["target"].shape == (2, 20, 20)
    # resizing W 40 -> 20 halves u, H 24 -> 20 scales v by 20/24
    assert half["target"][:, 0, 0].tolist() == pytest.approx([3.5 * 20 / 40, -1.25 * 20 / 24])


def test_eval_end_to_end(tmp_path):
    write_kitti(tmp_path)
    rec = eval_record("kitti_flow", tmp_path, tmp_path / "out")
    assert rec["task"] == "kitti_flow" and rec["status"] == "ok" and rec["metric"] == "one_minus_fl_all"
    assert rec["n"]["test"] == 1 and rec["n"]["train"] + rec["n"]["val"] == 9
    assert rec["train_size"] == 200 and 0.0 <= rec["test"] <= 1.0


def test_a_deleted_frame_is_a_problem_naming_it_and_moves_no_pair(tmp_path):
    folder = write_kitti(tmp_path)
    ds = deleted_is_named("kitti_flow", tmp_path, folder / "training" / "image_2" / "000003_11.png", "test")
    assert [p[2].name for p in ds.items] == ["000009_10.png"]  # still the last id, not shifted


def test_eval_at_native_size_with_pairs_of_two_sizes(tmp_path):
    write_kitti(tmp_path, sizes=[(H, W) if i % 2 else (H + 4, W - 8) for i in range(N)])
    proc = harness("eval", "--encoder", "resnet18", "--task", "kitti_flow", "--data-root", str(tmp_path),
                   "--out", str(tmp_path / "out"), "--epochs", "1", "--grid", "single", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_tiny_split_of_three_pairs_runs(tmp_path):
    """Pixelwise tiny split (issue 39): 3 pairs = 2 train (first 90% by id) + 1 test; val carved from train
    leaves one pair on each side."""
    write_kitti(tmp_path, n=3)
    rec = assert_tiny_split_runs("kitti_flow", tmp_path, tmp_path / "out", 2)
    assert (rec["n"]["train"], rec["n"]["val"], rec["n"]["test"]) == (1, 1, 1)


def test_two_pairs_leave_one_train_pair_too_few_to_carve_val_from(tmp_path):
    """2 pairs = 1 train + 1 test: the carve used to empty train (IndexError); now one line, beforehand too."""
    write_kitti(tmp_path, n=2)
    assert_split_too_small("kitti_flow", tmp_path, tmp_path / "out", "train", 1)


def test_frames_of_one_pair_in_two_sizes_fail_check_as_they_fail_eval(tmp_path):
    """Issue 39: pairs may differ from one another, but a pair's two frames and its flow map are one size;
    check compares them from the headers and names the file eval would refuse."""
    folder = write_kitti(tmp_path)
    odd = write_rgb(folder / "training" / "image_2" / "000004_11.png", (H, W + 2), seed=99)
    check_and_decode_refuse("kitti_flow", tmp_path, "train", size_mismatch(odd, (W + 2, H), "000004_10.png", (W, H)),
                            lambda ds: 4)


def test_a_valid_flag_the_devkit_never_writes_is_refused_naming_file_and_value(tmp_path):
    folder = write_kitti(tmp_path)
    samples = flow_samples()
    samples[3, 4, 2] = 7  # the devkit writes B = 1 (valid) or 0
    bad = write_png16(folder / "training" / "flow_occ" / "000002_10.png", samples)
    with pytest.raises(Exception, match=r"valid flag \(blue channel\) 7 at 1 pixel\(s\)"):
        read_flow(bad)
    rc, doc, _ = data_check("kitti_flow", tmp_path)
    assert rc == 1 and len(doc["problems"]) == 1 and doc["problems"][0].startswith(f"{bad}: valid flag")
