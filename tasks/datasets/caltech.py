"""Caltech-101: ``caltech101/101_ObjectCategories/<class>/image_NNNN.jpg``, as released.

The release is one folder per class, 102 of them counting ``BACKGROUND_Google`` (the paper's
3,060 train images = 30 x 102), each numbered ``image_0001.jpg`` upwards without gaps, 9,144
JPEGs in all. The class index is the folder's position in the release's folder names sorted
as Python sorts them (upper case first), as the reference implementation indexed them; the
list is built in, so a subset with fewer folders keeps every index.

Split, in order of preference:
1. the reference's lists ``caltech101_train.json`` / ``caltech101_test.json`` (JSON lists of
   ``"<class>/image_NNNN.jpg"``; in ``caltech101/`` or in ``101_ObjectCategories/``, where the
   reference's README put them) when both are present;
2. otherwise the paper's (VTAB's) protocol made deterministic: per class, the 30 images first
   in SHA-256 order of ``<class>/<file>`` are train, the rest test (3,060 / 6,084 on the full
   release).
The harness carves its validation split (10%, stratified) from train.

torchvision's ``Caltech101`` is not used: it drops ``BACKGROUND_Google`` (101 classes, not the
paper's 102), assumes each class is numbered 1..n and builds paths from that count (a deleted
file shifts every later image), and creates folders in the dataset root.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from harness.common.errors import HarnessError

from ..registry import register_task
from ..spec import DataLayout, DataRequest, TaskSpec
from .base import FileClassification, Problems, class_index, image_task, list_dirs, list_files, require, task_folder
from .paper_split import missing_numbers, split_by_hash

FOLDER = "caltech101"
IMAGES = "101_ObjectCategories"
TRAIN_PER_CLASS = 30
LISTS = {"train": "caltech101_train.json", "test": "caltech101_test.json"}

# The release's 102 folder names, sorted as Python sorts strings (upper case before lower case).
CLASS_NAMES: tuple[str, ...] = (
    "BACKGROUND_Google", "Faces", "Faces_easy", "Leopards", "Motorbikes", "accordion", "airplanes", "anchor", "ant",
    "barrel", "bass", "beaver", "binocular", "bonsai", "brain", "brontosaurus", "buddha", "butterfly", "camera",
    "cannon", "car_side", "ceiling_fan", "cellphone", "chair", "chandelier", "cougar_body", "cougar_face", "crab",
    "crayfish", "crocodile", "crocodile_head", "cup", "dalmatian", "dollar_bill", "dolphin", "dragonfly",
    "electric_guitar", "elephant", "emu", "euphonium", "ewer", "ferry", "flamingo", "flamingo_head", "garfield",
    "gerenuk", "gramophone", "grand_piano", "hawksbill", "headphone", "hedgehog", "helicopter", "ibis",
    "inline_skate", "joshua_tree", "kangaroo", "ketch", "lamp", "laptop", "llama", "lobster", "lotus", "mandolin",
    "mayfly", "menorah", "metronome", "minaret", "nautilus", "octopus", "okapi", "pagoda", "panda", "pigeon",
    "pizza", "platypus", "pyramid", "revolver", "rhino", "rooster", "saxophone", "schooner", "scissors",
    "scorpion", "sea_horse", "snoopy", "soccer_ball", "stapler", "starfish", "stegosaurus", "stop_sign",
    "strawberry", "sunflower", "tick", "trilobite", "umbrella", "watch", "water_lilly", "wheelchair", "wild_cat",
    "windsor_chair", "wrench", "yin_yang",
)

LAYOUT = DataLayout(
    folder=FOLDER,
    tree="""caltech101/
  101_ObjectCategories/
    BACKGROUND_Google/image_0001.jpg ...
    Faces/ Faces_easy/ Leopards/ Motorbikes/ accordion/ ... yin_yang/
                 (102 folders, image_NNNN.jpg numbered from 0001; 9,144 JPEGs)
  caltech101_train.json   (optional: the reference's split, a JSON list of "<class>/image_NNNN.jpg")
  caltech101_test.json    (optional, with the train list)""",
    url="https://data.caltech.edu/records/mzrjq-6wc02 (101_ObjectCategories.tar.gz inside caltech-101.zip); "
        "reference split lists: https://prior-datasets.s3.us-east-2.amazonaws.com/ViRB/caltech101_train.json",
    counts={"train": 3_060, "test": 6_084},
    notes="train = the reference's caltech101_train.json when present, else 30 images per class (first in "
          "SHA-256 order of <class>/<file>); test = the rest; val carved from train",
)

_NAME = re.compile(r"^image_(\d{4})\.jpg$")


def list_release(base: Path, task: TaskSpec, problems: Problems) -> tuple[list[str], np.ndarray]:
    """(``<class>/<file>`` of every image, class indices); unknown folders, stray files and gaps
    in a class's numbering are problems naming the path."""
    index = class_index(CLASS_NAMES)
    rels: list[str] = []
    labels: list[int] = []
    for cls in list_dirs(base):
        if cls not in index:
            problems.add(base / cls, "not a Caltech-101 folder (the release has 102: 101 classes and "
                                     "BACKGROUND_Google)")
            continue
        numbers = []
        for name in list_files(base / cls, (".jpg",)):
            m = _NAME.match(name)
            if m is None:
                problems.add(base / cls / name, "not a file of the release (expected image_NNNN.jpg)")
                continue
            numbers.append(int(m[1]))
            rels.append(f"{cls}/{name}")
            labels.append(index[cls])
        for k in missing_numbers(numbers):
            problems.add(base / cls / f"image_{k:04d}.jpg", f"missing (the class's images are numbered from "
                         f"image_0001.jpg without gaps, and image_{max(numbers):04d}.jpg exists)")
    return rels, np.asarray(labels, dtype=np.int64)


def find_lists(root: Path) -> dict[str, Path] | None:
    """The reference's two JSON lists, if present (both or neither)."""
    for folder in (root, root / IMAGES):
        found = {s: folder / n for s, n in LISTS.items() if (folder / n).is_file()}
        if len(found) == 2:
            return found
        if found:
            (have,) = found.values()
            partner = folder / LISTS["test" if "train" in found else "train"]
            raise HarnessError(f"{have}: found without its partner {partner}; give both of the reference's lists, "
                               f"or neither for the built-in split")
    return None


def read_list(path: Path) -> list[str]:
    try:
        names = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HarnessError(f"{path}: not a JSON list ({exc})") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise HarnessError(f"{path}: expected a JSON list of \"<class>/image_NNNN.jpg\" strings")
    return names


def split_from_lists(lists: dict[str, Path], base: Path, split: str, rels: list[str],
                     problems: Problems) -> list[int]:
    """Indices (into ``rels``) of the listed split; a listed file that is absent from a class
    folder that exists, an unknown class or a file in both lists is a problem."""
    position = {r: i for i, r in enumerate(rels)}
    present_classes = {r.split("/", 1)[0] for r in rels} | set(list_dirs(base))
    names = {s: read_list(p) for s, p in lists.items()}
    both = set(names["train"]) & set(names["test"])
    for rel in sorted(both):
        problems.add(base / rel, f"listed in both {lists['train'].name} and {lists['test'].name}")
    keep = []
    for rel in names[split]:
        cls = rel.split("/", 1)[0]
        if cls not in CLASS_NAMES:
            problems.add(lists[split], f"lists {rel!r}, whose folder is not a Caltech-101 class")
        elif rel in position:
            keep.append(position[rel])
        elif cls in present_classes:
            problems.add(base / rel, f"listed in {lists[split].name} but missing")
    return sorted(keep)


def build(task: TaskSpec, req: DataRequest) -> FileClassification:
    root = task_folder(task, req)
    base = require(root / IMAGES, task.name, "the image folders")
    if req.split not in ("train", "test"):
        raise HarnessError(f"task {task.name}: no split {req.split!r} (train, test)")
    problems = Problems(task.name, req.strict)
    rels, labels = list_release(base, task, problems)
    lists = find_lists(root)
    if lists is not None:
        keep = split_from_lists(lists, base, req.split, rels, problems)
    else:
        counts = np.bincount(labels, minlength=len(CLASS_NAMES))
        for c in np.flatnonzero((counts > 0) & (counts <= TRAIN_PER_CLASS)):
            problems.add(base / CLASS_NAMES[c], f"{counts[c]} images; the paper's split needs at least "
                         f"{TRAIN_PER_CLASS + 1} ({TRAIN_PER_CLASS} train and one or more test)")
        keep = split_by_hash(rels, labels, np.minimum(counts, TRAIN_PER_CLASS), task.name, req.split)
    problems.raise_if_any()
    items = [(base / rels[i], int(labels[i])) for i in keep]
    return FileClassification(task, req, items, problems)


CALTECH_CLS = register_task(image_task(
    name="caltech_cls", paper_name="CalTech Cls.", nature="semantic", dataset=build, class_names=CLASS_NAMES,
    epochs=5000, train_size=3_060, layout=LAYOUT,
    description="101 object classes and BACKGROUND_Google (102 outputs); 30 train images per class, the rest "
                "test; resized to 224 x 224 without keeping the aspect ratio",
))
