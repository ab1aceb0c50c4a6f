"""Kinetics-400 from a fixture in the paper's layout: annotation JSON in the Kinetics-400 format and
frames ``<id[:2]>/<id>_<k>.jpg`` numbered 1..12, whose numeric order (2 before 10) differs from
the order of their names."""

import json
from pathlib import Path

import numpy as np

from tasks.datasets.kinetics import CLASS_NAMES, pick_frames
from tasks.registry import get_task
from tasks.spec import DataRequest

from .fixtures_b import assert_listed, deleted_fails_naming, write_grey
from .util import data_check, eval_record

# clip ids with '_' and '-' inside (as YouTube ids have), some sharing a prefix folder
CLIPS = {"train": [f"{p}{i}_x-{i:04d}" for p in ("ab", "Zq", "-_") for i in range(4)],
         "validate": [f"{p}{i}Kx_{i:03d}" for p in ("ab", "k9") for i in range(3)]}
NUM_FRAMES = {"train": 12, "validate": 6}
LABELS = ("abseiling", "passing American football (in game)", "zumba")


def level(k: int) -> int:
    return 15 * k  # frame k of every clip is this grey level: the order of the frames is visible


def write_kinetics(root: Path, absent: int = 2) -> dict[str, list[str]]:
    folder = root / "kinetics400"
    labels = {}
    for split, clips in CLIPS.items():
        ann, ys = {}, []
        for i, clip in enumerate(clips):
            y = LABELS[i % 3]
            ann[clip] = {"annotations": {"label": y, "segment": [1.0, 11.0]}, "duration": 10.0, "subset": split,
                         "url": f"https://www.youtube.com/watch?v={clip}"}
            for k in range(1, NUM_FRAMES[split] + 1):
                write_grey(folder / split / clip[:2] / f"{clip}_{k}.jpg", np.full((8, 8), level(k), np.uint8))
            ys.append(y)
        for j in range(absent):  # annotated, never downloaded: no frames
            ann[f"gone{j}_{split}"] = {"annotations": {"label": "yoga", "segment": [0, 10]}, "duration": 10.0,
                                       "subset": split, "url": "https://www.youtube.com/watch?v=gone"}
        (folder / "annotations").mkdir(parents=True, exist_ok=True)
        (folder / "annotations" / f"{split}.json").write_text(json.dumps(ann))
        labels[split] = ys
    return labels


def test_tasks_are_listed_as_the_table():
    assert_listed({"kinetics_action": ("semantic image-level", "fusion", "top1", 100, 6)})
    assert len(CLASS_NAMES) == 400 and list(CLASS_NAMES) == sorted(CLASS_NAMES)


def test_six_frames_evenly_spaced_in_numeric_order(tmp_path):
    write_kinetics(tmp_path)
    task = get_task("kinetics_action")
    ds = task.dataset(task, DataRequest("train", tmp_path, 8, None, train=False))
    assert len(ds) == len(CLIPS["train"])
    clip = "Zq2_x-0002"
    i = [p[0].name.rsplit("_", 1)[0] for p in ds.paths].index(clip)
    # 12 frames: k = 2, 4, 6, 8, 10, 12 -- not the name order _10, _12, _2, ...
    assert [p.name for p in ds.paths[i]] == [f"{clip}_{k}.jpg" for k in (2, 4, 6, 8, 10, 12)]
    image = ds[i]["image"]
    assert image.shape == (6, 3, 8, 8)
    assert np.allclose(image.mean(dim=(1, 2, 3)).numpy() * 255, [level(k) for k in (2, 4, 6, 8, 10, 12)], atol=0.5)
    val = task.dataset(task, DataRequest("validate", tmp_path, 8, None, train=False))
    assert all([p.name.rsplit("_", 1)[1] for p in frames] == [f"{k}.jpg" for k in range(1, 7)] for frames in val.paths)
    assert pick_frames(12) == [1, 3, 5, 7, 9, 11] and pick_frames(6) == [0, 1, 2, 3, 4, 5]


def test_data_check_histogram_frames_and_clips_not_downloaded(tmp_path):
    labels = write_kinetics(tmp_path)
    rc, doc, err = data_check("kinetics_action", tmp_path)
    assert rc == 0, err
    assert set(doc["splits"]) == {"train", "validate"} and doc["splits"]["train"]["expected"] == 8_333
    for split, ys in labels.items():
        entry = doc["splits"][split]
        assert entry["n"] == len(CLIPS[split]) and entry["labels"]["frames"] == 6
        hist = entry["labels"]["histogram"]
        assert len(hist) == 400 and {c: n for c, n in hist.items() if n} == {y: ys.count(y) for y in LABELS}
    assert any("2 of the 14 clips in train.json have no frames" in w for w in doc["warnings"]), doc["warnings"]


def test_eval_end_to_end(tmp_path):
    write_kinetics(tmp_path)
    rec = eval_record("kinetics_action", tmp_path, tmp_path / "out")
    assert rec["status"] == "ok" and rec["n"]["test"] == len(CLIPS["validate"]) and rec["train_size"] == 50_000
    assert rec["n"]["train"] + rec["n"]["val"] == len(CLIPS["train"])


def test_a_deleted_frame_is_a_problem_naming_it(tmp_path):
    write_kinetics(tmp_path)
    doc = deleted_fails_naming("kinetics_action", tmp_path,
                               tmp_path / "kinetics400" / "train" / "-_" / "-_1_x-0001_7.jpg")
    assert doc["splits"]["train"]["n"] == len(CLIPS["train"]) - 1


def test_too_few_frames_unknown_labels_and_frames_without_a_clip_are_problems(tmp_path):
    write_kinetics(tmp_path)
    folder = tmp_path / "kinetics400" / "validate"
    for k in (5, 6):  # 4 frames left: fewer than 6
        (folder / "k9" / f"k91Kx_001_{k}.jpg").unlink()
    (folder / "ab" / "ab0Kx_000_1.jpg").unlink()  # the first frame: frames 2..6 are not a clip's start
    ann_path = tmp_path / "kinetics400" / "annotations" / "validate.json"
    ann = json.loads(ann_path.read_text())
    ann["ab2Kx_002"]["annotations"]["label"] = "juggling chainsaws"
    ann_path.write_text(json.dumps(ann))
    write_grey(folder / "zz" / "zz_stray_1.jpg", np.zeros((8, 8), np.uint8))
    task = get_task("kinetics_action")
    ds = task.dataset(task, DataRequest("validate", tmp_path, 8, None, train=False, strict=False))
    assert len(ds) == len(CLIPS["validate"]) - 3
    assert len(ds.problems) == 4, ds.problems
    assert any(p.startswith(str(folder / "ab" / "ab0Kx_000_1.jpg") + ": missing") for p in ds.problems)
    assert any(p.startswith(str(folder / "k9" / "k91Kx_001_5.jpg")) and "has 4 frames, 6 are needed" in p
               for p in ds.problems)
    assert any("ab2Kx_002" in p and "'juggling chainsaws' is not one of the 400" in p for p in ds.problems)
    assert any(p.startswith(str(folder / "zz" / "zz_stray_1.jpg")) and "no entry in validate.json" in p
               for p in ds.problems)
