"""Images for CKA: the synthetic renders, an image folder, or a registered task's images.

Every source goes through the same class-balanced sampler (n images per class, seeded), as
the paper took 10,000 class-balanced ImageNet images; a source without labels is sampled
uniformly. Images are produced on demand, so a large folder is never held in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .common.errors import HarnessError, UsageError, unknown_name

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
FOLDER_RESOLUTION = 112  # the paper's CKA resolution


def balanced_indices(labels: np.ndarray, limit: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """Up to ``limit // classes`` indices per class, drawn without replacement (seeded).

    With fewer images wanted than classes, ``limit`` classes are drawn and one image taken from
    each. A class with too few images gives all it has. Returns (sorted indices, per class).
    """
    labels = np.asarray(labels)
    if limit < 1:
        raise UsageError(f"--limit {limit}: need at least one image")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = limit // len(classes)
    if per_class == 0:
        classes = rng.choice(classes, size=limit, replace=False)
        per_class = 1
    picked = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        picked.append(rng.choice(members, size=min(per_class, len(members)), replace=False))
    return np.sort(np.concatenate(picked)), per_class


def _resize_square(img: torch.Tensor, size: int) -> torch.Tensor:
    """Shorter side to ``size`` then a centre crop: (3, H, W) -> (3, size, size)."""
    h, w = img.shape[-2:]
    if (h, w) == (size, size):
        return img
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    img = F.interpolate(img[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = (nh - size) // 2, (nw - size) // 2
    return img[:, top:top + size, left:left + size].clamp_(0.0, 1.0)


class _Subset(Dataset):
    """Selected images of a source as {"image": (3, R, R) float in [0, 1]}."""

    def __init__(self, get, indices: np.ndarray, resolution: int):
        self._get, self.indices, self.resolution = get, indices, resolution

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        img = self._get(int(self.indices[i]))
        if img.dim() == 4:  # (S, 3, H, W) clips: the first frame stands for the sample
            img = img[0]
        return {"image": _resize_square(img.float(), self.resolution)}


@dataclass
class ImageSource:
    dataset: Dataset
    resolution: int
    per_class: int | None
    description: str


def _synthetic(limit: int, resolution: int | None, seed: int, split: str | None) -> ImageSource:
    from tasks.synthetic import CORPUS_CLASSES, corpus
    from tasks.synthetic.tasks import DEFAULT_RESOLUTION

    size = resolution or DEFAULT_RESOLUTION
    split = split or "test"
    num_classes = len(CORPUS_CLASSES)
    per_class = max(1, limit // num_classes)
    pool = max(limit + limit // 2, 32)
    for _ in range(4):  # grow the rendered prefix until every class has enough members
        arrays = corpus(pool, size, split=split)
        counts = np.bincount(arrays["shape_cls"], minlength=num_classes)
        if counts.min() >= per_class:
            break
        pool *= 2
    images = arrays["image"]
    idx, per_class = balanced_indices(arrays["shape_cls"], limit, seed)

    def get(i: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(images[i])).permute(2, 0, 1).float() / 255.0

    return ImageSource(_Subset(get, idx, size), size, per_class,
                       f"synthetic single/{split} {size}px, {per_class} per shape class (seed {seed})")


def _folder(root: Path, limit: int, resolution: int | None, seed: int) -> ImageSource:
    from PIL import Image

    if not root.is_dir():
        raise HarnessError(f"image folder {root} does not exist; expected ROOT/CLASS/*.jpg (or images in ROOT)")
    files: list[Path] = []
    labels: list[int] = []
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    groups = [(i, sorted(f for f in d.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES))
              for i, d in enumerate(subdirs)]
    groups = [g for g in groups if g[1]]
    if not groups:
        groups = [(0, sorted(f for f in root.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES))]
    for label, members in groups:
        files.extend(members)
        labels.extend([label] * len(members))
    if not files:
        raise HarnessError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {root}; expected ROOT/CLASS/*.jpg "
                           "(one folder per class) or images directly in ROOT")
    size = resolution or FOLDER_RESOLUTION
    idx, per_class = balanced_indices(np.asarray(labels), limit, seed)

    def get(i: int) -> torch.Tensor:
        try:
            with Image.open(files[i]) as im:
                arr = np.asarray(im.convert("RGB"))
        except OSError as exc:
            raise HarnessError(f"cannot read image {files[i]}: {exc}") from None
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0

    return ImageSource(_Subset(get, idx, size), size, per_class,
                       f"folder {root} ({len(groups)} classes), {per_class} per class (seed {seed})")


def _task(name: str, limit: int, resolution: int | None, seed: int, data_root: Path | None,
          split: str | None) -> ImageSource:
    from tasks.datasets.base import TaskDataset
    from tasks.registry import get_task
    from tasks.spec import DataRequest

    spec = get_task(name)
    split = split or spec.splits.test
    ds = spec.dataset(spec, DataRequest(split=split, data_root=data_root, resolution=resolution, limit=None,
                                        train=False))
    size = resolution or spec.default_resolution
    labels = ds.class_labels() if isinstance(ds, TaskDataset) and spec.output == "image" else None
    if labels is not None:
        idx, per_class = balanced_indices(np.asarray(labels), limit, seed)
        how = f"{per_class} per class"
    else:
        rng = np.random.default_rng(seed)
        idx, per_class = np.sort(rng.choice(len(ds), size=min(limit, len(ds)), replace=False)), None
        how = "uniform sample"
    return ImageSource(_Subset(lambda i: ds[i]["image"], idx, size), size, per_class,
                       f"task {name} '{split}' split {size}px, {how} (seed {seed})")


def build_source(data: str, limit: int, resolution: int | None = None, seed: int = 0,
                 data_root: Path | None = None, split: str | None = None) -> ImageSource:
    """``synthetic``, ``folder:PATH`` or an existing directory, or ``task:NAME`` / a task name."""
    from tasks.registry import TASKS, suite_alias

    if suite_alias(data) == "synth":
        return _synthetic(limit, resolution, seed, split)
    if data.startswith("folder:"):
        return _folder(Path(data[len("folder:"):]).expanduser(), limit, resolution, seed)
    name = data.removeprefix("task:")
    if name in TASKS:
        return _task(name, limit, resolution, seed, data_root, split)
    path = Path(data).expanduser()
    if path.is_dir():
        return _folder(path, limit, resolution, seed)
    raise unknown_name("CKA data source", data, ["synth", *TASKS],
                       hint="(or folder:PATH / a directory of images, one sub-folder per class)")
