"""nuScenes egomotion from a fixture in the paper's layout: the pair lists (a JSON array of
{img_a, img_b, label}) and the nuScenes camera images they name."""

import json
from pathlib import Path

import pytest

from tasks.datasets.nuscenes import CLASS_NAMES, label_index
from tasks.registry import get_task
from tasks.spec import DataRequest

from .fixtures_b import assert_listed, deleted_fails_naming
from .util import data_check, eval_record, write_image

N = {"train": 16, "test": 6}
# released label spellings vary in case and separators; all four classes, by name
SPELLINGS = ("forward", "Forward-Left", "forward_right", "no motion")


def write_nuscenes(root: Path) -> dict[str, list[int]]:
    folder = root / "nuScenes"
    labels = {}
    for split, n in N.items():
        entries, ys = [], []
        for i in range(n):
            stem = f"n008-2018-08-01-15-16-36-0400__CAM_FRONT__15331{split == 'test'}{i:05d}"
            a, b = f"sweeps/CAM_FRONT/{stem}0.jpg", f"samples/CAM_FRONT/{stem}1.jpg"
            write_image(folder / a, (9, 16), seed=2 * i)
            write_image(folder / b, (9, 16), seed=2 * i + 1)
            y = (i * 3 + (split == "test")) % 4
            entries.append({"img_a": a, "img_b": b, "label": SPELLINGS[y]})
            ys.append(y)
        (folder / f"nuScenes_{split}.json").write_text(json.dumps(entries))
        labels[split] = ys
    return labels


def test_tasks_are_listed_as_the_table():
    assert_listed({"nuscenes_egomotion": ("structural image-level", "fusion", "top1", 100, 2)})


@pytest.mark.parametrize("label,index", [("forward", 0), ("FORWARD LEFT", 1), ("forward-right", 2), ("no_motion", 3),
                                         ("no-motion", 3), (0, 0), (3, 3), ("2", 2), (4, None), (True, None),
                                         ("left", None), (None, None), (1.0, None)])
def test_label_encodings(label, index):
    assert label_index(label) == index


def test_data_check_histogram_and_frames(tmp_path):
    labels = write_nuscenes(tmp_path)
    rc, doc, err = data_check("nuscenes_egomotion", tmp_path)
    assert rc == 0, err
    assert set(doc["splits"]) == {"train", "test"} and doc["splits"]["train"]["expected"] == 28_000
    for split in N:
        entry = doc["splits"][split]
        assert entry["n"] == N[split] and entry["labels"]["frames"] == 2
        assert entry["labels"]["histogram"] == {c: labels[split].count(i) for i, c in enumerate(CLASS_NAMES)}


def test_pairs_keep_frame_order_a_then_b(tmp_path):
    write_nuscenes(tmp_path)
    task = get_task("nuscenes_egomotion")
    ds = task.dataset(task, DataRequest("test", tmp_path, 8, None, train=False))
    a, b = ds.paths[2]
    assert a.parent.name == b.parent.name == "CAM_FRONT" and (a.parts[-3], b.parts[-3]) == ("sweeps", "samples")
    assert ds[2]["image"].shape == (2, 3, 8, 8) and int(ds[2]["target"]) == (2 * 3 + 1) % 4


def test_eval_end_to_end(tmp_path):
    write_nuscenes(tmp_path)
    rec = eval_record("nuscenes_egomotion", tmp_path, tmp_path / "out")
    assert rec["status"] == "ok" and rec["n"]["test"] == N["test"] and rec["train_size"] == 28_000
    assert rec["n"]["train"] + rec["n"]["val"] == N["train"]


def test_a_deleted_image_is_a_problem_naming_it(tmp_path):
    write_nuscenes(tmp_path)
    entries = json.loads((tmp_path / "nuScenes" / "nuScenes_train.json").read_text())
    doc = deleted_fails_naming("nuscenes_egomotion", tmp_path, tmp_path / "nuScenes" / entries[5]["img_b"])
    assert doc["splits"]["train"]["n"] == N["train"] - 1


def test_an_unknown_label_is_a_problem_naming_the_entry(tmp_path):
    write_nuscenes(tmp_path)
    path = tmp_path / "nuScenes" / "nuScenes_test.json"
    entries = json.loads(path.read_text())
    entries[3]["label"] = "reverse"
    path.write_text(json.dumps(entries))
    task = get_task("nuscenes_egomotion")
    ds = task.dataset(task, DataRequest("test", tmp_path, 8, None, train=False, strict=False))
    assert len(ds) == N["test"] - 1
    (problem,) = ds.problems
    assert problem.startswith(f"{path}[3]: label 'reverse'")
