"""The paper's three AI2-THOR releases (allenai/ViRB's ``thor_num_steps.zip``, ``thor_egomotion.zip``,
``thor_depth.zip``), read as released.

- ``thor_num_steps/``: ``{train,val}/<scene>/<id>_rgb.jpg`` and ``{train,val}_labels.txt`` with lines
  ``<split>/<scene>/<id> <steps>`` (the path of the frame under the folder, without ``_rgb.jpg``);
  5 classes, 0..4 forward steps of 0.25 m.
- ``thor_action_prediction/``: ``<name>_rgb_a.jpg``, ``<name>_rgb_b.jpg`` and ``{train,val}_labels.txt``
  with lines ``<name> <Action>`` (``<name>`` is the path under the folder without the suffix); the
  action is one of MoveAhead, RotateLeft, RotateRight, LookUp, LookDown (class index in that order,
  as the reference numbered them). Two frames, a then b.
- ``thor_depth_prediction/``: ``{train,test}/<scene>/<id>_rgb.jpg`` and ``<id>_depth.jpg``, paired by
  ``<id>`` within a scene folder (the reference paired two sorted globs).

Depth unit: the depth frames are 8-bit greyscale JPEGs and neither the release nor the reference
gives a metric scale: the reference read them as grey level / 255 (then standardised with mean
0.5, std 0.25). The harness uses grey level / 255, a relative depth in [0, 1] (``depth_unit``
"relative"), so the negative L1 is in those units, not metres. No grey level is documented as
"no depth" (and JPEG would blur one), so every pixel is valid.

Pairing: every label line names files that must exist (looked up in one ``os.scandir`` of each
folder), and every frame found in a split's folders must have a label line: a missing partner
either way is a problem naming the file. Splits: the releases have train and val (depth: train
and test); the official val / test split is the test split and 10% of train is carved for
validation (stratified for the two classification tasks). The paper's train size is 60,000 for
each; the sizes of the val / test splits are not published (``harness data check`` reports them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from harness.common.errors import HarnessError

from ..registry import register_task
from ..spec import DataLayout, DataRequest, SplitSpec, TaskSpec
from .base import (
    IMAGE_RESIZE,
    IMAGE_SIZE,
    FileClassification,
    Problems,
    image_task,
    list_dirs,
    list_names,
    require,
    task_folder,
)
from .pixelwise import PixelSplit

NUM_STEPS_CLASSES: tuple[str, ...] = ("0", "1", "2", "3", "4")
ACTIONS: tuple[str, ...] = ("MoveAhead", "RotateLeft", "RotateRight", "LookUp", "LookDown")
DEPTH_UNIT = "relative"  # grey level / 255; no metric scale is published for the release
RELEASES = "https://github.com/allenai/ViRB (README, dataset table)"
TRAIN_SIZE = 60_000  # the paper's train size of each of the three
CARVED = "test = the release's val split (its size is not published); val = 10% of train carved with the run's seed"


def release_layout(folder: str, zip_name: str, tree: str, notes: str) -> DataLayout:
    """One of the three releases as ``harness data layout`` shows it (each holds the paper's 60,000 train
    samples; the sizes of the other splits are not published)."""
    return DataLayout(folder=folder, tree=tree, counts={"train": TRAIN_SIZE}, notes=notes,
                      url=f"https://prior-datasets.s3.us-east-2.amazonaws.com/ViRB/{zip_name} ({RELEASES})")


class FolderIndex:
    """Membership of files in folders, one ``os.scandir`` per folder (no per-file stat)."""

    def __init__(self) -> None:
        self._names: dict[Path, set[str]] = {}

    def names(self, folder: Path) -> set[str]:
        if folder not in self._names:
            self._names[folder] = list_names(folder)
        return self._names[folder]

    def exists(self, path: Path) -> bool:
        return path.name in self.names(path.parent)


def read_label_file(path: Path, problems: Problems) -> list[tuple[str, str, int]]:
    """(key, value, line number) per non-empty line ``<key> <value>``; other lines are problems."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise HarnessError(f"{path}: cannot be read ({exc})") from None
    out = []
    seen: set[str] = set()
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            problems.add(f"{path}:{n}", f"expected '<name> <label>', read {line.strip()!r}")
        elif parts[0] in seen:
            problems.add(f"{path}:{n}", f"{parts[0]} is labelled twice")
        else:
            seen.add(parts[0])
            out.append((parts[0], parts[1], n))
    return out


def _split(task: TaskSpec, req: DataRequest, known: tuple[str, ...]) -> None:
    if req.split not in known:
        raise HarnessError(f"task {task.name}: unknown split {req.split!r} (the release has {' and '.join(known)})")


# ------------------------------------------------------------------------------ thor_num_steps

def build_num_steps(task: TaskSpec, req: DataRequest) -> FileClassification:
    root = task_folder(task, req)
    _split(task, req, ("train", "val"))
    problems = Problems(task.name, req.strict)
    labels_path = require(root / f"{req.split}_labels.txt", task.name, "the label file")
    split_dir = require(root / req.split, task.name, "the frames folder")
    index = FolderIndex()
    items, labelled = [], set()
    for key, value, n in read_label_file(labels_path, problems):
        frame = root / f"{key}_rgb.jpg"
        labelled.add(frame)
        if not value.isdigit() or int(value) >= len(NUM_STEPS_CLASSES):
            problems.add(f"{labels_path}:{n}", f"{key}: steps {value!r} is not one of 0..{len(NUM_STEPS_CLASSES) - 1}")
        elif not index.exists(frame):
            problems.add(frame, f"missing (labelled in {labels_path.name}:{n})")
        else:
            items.append((frame, int(value)))
    for scene in list_dirs(split_dir):
        for name in sorted(index.names(split_dir / scene)):
            if name.endswith("_rgb.jpg") and split_dir / scene / name not in labelled:
                problems.add(split_dir / scene / name, f"has no label line in {labels_path.name}")
    problems.raise_if_any()
    items.sort(key=lambda it: str(it[0]))
    return FileClassification(task, req, items, problems)


THOR_NUM_STEPS = register_task(image_task(
    name="thor_num_steps", paper_name="THOR Num. Steps", nature="structural", dataset=build_num_steps,
    num_outputs=len(NUM_STEPS_CLASSES), class_names=NUM_STEPS_CLASSES, epochs=100, train_size=TRAIN_SIZE,
    splits=SplitSpec("train", None, "val", val_fraction=0.1),
    layout=release_layout("thor_num_steps", "thor_num_steps.zip", """thor_num_steps/
  train_labels.txt                 (lines: train/<scene>/<id> <steps 0..4>)
  val_labels.txt                   (lines: val/<scene>/<id> <steps 0..4>)
  train/<scene>/<id>_rgb.jpg
  val/<scene>/<id>_rgb.jpg""", f"{CARVED} (stratified)"),
    description="forward steps of 0.25 m the agent can take (0..4) from one frame; resized to 224 x 224",
))


# ------------------------------------------------------------------------------ thor_egomotion

def build_egomotion(task: TaskSpec, req: DataRequest) -> FileClassification:
    root = task_folder(task, req)
    _split(task, req, ("train", "val"))
    problems = Problems(task.name, req.strict)
    labels_path = require(root / f"{req.split}_labels.txt", task.name, "the label file")
    other_path = root / f"{'val' if req.split == 'train' else 'train'}_labels.txt"
    index = FolderIndex()
    items, labelled, folders = [], set(), set()
    action_index = {a: i for i, a in enumerate(ACTIONS)}
    for name, action, n in read_label_file(labels_path, problems):
        a, b = root / f"{name}_rgb_a.jpg", root / f"{name}_rgb_b.jpg"
        labelled.add(a)
        folders.add(a.parent)
        if action not in action_index:
            problems.add(f"{labels_path}:{n}", f"{name}: action {action!r} is not one of {', '.join(ACTIONS)}")
            continue
        missing = [p for p in (a, b) if not index.exists(p)]
        for p in missing:
            problems.add(p, f"missing (labelled in {labels_path.name}:{n})")
        if not missing:
            items.append(((a, b), action_index[action]))
    if other_path.is_file():  # frames of the other split may share these folders
        ignore = Problems(task.name, strict=False)
        labelled |= {root / f"{name}_rgb_a.jpg" for name, _, _ in read_label_file(other_path, ignore)}
    for folder in sorted(folders):
        for fname in sorted(index.names(folder)):
            if fname.endswith("_rgb_a.jpg") and folder / fname not in labelled:
                problems.add(folder / fname, f"has no label line in {labels_path.name} or {other_path.name}")
    problems.raise_if_any()
    items.sort(key=lambda it: str(it[0][0]))
    return FileClassification(task, req, items, problems)


THOR_EGOMOTION = register_task(image_task(
    name="thor_egomotion", paper_name="THOR Egomotion", nature="structural", head="fusion", dataset=build_egomotion,
    num_outputs=len(ACTIONS), class_names=ACTIONS, frames=2, epochs=100, train_size=TRAIN_SIZE,
    splits=SplitSpec("train", None, "val", val_fraction=0.1),
    layout=release_layout("thor_action_prediction", "thor_egomotion.zip", """thor_action_prediction/
  train_labels.txt                 (lines: <name> <Action>; Action in MoveAhead RotateLeft RotateRight LookUp LookDown)
  val_labels.txt
  <name>_rgb_a.jpg                 (frame before the action; <name> may contain folders)
  <name>_rgb_b.jpg                 (frame after it)""", f"{CARVED} (stratified)"),
    description="the agent's action between two frames (a, b), 5 classes; both frames resized to 224 x 224",
))


# ------------------------------------------------------------------------------ thor_depth

def read_depth(path: Path) -> np.ndarray:
    """(H, W) float32 relative depth: the 8-bit grey level / 255 (every level 0..255 is a depth, so no
    value is refused)."""
    try:
        with Image.open(path) as img:
            grey = np.asarray(img.convert("L"), dtype=np.float32)
    except OSError as exc:
        raise HarnessError(f"{path}: not a readable depth image ({exc})") from None
    return grey / 255.0


class ThorDepthSplit(PixelSplit):
    """(frame, depth JPEG) pairs; relative depth, every pixel valid (no grey level means "no depth")."""

    kind = "depth"

    def decode_target(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        depth = torch.from_numpy(read_depth(self.items[i][1]))
        return depth[None], torch.ones(depth.shape, dtype=torch.bool)


def build_depth(task: TaskSpec, req: DataRequest) -> ThorDepthSplit:
    root = task_folder(task, req)
    _split(task, req, ("train", "test"))
    problems = Problems(task.name, req.strict)
    split_dir = require(root / req.split, task.name, "the frames folder")
    pairs = []
    for scene in list_dirs(split_dir):
        folder = split_dir / scene
        names = list_names(folder)
        rgb = {n[: -len("_rgb.jpg")] for n in names if n.endswith("_rgb.jpg")}
        depth = {n[: -len("_depth.jpg")] for n in names if n.endswith("_depth.jpg")}
        for i in sorted(rgb - depth):
            problems.add(folder / f"{i}_depth.jpg", f"missing: no depth for {folder / f'{i}_rgb.jpg'}")
        for i in sorted(depth - rgb):
            problems.add(folder / f"{i}_rgb.jpg", f"missing: no frame for {folder / f'{i}_depth.jpg'}")
        pairs += [(folder / f"{i}_rgb.jpg", folder / f"{i}_depth.jpg") for i in sorted(rgb & depth)]
    problems.raise_if_any()
    return ThorDepthSplit(task, req, pairs, problems)


THOR_DEPTH = register_task(TaskSpec(
    name="thor_depth", paper_name="THOR Depth", output="pixel", nature="structural", head="unet", loss="l1",
    metric="neg_l1", dataset=build_depth, num_outputs=1, epochs=50, batch_size=32, suite="paper",
    train_size=TRAIN_SIZE, splits=SplitSpec("train", None, "test", val_fraction=0.1), train_transform=IMAGE_RESIZE,
    eval_transform=IMAGE_RESIZE, default_resolution=IMAGE_SIZE, extra={"depth_unit": DEPTH_UNIT},
    layout=release_layout("thor_depth_prediction", "thor_depth.zip", """thor_depth_prediction/
  train/<scene>/<id>_rgb.jpg
  train/<scene>/<id>_depth.jpg     (8-bit greyscale JPEG; depth = grey level / 255, relative, no metric scale)
  test/<scene>/<id>_rgb.jpg
  test/<scene>/<id>_depth.jpg""", "depth unit: relative (grey level / 255), every pixel valid; test = the release's "
                                  "test split (its size is not published); val = 10% of train carved with the run's "
                                  "seed"),
    description="per-pixel relative depth (8-bit grey level / 255) from one frame; frame and depth resized to "
                "224 x 224 (depth by masked bilinear)",
))
