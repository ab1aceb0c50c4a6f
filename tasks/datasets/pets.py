"""Oxford-IIIT Pets: ``oxford-iiit-pet/{images,annotations}``, as released.

Two tasks read the release: ``pets_cls`` (37 breeds) and ``pets_instance_seg`` (the trimaps).

The split lists ``annotations/{trainval,test}.txt`` hold one line per image, ``<stem> <class id>
<species> <breed id>`` (class id 1..37, species 1 cat / 2 dog); lines that start with ``#`` are
comments. The class id is the position of the breed in the release's alphabetical (case-blind)
breed list, and the stem is ``<breed>_<n>``, so every line is checked against the list:
a stem whose breed disagrees with its class id is a problem, not a silently wrong label.
torchvision's OxfordIIITPet reads the same files, but it does not skip comment lines, derives the
class names from what one split contains and never looks for the files; the lists are read here.
Every image (``images/<stem>.jpg``) and trimap (``annotations/trimaps/<stem>.png``) is looked up
in one ``os.scandir`` of its folder: a missing one is a problem naming it.

Trimaps: 1 = pet, 2 = background, 3 = border (the unsure band along the outline). The border is
IGNORED (target 255, ``ignore_index``): it takes no part in the loss or in the mIoU; the two
classes are 0 = background and 1 = pet. The reference merged the border into the background
(one sigmoid output); ignoring it is the usual choice, since the band is where the annotators
marked the outline as unsure.

Splits: the paper trains on trainval (3,680) and tests on test (3,669); there is no official
validation split, so a seeded 10% is carved from trainval (stratified by breed for ``pets_cls``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from harness.common.errors import HarnessError

from ..registry import register_task
from ..spec import DataLayout, DataRequest, SplitSpec, TaskSpec
from .base import IMAGE_RESIZE, IMAGE_SIZE, FileClassification, Problems, image_task, list_names, require, task_folder
from .pixelwise import IGNORE, PixelSplit, class_map_sample

FOLDER = "oxford-iiit-pet"
LAYOUT = DataLayout(
    folder=FOLDER,
    tree="""oxford-iiit-pet/
  images/<stem>.jpg                 (7,349 listed images; <stem> = <breed>_<n>)
  annotations/trainval.txt          (3,680 lines: <stem> <class 1..37> <species 1 cat, 2 dog> <breed id>)
  annotations/test.txt              (3,669 lines, same format; lines starting with # are comments)
  annotations/trimaps/<stem>.png    (1 pet, 2 background, 3 border; pets_instance_seg only)""",
    url="https://www.robots.ox.ac.uk/~vgg/data/pets/ (images.tar.gz and annotations.tar.gz, extracted side by side)",
    counts={"trainval": 3_680, "test": 3_669},
    notes="val: 10% of trainval carved with the run's seed (no official one). pets_instance_seg ignores the "
          "trimap border (3) in training and in the mIoU.",
)

# The release's 37 breeds, class id - 1 = index (alphabetical, case-blind; cats are capitalised).
BREEDS: tuple[str, ...] = (
    "Abyssinian", "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle", "Bengal", "Birman",
    "Bombay", "boxer", "British_Shorthair", "chihuahua", "Egyptian_Mau", "english_cocker_spaniel", "english_setter",
    "german_shorthaired", "great_pyrenees", "havanese", "japanese_chin", "keeshond", "leonberger", "Maine_Coon",
    "miniature_pinscher", "newfoundland", "Persian", "pomeranian", "pug", "Ragdoll", "Russian_Blue", "saint_bernard",
    "samoyed", "scottish_terrier", "shiba_inu", "Siamese", "Sphynx", "staffordshire_bull_terrier", "wheaten_terrier",
    "yorkshire_terrier",
)
SEG_CLASSES: tuple[str, ...] = ("background", "pet")
TRIMAP_PET, TRIMAP_BACKGROUND, TRIMAP_BORDER = 1, 2, 3
# trimap value -> training target: pet 1, background 0, border ignored; anything else is not a trimap value
_TRIMAP_LUT = np.full(256, -1, dtype=np.int64)
_TRIMAP_LUT[[TRIMAP_PET, TRIMAP_BACKGROUND, TRIMAP_BORDER]] = [1, 0, IGNORE]


def read_split_list(path: Path, problems: Problems) -> list[tuple[str, int]]:
    """(stem, class index 0..36) per line of a split list; malformed lines are problems naming the line."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise HarnessError(f"{path}: cannot be read ({exc})") from None
    out: list[tuple[str, int]] = []
    seen: set[str] = set()
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parts = s.split()
        where = f"{path}:{n}"
        if len(parts) != 4 or not all(p.isdigit() for p in parts[1:]):
            problems.add(where, f"expected '<stem> <class 1..37> <species 1|2> <breed id>', read {s!r}")
            continue
        stem, cls = parts[0], int(parts[1])
        if not 1 <= cls <= len(BREEDS):
            problems.add(where, f"class id {cls} of {stem} is outside 1..{len(BREEDS)}")
            continue
        breed = stem.rsplit("_", 1)[0]
        if breed != BREEDS[cls - 1]:
            problems.add(where, f"{stem} has class id {cls} ({BREEDS[cls - 1]}), but its name says {breed}")
            continue
        if stem in seen:
            problems.add(where, f"{stem} is listed twice")
            continue
        seen.add(stem)
        out.append((stem, cls - 1))
    return out


def _listing(task: TaskSpec, req: DataRequest, trimaps: bool) -> tuple[Path, list[tuple[str, int]], Problems]:
    """The split's (stem, class) whose image (and trimap) exist; the others are problems."""
    root = task_folder(task, req)
    if req.split not in ("trainval", "test"):
        raise HarnessError(f"task {task.name}: unknown split {req.split!r} (the release has trainval and test)")
    problems = Problems(task.name, req.strict)
    lst = require(root / "annotations" / f"{req.split}.txt", task.name, "the split list")
    images_dir = require(root / "images", task.name, "the images folder")
    entries = read_split_list(lst, problems)
    images = list_names(images_dir)
    trimap_dir = root / "annotations" / "trimaps"
    if trimaps:
        require(trimap_dir, task.name, "the trimaps folder")
    masks = list_names(trimap_dir) if trimaps else set()
    kept = []
    for stem, cls in entries:
        ok = True
        if f"{stem}.jpg" not in images:
            problems.add(images_dir / f"{stem}.jpg", f"missing (listed in {lst.name})")
            ok = False
        if trimaps and f"{stem}.png" not in masks:
            problems.add(trimap_dir / f"{stem}.png", f"missing: no trimap for {stem} (listed in {lst.name})")
            ok = False
        if ok:
            kept.append((stem, cls))
    problems.raise_if_any()
    return root, kept, problems


def build_cls(task: TaskSpec, req: DataRequest) -> FileClassification:
    root, items, problems = _listing(task, req, trimaps=False)
    return FileClassification(task, req, [(root / "images" / f"{s}.jpg", c) for s, c in items], problems)


# ------------------------------------------------------------------------------ segmentation

def read_trimap(path: Path) -> np.ndarray:
    """The trimap's target at native size: (H, W) int64, 0 background, 1 pet, 255 border (ignored)."""
    try:
        with Image.open(path) as img:
            raw = np.asarray(img)  # "L" or "P": the stored values (a palette index is the value)
    except OSError as exc:
        raise HarnessError(f"{path}: not a readable trimap PNG ({exc})") from None
    if raw.ndim == 3:
        raw = raw[..., 0]
    target = _TRIMAP_LUT[raw.astype(np.uint8)]
    bad = target < 0
    if bad.any():
        raise HarnessError(f"{path}: value {int(raw[bad][0])} is not a trimap value (1 pet, 2 background, 3 border)")
    return target


class PetsSegSplit(PixelSplit):
    """(image, trimap) pairs; the target is the trimap's class map (resized by nearest neighbour, so the
    border's 255 never blends into a class)."""

    def decode_target(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return class_map_sample(read_trimap(self.items[i][1]))


def build_seg(task: TaskSpec, req: DataRequest) -> PetsSegSplit:
    root, items, problems = _listing(task, req, trimaps=True)
    return PetsSegSplit(task, req, [(root / "images" / f"{s}.jpg", root / "annotations" / "trimaps" / f"{s}.png")
                                    for s, _ in items], problems)


SPLITS = SplitSpec("trainval", None, "test", val_fraction=0.1)

PETS_CLS = register_task(image_task(
    name="pets_cls", paper_name="Pets Cls.", nature="semantic", dataset=build_cls, num_outputs=len(BREEDS),
    class_names=BREEDS, epochs=500, train_size=3_680, splits=SPLITS, layout=LAYOUT,
    description="37 cat and dog breeds; resized to 224 x 224 without keeping the aspect ratio (as the reference)",
))

PETS_INSTANCE_SEG = register_task(TaskSpec(
    name="pets_instance_seg", paper_name="Pets Instance Seg.", output="pixel", nature="semantic",
    head="deeplabv3plus", loss="pixel_ce", metric="miou", dataset=build_seg, num_outputs=len(SEG_CLASSES),
    ignore_index=IGNORE, class_names=SEG_CLASSES, epochs=100, batch_size=32, suite="paper", train_size=3_680,
    splits=SPLITS, train_transform=IMAGE_RESIZE, eval_transform=IMAGE_RESIZE, default_resolution=IMAGE_SIZE,
    layout=LAYOUT,
    description="pet vs background from the trimaps, border ignored (255); image and trimap resized to 224 x 224 "
                "(trimap by nearest neighbour)",
))
