"""EuroSAT (RGB release): ``eurosat/2750/<Class>/<Class>_<i>.jpg``, as released.

The RGB zip (``EuroSAT.zip``) unpacks to ``2750/`` with one folder per land-use class, 27,000
64 x 64 JPEGs in all, numbered from 1 within each class. torchvision's ``EuroSAT`` reads exactly
this layout (``<root>/eurosat/2750``) and lists it here; the class map is the release's 10
classes (checked: a folder that is not one of them is a problem, a missing one only a subset),
and a gap in a class's numbering names the deleted file.

The release has no split. The paper (after VTAB) trains on 21,600 images = 80%; here the 80%
is a deterministic stratified split: within each class the images are ordered by a SHA-256
of their path and the first 80% are train (``paper_split``), which gives exactly 21,600
train / 5,400 test on the full release (every class count is a multiple of 5). The harness
carves its validation split (10%, stratified) from that train split. The paper's Appendix A
calls EuroSAT a 20-class dataset; the release has 10 classes.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from harness.common.errors import HarnessError

from ..registry import register_task
from ..spec import DataLayout, DataRequest, TaskSpec
from .base import FileClassification, Problems, class_index, image_task, require, task_folder
from .paper_split import missing_numbers, proportional_quotas, split_by_hash

FOLDER = "eurosat"
# The release's classes (folder names, sorted) and their image counts.
RELEASE_COUNTS: dict[str, int] = {
    "AnnualCrop": 3000, "Forest": 3000, "HerbaceousVegetation": 3000, "Highway": 2500, "Industrial": 2500,
    "Pasture": 2000, "PermanentCrop": 2500, "Residential": 3000, "River": 2500, "SeaLake": 3000,
}
CLASS_NAMES: tuple[str, ...] = tuple(RELEASE_COUNTS)
TRAIN_FRACTION = 0.8

LAYOUT = DataLayout(
    folder=FOLDER,
    tree="""eurosat/
  2750/
    AnnualCrop/AnnualCrop_1.jpg ... AnnualCrop_3000.jpg
    Forest/ HerbaceousVegetation/ Highway/ Industrial/ Pasture/ PermanentCrop/ Residential/ River/ SeaLake/
                 (10 classes, <Class>_<i>.jpg numbered from 1; 27,000 RGB 64 x 64 JPEGs)""",
    url="https://github.com/phelber/EuroSAT (RGB: EuroSAT.zip, https://madm.dfki.de/files/sentinel/EuroSAT.zip)",
    counts={"train": 21_600, "test": 5_400},
    notes="no official split: train = the first 80% of each class in SHA-256 order of the file path (21,600), "
          "test = the rest (5,400); val carved from train",
)

_NAME = re.compile(r"^(?P<cls>.+)_(?P<num>\d+)\.jpg$")


def list_release(root: Path, task: TaskSpec, problems: Problems) -> tuple[list[str], np.ndarray]:
    """(paths relative to ``2750/``, class indices) of every image, read with torchvision's EuroSAT."""
    from torchvision.datasets import EuroSAT

    images = require(root / "2750", task.name, "the RGB release's image folder")
    try:
        tv = EuroSAT(str(root.parent))  # reads <root>/2750 as an ImageFolder; never downloads
    except (FileNotFoundError, RuntimeError) as exc:
        raise HarnessError(f"task {task.name}: {images}: {exc}") from None
    index = class_index(CLASS_NAMES)
    rels: list[str] = []
    labels: list[int] = []
    numbers: dict[str, list[int]] = {}
    for name in tv.classes:
        if name not in index:
            problems.add(images / name, f"not a EuroSAT class (the release's are {', '.join(CLASS_NAMES)})")
    for path, y in tv.samples:
        cls = tv.classes[y]
        if cls not in index:
            continue
        fname = Path(path).name
        m = _NAME.match(fname)
        if m is None or m["cls"] != cls:
            problems.add(path, f"not a file of the release (expected {cls}_<i>.jpg in {cls}/)")
            continue
        numbers.setdefault(cls, []).append(int(m["num"]))
        rels.append(f"{cls}/{fname}")
        labels.append(index[cls])
    for cls, nums in numbers.items():
        for k in missing_numbers(nums):
            problems.add(images / cls / f"{cls}_{k}.jpg", "missing (the class's images are numbered from 1 "
                         f"without gaps, and {cls}_{max(nums)}.jpg exists)")
    return rels, np.asarray(labels, dtype=np.int64)


def build(task: TaskSpec, req: DataRequest) -> FileClassification:
    root = task_folder(task, req)
    if req.split not in ("train", "test"):
        raise HarnessError(f"task {task.name}: no split {req.split!r} (train, test)")
    problems = Problems(task.name, req.strict)
    rels, labels = list_release(root, task, problems)
    problems.raise_if_any()
    counts = np.bincount(labels, minlength=len(CLASS_NAMES))
    keep = split_by_hash(rels, labels, proportional_quotas(counts, TRAIN_FRACTION), task.name, req.split)
    items = [(root / "2750" / rels[i], int(labels[i])) for i in keep]
    return FileClassification(task, req, items, problems)


EUROSAT_CLS = register_task(image_task(
    name="eurosat_cls", paper_name="EuroSAT Cls.", nature="semantic", dataset=build, class_names=CLASS_NAMES,
    epochs=200, train_size=21_600, layout=LAYOUT,
    description="10 land-use classes of Sentinel-2 RGB patches (64 x 64, resized to 224 x 224 without keeping "
                "the aspect ratio); a deterministic stratified 80/20 split",
))
