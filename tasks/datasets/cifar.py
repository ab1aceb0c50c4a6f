"""CIFAR-100 (python version): ``cifar-100-python/{train,test,meta}``, as released.

The release is three pickles: ``train`` and ``test`` hold ``data`` (N x 3072 uint8, the 1024
red, then green, then blue values of each 32 x 32 image, row-major) and ``fine_labels``;
``meta`` holds ``fine_label_names``, the class list (index = label). torchvision's CIFAR100
reads the same files, but with a plain ``pickle.load``, which runs whatever code a file
names; the files are read here with an unpickler that admits only the numpy and builtin types
a CIFAR pickle is made of. The paper trains on all 50,000 train images; the harness carves a
stratified, seeded 10% validation split from them (no official one) and tests on the official
10,000.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.common.errors import HarnessError

from ..registry import register_task
from ..spec import DataLayout, DataRequest, SplitSpec, TaskSpec, TransformSpec
from .base import IMAGE_SIZE, Problems, TaskDataset, apply_limit, image_size, require, task_folder

FOLDER = "cifar-100-python"
LAYOUT = DataLayout(
    folder=FOLDER,
    tree="""cifar-100-python/
  train        (pickle: data uint8 50000 x 3072, fine_labels)
  test         (pickle: data uint8 10000 x 3072, fine_labels)
  meta         (pickle: fine_label_names, 100 names)""",
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


def class_names(root: Path, task_name: str = "cifar100_cls") -> tuple[str, ...]:
    meta = read_pickle(require(root / "meta", task_name, "the class list"))
    names = meta.get("fine_label_names")
    if not names:
        raise HarnessError(f"{root / 'meta'}: no fine_label_names")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


class CIFAR100Split(TaskDataset):
    """One split held in memory as uint8 (N, 32, 32, 3); upsampled per sample (bilinear)."""

    def __init__(self, data: np.ndarray, labels: np.ndarray, size: tuple[int, int] | None, problems: Problems):
        self.data, self.labels, self.size = data, labels, size
        self.problems = problems.items

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        img = torch.from_numpy(self.data[i]).permute(2, 0, 1).float().div_(255.0)
        if self.size is not None and tuple(img.shape[-2:]) != tuple(self.size):
            img = F.interpolate(img[None], size=self.size, mode="bilinear", align_corners=False, antialias=True)[0]
        return {"image": img.clamp_(0, 1), "target": torch.tensor(int(self.labels[i]))}

    def class_labels(self) -> np.ndarray:
        return self.labels


def build(task: TaskSpec, req: DataRequest) -> CIFAR100Split:
    root = task_folder(task, req)
    names = class_names(root, task.name)
    if names != task.class_names:
        raise HarnessError(f"{root / 'meta'}: fine_label_names are not the CIFAR-100 release's 100 names in order "
                           f"(read {len(names)}: {', '.join(names[:3])}, ...); is this CIFAR-100?")
    problems = Problems(task.name, req.strict)
    batch = read_pickle(require(root / req.split, task.name, f"the {req.split} pickle"))
    data = np.asarray(batch.get("data", np.zeros((0, 3072), np.uint8)), dtype=np.uint8)
    labels = np.asarray(batch.get("fine_labels", []), dtype=np.int64)
    path = root / req.split
    if data.ndim != 2 or data.shape[1] != 3072:
        problems.add(path, f"data has shape {data.shape}, expected (N, 3072)")
        data = np.zeros((0, 3072), np.uint8)
    if len(labels) != len(data):
        problems.add(path, f"{len(data)} images but {len(labels)} fine_labels: images and labels do not pair up")
    bad = np.flatnonzero((labels < 0) | (labels >= len(names)))
    if len(bad):
        problems.add(path, f"label {labels[bad[0]]} at index {bad[0]} is outside 0..{len(names) - 1}")
    problems.raise_if_any()
    n = min(len(data), len(labels))
    keep = apply_limit(list(range(n)), req)
    images = data[keep].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return CIFAR100Split(np.ascontiguousarray(images), labels[keep], image_size(task, req), problems)


CIFAR100_CLS = register_task(TaskSpec(
    name="cifar100_cls", paper_name="CIFAR-100 Cls.", output="image", nature="semantic", head="linear", loss="ce",
    metric="top1", dataset=build, num_outputs=100, class_names=CLASS_NAMES, epochs=100, suite="paper",
    train_size=50_000,
    splits=SplitSpec("train", None, "test", val_fraction=0.1),
    train_transform=TransformSpec(resize=(IMAGE_SIZE, IMAGE_SIZE)),
    eval_transform=TransformSpec(resize=(IMAGE_SIZE, IMAGE_SIZE)),
    default_resolution=IMAGE_SIZE, layout=LAYOUT,
    description="100 fine classes; 32 x 32 images upsampled to 224 x 224 (bilinear, as the paper did)",
))
