"""What every real-dataset loader shares: the data root, the declared layout of a family, the
split base class, problems that name the file, and image decoding.

A loader lists a split on construction (pairing images with labels by id or stem, never by
two sorted globs; one class map for all splits, from the release's class list) and decodes in
``__getitem__``, so that DataLoader workers do the decoding. Listing never stats files one by
one: a folder is read once with ``os.scandir`` and membership is a set lookup, which is what
keeps a 1.28M-file ImageNet listing to seconds.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from harness.common.errors import HarnessError

from ..spec import DataRequest, SplitSpec, TaskSpec, TransformSpec
from ..transforms import TargetKind, apply_transform, split_seed, split_transform

DATA_ENV = "HARNESS_DATA"
IMAGE_SIZE = 224  # the paper's input size for image-level tasks
IMAGE_RESIZE = TransformSpec(resize=(IMAGE_SIZE, IMAGE_SIZE))


def resolve_data_root(explicit: Path | str | None = None) -> Path:
    """``--data-root``, else ``$HARNESS_DATA``, else ``./data`` (docs/data.md)."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else Path("data")


class DataMissing(HarnessError):
    """The dataset folder (or a top-level part of it) is not there."""


class DataProblem(HarnessError):
    """The files are there but do not pair up: a missing partner, an unreadable label file."""


def missing_folder(task_name: str, path: Path, what: str = "") -> DataMissing:
    what = f" ({what})" if what else ""
    return DataMissing(f"task {task_name}: dataset not found: {path}{what} does not exist (data root: --data-root, "
                       f"${DATA_ENV} or ./data); see `harness data layout {task_name}` for the expected layout")


def task_folder(task: TaskSpec, req: DataRequest) -> Path:
    """The family's folder under the requested data root; a one-line error if it is missing."""
    if task.layout is None:
        raise HarnessError(f"task {task.name} declares no data layout")
    root = resolve_data_root(req.data_root) / task.layout.folder
    if not root.is_dir():
        raise missing_folder(task.name, root)
    return root


def require(path: Path, task_name: str, what: str = "") -> Path:
    """A top-level file or folder of the layout that must exist (a missing one is DataMissing)."""
    if not path.exists():
        raise missing_folder(task_name, path, what)
    return path


def list_names(folder: Path) -> set[str]:
    """The entry names of one folder in one ``os.scandir`` pass (no per-file stat)."""
    try:
        with os.scandir(folder) as it:
            return {e.name for e in it}
    except FileNotFoundError:
        return set()


def list_files(folder: Path, suffixes: Iterable[str]) -> list[str]:
    """Names of the files in ``folder`` whose suffix (case-insensitive) is one of ``suffixes``, sorted."""
    suffixes = tuple(s.lower() for s in suffixes)
    try:
        with os.scandir(folder) as it:
            return sorted(e.name for e in it if e.name.lower().endswith(suffixes) and not e.name.startswith("."))
    except FileNotFoundError:
        return []


def list_dirs(folder: Path) -> list[str]:
    """Sub-folder names, sorted (``DirEntry.is_dir`` uses the type scandir already read)."""
    try:
        with os.scandir(folder) as it:
            return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    except FileNotFoundError:
        return []


class Problems:
    """Problems found while listing a split. In strict mode (eval) the listing fails with the
    first one and a count; in check mode (``harness data check``) they are all reported."""

    def __init__(self, task_name: str, strict: bool):
        self.task_name, self.strict = task_name, strict
        self.items: list[str] = []

    def add(self, where: str | Path, what: str) -> None:
        self.items.append(f"{where}: {what}")

    def __len__(self) -> int:
        return len(self.items)

    def raise_if_any(self) -> None:
        if self.items and self.strict:
            more = f" (and {len(self.items) - 1} more)" if len(self.items) > 1 else ""
            raise DataProblem(f"task {self.task_name}: {self.items[0]}{more}; run `harness data check --task "
                              f"{self.task_name}` for the full list")


class TaskDataset(Dataset):
    """Base of every task's split (real or synthetic).

    Samples are dicts: ``image`` float in [0, 1], (3, H, W) or (S, 3, H, W); ``target``; optional
    ``valid``. Subclasses declare ``class_labels`` for classification (stratified carving and
    ``data check`` histograms read it) and ``native_target`` (the label as decoded from its file,
    before any resizing) for ``data check``.
    """

    decodes_files: bool = False  # True: decoding is real work, worth DataLoader workers
    problems: list[str]

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def class_labels(self) -> np.ndarray | None:
        """Per-sample class index (int64) for classification tasks; None otherwise."""
        return None

    def native_target(self, i: int) -> tuple[Any, np.ndarray | None]:
        """(target, valid) of sample ``i`` at native resolution, as decoded from the label files."""
        labels = self.class_labels()
        if labels is None:  # pragma: no cover - pixelwise subclasses override
            raise NotImplementedError
        return int(labels[i]), None

    def sized_files(self, i: int) -> Sequence[Path]:
        """The files of sample ``i`` that must share one size, the image first: a pixelwise image and
        its label map, a pair's frames. Empty where nothing is compared (image-level samples are
        resized one by one)."""
        return ()

    def size_problem(self, i: int) -> str | None:
        """What eval would refuse about sample ``i``'s sizes, read from the file headers (nothing is
        decoded, so ``data check`` can afford every pair); None when they agree."""
        files = self.sized_files(i)
        if len(files) < 2:
            return None
        ref = header_size(files[0])
        for f in files[1:]:
            size = header_size(f)
            if size != ref:
                return size_mismatch(f, size, files[0], ref)
        return None


# ---------------------------------------------------------------------------------------- images

def header_size(path: Path | str) -> tuple[int, int]:
    """(W, H) of an image from its header alone (PIL reads no pixels until asked)."""
    try:
        with Image.open(path) as img:
            return img.size
    except FileNotFoundError:
        raise HarnessError(f"{path}: file not found") from None
    except OSError as exc:
        raise HarnessError(f"{path}: not a readable image ({exc})") from None


def size_mismatch(path: Path | str, size: tuple[int, int], ref: Path | str, ref_size: tuple[int, int]) -> str:
    """The one line for files of one sample whose sizes differ (sizes as (W, H))."""
    return (f"{path}: {size[0]} x {size[1]} (W x H), but {Path(ref).name}, which it must match, is "
            f"{ref_size[0]} x {ref_size[1]}; the files do not belong together (or one was resized)")


def read_rgb(path: Path | str) -> Image.Image:
    """An RGB image (palette, grey, CMYK and RGBA releases all arrive as RGB; alpha is dropped)."""
    with Image.open(path) as img:
        img.draft("RGB", img.size)  # JPEG: decode straight to RGB
        return img.convert("RGB")


def to_tensor(img: Image.Image, size: tuple[int, int] | None) -> torch.Tensor:
    """(3, H, W) float in [0, 1]; ``size`` = (H, W) resized without keeping the aspect ratio
    (bilinear, antialiased), as the reference implementation did; None keeps the native size."""
    if size is not None and (img.height, img.width) != tuple(size):
        img = img.resize((size[1], size[0]), Image.BILINEAR, reducing_gap=None)
    # In numpy, not torch: per-image torch ops wake torch's intra-op thread pool, which on a busy
    # machine costs tens of ms per image in a loader without workers (same float32 values).
    arr = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / np.float32(255.0)
    return torch.from_numpy(np.ascontiguousarray(arr))


def load_image(path: Path | str, size: tuple[int, int] | None) -> torch.Tensor:
    return to_tensor(read_rgb(path), size)


class TransformedSplit(TaskDataset):
    """Base of every real split: ``items`` (one per sample, ``--limit`` applied here) and ``decode(i)``,
    the sample as its files hold it; ``__getitem__`` then sizes and augments it through
    ``apply_transform`` alone, with the split's ``TransformSpec`` (``split_transform``: the task's train
    or eval spec, or R x R for ``--resolution R``) and seed (``split_seed``). One path for every loader,
    image-level or pixelwise: whatever a task's spec declares is applied."""

    kind: TargetKind = "label"

    def __init__(self, task: TaskSpec, req: DataRequest, items: Iterable[Any], problems: Problems | None):
        self.task_name, self.req = task.name, req
        self.spec = split_transform(task, req)
        self.items = apply_limit(list(items), req)
        self.problems = problems.items if problems is not None else []

    def __len__(self) -> int:
        return len(self.items)

    def decode(self, i: int) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return apply_transform(self.decode(i), self.spec, self.kind, split_seed(self.req, i))


class FileClassification(TransformedSplit):
    """Image-level classification over files: each item is one path (or S paths, frames in order) and a
    class index. Images are decoded in ``__getitem__`` straight to the spec's ``resize`` (PIL, antialiased:
    cheaper than decoding at full size and resizing a tensor), so ``apply_transform`` adds only the random
    part (scale, crop, flip) where the spec declares one."""

    decodes_files = True

    def __init__(self, task: TaskSpec, req: DataRequest, items: Iterable[tuple[Path | tuple[Path, ...], int]],
                 problems: Problems | None = None):
        super().__init__(task, req, items, problems)
        self.paths = [p for p, _ in self.items]
        self.labels = np.asarray([y for _, y in self.items], dtype=np.int64)

    def decode(self, i: int) -> dict[str, torch.Tensor]:
        p, size = self.paths[i], self.spec.resize
        image = torch.stack([load_image(f, size) for f in p]) if isinstance(p, tuple) else load_image(p, size)
        return {"image": image, "target": torch.tensor(int(self.labels[i]))}

    def class_labels(self) -> np.ndarray:
        return self.labels


def image_task(**fields: Any) -> TaskSpec:
    """A paper image-level task record with what they share unless ``fields`` say otherwise: a linear head
    trained with cross-entropy and scored by top-1 on images resized to 224 x 224 without keeping the aspect
    ratio (as the reference), the release's train and test splits with 10% of train carved for validation, one
    output per class name."""
    defaults: dict[str, Any] = dict(
        output="image", head="linear", loss="ce", metric="top1", suite="paper", default_resolution=IMAGE_SIZE,
        train_transform=IMAGE_RESIZE, eval_transform=IMAGE_RESIZE, splits=SplitSpec("train", None, "test", 0.1),
        num_outputs=len(fields.get("class_names", ())))
    return TaskSpec(**{**defaults, **fields})


def class_index(names: Sequence[str]) -> dict[str, int]:
    """One class map for every split, from the release's class list (order kept)."""
    if len(set(names)) != len(names):
        raise ValueError("duplicate class names")
    return {n: i for i, n in enumerate(names)}


def apply_limit(items: list, req: DataRequest) -> list:
    """``--limit N``: N samples drawn with a fixed seed (the runner sets it on the train split
    only). Not the first N: a listing is ordered by class, and a prefix would drop classes."""
    if req.limit is None or req.limit >= len(items):
        return items
    keep = np.sort(np.random.default_rng(0x5EED).permutation(len(items))[: req.limit])
    return [items[i] for i in keep]
