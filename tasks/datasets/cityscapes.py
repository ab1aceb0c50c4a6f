"""Cityscapes semantic segmentation (gtFine): ``cityscapes/leftImg8bit`` and ``cityscapes/gtFine``.

Images ``leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` are paired with their labels
``gtFine/<split>/<city>/<stem>_gtFine_labelIds.png`` by stem (city and stem), never by two
sorted globs; an image without its label, or a label without its image, is a problem naming
the file. The ``labelIds`` (0..33, cityscapesScripts' ``labels.py``) are mapped to the 19
``trainId`` classes of the benchmark; every other id (void, and the classes the benchmark
does not evaluate: parking, rail track, guard rail, bridge, tunnel, polegroup, caravan,
trailer) is 255 = ignore, so the reported mIoU is the standard 19-class mIoU with void
ignored. (The reference trained void as a 20th class.)

Splits: the paper's 3,475 is the official train (2,975) plus val (500) images, the size of
the finely annotated public release; the reference trained on train and tested on val (the
test split's labels are withheld). The harness does the same: official ``val`` is the test
split, and 10% of ``train`` is carved (seeded) as the validation split for model selection.

Training samples are 513 x 513 crops with a random scale in [0.5, 2.0] (the reference's
range) and a random horizontal flip, as the paper did; evaluation is at the full
1024 x 2048.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from harness.common.errors import HarnessError

from ..registry import register_task
from ..spec import DataLayout, DataRequest, SplitSpec, TaskSpec, TransformSpec
from .base import Problems, list_dirs, list_files, require, task_folder
from .pixelwise import IGNORE, PixelSplit, class_map_sample

FOLDER = "cityscapes"
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"

# The 19 evaluated classes, index = trainId (cityscapesScripts labels.py).
CLASS_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)

# labelId -> trainId for the ids 0..33 of labels.py; 255 = ignored in training and evaluation.
LABEL_TO_TRAIN: dict[int, int] = {
    0: IGNORE,   # unlabeled
    1: IGNORE,   # ego vehicle
    2: IGNORE,   # rectification border
    3: IGNORE,   # out of roi
    4: IGNORE,   # static
    5: IGNORE,   # dynamic
    6: IGNORE,   # ground
    7: 0,        # road
    8: 1,        # sidewalk
    9: IGNORE,   # parking
    10: IGNORE,  # rail track
    11: 2,       # building
    12: 3,       # wall
    13: 4,       # fence
    14: IGNORE,  # guard rail
    15: IGNORE,  # bridge
    16: IGNORE,  # tunnel
    17: 5,       # pole
    18: IGNORE,  # polegroup
    19: 6,       # traffic light
    20: 7,       # traffic sign
    21: 8,       # vegetation
    22: 9,       # terrain
    23: 10,      # sky
    24: 11,      # person
    25: 12,      # rider
    26: 13,      # car
    27: 14,      # truck
    28: 15,      # bus
    29: IGNORE,  # caravan
    30: IGNORE,  # trailer
    31: 16,      # train
    32: 17,      # motorcycle
    33: 18,      # bicycle
}
# (license plate has id -1 in labels.py: the release's label images never hold it.)
MAX_LABEL_ID = max(LABEL_TO_TRAIN)  # 33: a label image holding more was not written by the release

_LUT = np.full(256, IGNORE, dtype=np.uint8)
for _label, _train in LABEL_TO_TRAIN.items():
    _LUT[_label] = _train

LAYOUT = DataLayout(
    folder=FOLDER,
    tree="""cityscapes/
  leftImg8bit/train/<city>/<city>_<seq>_<frame>_leftImg8bit.png    (2,975 images, 18 cities)
  leftImg8bit/val/<city>/<city>_<seq>_<frame>_leftImg8bit.png      (500 images, 3 cities)
  gtFine/train/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png     (labelIds 0..33)
  gtFine/val/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
  (leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip extracted side by side; other gtFine files ignored)""",
    url="https://www.cityscapes-dataset.com/downloads/ (leftImg8bit_trainvaltest.zip, gtFine_trainvaltest.zip)",
    counts={"train": 2_975, "val": 500},
    notes="official val is the test split; 10% of train is carved (seeded) for model selection",
)


def label_to_train(label_ids: np.ndarray) -> np.ndarray:
    """labelIds (uint8) -> trainIds, 255 for every id outside the 19 evaluated classes."""
    return _LUT[np.asarray(label_ids, dtype=np.uint8)]


def read_label_ids(path: Path) -> np.ndarray:
    """A ``*_gtFine_labelIds.png`` as (H, W) uint8 labelIds (an 8-bit grey PNG in the release); a
    value the release never writes (outside 0..33) is refused, naming the file and the value."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16"):
                raise HarnessError(f"{path}: a {img.mode} image, not the 8-bit labelIds map of gtFine "
                                   f"(is this the *_gtFine_color.png?)")
            arr = np.asarray(img)
    except FileNotFoundError:
        raise HarnessError(f"{path}: file not found") from None
    except OSError as exc:
        raise HarnessError(f"{path}: not a readable PNG ({exc})") from None
    bad = (arr < 0) | (arr > MAX_LABEL_ID)
    if bad.any():
        values = np.unique(arr[bad])
        shown = ", ".join(str(int(v)) for v in values[:5]) + (", ..." if len(values) > 5 else "")
        raise HarnessError(f"{path}: label id {shown} at {int(bad.sum()):,} pixel(s): the release's labelIds are "
                           f"0..{MAX_LABEL_ID} (is this a *_gtFine_labelIds.png, unchanged?)")
    return arr.astype(np.uint8)


class CityscapesSplit(PixelSplit):
    """(image, labelIds) pairs; the target is the trainId map."""

    def decode_target(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return class_map_sample(label_to_train(read_label_ids(self.items[i][1])))


def list_split(root: Path, split: str, task_name: str, problems: Problems) -> list[tuple[Path, Path]]:
    """(image, label) pairs of one split, paired by city and stem."""
    images = require(root / "leftImg8bit" / split, task_name, f"the {split} images")
    labels = require(root / "gtFine" / split, task_name, f"the {split} labels")
    items = []
    for city in sorted(set(list_dirs(images)) | set(list_dirs(labels))):
        img_stems = {f[: -len(IMAGE_SUFFIX)] for f in list_files(images / city, (IMAGE_SUFFIX,))}
        lab_stems = {f[: -len(LABEL_SUFFIX)] for f in list_files(labels / city, (LABEL_SUFFIX,))}
        for stem in sorted(img_stems - lab_stems):
            problems.add(labels / city / f"{stem}{LABEL_SUFFIX}", f"missing: the label of {stem}{IMAGE_SUFFIX}")
        for stem in sorted(lab_stems - img_stems):
            problems.add(images / city / f"{stem}{IMAGE_SUFFIX}", f"missing: the image of {stem}{LABEL_SUFFIX}")
        items += [(images / city / f"{s}{IMAGE_SUFFIX}", labels / city / f"{s}{LABEL_SUFFIX}")
                  for s in sorted(img_stems & lab_stems)]
    return items


def build(task: TaskSpec, req: DataRequest) -> CityscapesSplit:
    if req.split not in LAYOUT.counts:
        raise HarnessError(f"task {task.name}: no split {req.split!r} (has {', '.join(LAYOUT.counts)})")
    root = task_folder(task, req)
    problems = Problems(task.name, req.strict)
    items = list_split(root, req.split, task.name, problems)
    problems.raise_if_any()
    return CityscapesSplit(task, req, items, problems)


CITYSCAPES_SEG = register_task(TaskSpec(
    name="cityscapes_seg", paper_name="Cityscapes Seg.", output="pixel", nature="semantic", head="deeplabv3plus",
    loss="pixel_ce", metric="miou", dataset=build, num_outputs=len(CLASS_NAMES), ignore_index=IGNORE,
    class_names=CLASS_NAMES, epochs=100, suite="paper", train_size=3_475,
    splits=SplitSpec("train", None, "val", val_fraction=0.1),
    train_transform=TransformSpec(crop=(513, 513), scale=(0.5, 2.0), hflip=True),
    eval_transform=TransformSpec(), layout=LAYOUT,
    description="19 Cityscapes trainId classes, void ignored (mIoU over 19); trained on 513 x 513 crops with random "
                "scale 0.5-2 and flip, evaluated at the full 1024 x 2048; tested on official val; --resolution R "
                "resizes every image to R x R for quick runs",
))
