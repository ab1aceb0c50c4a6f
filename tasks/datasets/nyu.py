"""NYU Depth v2 (the 1,449 densely labelled frames): depth in metres and walkable surfaces.

Two ways in, tried in this order:

1. The official ``nyu/nyu_depth_v2_labeled.mat``, a MATLAB v7.3 file, i.e. HDF5, read with
   h5py. MATLAB writes column-major arrays, so HDF5 shows every axis reversed: ``images``
   (N, 3, W, H) uint8, ``depths`` (N, W, H) float32 metres (in-painted, so nearly all valid),
   ``labels`` (N, W, H) uint16 with 0 = unlabelled and k = ``names{k}``, and ``names`` a
   (1, 894) array of object references to uint16 character arrays (MATLAB ``char``).
   Frames are transposed back to (H, W) = (480, 640).
2. The reference's export, when that is what the user has: ``nyu/{train,test}/images/*.png``
   (RGB), ``depths/*.tiff`` (32-bit float TIFF, metres; PIL mode "F") and ``walkable/*.png``
   (non-zero = walkable, as the reference read it), paired by stem. Its train/test folders
   are the split; it has no unlabelled pixels to ignore.

Split (file 1): the paper's 1,159 / 290 (80 / 20 of 1,449). The reference shuffled the file
list without a seed, so its split cannot be recovered; here a permutation with the fixed
seed ``SPLIT_SEED`` puts the first int(0.8 N) frames (in file order after sorting the chosen
indices) in train and the rest in test. 10% of train is carved (seeded) for model selection.

Walkable: the pixels whose class name is one of ``WALKABLE_NAMES``, picked by reading the
894 names of the release: floor, floor mat, rug and yoga mat are the surfaces one walks on
("carpet" is not among the names; "rolled carpet", "rolled up rug", "floor trim", "stairs",
"desk mat", "placemat" and "mouse pad" are not walkable floor). Every other named class is
"not walkable"; unlabelled pixels (0) carry no ground truth and are ignored (255), not
counted as "not walkable": an unlabelled strip along a floor edge would otherwise teach the
head that floor is not walkable. Scored by the 2-class mIoU over labelled pixels.

Both tasks train and evaluate at the native 480 x 640 (the paper resized to 224 x 224;
``--resolution 224`` does that), without random augmentation, as the paper did.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from harness.common.errors import HarnessError

from ..registry import register_task
from ..spec import DataLayout, DataRequest, SplitSpec, TaskSpec, TransformSpec
from .base import Problems, list_files, missing_folder, task_folder
from .pixelwise import IGNORE, PixelSplit, class_map_sample, depth_sample

FOLDER = "nyu"
MAT_NAME = "nyu_depth_v2_labeled.mat"
N_FRAMES = 1_449
TRAIN_FRACTION = 0.8  # 1,159 train / 290 test
SPLIT_SEED = 1_449
WALKABLE_NAMES: tuple[str, ...] = ("floor", "floor mat", "rug", "yoga mat")
WALKABLE_CLASSES: tuple[str, ...] = ("not walkable", "walkable")
TIFF_SUFFIXES = (".tiff", ".tif")

LAYOUT = DataLayout(
    folder=FOLDER,
    tree="""nyu/
  nyu_depth_v2_labeled.mat    (MATLAB v7.3 = HDF5: images, depths [m], labels, names; axes stored transposed)
or the reference's export (nyu.zip of the ViRB README):
  train/images/<stem>.png     train/depths/<stem>.tiff (float, m)     train/walkable/<stem>.png (non-zero = walkable)
  test/images/<stem>.png      test/depths/<stem>.tiff                 test/walkable/<stem>.png""",
    url="https://cs.nyu.edu/~silberman/datasets/nyu_depth_v2.html (Labeled dataset, nyu_depth_v2_labeled.mat)",
    counts={"train": 1_159, "test": 290},
    notes=f"from the .mat: seeded 80/20 split (seed {SPLIT_SEED}); 10% of train carved for val",
)


def split_indices(n: int, split: str) -> np.ndarray:
    """Frame indices of the paper's seeded 80 / 20 split of the ``n`` labelled frames, sorted."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    k = int(TRAIN_FRACTION * n)
    return np.sort(perm[:k] if split == "train" else perm[k:])


def walkable_map(labels: np.ndarray, walkable_ids: np.ndarray) -> np.ndarray:
    """NYU class ids -> 1 walkable, 0 not walkable, 255 unlabelled (id 0)."""
    out = np.isin(labels, walkable_ids).astype(np.int64)
    out[labels == 0] = IGNORE
    return out


def _shown(values: np.ndarray) -> str:
    """The distinct offending values, the first few."""
    u = np.unique(values)
    return ", ".join(f"{v:g}" for v in u[:5].tolist()) + (", ..." if len(u) > 5 else "")


def checked_depth(depth: np.ndarray, where: str) -> np.ndarray:
    """Depth in metres as the release holds it (in-painted, so finite and >= 0; 0 is read as no depth);
    a NaN, infinite or negative depth is refused, naming the file and the value."""
    bad = ~np.isfinite(depth) | (depth < 0)
    if bad.any():
        raise HarnessError(f"{where}: depth {_shown(depth[bad])} at {int(bad.sum()):,} pixel(s): the release's "
                           f"depths are metres >= 0")
    return depth


# ------------------------------------------------------------------------------------------ the .mat

class NyuMat:
    """The v7.3 file, opened lazily once per process (h5py handles do not survive a fork)."""

    def __init__(self, path: Path):
        self.path = path
        self._file: Any = None
        self._pid = -1
        f = self.file()
        missing = [k for k in ("images", "depths", "labels", "names") if k not in f]
        if missing:
            raise HarnessError(f"{path}: no {', '.join(missing)} dataset(s); is this nyu_depth_v2_labeled.mat?")
        shapes = {k: f[k].shape for k in ("images", "depths", "labels")}
        n, _, w, h = shapes["images"] if len(shapes["images"]) == 4 else (0, 0, 0, 0)
        if shapes["images"][1:2] != (3,) or shapes["depths"] != (n, w, h) or shapes["labels"] != (n, w, h):
            raise HarnessError(f"{path}: images {shapes['images']}, depths {shapes['depths']}, labels "
                               f"{shapes['labels']}: expected (N, 3, W, H), (N, W, H), (N, W, H) as MATLAB stores them")
        self.n, self.size = n, (h, w)
        self.names = self._names(f)
        self.close()

    def file(self):
        if self._file is None or self._pid != os.getpid():
            import h5py

            try:
                self._file = h5py.File(self.path, "r")
            except OSError as exc:
                raise HarnessError(f"{self.path}: not readable as a MATLAB v7.3 (HDF5) file ({exc}); the labelled "
                                   f"NYU v2 file is v7.3") from None
            self._pid = os.getpid()
        return self._file

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None, "_pid": -1}

    def _names(self, f) -> tuple[str, ...]:
        refs = np.asarray(f["names"]).reshape(-1)
        try:
            return tuple("".join(map(chr, np.asarray(f[r]).reshape(-1))) for r in refs)
        except (TypeError, ValueError) as exc:
            raise HarnessError(f"{self.path}: names is not a cell array of strings ({exc})") from None

    def image(self, j: int) -> torch.Tensor:
        arr = np.asarray(self.file()["images"][j]).transpose(0, 2, 1)  # (3, W, H) -> (3, H, W)
        return torch.from_numpy(np.ascontiguousarray(arr)).float().div_(255.0)

    def depth(self, j: int) -> np.ndarray:
        return checked_depth(np.asarray(self.file()["depths"][j], dtype=np.float32).T, f"{self.path} frame {j + 1}")

    def labels(self, j: int) -> np.ndarray:
        """Frame ``j``'s class ids; an id past the release's names (0 = unlabelled, k = names{k}) is refused."""
        labels = np.asarray(self.file()["labels"][j]).T.astype(np.int64)
        bad = (labels < 0) | (labels > len(self.names))
        if bad.any():
            raise HarnessError(f"{self.path} frame {j + 1}: label {_shown(labels[bad])} at {int(bad.sum()):,} "
                               f"pixel(s): the release's labels are 0 (unlabelled) or 1..{len(self.names)} (its names)")
        return labels

    def walkable_ids(self) -> np.ndarray:
        ids = np.array([k + 1 for k, name in enumerate(self.names) if name in WALKABLE_NAMES], dtype=np.int64)
        if not len(ids):
            raise HarnessError(f"{self.path}: none of the walkable class names {list(WALKABLE_NAMES)} is in names "
                               f"({len(self.names)} names: {', '.join(self.names[:4])}, ...)")
        return ids


class NyuMatSplit(PixelSplit):
    """Frames of the labelled .mat: each item is a frame index (no files to compare by size)."""

    def __init__(self, task: TaskSpec, req: DataRequest, mat: NyuMat, frames: list[int], problems: Problems):
        super().__init__(task, req, frames, problems)
        self.kind = "depth" if task.name == "nyu_depth" else "class_map"
        self.mat = mat
        self.walkable_ids = mat.walkable_ids() if self.kind == "class_map" else None

    def where(self, i: int) -> str:
        return f"{self.mat.path} frame {self.items[i] + 1}"

    def sized_files(self, i: int) -> tuple[Path, ...]:
        return ()

    def decode_image(self, i: int) -> torch.Tensor:
        return self.mat.image(self.items[i])

    def decode_target(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        j = self.items[i]
        if self.kind == "depth":
            depth = self.mat.depth(j)
            return depth_sample(depth, np.ones(depth.shape, bool))
        return class_map_sample(walkable_map(self.mat.labels(j), self.walkable_ids))


# ------------------------------------------------------------------------------- the reference export

def read_depth_tiff(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            if img.mode != "F":
                raise HarnessError(f"{path}: a mode {img.mode} TIFF; the export's depths are 32-bit float metres "
                                   f"(mode F)")
            return checked_depth(np.asarray(img, dtype=np.float32), str(path))
    except FileNotFoundError:
        raise HarnessError(f"{path}: file not found") from None
    except OSError as exc:
        raise HarnessError(f"{path}: not a readable TIFF ({exc})") from None


def read_walkable_png(path: Path) -> np.ndarray:
    """An exported walkable mask: 1 where non-zero (as the reference read it), else 0. A mask holds two
    values, 0 and the one marking walkable; a third (a grey level of a photo, an interpolated edge) was
    not written as a mask and is refused, naming the file and the values."""
    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("L") if img.mode in ("RGB", "RGBA", "P") else img)
    except FileNotFoundError:
        raise HarnessError(f"{path}: file not found") from None
    except OSError as exc:
        raise HarnessError(f"{path}: not a readable PNG ({exc})") from None
    marks = np.unique(arr[arr != 0])
    if len(marks) > 1:
        raise HarnessError(f"{path}: values 0, {_shown(marks)}: a walkable mask holds 0 and one value for "
                           f"walkable; is this the export's walkable/ mask, unchanged?")
    return (arr != 0).astype(np.int64)


class NyuExportSplit(PixelSplit):
    """(image, depth TIFF or walkable PNG) pairs of the reference's export."""

    def __init__(self, task: TaskSpec, req: DataRequest, items: list[tuple[Path, Path]], problems: Problems):
        super().__init__(task, req, items, problems)
        self.kind = "depth" if task.name == "nyu_depth" else "class_map"

    def decode_target(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.items[i][1]
        if self.kind == "depth":
            depth = read_depth_tiff(path)
            return depth_sample(depth, np.ones(depth.shape, bool))
        return class_map_sample(read_walkable_png(path))


def _stem_order(stem: str) -> tuple:
    return (0, int(stem), stem) if stem.isdigit() else (1, 0, stem)


def list_export(root: Path, split: str, task: TaskSpec, problems: Problems) -> list[tuple[Path, Path]]:
    """(image, label) pairs of one exported split, paired by stem."""
    folder = root / split
    if not folder.is_dir():
        raise missing_folder(task.name, folder, f"the {split} split of the export")
    label_dir, suffixes = (("depths", TIFF_SUFFIXES) if task.name == "nyu_depth" else ("walkable", (".png",)))
    images = {Path(f).stem: f for f in list_files(folder / "images", (".png",))}
    labels = {Path(f).stem: f for f in list_files(folder / label_dir, suffixes)}
    for stem in sorted(set(images) - set(labels), key=_stem_order):
        problems.add(folder / label_dir / f"{stem}{suffixes[0]}",
                     f"missing: the {label_dir} file of images/{images[stem]}")
    for stem in sorted(set(labels) - set(images), key=_stem_order):
        problems.add(folder / "images" / f"{stem}.png", f"missing: the image of {label_dir}/{labels[stem]}")
    return [(folder / "images" / images[s], folder / label_dir / labels[s])
            for s in sorted(set(images) & set(labels), key=_stem_order)]


# ------------------------------------------------------------------------------------------- builder

def build(task: TaskSpec, req: DataRequest) -> PixelSplit:
    if req.split not in LAYOUT.counts:
        raise HarnessError(f"task {task.name}: no split {req.split!r} (has {', '.join(LAYOUT.counts)})")
    root = task_folder(task, req)
    problems = Problems(task.name, req.strict)
    mat_path = root / MAT_NAME
    if mat_path.is_file():
        mat = NyuMat(mat_path)
        return NyuMatSplit(task, req, mat, split_indices(mat.n, req.split).tolist(), problems)
    if (root / "train").is_dir() or (root / "test").is_dir():
        items = list_export(root, req.split, task, problems)
        problems.raise_if_any()
        return NyuExportSplit(task, req, items, problems)
    raise missing_folder(task.name, mat_path, "the labelled NYU v2 file, or the reference's export train/ and test/")


_COMMON: dict[str, Any] = dict(
    output="pixel", nature="structural", dataset=build, suite="paper", train_size=1_159,
    splits=SplitSpec("train", None, "test", val_fraction=0.1), train_transform=TransformSpec(),
    eval_transform=TransformSpec(), layout=LAYOUT,
)

NYU_DEPTH = register_task(TaskSpec(
    name="nyu_depth", paper_name="NYU Depth", head="unet", loss="l1", metric="neg_l1", num_outputs=1, epochs=250,
    extra={"depth_unit": "m"}, **_COMMON,
    description="depth in metres from the labelled NYU v2 (.mat v7.3 or the reference's export), L1 on valid "
                "pixels; seeded 1,159 / 290 split; native 480 x 640 (the paper resized to 224: --resolution 224)",
))

NYU_WALKABLE = register_task(TaskSpec(
    name="nyu_walkable", paper_name="NYU Walkable", head="deeplabv3plus", loss="pixel_ce", metric="miou",
    num_outputs=2, class_names=WALKABLE_CLASSES, ignore_index=IGNORE, epochs=100, **_COMMON,
    description=f"walkable ({', '.join(WALKABLE_NAMES)}) vs every other labelled class, unlabelled pixels "
                "ignored; 2-class mIoU; seeded 1,159 / 290 split; native 480 x 640 (--resolution R: R x R)",
))
