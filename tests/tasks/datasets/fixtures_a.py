"""Tiny fixtures in the exact released layouts of ImageNet (+ devkit), ImageNetV2, Caltech-101,
SUN397, EuroSAT and DTD, with known per-class counts, for the dataset tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.io

from .util import write_image

SIZE = (12, 16)  # tiny images: decoding is not what these tests measure


def write_eurosat(root: Path, counts: dict[str, int]) -> Path:
    """``eurosat/2750/<Class>/<Class>_<i>.jpg``, i = 1..counts[Class]."""
    base = root / "eurosat" / "2750"
    for c, (cls, n) in enumerate(counts.items()):
        for i in range(1, n + 1):
            write_image(base / cls / f"{cls}_{i}.jpg", SIZE, seed=100 * c + i)
    return base


def write_caltech(root: Path, counts: dict[str, int], lists: dict[str, list[str]] | None = None) -> Path:
    """``caltech101/101_ObjectCategories/<class>/image_NNNN.jpg``, NNNN = 0001..counts[class]; with
    ``lists``, the reference's ``caltech101_{train,test}.json`` (JSON lists of ``<class>/<file>``)."""
    base = root / "caltech101" / "101_ObjectCategories"
    for c, (cls, n) in enumerate(counts.items()):
        for i in range(1, n + 1):
            write_image(base / cls / f"image_{i:04d}.jpg", SIZE, seed=1000 * c + i)
    for split, names in (lists or {}).items():
        (root / "caltech101" / f"caltech101_{split}.json").write_text(json.dumps(names))
    return base


def write_dtd(root: Path, splits: dict[str, dict[str, int]], partition: int = 1) -> Path:
    """``dtd/images/<class>/<class>_NNNN.jpg`` and ``dtd/labels/{train,val,test}<partition>.txt``
    (one ``<class>/<file>`` per line); ``splits[split][class]`` images of each class in each split,
    named consecutively across splits."""
    base = root / "dtd"
    (base / "labels").mkdir(parents=True, exist_ok=True)
    next_id: dict[str, int] = {}
    for split, counts in splits.items():
        lines = []
        for c, (cls, n) in enumerate(counts.items()):
            for _ in range(n):
                k = next_id[cls] = next_id.get(cls, 0) + 1
                name = f"{cls}_{k:04d}.jpg"
                write_image(base / "images" / cls / name, SIZE, seed=50 * c + k)
                lines.append(f"{cls}/{name}")
        (base / "labels" / f"{split}{partition}.txt").write_text("\n".join(lines) + "\n")
    return base


def write_sun397(root: Path, counts: dict[str, int], class_list: list[str],
                 partitions: bool = True) -> tuple[Path, dict[str, list[str]]]:
    """``SUN397/<letter>/<class>[/<sub>]/sun_*.jpg`` and ``ClassName.txt`` (``/<letter>/<class>`` per
    line); with ``partitions``, ``Partitions/Training_01.txt`` and ``Testing_01.txt`` naming every
    image (``/<letter>/<class>/<file>``), alternately. Returns (base, class -> relative file names)."""
    base = root / "SUN397"
    base.mkdir(parents=True, exist_ok=True)
    (base / "ClassName.txt").write_text("".join(f"/{c[0]}/{c}\n" for c in class_list))
    files: dict[str, list[str]] = {}
    for c, (cls, n) in enumerate(counts.items()):
        for k in range(n):
            name = f"sun_{cls.replace('/', '')[:6]}{k:03d}x{c}.jpg"
            write_image(base / cls[0] / cls / name, SIZE, seed=10 * c + k)
            files.setdefault(cls, []).append(f"/{cls[0]}/{cls}/{name}")
    if partitions:
        (base / "Partitions").mkdir()
        every = [f for fs in files.values() for f in fs]
        (base / "Partitions" / "Training_01.txt").write_text("".join(f + "\n" for f in every[0::2]))
        (base / "Partitions" / "Testing_01.txt").write_text("".join(f + "\n" for f in every[1::2]))
    return base, files


def write_meta_mat(path: Path, ids_to_wnids: dict[int, str]) -> None:
    """The devkit's ``meta.mat``: a ``synsets`` struct array (ILSVRC2012_ID, WNID, words, gloss,
    num_children, ...); leaves (num_children 0) are the 1000 classes. An inner node is added to
    check that only leaves are read."""
    dt = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"), ("num_children", "O"),
          ("children", "O"), ("wordnet_height", "O"), ("num_train_images", "O")]
    rows = [(i, w, 0) for i, w in ids_to_wnids.items()] + [(1001, "n00000001", 2)]
    arr = np.zeros((len(rows), 1), dtype=dt)
    for r, (i, w, kids) in enumerate(rows):
        arr[r, 0] = (np.array([[i]], np.uint16), np.array([w]), np.array([f"words of {w}"]), np.array(["gloss"]),
                     np.array([[kids]], np.uint8), np.zeros((1, kids), np.uint16), np.array([[0]], np.uint8),
                     np.array([[1300]], np.uint16))
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"synsets": arr})


def write_imagenet(root: Path, train: dict[str, int], val: dict[str, int] | None = None,
                   flat_val: list[str] | None = None, devkit_ids: dict[str, int] | None = None) -> Path:
    """``imagenet/train/<wnid>/<wnid>_<k>.JPEG``; val either as ``val/<wnid>/ILSVRC2012_val_<n>.JPEG``
    (``val``: wnid -> count) or flat ``val/ILSVRC2012_val_<n>.JPEG`` with the devkit's ground truth
    (``flat_val``: the wnid of image n = 1, 2, ...; ``devkit_ids``: wnid -> ILSVRC2012_ID), the devkit
    files in ``ILSVRC2012_devkit_t12/data/`` as the devkit tarball unpacks."""
    base = root / "imagenet"
    for c, (wnid, n) in enumerate(train.items()):
        for k in range(n):
            write_image(base / "train" / wnid / f"{wnid}_{1000 + 7 * k}.JPEG", SIZE, seed=300 * c + k)
    n = 0
    for wnid, m in (val or {}).items():
        for _ in range(m):
            n += 1
            write_image(base / "val" / wnid / f"ILSVRC2012_val_{n:08d}.JPEG", SIZE, seed=7000 + n)
    if flat_val is not None:
        assert devkit_ids is not None
        for k, _wnid in enumerate(flat_val, 1):
            write_image(base / "val" / f"ILSVRC2012_val_{k:08d}.JPEG", SIZE, seed=9000 + k)
        data = base / "ILSVRC2012_devkit_t12" / "data"
        data.mkdir(parents=True, exist_ok=True)
        (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{devkit_ids[w]}\n" for w in flat_val))
        write_meta_mat(data / "meta.mat", {i: w for w, i in devkit_ids.items()})
    return base


def write_imagenetv2(root: Path, classes: dict[int, int]) -> Path:
    """``imagenetv2/imagenetv2-matched-frequency-format-val/<class index>/<hash>.jpeg``."""
    base = root / "imagenetv2" / "imagenetv2-matched-frequency-format-val"
    for idx, n in classes.items():
        for k in range(n):
            write_image(base / str(idx) / f"{(idx * 7919 + k * 104729):040x}.jpeg", SIZE, seed=idx * 100 + k)
    return base
