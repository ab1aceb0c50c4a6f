"""Synthetic tasks: datasets over the stored renders and their registry records."""

from __future__ import annotations

import numpy as np
import torch

from ..datasets.base import TaskDataset
from ..registry import register_task
from ..spec import DataRequest, OptimConfig, SplitSpec, TaskSpec, TransformSpec
from ..transforms import TargetKind, apply_transform, target_kind, transform_seed
from .render import SEG_CLASS_NAMES, SHAPE_NAMES
from .store import DEFAULT_SEED, DEFAULT_SIZES, load_split
from .world import ACTION_CLASSES, CLIP_FRAMES, EGOMOTION_ACTIONS, MAX_OBJECTS, MAX_STEPS

DEFAULT_RESOLUTION = 64

# Trivial-predictor scores on the default test split, measured by benchmarks/synthetic_trivial.py.
CHANCE_EGOMOTION = 0.188
CHANCE_ACTION = 0.1733
CHANCE_SEG = 0.065
CHANCE_WALKABLE = 0.3076
CHANCE_DEPTH = -1.0446
CHANCE_FLOW = 0.0522
EPOCHS_SEG = 2
EPOCHS_DEPTH = 3
# Flow: at 3 epochs of the 4-configuration grid the Siamese U-Net ended at EPE 14.0 against 14.9 for zero
# flow. Too few steps for targets of ~15 px learnt at unit scale: the head now predicts flow / 10 (the
# task's output_scale) for 20 epochs of one configuration (Adam 3e-4, the grid's default, which every
# longer run chose), about as many head steps as the grid's 12 epochs. Figures in the README.
EPOCHS_FLOW = 20
FLOW_SCALE = 10.0
# Pixelwise tasks train on a prefix of the stored train split and select on a smaller val split,
# so that the full 4-configuration grid stays within minutes on a CPU; test is the whole split.
PIXEL_SIZES = {"train": 400, "val": 100}


class SyntheticDataset(TaskDataset):
    """One field of one stored synthetic split as (image, target) samples, held in memory."""

    def __init__(self, kind: str, image_field: str, target_field: str, split: str, n: int, size: int,
                 target_offset: int = 0, valid_field: str | None = None, seed: int = DEFAULT_SEED,
                 valid_positive: bool = False, transform: TransformSpec | None = None, target: TargetKind = "label",
                 aug: tuple[int, int] | None = None, target_map: tuple[int, ...] | None = None):
        """``transform``: the task's train or eval transform; ``aug`` = (run seed, augmented copy)
        turns its random part on (train splits), None leaves it off. ``target_map``: stored label ->
        this task's class (a coarse task groups the stored classes)."""
        fields = (image_field, target_field) + ((valid_field,) if valid_field else ())
        arrays = load_split(kind, split, n, size, seed, fields=fields)
        self.images = arrays[image_field]  # (N, [S,] H, W, 3) uint8
        self.targets = arrays[target_field]
        if target_offset:
            self.targets = self.targets - target_offset
        if target_map is not None:
            self.targets = np.asarray(target_map, dtype=np.int64)[self.targets]
        self.valid = arrays[valid_field] if valid_field else None
        if valid_positive:  # e.g. depth: a pixel without a positive depth has no ground truth
            self.valid = self.targets > 0 if self.valid is None else (self.valid > 0) & (self.targets > 0)
        identity = transform is None or (transform.resize is None and not (aug is not None and transform.random))
        self.transform = None if identity else transform
        self.target_kind, self.aug = target, aug

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        img = torch.from_numpy(np.ascontiguousarray(self.images[i])).movedim(-1, -3).float() / 255.0
        tgt = torch.as_tensor(self.targets[i])
        if tgt.dtype in (torch.uint8, torch.int16, torch.int32):
            tgt = tgt.long()
        if tgt.dim() == 3:  # (H, W, C) regression maps -> (C, H, W)
            tgt = tgt.movedim(-1, 0)
        elif tgt.dim() == 2 and tgt.is_floating_point():  # (H, W) depth -> (1, H, W)
            tgt = tgt.unsqueeze(0)
        sample = {"image": img, "target": tgt}
        if self.valid is not None:
            sample["valid"] = torch.from_numpy(self.valid[i].astype(bool))
        if self.transform is not None:
            seed = transform_seed(self.aug[0], self.aug[1], i) if self.aug is not None else None
            sample = apply_transform(sample, self.transform, self.target_kind, seed)
        return sample

    def class_labels(self) -> np.ndarray | None:
        """Class labels of image-level classification splits (one integer per sample)."""
        targets = np.asarray(self.targets)
        return targets.astype(np.int64) if targets.ndim == 1 and targets.dtype.kind in "iu" else None

    def native_target(self, i: int):
        sample = self[i]
        target = sample["target"].numpy()
        valid = sample["valid"].numpy() if "valid" in sample else None
        return (int(target) if target.ndim == 0 else target), valid


def synthetic_builder(kind: str, image_field: str, target_field: str, target_offset: int = 0,
                      valid_field: str | None = None, valid_positive: bool = False,
                      sizes: dict[str, int] | None = None, target_map: tuple[int, ...] | None = None):
    """``sizes`` overrides DEFAULT_SIZES per split (pixelwise heads cost far more per sample on a CPU);
    ``target_map`` maps the stored labels to coarser classes (the same renders, read the same way)."""

    def split_sizes() -> dict[str, int]:  # read when called: the suite's sizes are module settings
        return {**DEFAULT_SIZES[kind], **(sizes or {})}

    def build(task: TaskSpec, req: DataRequest) -> SyntheticDataset:
        n = split_sizes()[req.split]
        if req.limit is not None and req.split == "train":
            n = min(n, req.limit)
        size = req.resolution or task.default_resolution
        spec = task.train_transform if req.train else task.eval_transform
        aug = (req.seed, req.aug_copy) if req.train and spec.random else None
        return SyntheticDataset(kind, image_field, target_field, req.split, n, size, target_offset, valid_field,
                                valid_positive=valid_positive, transform=spec, target=target_kind(task), aug=aug,
                                target_map=target_map)

    build.split_sizes = split_sizes  # the task record declares them (TaskSpec.split_sizes)
    return build


def _synthetic(**kw) -> TaskSpec:
    defaults = {
        "suite": "synth", "default_resolution": DEFAULT_RESOLUTION, "splits": SplitSpec("train", "val", "test"),
        "optim": OptimConfig("adam", 3e-4), "batch_size": 64,
    }
    kw.setdefault("extra", {"split_sizes": kw["dataset"].split_sizes})
    return register_task(TaskSpec(**{**defaults, **kw}))


# Chance level: test accuracy of always predicting the train split's majority class (default
# 64 px splits); tests/tasks/test_synthetic_tasks.py re-measures them from the data.
SYNTH_SHAPE_CLS = _synthetic(
    name="synth_shape_cls", paper_name="ImageNet / Caltech analogue", output="image", nature="semantic",
    head="linear", loss="ce", metric="top1", num_outputs=len(SHAPE_NAMES), class_names=SHAPE_NAMES,
    dataset=synthetic_builder("single", "image", "shape_cls"), epochs=30, chance=0.258, chance_kind="majority class",
    description="shape class of the largest visible object",
)
# Label granularity (Cole et al.): the shapes of synth_shape_cls grouped by one geometric rule, read from the
# same renders. Extruded solids keep one horizontal cross-section at every height (vertical sides and a flat
# top: a rectangle seen from the side); tapered ones shrink toward the top, to the cone's apex or the sphere's
# pole (a triangle or a disc from the side). Two balanced classes of two shapes each.
SHAPE_FAMILIES: dict[str, tuple[str, ...]] = {"extruded": ("box", "cylinder"), "tapered": ("sphere", "cone")}
SHAPE_FAMILY_NAMES: tuple[str, ...] = tuple(SHAPE_FAMILIES)
# stored shape_cls -> family index
SHAPE_TO_FAMILY: tuple[int, ...] = tuple(
    next(i for i, members in enumerate(SHAPE_FAMILIES.values()) if shape in members) for shape in SHAPE_NAMES)
CHANCE_SHAPE_FAMILY = 0.522  # benchmarks/synthetic_trivial.py, as the others
SYNTH_SHAPE_COARSE_CLS = _synthetic(
    name="synth_shape_coarse_cls", paper_name="label-granularity twin of synth_shape_cls", output="image",
    nature="semantic", head="linear", loss="ce", metric="top1", num_outputs=len(SHAPE_FAMILY_NAMES),
    class_names=SHAPE_FAMILY_NAMES,
    dataset=synthetic_builder("single", "image", "shape_cls", target_map=SHAPE_TO_FAMILY), epochs=30,
    chance=CHANCE_SHAPE_FAMILY, chance_kind="majority class", suite="granularity", coarse_of="synth_shape_cls",
    description="shape family of the largest visible object: extruded (box, cylinder) or tapered (sphere, cone)",
)
SYNTH_COUNT = _synthetic(
    name="synth_count", paper_name="CLEVR Count analogue", output="image", nature="structural",
    head="linear", loss="ce", metric="top1", num_outputs=MAX_OBJECTS,
    class_names=tuple(str(i) for i in range(1, MAX_OBJECTS + 1)),
    dataset=synthetic_builder("single", "image", "count", target_offset=1), epochs=30, chance=0.210,
    chance_kind="majority class", description="number of visible objects (1..6; class = count - 1)",
)
SYNTH_NUM_STEPS = _synthetic(
    name="synth_num_steps", paper_name="THOR Num. Steps analogue", output="image", nature="structural",
    head="linear", loss="ce", metric="top1", num_outputs=MAX_STEPS + 1,
    class_names=tuple(str(i) for i in range(MAX_STEPS + 1)),
    dataset=synthetic_builder("single", "image", "num_steps"), epochs=30, chance=0.222,
    chance_kind="majority class", description="free 0.25 m steps ahead of the camera, 0..4",
)

# Multi-frame and pixelwise tasks. Chance = the trivial predictor fitted on train and scored on
# the default 64 px test split (majority class, mean depth, zero flow); see
# benchmarks/synthetic_trivial.py. Epochs keep each task near 1-2 CPU minutes with the full grid.
SYNTH_EGOMOTION = _synthetic(
    name="synth_egomotion", paper_name="THOR Egomotion analogue", output="image", nature="structural",
    head="fusion", loss="ce", metric="top1", num_outputs=len(EGOMOTION_ACTIONS), class_names=EGOMOTION_ACTIONS,
    frames=2, dataset=synthetic_builder("pairs", "frames", "action"), epochs=30, chance=CHANCE_EGOMOTION,
    chance_kind="majority class", description="camera action between two frames",
)
SYNTH_ACTION = _synthetic(
    name="synth_action", paper_name="Kinetics Action analogue", output="image", nature="semantic",
    head="fusion", loss="ce", metric="top1", num_outputs=len(ACTION_CLASSES), class_names=ACTION_CLASSES,
    frames=CLIP_FRAMES, dataset=synthetic_builder("clips", "frames", "action"), epochs=30, chance=CHANCE_ACTION,
    chance_kind="majority class", description="how one object moves over a 6-frame clip",
)
SYNTH_SEG = _synthetic(
    name="synth_seg", paper_name="Cityscapes / Pets Seg. analogue", output="pixel", nature="semantic",
    head="deeplabv3plus", loss="pixel_ce", metric="miou", num_outputs=len(SEG_CLASS_NAMES),
    class_names=SEG_CLASS_NAMES, dataset=synthetic_builder("single", "image", "seg", sizes=PIXEL_SIZES),
    epochs=EPOCHS_SEG,
    batch_size=32, chance=CHANCE_SEG, chance_kind="majority class everywhere",
    description="per-pixel class: background (ceiling), floor, wall, each shape",
)
SYNTH_WALKABLE = _synthetic(
    name="synth_walkable", paper_name="NYU Walkable analogue", output="pixel", nature="structural",
    head="deeplabv3plus", loss="pixel_ce", metric="miou", num_outputs=2, class_names=("other", "walkable"),
    dataset=synthetic_builder("single", "image", "walkable", sizes=PIXEL_SIZES), epochs=EPOCHS_SEG, batch_size=32,
    chance=CHANCE_WALKABLE, chance_kind="majority class everywhere",
    description="visible floor that is free of objects",
)
SYNTH_DEPTH = _synthetic(
    name="synth_depth", paper_name="NYU / THOR Depth analogue", output="pixel", nature="structural",
    head="unet", loss="l1", metric="neg_l1", num_outputs=1,
    dataset=synthetic_builder("single", "image", "depth", valid_positive=True, sizes=PIXEL_SIZES), epochs=EPOCHS_DEPTH,
    batch_size=32, chance=CHANCE_DEPTH, chance_kind="train mean depth everywhere",
    description="per-pixel depth in metres (valid where depth > 0)",
)
SYNTH_FLOW = _synthetic(
    name="synth_flow", paper_name="KITTI Opt. Flow analogue", output="pixel", nature="structural",
    head="siamese_unet", loss="l1", metric="one_minus_fl_all", num_outputs=2, frames=2,
    dataset=synthetic_builder("pairs", "frames", "flow", valid_field="flow_valid", sizes=PIXEL_SIZES),
    epochs=EPOCHS_FLOW, output_scale=FLOW_SCALE, grid=(OptimConfig("adam", 3e-4),),
    batch_size=32, chance=CHANCE_FLOW, chance_kind="zero flow",
    description="optical flow (u, v) in pixels from frame 0 to frame 1, valid where it is defined",
)

__all__ = ["ACTION_CLASSES", "EGOMOTION_ACTIONS", "SyntheticDataset", "synthetic_builder"]
