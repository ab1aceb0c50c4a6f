"""CIFAR-100 (python version): ``cifar-100-python/{train,test,meta}``, as released.

The release is three pickles: ``train`` and ``test`` hold ``data`` (N x 3072 uint8, the 1024
red, then green, then blue values of each 32 x 32 image, row-major) and ``fine_labels``;
``meta`` holds ``fine_label_names``, the class list (index = label). torchvision's CIFAR100
reads the same files, but with a plain ``pickle.load``, which runs whatever code a file
names; the files are read here with an unpickler that admits only the numpy and builtin types
a CIFAR pickle is made of. The paper trains on all 50,000 train images; the harness carves a
stratified, seeded 10% validation split from them (no official one) and tests on the official
10,000.

The same files hold a second label per image: ``coarse_labels``, one of the 20 superclasses
named by ``coarse_label_names`` in ``meta``, each grouping five fine classes. They make
``cifar100_coarse_cls``, the coarse twin of ``cifar100_cls`` for the label-granularity view
(Cole et al.: the same images, fewer and broader classes). A superclass is only a grouping if
every fine class sits under one superclass in every file, so the coarse task's loader checks
that across ``train`` and ``test`` and against the release's table (``SUPERCLASSES``), and names
each fine class that breaks it.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from harness.common.errors import HarnessError

from ..registry import register_task
from ..spec import DataLayout, DataRequest, TaskSpec
from .base import Problems, TransformedSplit, image_task, require, task_folder

FOLDER = "cifar-100-python"
LAYOUT = DataLayout(
    folder=FOLDER,
    tree="""cifar-100-python/
  train        (pickle: data uint8 50000 x 3072, fine_labels, coarse_labels)
  test         (pickle: data uint8 10000 x 3072, fine_labels, coarse_labels)
  meta         (pickle: fine_label_names, 100 names; coarse_label_names, 20 names)""",
    url="https://www.cs.toronto.edu/~kriz/cifar.html (CIFAR-100 python version, cifar-100-python.tar.gz)",
    counts={"train": 50_000, "test": 10_000},
)

# The release's fine_label_names (meta), index = label; the loader checks the user's meta against it.
CLASS_NAMES: tuple[str, ...] = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl", "boy",
    "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
    "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish",
    "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange",
    "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine",
    "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk",
    "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm",
)

# The release's 20 superclasses (meta's coarse_label_names, index = coarse label), each with its five fine
# classes, as the dataset's page lists them (release spellings).
SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
COARSE_NAMES: tuple[str, ...] = tuple(SUPERCLASSES)
_COARSE_BY_NAME = {fine: c for c, members in enumerate(SUPERCLASSES.values()) for fine in members}
# fine label -> the release's coarse label
FINE_TO_COARSE: tuple[int, ...] = tuple(_COARSE_BY_NAME[name] for name in CLASS_NAMES)

_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("builtins", "bytearray")}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refused: the file names {module}.{name}, which a CIFAR pickle never does")
        return super().find_class(module, name)


def read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            obj = _SafeUnpickler(io.BytesIO(fh.read()), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise HarnessError(f"{path}: not a CIFAR pickle ({exc})") from None
    if not isinstance(obj, dict):
        raise HarnessError(f"{path}: holds a {type(obj).__name__}, not the dict CIFAR pickles hold")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def class_names(root: Path, task_name: str = "cifar100_cls", field: str = "fine_label_names") -> tuple[str, ...]:
    """One class list of ``meta``: ``fine_label_names`` (100) or ``coarse_label_names`` (20)."""
    meta = read_pickle(require(root / "meta", task_name, "the class list"))
    names = meta.get(field)
    if not names:
        raise HarnessError(f"{root / 'meta'}: no {field}")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def _check_names(root: Path, task_name: str, field: str, expected: tuple[str, ...], what: str) -> None:
    names = class_names(root, task_name, field)
    if names != expected:
        raise HarnessError(f"{root / 'meta'}: {field} are not the CIFAR-100 release's {len(expected)} {what} in order "
                           f"(read {len(names)}: {', '.join(names[:3])}, ...); is this CIFAR-100?")


class CIFAR100Split(TransformedSplit):
    """One split held in memory as the release's uint8 rows (N, 3072: the red, green and blue planes of a
    32 x 32 image); each item is a row index. Samples are upsampled by ``apply_transform`` (bilinear,
    antialiased)."""

    decodes_files = False  # in memory: nothing worth a DataLoader worker

    def __init__(self, task: TaskSpec, req: DataRequest, data: np.ndarray, labels: np.ndarray, problems: Problems):
        super().__init__(task, req, range(min(len(data), len(labels))), problems)
        self.data, self.labels = data, labels[self.items]

    def decode(self, i: int) -> dict[str, torch.Tensor]:
        image = torch.tensor(self.data[self.items[i]]).view(3, 32, 32).float().div_(255.0)
        return {"image": image, "target": torch.tensor(int(self.labels[i]))}

    def class_labels(self) -> np.ndarray:
        return self.labels


LABEL_FIELDS = {"fine_labels": len(CLASS_NAMES), "coarse_labels": len(COARSE_NAMES)}  # field -> classes


def _read_split(root: Path, task: TaskSpec, req: DataRequest, problems: Problems, fields: tuple[str, ...]
                ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(data (N, 3072) uint8, {label field: labels}) of one split's pickle, each label list paired with the
    images and inside its class range; a problem names the file."""
    path = root / req.split
    batch = read_pickle(require(path, task.name, f"the {req.split} pickle"))
    data = np.asarray(batch.get("data", np.zeros((0, 3072), np.uint8)), dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        problems.add(path, f"data has shape {data.shape}, expected (N, 3072)")
        data = np.zeros((0, 3072), np.uint8)
    labels = {}
    for field in fields:
        k = LABEL_FIELDS[field]
        y = np.asarray(batch.get(field, []), dtype=np.int64)
        if len(y) != len(data):
            problems.add(path, f"{len(data)} images but {len(y)} {field}: images and labels do not pair up")
        bad = np.flatnonzero((y < 0) | (y >= k))
        if len(bad):
            problems.add(path, f"{field} {y[bad[0]]} at index {bad[0]} is outside 0..{k - 1}")
        labels[field] = y
    return data, labels


def _split(task: TaskSpec, req: DataRequest, data: np.ndarray, labels: np.ndarray, problems: Problems
           ) -> CIFAR100Split:
    problems.raise_if_any()
    return CIFAR100Split(task, req, data, labels, problems)


def build(task: TaskSpec, req: DataRequest) -> CIFAR100Split:
    root = task_folder(task, req)
    _check_names(root, task.name, "fine_label_names", task.class_names, "fine class names")
    problems = Problems(task.name, req.strict)
    data, labels = _read_split(root, task, req, problems, ("fine_labels",))
    return _split(task, req, data, labels["fine_labels"], problems)


# ---------------------------------------------------------------------------- the 20 superclasses

RELEASE_FILES = ("train", "test")  # the files whose fine -> superclass pairs must agree
# (path, size, mtime) -> (fine, coarse): eval builds train and test, and each compares its labels with the
# other file's; each file is read once per version of it
_LABELS: dict[tuple[str, int, int], tuple[np.ndarray, np.ndarray]] = {}


def _stamp(path: Path) -> tuple[str, int, int]:
    st = os.stat(path)
    return str(path), st.st_size, st.st_mtime_ns


def _remember(path: Path, fine: np.ndarray, coarse: np.ndarray) -> None:
    _LABELS[_stamp(path)] = (fine, coarse)
    while len(_LABELS) > 2 * len(RELEASE_FILES):
        _LABELS.pop(next(iter(_LABELS)))


def _file_labels(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(fine, coarse) labels of one release file; None where it cannot be read (its own split says why)."""
    try:
        stamp = _stamp(path)
        if stamp not in _LABELS:
            batch = read_pickle(path)
            _remember(path, np.asarray(batch.get("fine_labels", []), dtype=np.int64),
                      np.asarray(batch.get("coarse_labels", []), dtype=np.int64))
        return _LABELS[stamp]
    except (OSError, HarnessError):
        return None


def superclass_problems(labels: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[str]:
    """What breaks the fine -> superclass grouping across files (``{file: (fine, coarse)}``), one line per
    fine class: seen under two or more superclasses (with the samples under each, per file), or under one
    superclass that is not the release's. Pairs outside the class ranges are left to the range check."""
    nf, nc = len(CLASS_NAMES), len(COARSE_NAMES)
    counts = np.zeros((len(labels), nf, nc), np.int64)
    for i, (fine, coarse) in enumerate(labels.values()):
        n = min(len(fine), len(coarse))
        f, c = fine[:n], coarse[:n]
        ok = (f >= 0) & (f < nf) & (c >= 0) & (c < nc)
        counts[i] = np.bincount(f[ok] * nc + c[ok], minlength=nf * nc).reshape(nf, nc)
    files = list(labels)
    total = counts.sum(axis=0)
    out = []
    for f in range(nf):
        under = np.flatnonzero(total[f])
        release = COARSE_NAMES[FINE_TO_COARSE[f]]
        if len(under) > 1:
            seen = "; ".join(f"{COARSE_NAMES[c]!r} (" + ", ".join(f"{files[i]} {counts[i, f, c]}" for i in
                                                                   range(len(files)) if counts[i, f, c]) + ")"
                             for c in under)
            out.append(f"fine class {CLASS_NAMES[f]!r} ({f}) is under {len(under)} superclasses: {seen}; a fine "
                       f"class belongs to one superclass (the release's: {release!r})")
        elif len(under) == 1 and under[0] != FINE_TO_COARSE[f]:
            out.append(f"fine class {CLASS_NAMES[f]!r} ({f}) is under superclass {COARSE_NAMES[under[0]]!r} in "
                       f"{total[f, under[0]]} images, but the release puts it under {release!r}")
    return out


def build_coarse(task: TaskSpec, req: DataRequest) -> CIFAR100Split:
    """The requested split with its superclass labels, after checking that the release's files group the
    fine classes into superclasses (the same problems are found whichever split is built)."""
    root = task_folder(task, req)
    _check_names(root, task.name, "fine_label_names", CLASS_NAMES, "fine class names")
    _check_names(root, task.name, "coarse_label_names", task.class_names, "superclass names")
    problems = Problems(task.name, req.strict)
    data, labels = _read_split(root, task, req, problems, ("fine_labels", "coarse_labels"))
    own = (labels["fine_labels"], labels["coarse_labels"])
    _remember(root / req.split, *own)
    pairs = {}
    for name in dict.fromkeys([*RELEASE_FILES, req.split]):
        found = own if name == req.split else _file_labels(root / name)
        if found is not None:
            pairs[name] = found
    for line in superclass_problems(pairs):
        problems.add(root, line)
    return _split(task, req, data, labels["coarse_labels"], problems)


CIFAR100_CLS = register_task(image_task(
    name="cifar100_cls", paper_name="CIFAR-100 Cls.", nature="semantic", dataset=build, class_names=CLASS_NAMES,
    epochs=100, train_size=50_000, layout=LAYOUT,
    chance=0.01, chance_kind="majority class (the release's test split has 100 images of each class)",
    description="100 fine classes; 32 x 32 images upsampled to 224 x 224 (bilinear, as the paper did)",
))
CIFAR100_COARSE_CLS = register_task(replace(
    CIFAR100_CLS, name="cifar100_coarse_cls", paper_name="CIFAR-100 superclasses (label granularity)",
    dataset=build_coarse, num_outputs=len(COARSE_NAMES), class_names=COARSE_NAMES, suite="granularity",
    coarse_of="cifar100_cls", chance=0.05,
    chance_kind="majority class (the release's test split has 500 images of each superclass)",
    description="the release's 20 superclasses (coarse_labels) of the same images, the same head and budget as "
                "cifar100_cls: its coarse twin in the label-granularity view",
))
