"""The three AI2-THOR releases (thor_num_steps, thor_egomotion, thor_depth) from fixtures in the
layouts of allenai/ViRB's zips: label files, scene folders, frame pairs, 8-bit depth JPEGs."""

from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.datasets.check import check_task
from tasks.datasets.thor import ACTIONS
from tasks.registry import get_task
from tasks.spec import DataRequest

from .fixtures_b import assert_listed, check_fails_naming, deleted_fails_naming, fails_naming, size_mismatch, write_grey
from .util import assert_tiny_split_runs, data_check, eval_record, write_image

SIZE = 16
STEPS_SCENES = {"train": {"FloorPlan1": 7, "FloorPlan22": 6}, "val": {"FloorPlan301": 6}}
EGO = {"train": 15, "val": 6}
DEPTH_SCENES = {"train": {"FloorPlan5": 5, "FloorPlan7": 4}, "test": {"FloorPlan9": 4}}


def write_num_steps(root: Path) -> dict[str, list[int]]:
    folder = root / "thor_num_steps"
    labels = {}
    for split, scenes in STEPS_SCENES.items():
        lines, ys = [], []
        for s, (scene, n) in enumerate(scenes.items()):
            for i in range(n):
                key = f"{split}/{scene}/{i:05d}"
                y = (i + 2 * s) % 5
                write_image(folder / f"{key}_rgb.jpg", (SIZE, SIZE), seed=i + 10 * s)
                lines.append(f"{key} {y}\n")
                ys.append(y)
        (folder / f"{split}_labels.txt").write_text("".join(reversed(lines)))  # order of lines != file order
        labels[split] = ys
    return labels


def write_egomotion(root: Path, ego: dict[str, int] = EGO) -> dict[str, list[str]]:
    folder = root / "thor_action_prediction"
    actions = {}
    for split, n in ego.items():
        lines, acts = [], []
        for i in range(n):
            name = f"{split}_FloorPlan{i % 3 + 1}_{i}"
            act = ACTIONS[(i * 3 + (split == "val")) % 5]
            write_image(folder / f"{name}_rgb_a.jpg", (SIZE, SIZE), seed=2 * i)
            write_image(folder / f"{name}_rgb_b.jpg", (SIZE, SIZE), seed=2 * i + 1)
            lines.append(f"{name} {act}\n")
            acts.append(act)
        (folder / f"{split}_labels.txt").write_text("".join(lines))
        actions[split] = acts
    return actions


def depth_levels(k: int) -> tuple[int, int]:
    """Grey levels of the left and right halves (8-pixel blocks: exact through a quality-100 JPEG)."""
    return 10 + 20 * k, 250 - 15 * k


def write_depth(root: Path) -> dict[str, list[tuple[int, int]]]:
    folder = root / "thor_depth_prediction"
    levels: dict[str, list[tuple[int, int]]] = {}
    k = 0
    for split, scenes in DEPTH_SCENES.items():
        for scene, n in scenes.items():
            for i in range(n):
                lo, hi = depth_levels(k)
                d = np.full((SIZE, SIZE), lo, np.uint8)
                d[:, SIZE // 2:] = hi
                write_image(folder / split / scene / f"{i}_rgb.jpg", (SIZE, SIZE), seed=k)
                write_grey(folder / split / scene / f"{i}_depth.jpg", d)
                levels.setdefault(split, []).append((lo, hi))
                k += 1
    return levels


def test_tasks_are_listed_as_the_table():
    assert_listed({"thor_num_steps": ("structural image-level", "linear", "top1", 100, 1),
                   "thor_egomotion": ("structural image-level", "fusion", "top1", 100, 2),
                   "thor_depth": ("structural pixelwise", "unet", "neg_l1", 50, 1)})


def test_num_steps_data_check_and_eval(tmp_path):
    labels = write_num_steps(tmp_path)
    rc, doc, err = data_check("thor_num_steps", tmp_path)
    assert rc == 0, err
    assert doc["ok"] and set(doc["splits"]) == {"train", "val"}
    for split in STEPS_SCENES:
        entry = doc["splits"][split]
        assert entry["n"] == len(labels[split])
        assert entry["labels"]["histogram"] == {str(c): labels[split].count(c) for c in range(5)}
    assert doc["splits"]["train"]["expected"] == 60_000
    rec = eval_record("thor_num_steps", tmp_path, tmp_path / "out")
    assert rec["status"] == "ok" and rec["n"]["test"] == len(labels["val"])
    assert rec["n"]["train"] + rec["n"]["val"] == len(labels["train"]) and rec["train_size"] == 60_000


def test_num_steps_pairs_by_key(tmp_path):
    write_num_steps(tmp_path)
    task = get_task("thor_num_steps")
    ds = task.dataset(task, DataRequest("train", tmp_path, 8, None, train=False))
    for path, y in zip(ds.paths, ds.class_labels(), strict=True):
        scene, i = path.parent.name, int(path.name.split("_")[0])
        assert y == (i + 2 * list(STEPS_SCENES["train"]).index(scene)) % 5


def test_num_steps_a_deleted_frame_or_label_line_is_a_problem(tmp_path):
    write_num_steps(tmp_path)
    gone = tmp_path / "thor_num_steps" / "train" / "FloorPlan22" / "00003_rgb.jpg"
    gone.unlink()
    check_fails_naming("thor_num_steps", tmp_path, str(gone))
    labels = tmp_path / "thor_num_steps" / "val_labels.txt"
    labels.write_text("".join(x for x in labels.read_text().splitlines(True) if "00002" not in x))
    task = get_task("thor_num_steps")
    ds = task.dataset(task, DataRequest("val", tmp_path, 8, None, train=False, strict=False))
    assert len(ds) == 5 and len(ds.problems) == 1
    assert "FloorPlan301/00002_rgb.jpg: has no label line in val_labels.txt" in ds.problems[0]


def test_egomotion_data_check_frames_and_eval(tmp_path):
    actions = write_egomotion(tmp_path)
    rc, doc, err = data_check("thor_egomotion", tmp_path)
    assert rc == 0, err
    for split in EGO:
        labels = doc["splits"][split]["labels"]
        assert labels["frames"] == 2 and labels["classes"] == 5
        assert labels["histogram"] == {a: actions[split].count(a) for a in ACTIONS}
    task = get_task("thor_egomotion")
    ds = task.dataset(task, DataRequest("val", tmp_path, 8, None, train=False))
    j = [p[0].name for p in ds.paths].index("val_FloorPlan2_1_rgb_a.jpg")  # listed in name order
    assert [p.name for p in ds.paths[j]] == ["val_FloorPlan2_1_rgb_a.jpg", "val_FloorPlan2_1_rgb_b.jpg"]
    sample = ds[j]
    assert sample["image"].shape == (2, 3, 8, 8) and int(sample["target"]) == ACTIONS.index(actions["val"][1])
    rec = eval_record("thor_egomotion", tmp_path, tmp_path / "out")
    assert rec["status"] == "ok" and rec["n"]["test"] == EGO["val"]
    assert rec["n"]["train"] + rec["n"]["val"] == EGO["train"]


def test_egomotion_tiny_split_one_pair_per_class_runs(tmp_path):
    """Multi-frame tiny split (issue 39): 5 training pairs of 5 classes crashed with an IndexError, the
    stratified carve leaving val empty. Val now takes one pair (whose class train then lacks, said in
    the record)."""
    actions = write_egomotion(tmp_path, {"train": 5, "val": 5})
    assert sorted(actions["train"]) == sorted(ACTIONS)
    rec = assert_tiny_split_runs("thor_egomotion", tmp_path, tmp_path / "out", 5)
    assert (rec["n"]["train"], rec["n"]["val"], rec["n"]["test"]) == (4, 1, 5)
    assert "every class has a single sample" in rec["val_split"]
    warnings = check_task(get_task("thor_egomotion"), tmp_path)["warnings"]
    assert "train: every class has a single sample, so the validation split carved from it holds classes that " \
           "train lacks" in warnings


def test_egomotion_a_deleted_second_frame_is_a_problem(tmp_path):
    write_egomotion(tmp_path)
    gone = tmp_path / "thor_action_prediction" / "train_FloorPlan1_3_rgb_b.jpg"
    gone.unlink()
    doc = fails_naming("thor_egomotion", tmp_path, str(gone))
    assert doc["splits"]["train"]["n"] == EGO["train"] - 1 and doc["splits"]["val"]["n"] == EGO["val"]


def test_egomotion_an_unknown_action_is_a_problem(tmp_path):
    write_egomotion(tmp_path)
    labels = tmp_path / "thor_action_prediction" / "val_labels.txt"
    labels.write_text(labels.read_text().replace("val_FloorPlan1_0 RotateLeft", "val_FloorPlan1_0 Jump"))
    task = get_task("thor_egomotion")
    ds = task.dataset(task, DataRequest("val", tmp_path, 8, None, train=False, strict=False))
    assert len(ds) == EGO["val"] - 1 and any("action 'Jump'" in p for p in ds.problems)


def test_depth_data_check_reports_relative_depth_stats(tmp_path):
    levels = write_depth(tmp_path)
    rc, doc, err = data_check("thor_depth", tmp_path)
    assert rc == 0, err
    assert set(doc["splits"]) == {"train", "test"}
    for split, lv in levels.items():
        entry = doc["splits"][split]
        assert entry["n"] == len(lv)
        values = [v for pair in lv for v in pair]
        assert entry["labels"] == pytest.approx({"valid_fraction": 1.0, "mean": np.mean(values) / 255,
                                                 "min": min(values) / 255, "max": max(values) / 255,
                                                 "unit": "relative"})


def test_depth_loader_target_and_valid(tmp_path):
    levels = write_depth(tmp_path)
    task = get_task("thor_depth")
    ds = task.dataset(task, DataRequest("test", tmp_path, SIZE, None, train=False))
    for i, (lo, hi) in enumerate(levels["test"]):
        sample = ds[i]
        want = torch.full((1, SIZE, SIZE), lo / 255)
        want[..., SIZE // 2:] = hi / 255
        assert sample["image"].shape == (3, SIZE, SIZE) and sample["valid"].all()
        assert torch.allclose(sample["target"], want)
    small = task.dataset(task, DataRequest("test", tmp_path, 4, None, train=False))[0]
    assert small["target"].shape == (1, 4, 4) and small["valid"].shape == (4, 4) and small["valid"].all()
    lo, hi = levels["test"][0]
    assert torch.allclose(small["target"][0, :, 0], torch.full((4,), lo / 255))
    assert torch.allclose(small["target"][0, :, -1], torch.full((4,), hi / 255))


def test_depth_eval_and_a_deleted_depth_map(tmp_path):
    levels = write_depth(tmp_path)
    rec = eval_record("thor_depth", tmp_path, tmp_path / "out")
    assert rec["status"] == "ok" and rec["metric"] == "neg_l1" and rec["n"]["test"] == len(levels["test"])
    assert rec["n"]["train"] + rec["n"]["val"] == len(levels["train"]) and rec["test"] <= 0
    doc = deleted_fails_naming("thor_depth", tmp_path, tmp_path / "thor_depth_prediction" / "train" / "FloorPlan7"
                               / "2_depth.jpg")
    assert doc["splits"]["train"]["n"] == len(levels["train"]) - 1


def test_depth_of_another_size_than_its_frame_is_a_check_problem(tmp_path):
    write_depth(tmp_path)
    odd = write_grey(tmp_path / "thor_depth_prediction" / "test" / "FloorPlan9" / "1_depth.jpg",
                     np.zeros((SIZE, SIZE * 2), np.uint8))
    doc = check_task(get_task("thor_depth"), tmp_path)
    assert doc["problems"] == [size_mismatch(odd, (2 * SIZE, SIZE), "1_rgb.jpg", (SIZE, SIZE))]
