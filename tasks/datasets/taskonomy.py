"""Taskonomy depth (z-buffer): ``taskonomy/<building>/{rgb,depth_zbuffer}``, as released.

Each view is ``<building>/rgb/point_<p>_view_<v>_domain_rgb.png`` with its depth
``<building>/depth_zbuffer/point_<p>_view_<v>_domain_depth_zbuffer.png``, paired by
(building, point, view); a view without its partner is a problem naming the missing file.
The depth PNGs are 16-bit greyscale in units of 1/512 m (so at most 128 m); 65535 marks
pixels without depth (windows, sky, holes in the mesh), which are masked out of the loss
and the metric. They are read with all 16 bits (``png16``) and refused if 8-bit.

Split: by building, so that no building's views are on both sides. The paper trained on
39,995 views of the buildings in the reference's ``taskonomy_scenes.txt`` (a list not in
the release; "the dataset split is first proposed in this paper"). Here each building is
assigned by a hash of its name (sha256, mod 10): 0-6 train, 7 val, 8-9 test, so a
building's split never depends on which other buildings a user downloaded.

Images are resized to 224 x 224 for training and evaluation, as the paper did; the depth
is resampled with its invalid pixels kept out of the interpolation.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from harness.common.errors import HarnessError

from ..registry import register_task
from ..spec import DataLayout, DataRequest, SplitSpec, TaskSpec
from .base import IMAGE_RESIZE, Problems, list_dirs, list_files, task_folder
from .pixelwise import PixelSplit, depth_sample
from .png16 import read_png16

FOLDER = "taskonomy"
RGB_SUFFIX = "_domain_rgb.png"
DEPTH_SUFFIX = "_domain_depth_zbuffer.png"
DEPTH_UNITS_PER_METRE = 512.0
DEPTH_INVALID = 65535
SPLIT_BUCKETS = {"train": range(0, 7), "val": range(7, 8), "test": range(8, 10)}

LAYOUT = DataLayout(
    folder=FOLDER,
    tree="""taskonomy/
  <building>/rgb/point_<p>_view_<v>_domain_rgb.png                       (512 x 512 RGB)
  <building>/depth_zbuffer/point_<p>_view_<v>_domain_depth_zbuffer.png   (16-bit, 1/512 m, 65535 = no depth)
  (one folder per building: the rgb and depth_zbuffer archives of each building extracted into it)""",
    url="http://taskonomy.stanford.edu/ (rgb and depth_zbuffer of the buildings in the reference's "
        "https://prior-datasets.s3.us-east-2.amazonaws.com/ViRB/taskonomy_scenes.txt)",
    counts={"train": 39_995},
    notes="split by building: sha256(building name) mod 10 = 0-6 train, 7 val, 8-9 test",
)


def building_split(name: str) -> str:
    """The split a building belongs to, from its name alone."""
    bucket = int(hashlib.sha256(name.encode()).hexdigest(), 16) % 10
    return next(s for s, r in SPLIT_BUCKETS.items() if bucket in r)


def read_depth(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """((1, H, W) float32 metres, (H, W) valid) from a z-buffer PNG. Every 16-bit value is a depth
    (k / 512 m) or the no-depth mark 65535, so no value is refused; ``read_png16`` refuses a file
    that is not one 16-bit channel."""
    raw = read_png16(path, channels=1)
    return depth_sample(raw.astype("float32") / DEPTH_UNITS_PER_METRE, raw != DEPTH_INVALID)


class TaskonomyDepthSplit(PixelSplit):
    """(rgb, z-buffer) pairs."""

    kind = "depth"

    def decode_target(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return read_depth(self.items[i][1])


def list_building(folder: Path, problems: Problems) -> list[tuple[Path, Path]]:
    """(rgb, depth) pairs of one building, paired by point and view."""
    rgb = {f[: -len(RGB_SUFFIX)] for f in list_files(folder / "rgb", (RGB_SUFFIX,))}
    depth = {f[: -len(DEPTH_SUFFIX)] for f in list_files(folder / "depth_zbuffer", (DEPTH_SUFFIX,))}
    for key in sorted(rgb - depth):
        problems.add(folder / "depth_zbuffer" / f"{key}{DEPTH_SUFFIX}", f"missing: the depth of {key}{RGB_SUFFIX}")
    for key in sorted(depth - rgb):
        problems.add(folder / "rgb" / f"{key}{RGB_SUFFIX}", f"missing: the image of {key}{DEPTH_SUFFIX}")
    return [(folder / "rgb" / f"{k}{RGB_SUFFIX}", folder / "depth_zbuffer" / f"{k}{DEPTH_SUFFIX}")
            for k in sorted(rgb & depth)]


def build(task: TaskSpec, req: DataRequest) -> TaskonomyDepthSplit:
    if req.split not in SPLIT_BUCKETS:
        raise HarnessError(f"task {task.name}: no split {req.split!r} (has {', '.join(SPLIT_BUCKETS)})")
    root = task_folder(task, req)
    buildings = [b for b in list_dirs(root) if (root / b / "rgb").is_dir() or (root / b / "depth_zbuffer").is_dir()]
    if not buildings:
        raise HarnessError(f"task {task.name}: no building folder with rgb/ or depth_zbuffer/ under {root}; "
                           f"see `harness data layout {task.name}`")
    problems = Problems(task.name, req.strict)
    mine = [b for b in buildings if building_split(b) == req.split]
    if not mine:
        problems.add(root, f"none of the {len(buildings)} building(s) falls in the {req.split} split "
                           f"(sha256(name) mod 10 in {list(SPLIT_BUCKETS[req.split])}); more buildings are needed")
    items = [pair for b in mine for pair in list_building(root / b, problems)]
    problems.raise_if_any()
    return TaskonomyDepthSplit(task, req, items, problems)


TASKONOMY_DEPTH = register_task(TaskSpec(
    name="taskonomy_depth", paper_name="Taskonomy Depth", output="pixel", nature="structural", head="unet",
    loss="l1", metric="neg_l1", dataset=build, num_outputs=1, epochs=50, suite="paper", train_size=39_995,
    splits=SplitSpec("train", "val", "test"),
    train_transform=IMAGE_RESIZE, eval_transform=IMAGE_RESIZE, layout=LAYOUT, extra={"depth_unit": "m"},
    description="z-buffer depth in metres (16-bit PNG / 512, 65535 masked), L1 on valid pixels; split by building "
                "(hash of the name); 224 x 224 as the paper; --resolution R resizes to R x R",
))
