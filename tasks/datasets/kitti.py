"""KITTI optical flow 2015: ``kitti/training/{image_2,flow_occ}``, as released.

Each of the 200 training pairs is ``image_2/NNNNNN_10.png`` and ``NNNNNN_11.png`` (frames t
and t + 1) with the ground truth ``flow_occ/NNNNNN_10.png`` (all pixels with ground truth,
occluded ones included: the set the benchmark ranks on). The devkit's readme fixes the
format: a 3-channel 16-bit PNG, u = (R - 2^15) / 64, v = (G - 2^15) / 64 in pixels, valid =
B > 0. PIL would open it as 8-bit RGB without a word, so it is read with
``png16.read_png16`` (all 16 bits). The reference instead regressed the luminance of the
colour *visualisation* of the flow; this is real flow, scored by 1 - Fl-all over valid
pixels (``tasks.metrics.FlowScore``).

Split: the reference trained on the first 180 pairs and tested on the last 20 (ids 180..199);
the harness does the same, by id (a missing file never moves a pair across the boundary), and
carves 10% of train (seeded) for model selection. The release's 200 test pairs have no
public ground truth and are not read.

Sizes: frames are about 375 x 1242 and differ slightly from pair to pair. Training uses
random 224 x 224 crops, the reference's (the paper's 513 x 513 does not fit in a 375-row
frame); evaluation is at each pair's native size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from harness.common.errors import HarnessError

from ..registry import register_task
from ..spec import DataLayout, DataRequest, SplitSpec, TaskSpec, TransformSpec
from .base import Problems, list_names, load_image, require, size_mismatch, task_folder
from .pixelwise import PixelSplit
from .png16 import read_png16

FOLDER = "kitti"
N_PAIRS = 200
TRAIN_FRACTION = 0.9  # first 180 of 200 train, last 20 test (the reference's split)
FLOW_OFFSET = 2**15
FLOW_SCALE = 64.0

LAYOUT = DataLayout(
    folder=FOLDER,
    tree="""kitti/
  training/image_2/NNNNNN_10.png     (frame t, 000000..000199)
  training/image_2/NNNNNN_11.png     (frame t + 1)
  training/flow_occ/NNNNNN_10.png    (16-bit RGB: u = (R - 2^15) / 64, v = (G - 2^15) / 64, valid = B > 0)
  (data_scene_flow.zip extracted; testing/ and the other training folders are not read)""",
    url="https://www.cvlibs.net/datasets/kitti/eval_scene_flow.php?benchmark=flow (data_scene_flow.zip)",
    counts={"train": 180, "test": 20},
    notes="pairs 000000..000179 train (10% carved for val), 000180..000199 test, as the reference split them",
)


def decode_flow(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """KITTI 16-bit (H, W, 3) samples -> ((2, H, W) float32 flow in pixels, 0 where invalid; (H, W) valid)."""
    s = samples.astype(np.float32)
    valid = samples[..., 2] > 0
    flow = (s[..., :2] - FLOW_OFFSET) / FLOW_SCALE
    flow[~valid] = 0.0
    return np.ascontiguousarray(flow.transpose(2, 0, 1)), valid


def read_flow(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A ``flow_occ`` PNG decoded; a valid flag (B) other than the devkit's 0 or 1 is refused, naming the
    file and the value (R and G are 16-bit flow: every value is one the format can hold)."""
    samples = read_png16(path, channels=3)
    flags = samples[..., 2]
    bad = flags > 1
    if bad.any():
        values = np.unique(flags[bad])
        shown = ", ".join(str(int(v)) for v in values[:5]) + (", ..." if len(values) > 5 else "")
        raise HarnessError(f"{path}: valid flag (blue channel) {shown} at {int(bad.sum()):,} pixel(s): the devkit "
                           f"writes 1 (valid) or 0 (no ground truth); is this a flow_occ map, unchanged?")
    return decode_flow(samples)


class KittiFlowSplit(PixelSplit):
    """(frame t, frame t + 1, flow) triples, one size each; a problem names the flow map."""

    kind = "flow"

    def where(self, i: int) -> str:
        return str(self.items[i][2])

    def decode_image(self, i: int) -> torch.Tensor:
        a, b = (load_image(p, None) for p in self.items[i][:2])
        if a.shape != b.shape:
            raise HarnessError(self.size_problem(i) or size_mismatch(
                self.items[i][1], (b.shape[2], b.shape[1]), self.items[i][0], (a.shape[2], a.shape[1])))
        return torch.stack([a, b])

    def decode_target(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        flow, valid = read_flow(self.items[i][2])
        return torch.from_numpy(flow), torch.from_numpy(valid)


def list_pairs(root: Path, task_name: str, problems: Problems) -> tuple[list[str], dict[str, tuple[Path, Path, Path]]]:
    """Every id seen in image_2 or flow_occ, and (frame t, frame t + 1, flow) of the complete ones; a
    missing file is a problem naming it."""
    image_dir = require(root / "training" / "image_2", task_name, "the frames")
    flow_dir = require(root / "training" / "flow_occ", task_name, "the ground-truth flow")
    images, flows = list_names(image_dir), list_names(flow_dir)
    ids = sorted({n[: -len("_10.png")] for n in images | flows if n.endswith(("_10.png", "_11.png"))})
    complete = {}
    for i in ids:
        files = (image_dir / f"{i}_10.png", image_dir / f"{i}_11.png", flow_dir / f"{i}_10.png")
        missing = [f for f, have in zip(files, (images, images, flows), strict=True) if f.name not in have]
        for f in missing:
            problems.add(f, f"missing: pair {i} needs frames {i}_10.png, {i}_11.png and flow {i}_10.png")
        if not missing:
            complete[i] = files
    return ids, complete


def split_ids(ids: list[str], split: str) -> list[str]:
    """The reference's split by position in id order: the first 90% train, the rest test."""
    k = int(TRAIN_FRACTION * len(ids))
    return ids[:k] if split == "train" else ids[k:]


def build(task: TaskSpec, req: DataRequest) -> KittiFlowSplit:
    if req.split not in LAYOUT.counts:
        raise HarnessError(f"task {task.name}: no split {req.split!r} (has {', '.join(LAYOUT.counts)})")
    root = task_folder(task, req)
    problems = Problems(task.name, req.strict)
    ids, complete = list_pairs(root, task.name, problems)
    problems.raise_if_any()
    # Split on every id seen, complete or not, so that a lost file never moves another pair across the boundary.
    items = [complete[i] for i in split_ids(ids, req.split) if i in complete]
    return KittiFlowSplit(task, req, items, problems)


KITTI_FLOW = register_task(TaskSpec(
    name="kitti_flow", paper_name="KITTI Opt. Flow", output="pixel", nature="structural", head="siamese_unet",
    loss="l1", metric="one_minus_fl_all", dataset=build, num_outputs=2, frames=2, epochs=250, suite="paper",
    train_size=N_PAIRS, splits=SplitSpec("train", None, "test", val_fraction=0.1),
    train_transform=TransformSpec(crop=(224, 224)), eval_transform=TransformSpec(), layout=LAYOUT,
    description="KITTI 2015 optical flow from flow_occ (16-bit, all 16 bits read), L1 on valid pixels, scored "
                "1 - Fl-all; pairs 0-179 train, 180-199 test; random 224 x 224 crops in training, each pair's "
                "native ~375 x 1242 at evaluation; --resolution R resizes to R x R (flow vectors scaled)",
))
