"""EgoHands from a fixture in the release's layout: frames and a MATLAB v5 polygons.mat per video,
rasterised into known hand masks that are cached by the file's hash."""


import numpy as np
import pytest
from scipy.io import savemat

from tasks.datasets import egohands
from tasks.datasets.egohands import HANDS, SPLIT_VIDEOS, rasterise, read_polygons
from tasks.registry import get_task
from tasks.spec import DataRequest

from .fixtures_b import check_and_decode_refuse, eval_fails_naming, size_mismatch
from .fixtures_pix import write_rgb
from .util import check_ok, eval_record

H, W = 24, 40
FRAMES = ("frame_0011.jpg", "frame_0036.jpg", "frame_0099.jpg")  # frame numbers of the video, not 1..3
VIDEOS = {"train": ["CARDS_COURTYARD_H_S", "JENGA_OFFICE_B_S"], "val": ["CHESS_COURTYARD_H_S"],
          "test": ["CARDS_COURTYARD_B_T"]}

# The 48 folder names of _LABELLED_SAMPLES and the MainSplit index of the release's getMetaBy.m (rows TEST,
# VALID, TRAIN over the videos of metadata.mat).
ALL_VIDEOS = [f"{a}_{loc}_{pair}" for a, pairs in {
    "CARDS": ["COURTYARD:B_T H_S S_H T_B", "LIVINGROOM:B_T H_S S_H T_B", "OFFICE:B_S H_T S_B T_H"],
    "CHESS": ["COURTYARD:B_T H_S S_H T_B", "LIVINGROOM:B_S H_T S_B T_H", "OFFICE:B_S H_T S_B T_H"],
    "JENGA": ["COURTYARD:B_H H_B S_T T_S", "LIVINGROOM:B_H H_B S_T T_S", "OFFICE:B_S H_T S_B T_H"],
    "PUZZLE": ["COURTYARD:B_S H_T S_B T_H", "LIVINGROOM:B_T H_S S_H T_B", "OFFICE:B_H H_B S_T T_S"],
}.items() for spec in pairs for loc, ps in [spec.split(":")] for pair in ps.split()]
MAIN_SPLIT = {
    "test": "1 0 0 0 0 0 0 0 0 0 1 0 1 0 0 0 0 0 0 1 0 0 0 0 0 0 0 0 0 0 1 0 0 1 0 0 0 1 0 0 0 0 0 1 0 0 0 0",
    "val": "0 0 0 0 0 0 1 0 0 0 0 0 0 1 0 0 0 0 0 0 0 0 0 0 0 0 0 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1 0",
    "train": "0 1 1 1 1 1 0 1 1 1 0 1 0 0 1 1 1 1 1 0 1 1 1 1 1 1 1 0 1 1 0 1 1 0 1 1 1 0 1 1 1 1 1 0 1 1 0 1",
}


def rect(x0, y0, x1, y1):
    """A rectangle's corners in MATLAB's 1-based (x, y)."""
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def frame_polygons(shift=0):
    """Frame 0: my left x 1-10, y 1-8 (80 px) under your right x 6-15, y 5-12 (80 px, 20 of them
    covered by my left); frame 1: no hands; frame 2: my right x 21-40, y 13-24 (240 px)."""
    return [{"myleft": rect(1, 1, 10, 8), "yourright": rect(6 + shift, 5, 15 + shift, 12)}, {},
            {"myright": rect(21, 13, 40, 24)}]


def write_polygons(path, frames):
    structs = np.empty((1, len(frames)), dtype=[(h, object) for h in HANDS])
    for k, hands in enumerate(frames):
        for h in HANDS:
            structs[0, k][h] = hands.get(h, np.zeros((0, 0)))
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"polygons": structs})


def write_egohands(root):
    samples = root / "egohands_data" / "_LABELLED_SAMPLES"
    seed = 0
    for names in VIDEOS.values():
        for v in names:
            for f in FRAMES:
                write_rgb(samples / v / f, (H, W), seed)
                seed += 1
            write_polygons(samples / v / "polygons.mat", frame_polygons())
    (root / "egohands_data" / "metadata.mat").write_bytes(b"not read")
    return samples


def expected_masks():
    m0 = np.zeros((H, W), np.uint8)
    m0[4:12, 5:15] = 4   # your right
    m0[0:8, 0:10] = 1    # my left, drawn over your right
    m2 = np.zeros((H, W), np.uint8)
    m2[12:24, 20:40] = 2
    return [m0, np.zeros((H, W), np.uint8), m2]


def test_split_is_the_release_main_split():
    assert len(ALL_VIDEOS) == 48 and ALL_VIDEOS == sorted(ALL_VIDEOS)
    for split, row in MAIN_SPLIT.items():
        assert SPLIT_VIDEOS[split] == {v for v, bit in zip(ALL_VIDEOS, row.split(), strict=True) if bit == "1"}
    assert [len(SPLIT_VIDEOS[s]) for s in ("train", "val", "test")] == [36, 4, 8]


def test_polygons_rasterise_to_known_masks(tmp_path):
    write_polygons(tmp_path / "polygons.mat", frame_polygons())
    frames = read_polygons(tmp_path / "polygons.mat")
    assert len(frames) == 3 and set(frames[0]) == {"myleft", "yourright"} and frames[1] == {}
    for got, want in zip([rasterise(f, (H, W)) for f in frames], expected_masks(), strict=True):
        assert np.array_equal(got, want)


def test_data_check_reports_the_known_hand_shares(tmp_path):
    write_egohands(tmp_path)
    doc = check_ok("egohands_seg", tmp_path)
    assert {s: e["n"] for s, e in doc["splits"].items()} == {"train": 6, "val": 3, "test": 3}
    assert doc["splits"]["train"]["expected"] == 3_600
    total = 3 * H * W
    for entry in doc["splits"].values():
        assert entry["labels"]["classes"] == 5
        assert entry["labels"]["fractions"] == pytest.approx({
            "background": (total - 380) / total, "my left": 80 / total, "my right": 240 / total,
            "your left": 0.0, "your right": 60 / total, "ignore": 0.0})


def test_masks_are_cached_reused_and_rebuilt_when_polygons_change(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    samples = write_egohands(tmp_path)
    task = get_task("egohands_seg")
    req = DataRequest("test", tmp_path, None, None, train=False)
    ds = task.dataset(task, req)
    assert [p[0].name for p in ds.items] == list(FRAMES)
    for i, want in enumerate(expected_masks()):
        assert np.array_equal(ds[i]["target"].numpy(), want)
    (cached,) = (tmp_path / "cache" / "egohands").glob("CARDS_COURTYARD_B_T_*.npz")
    digest = egohands.file_sha256(samples / "CARDS_COURTYARD_B_T" / "polygons.mat")
    assert cached.name == f"CARDS_COURTYARD_B_T_{digest}_{H}x{W}_v{egohands.CACHE_VERSION}.npz"
    calls = []
    monkeypatch.setattr(egohands, "rasterise", lambda *a: calls.append(a) or rasterise(*a))
    stamp = cached.stat().st_mtime_ns
    task.dataset(task, req)  # second read: the cache is reused
    assert calls == [] and cached.stat().st_mtime_ns == stamp
    write_polygons(samples / "CARDS_COURTYARD_B_T" / "polygons.mat", frame_polygons(shift=10))
    ds = task.dataset(task, req)  # the source changed: rasterised again under the new hash, the old file gone
    assert len(calls) == 3 and not cached.exists()
    assert len(list((tmp_path / "cache" / "egohands").glob("CARDS_COURTYARD_B_T_*.npz"))) == 1
    m0 = ds[0]["target"].numpy()
    assert (m0 == 4).sum() == 80 and m0[4, 15] == 4 and m0[4, 14] == 0  # your right moved 10 px right


def test_eval_end_to_end(tmp_path):
    write_egohands(tmp_path)
    rec = eval_record("egohands_seg", tmp_path, tmp_path / "out")
    assert rec["task"] == "egohands_seg" and rec["status"] == "ok" and rec["metric"] == "miou"
    assert rec["n"] == {"train": 6, "val": 3, "test": 3, "aug_copies": 1}
    assert rec["train_size"] == 4_800 and 0.0 <= rec["test"] <= 1.0


def test_a_deleted_frame_or_polygons_file_is_a_problem_naming_it(tmp_path):
    samples = write_egohands(tmp_path)
    (samples / "JENGA_OFFICE_B_S" / "frame_0036.jpg").unlink()
    gone = samples / "CARDS_COURTYARD_H_S" / "polygons.mat"
    gone.unlink()
    task = get_task("egohands_seg")
    ds = task.dataset(task, DataRequest("train", tmp_path, None, None, train=True, strict=False))
    assert len(ds) == 0  # neither video is paired by guesswork
    assert any(p.startswith(str(gone)) and "missing" in p for p in ds.problems)
    mismatch = str(samples / "JENGA_OFFICE_B_S" / "polygons.mat")
    assert any(p.startswith(mismatch) and "3 labelled frames" in p and "2 frame_NNNN.jpg" in p for p in ds.problems)
    eval_fails_naming("egohands_seg", tmp_path, tmp_path / "out", "polygons.mat")


def test_a_frame_of_another_size_than_its_videos_masks_fails_check_and_a_nan_vertex_is_refused(tmp_path):
    """A video's masks are drawn at its first frame's size: check compares every frame with it (headers
    only), as eval would refuse the pair; a vertex the release never writes (NaN) names the file."""
    samples = write_egohands(tmp_path)
    odd = write_rgb(samples / "JENGA_OFFICE_B_S" / FRAMES[2], (H, W + 8), seed=50)
    check_and_decode_refuse("egohands_seg", tmp_path, "train", size_mismatch(odd, (W + 8, H), FRAMES[0], (W, H)),
                            lambda ds: [p[0] for p in ds.items].index(odd))
    broken = frame_polygons()
    broken[2]["myright"][1, 0] = np.nan
    write_polygons(tmp_path / "p.mat", broken)
    with pytest.raises(Exception, match=r"p\.mat: frame 3's myright polygon has a vertex coordinate nan"):
        read_polygons(tmp_path / "p.mat")
