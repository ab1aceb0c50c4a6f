"""CLEVR v1.0 counting from a fixture in the release's layout: RGBA PNGs and scenes JSON whose scene
order differs from the file order (pairing is by image_filename)."""

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tasks.registry import get_task
from tasks.spec import DataRequest

from .fixtures_b import assert_listed, deleted_fails_naming
from .util import (
    assert_split_too_small,
    assert_tiny_split_runs,
    check_ok,
    data_check,
    eval_proc,
    eval_record,
    write_image,
)

N = {"train": 24, "val": 8}
SIZE = 10


def count_of(split: str, i: int) -> int:
    """A known number of objects per image: 3..10 cycling, shifted per split."""
    return 3 + (i * 5 + (split == "val")) % 8


def write_clevr(root: Path, sizes: dict[str, int] = N) -> dict[str, list[int]]:
    folder = root / "CLEVR_v1.0"
    counts = {}
    for split, n in sizes.items():
        scenes = []
        for i in range(n):
            name = f"CLEVR_{split}_{i:06d}.png"
            write_image(folder / "images" / split / name, (SIZE, SIZE), seed=i, mode="RGBA")
            objects = [{"color": "gray", "size": "large", "shape": "cube", "material": "rubber",
                        "3d_coords": [0.0, 0.0, 0.7], "rotation": 0.0, "pixel_coords": [1, 2, 3.0]}
                       for _ in range(count_of(split, i))]
            scenes.append({"image_index": i, "image_filename": name, "split": split, "objects": objects,
                           "relationships": {"left": [[] for _ in objects]}, "directions": {}})
        scenes.reverse()  # scene order != file order: pairing must go by image_filename
        (folder / "scenes").mkdir(parents=True, exist_ok=True)
        (folder / "scenes" / f"CLEVR_{split}_scenes.json").write_text(
            json.dumps({"info": {"split": split, "version": "1.0"}, "scenes": scenes}))
        counts[split] = [count_of(split, i) for i in range(n)]
    return counts


def test_tasks_are_listed_as_the_table():
    assert_listed({"clevr_count": ("structural image-level", "linear", "top1", 100, 1)})


def test_data_check_counts_and_histogram(tmp_path):
    counts = write_clevr(tmp_path)
    doc = check_ok("clevr_count", tmp_path)
    assert set(doc["splits"]) == {"train", "val"}
    for split in N:
        entry = doc["splits"][split]
        assert entry["n"] == N[split] and entry["expected"] == {"train": 70_000, "val": 15_000}[split]
        assert entry["labels"]["classes"] == 8
        assert entry["labels"]["histogram"] == {str(c): counts[split].count(c) for c in range(3, 11)}


def test_labels_pair_by_file_name_and_alpha_is_dropped(tmp_path):
    counts = write_clevr(tmp_path)
    task = get_task("clevr_count")
    ds = task.dataset(task, DataRequest("train", tmp_path, SIZE, None, train=False))
    assert [p.name for p in ds.paths] == [f"CLEVR_train_{i:06d}.png" for i in range(N["train"])]
    assert ds.class_labels().tolist() == [c - 3 for c in counts["train"]]
    sample = ds[5]
    rgba = np.asarray(Image.open(ds.paths[5]))
    assert sample["image"].shape == (3, SIZE, SIZE) and int(sample["target"]) == counts["train"][5] - 3
    assert torch.allclose(sample["image"], torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1).float() / 255)


def test_eval_end_to_end(tmp_path):
    write_clevr(tmp_path)
    rec = eval_record("clevr_count", tmp_path, tmp_path / "out")
    assert rec["status"] == "ok" and rec["metric"] == "top1" and rec["train_size"] == 70_000
    assert rec["n"]["test"] == N["val"] and rec["n"]["train"] + rec["n"]["val"] == N["train"]
    assert rec["val_split"].startswith("stratified 0.1 of 'train'")


def test_a_deleted_image_is_a_problem_naming_it(tmp_path):
    write_clevr(tmp_path)
    gone = tmp_path / "CLEVR_v1.0" / "images" / "val" / "CLEVR_val_000003.png"
    doc = deleted_fails_naming("clevr_count", tmp_path, gone)
    assert doc["splits"]["val"]["n"] == N["val"] - 1 and doc["splits"]["train"]["n"] == N["train"]


def test_an_image_without_a_scene_is_a_problem(tmp_path):
    write_clevr(tmp_path)
    path = tmp_path / "CLEVR_v1.0" / "scenes" / "CLEVR_train_scenes.json"
    doc = json.loads(path.read_text())
    doc["scenes"] = [s for s in doc["scenes"] if s["image_filename"] != "CLEVR_train_000007.png"]
    path.write_text(json.dumps(doc))
    task = get_task("clevr_count")
    ds = task.dataset(task, DataRequest("train", tmp_path, SIZE, None, train=False, strict=False))
    assert len(ds) == N["train"] - 1
    (problem,) = ds.problems
    assert "CLEVR_train_000007.png" in problem and "has no scene" in problem


def test_tiny_split_one_image_per_count_runs(tmp_path):
    """Issue 39: one training image per class left the stratified val empty (IndexError)."""
    counts = write_clevr(tmp_path, {"train": 8, "val": 3})
    assert sorted(counts["train"]) == list(range(3, 11))
    rec = assert_tiny_split_runs("clevr_count", tmp_path, tmp_path / "out", 8)
    assert rec["n"]["val"] == 1 and rec["n"]["test"] == 3


def test_a_train_split_of_one_image_is_one_line_before_any_work(tmp_path):
    write_clevr(tmp_path, {"train": 1, "val": 3})
    assert_split_too_small("clevr_count", tmp_path, tmp_path / "out", "train", 1)


def test_an_empty_test_split_is_one_line_before_training(tmp_path):
    """An official split with no samples (here val, the test split) failed with an IndexError after training."""
    write_clevr(tmp_path, {"train": 8, "val": 0})
    (tmp_path / "CLEVR_v1.0" / "images" / "val").mkdir()  # the folder is there, with no image in it
    rc, doc, _ = data_check("clevr_count", tmp_path)
    assert rc == 1 and doc["problems"] == [f"val: no samples found under {tmp_path / 'CLEVR_v1.0'}"]
    proc = eval_proc("clevr_count", tmp_path, tmp_path / "out", env={"HARNESS_QUIET": ""})
    assert proc.returncode == 1 and "IndexError" not in proc.stderr and "train clevr_count" not in proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert lines == ["error: task clevr_count: val: no samples; add samples (`harness data check --task clevr_count` "
                     "lists what is there)"], proc.stderr[-3000:]
