"""nuScenes egomotion: the paper's pair lists ``nuScenes/nuScenes_{train,test}.json`` over the
nuScenes camera images, as released (allenai/ViRB's README links the two lists; the images come
from nuScenes' own ``samples`` and ``sweeps`` downloads).

Each list is a JSON array of ``{"img_a": ..., "img_b": ..., "label": ...}``; the two paths are
relative to the ``nuScenes/`` folder and name two consecutive frames (a, then b). Classes:
forward, forward-left, forward-right, no motion. The reference numbered the labels it found in
each file in sorted order, without publishing them; the names it was given sort in exactly the
order above, so a string label is read by name (case, ``_``, ``-`` and spaces are not
significant: ``no_motion`` = ``no motion``) and an integer label 0..3 as that index. Which of the
two the released lists hold could not be confirmed (the lists are not public text); any other
label is a problem naming the entry, not a silently new class.

Every named image is looked up in one ``os.scandir`` of its folder: a missing one is a problem
naming it. Splits: train (28,000 pairs in the paper) and test as released; 10% of train is
carved (stratified) for validation.
"""

from __future__ import annotations

import json

from harness.common.errors import HarnessError

from ..registry import register_task
from ..spec import DataLayout, DataRequest, TaskSpec
from .base import FileClassification, Problems, image_task, require, task_folder
from .thor import FolderIndex

FOLDER = "nuScenes"
CLASS_NAMES: tuple[str, ...] = ("forward", "forward-left", "forward-right", "no motion")
_BY_NAME = {n.replace(" ", "-"): i for i, n in enumerate(CLASS_NAMES)}

LAYOUT = DataLayout(
    folder=FOLDER,
    tree="""nuScenes/
  nuScenes_train.json     ([{"img_a": "<path under nuScenes/>", "img_b": "...", "label": ...}, ...])
  nuScenes_test.json
  samples/CAM_*/...jpg    (nuScenes keyframes; as named by img_a / img_b)
  sweeps/CAM_*/...jpg     (nuScenes sweeps; as named by img_a / img_b)""",
    url="https://www.nuscenes.org/ (samples and sweeps) and the pair lists "
        "https://prior-datasets.s3.us-east-2.amazonaws.com/ViRB/nuScenes_{train,test}.json (allenai/ViRB README)",
    counts={"train": 28_000},
    notes="labels: forward, forward-left, forward-right, no motion (by name, or index 0..3); test = the list's "
          "test split (its size is not published); val = 10% of train carved with the run's seed (stratified)",
)


def label_index(label: object) -> int | None:
    """The class index of a released label (a class name or an index 0..3), None if it is neither."""
    if isinstance(label, bool):
        return None
    if isinstance(label, int):
        return label if 0 <= label < len(CLASS_NAMES) else None
    if isinstance(label, str):
        key = "-".join(label.strip().lower().replace("_", " ").replace("-", " ").split())
        if key.isdigit():
            return label_index(int(key))
        return _BY_NAME.get(key)
    return None


def build(task: TaskSpec, req: DataRequest) -> FileClassification:
    root = task_folder(task, req)
    if req.split not in ("train", "test"):
        raise HarnessError(f"task {task.name}: unknown split {req.split!r} (the pair lists are train and test)")
    problems = Problems(task.name, req.strict)
    path = require(root / f"nuScenes_{req.split}.json", task.name, "the pair list")
    try:
        entries = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HarnessError(f"{path}: not a readable JSON pair list ({exc})") from None
    if not isinstance(entries, list):
        raise HarnessError(f"{path}: holds a {type(entries).__name__}, not a list of {{img_a, img_b, label}}")
    index = FolderIndex()
    items = []
    for i, e in enumerate(entries):
        where = f"{path}[{i}]"
        if not isinstance(e, dict) or not all(isinstance(e.get(k), str) for k in ("img_a", "img_b")):
            problems.add(where, "expected {\"img_a\": path, \"img_b\": path, \"label\": ...}")
            continue
        y = label_index(e.get("label"))
        if y is None:
            problems.add(where, f"label {e.get('label')!r} is not one of {', '.join(CLASS_NAMES)} (or 0..3)")
            continue
        frames = (root / e["img_a"], root / e["img_b"])
        missing = [p for p in frames if not index.exists(p)]
        for p in missing:
            problems.add(p, f"missing (named in {path.name}[{i}])")
        if not missing:
            items.append((frames, y))
    problems.raise_if_any()
    return FileClassification(task, req, items, problems)


NUSCENES_EGOMOTION = register_task(image_task(
    name="nuscenes_egomotion", paper_name="nuScenes Egomotion", nature="structural", head="fusion", dataset=build,
    class_names=CLASS_NAMES, frames=2, epochs=100, train_size=28_000, layout=LAYOUT,
    description="ego-motion between two consecutive camera frames (forward, forward-left, forward-right, no "
                "motion); both frames resized to 224 x 224 without keeping the aspect ratio (as the reference)",
))
