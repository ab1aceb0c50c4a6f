"""CLEVR v1.0 object counting: ``CLEVR_v1.0/{images,scenes}``, as released.

``scenes/CLEVR_{train,val}_scenes.json`` is ``{"info": ..., "scenes": [...]}`` with one scene per
image: ``image_filename`` and the list of ``objects``. The label is the number of objects; CLEVR
v1.0 scenes hold 3 to 10, so there are 8 classes named "3".."10" (class index = count - 3). Images
(``images/{train,val}/*.png``, RGBA) are paired with scenes by file name, never by order: an image
without a scene, or a scene without its image, is a problem naming it; the alpha channel is
dropped. torchvision's CLEVRClassification is not used: it expects an extra ``clevr/`` folder
above ``CLEVR_v1.0`` and fails with a KeyError on an image that has no scene.

Splits: the paper trains on the 70,000 train images; the official val split (15,000) is the test
split (the official test split has no scenes); a stratified, seeded 10% of train is carved for
validation. A scenes file is parsed once per process (a parsed summary is kept, keyed by the
file's size and mtime), since the runner lists train more than once.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from harness.common.errors import HarnessError

from ..registry import register_task
from ..spec import DataLayout, DataRequest, SplitSpec, TaskSpec
from .base import FileClassification, Problems, image_task, list_files, require, task_folder

FOLDER = "CLEVR_v1.0"
SPLITS = ("train", "val")
MIN_OBJECTS, MAX_OBJECTS = 3, 10
CLASS_NAMES: tuple[str, ...] = tuple(str(n) for n in range(MIN_OBJECTS, MAX_OBJECTS + 1))

LAYOUT = DataLayout(
    folder=FOLDER,
    tree="""CLEVR_v1.0/
  images/train/CLEVR_train_NNNNNN.png   (70,000, RGBA)
  images/val/CLEVR_val_NNNNNN.png       (15,000, RGBA)
  scenes/CLEVR_train_scenes.json        ({"info": ..., "scenes": [{"image_filename": ..., "objects": [...]}, ...]})
  scenes/CLEVR_val_scenes.json""",
    url="https://cs.stanford.edu/people/jcjohns/clevr/ (CLEVR v1.0, CLEVR_v1.0.zip)",
    counts={"train": 70_000, "val": 15_000},
    notes="label = number of objects (3..10, classes '3'..'10'); test = the official val split; val = 10% of "
          "train carved with the run's seed (stratified)",
)


@functools.lru_cache(maxsize=4)
def _parse_scenes(path: str, size: int, mtime_ns: int) -> tuple[dict[str, int], tuple[str, ...]]:
    """{image_filename: number of objects} and the structural problems of one scenes file."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HarnessError(f"{path}: not a readable CLEVR scenes JSON ({exc})") from None
    scenes = doc.get("scenes") if isinstance(doc, dict) else None
    if not isinstance(scenes, list):
        raise HarnessError(f"{path}: no 'scenes' list (expected {{\"info\": ..., \"scenes\": [...]}})")
    counts: dict[str, int] = {}
    problems: list[str] = []
    for i, scene in enumerate(scenes):
        name = scene.get("image_filename") if isinstance(scene, dict) else None
        objects = scene.get("objects") if isinstance(scene, dict) else None
        if not isinstance(name, str) or not isinstance(objects, list):
            problems.append(f"{path}: scene {i} has no image_filename or no objects list")
        elif name in counts:
            problems.append(f"{path}: {name} has two scenes")
        else:
            counts[name] = len(objects)
    return counts, tuple(problems)


def read_scenes(path: Path) -> tuple[dict[str, int], tuple[str, ...]]:
    st = path.stat()
    return _parse_scenes(str(path), st.st_size, st.st_mtime_ns)


def build(task: TaskSpec, req: DataRequest) -> FileClassification:
    root = task_folder(task, req)
    if req.split not in SPLITS:
        raise HarnessError(f"task {task.name}: unknown split {req.split!r} (CLEVR v1.0 has scenes for train and val)")
    problems = Problems(task.name, req.strict)
    scenes_path = require(root / "scenes" / f"CLEVR_{req.split}_scenes.json", task.name, "the scenes file")
    image_dir = require(root / "images" / req.split, task.name, "the images folder")
    counts, structural = read_scenes(scenes_path)
    problems.items.extend(structural)
    images = set(list_files(image_dir, (".png",)))
    items = []
    for name in sorted(counts):
        n = counts[name]
        if name not in images:
            problems.add(image_dir / name, f"missing (its scene is in {scenes_path.name})")
        elif not MIN_OBJECTS <= n <= MAX_OBJECTS:
            problems.add(image_dir / name, f"{n} objects, outside CLEVR v1.0's {MIN_OBJECTS}..{MAX_OBJECTS}")
        else:
            items.append((image_dir / name, n - MIN_OBJECTS))
    for name in sorted(images - counts.keys()):
        problems.add(image_dir / name, f"has no scene in {scenes_path.name}")
    problems.raise_if_any()
    return FileClassification(task, req, items, problems)


CLEVR_COUNT = register_task(image_task(
    name="clevr_count", paper_name="CLEVR Count", nature="structural", dataset=build, class_names=CLASS_NAMES,
    epochs=100, train_size=70_000, splits=SplitSpec("train", None, "val", val_fraction=0.1), layout=LAYOUT,
    description="number of objects in the scene (3..10); RGBA images to RGB, resized to 224 x 224 without keeping "
                "the aspect ratio (as the reference)",
))
