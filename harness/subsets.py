"""Label fractions: seeded, stratified subsets of the already-encoded train (and val) features.

The low-label regimes users ask for (Cole et al.'s 1% and 10% labels, k shots per class, VTAB-1k's
800 train + 200 val images) are drawn here from the features the cache already holds, as index
manifests: no split is encoded again per fraction. A manifest is drawn per class (stratified) with
the run's seed, and the record keeps its size and hash, so two records say whether they trained
on the same images.

- ``--train-fraction F``: round(F * n_c) train samples of each class c (at least one);
- ``--shots N``: N train samples of each class (all of a class that has fewer, said in a note);
- ``--train-size N``: N samples in all, as VTAB-1k: 0.8 N from train and 0.2 N from val (the
  model is selected on those), each split proportionally to the class sizes.

Tasks whose targets are not one class per sample (pixelwise maps) get a plain seeded random
subset of the same size.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

from tasks.spec import TaskSpec

from .cache import MemoryFeatures
from .common.errors import HarnessError, UsageError

VTAB_TRAIN_SHARE = 0.8  # VTAB-1k: 800 of 1000 for training, 200 for validation


@dataclass(frozen=True)
class SubsetSpec:
    kind: str  # "fraction" | "shots" | "size"
    value: float | int

    @property
    def label(self) -> str:
        return {"fraction": f"{self.value:g} of train", "shots": f"{self.value} per class",
                "size": f"{self.value} samples ({VTAB_TRAIN_SHARE:g} train, {1 - VTAB_TRAIN_SHARE:g} val)"}[self.kind]


def subset_spec(train_fraction: float | None, shots: int | None, train_size: int | None) -> SubsetSpec | None:
    """The one label-fraction option given (None: the full train split); a usage error otherwise."""
    given = [(k, v) for k, v in (("fraction", train_fraction), ("shots", shots), ("size", train_size)) if v is not None]
    if len(given) > 1:
        raise UsageError("give one of --train-fraction, --shots and --train-size")
    if not given:
        return None
    kind, value = given[0]
    if kind == "fraction" and not 0.0 < value <= 1.0:
        raise UsageError(f"--train-fraction {value}: use a fraction in (0, 1]")
    if kind != "fraction" and value < 1:
        raise UsageError(f"--{'shots' if kind == 'shots' else 'train-size'} {value}: use a positive number")
    if kind == "size" and value < 2:
        raise UsageError(f"--train-size {value}: at least 2 (train and val each need a sample)")
    return SubsetSpec(kind, value)


# ------------------------------------------------------------------------------------------ drawing

def _largest_remainder(sizes: np.ndarray, total: int) -> np.ndarray:
    """Integers proportional to ``sizes`` summing to ``total`` (Hamilton's method; ties by class order)."""
    quota = sizes * total / max(int(sizes.sum()), 1)
    counts = np.floor(quota).astype(int)
    order = np.argsort(-(quota - counts), kind="stable")
    counts[order[: total - int(counts.sum())]] += 1
    return np.minimum(counts, sizes)


def draw(labels: np.ndarray | None, n: int, spec: SubsetSpec, seed: int, total: int | None = None) -> np.ndarray:
    """Sorted indices of the subset of ``n`` samples: per class when ``labels`` are given.

    ``total`` overrides the size for kind "size" (its train or val share)."""
    rng = np.random.default_rng(seed)
    if labels is None:
        k = {"fraction": lambda: max(1, int(math.floor(spec.value * n + 0.5))),
             "shots": lambda: int(spec.value), "size": lambda: int(total if total is not None else spec.value)}
        return np.sort(rng.permutation(n)[: min(n, k[spec.kind]())])
    labels = np.asarray(labels)
    classes = np.unique(labels)
    members = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    sizes = np.array([len(m) for m in members])
    if spec.kind == "fraction":
        counts = np.maximum(1, np.floor(spec.value * sizes + 0.5).astype(int))
    elif spec.kind == "shots":
        counts = np.minimum(sizes, int(spec.value))
    else:
        counts = _largest_remainder(sizes, min(int(total if total is not None else spec.value), n))
    picked = [m[:c] for m, c in zip(members, counts, strict=True)]
    return np.sort(np.concatenate(picked)) if picked else np.array([], dtype=int)


def manifest(idx: np.ndarray, n: int, labels: np.ndarray | None) -> dict[str, Any]:
    """What the record keeps of a subset: its size, the split it came from, a hash of the indices."""
    doc: dict[str, Any] = {"n": int(len(idx)), "of": int(n),
                           "hash": hashlib.sha256(np.asarray(idx, dtype=np.int64).tobytes()).hexdigest()[:16]}
    if labels is not None and len(idx):
        _, counts = np.unique(np.asarray(labels)[idx], return_counts=True)
        doc.update(classes=int(len(counts)), min_per_class=int(counts.min()), max_per_class=int(counts.max()))
    return doc


# ---------------------------------------------------------------------------------- feature sources

def labels_of(source, task: TaskSpec) -> np.ndarray | None:
    """One class per sample, read from the encoded features (no dataset access), or None when the
    task's targets are not classes."""
    if task.output != "image" or not task.is_classification:
        return None
    if isinstance(source, MemoryFeatures):
        return source.target.numpy()
    path = getattr(source, "path", None)
    if path is not None:  # streamed from a cache entry
        import h5py

        with h5py.File(path, "r") as fh:
            return np.asarray(fh["target"][:])
    dataset = getattr(source, "dataset", None)
    labels = getattr(dataset, "class_labels", lambda: None)() if dataset is not None else None
    return None if labels is None else np.asarray(labels)


def select(source, idx: np.ndarray):
    """The samples ``idx`` of a feature source, as a source: in memory (a subset is small), or for
    features encoded on the fly, the same encoder over the subset of the dataset."""
    index = torch.as_tensor(np.asarray(idx, dtype=np.int64))
    if isinstance(source, MemoryFeatures):
        valid = source.valid[index] if source.valid is not None else None
        return MemoryFeatures({k: v[index] for k, v in source.taps.items()}, source.target[index], valid)
    path = getattr(source, "path", None)
    if path is not None:
        import h5py

        rows = np.sort(np.asarray(idx, dtype=np.int64))
        with h5py.File(path, "r") as fh:
            taps = {t: torch.from_numpy(fh["taps"][t][rows]) for t in fh["taps"]}
            valid = torch.from_numpy(fh["valid"][rows]) if "valid" in fh else None
            return MemoryFeatures(taps, torch.from_numpy(fh["target"][rows]), valid)
    dataset = getattr(source, "dataset", None)
    if dataset is not None and hasattr(source, "settings"):
        return type(source)(source.encoder, Subset(dataset, [int(i) for i in idx]), source.taps, source.settings)
    raise HarnessError(f"cannot take a subset of a {type(source).__name__} feature source")


@dataclass
class Drawn:
    """The subsets applied to one run: sources to train and select on, and what the record keeps."""

    train: list
    val: Any
    record: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def apply(task: TaskSpec, spec: SubsetSpec | None, seed: int, train: list, val) -> Drawn:
    """Draw ``spec``'s subsets from the encoded train copies (the same samples in every copy) and,
    for ``--train-size``, from val."""
    if spec is None:
        return Drawn(train, val)
    n = len(train[0])
    labels = labels_of(train[0], task)
    notes = []
    total = None
    if spec.kind == "size":
        total = int(round(spec.value * VTAB_TRAIN_SHARE))
        if spec.value - total > len(val) or total > n:
            raise HarnessError(f"task {task.name}: --train-size {spec.value} needs {total} train and "
                               f"{spec.value - total} val samples; there are {n} and {len(val)}")
    idx = draw(labels, n, spec, seed, total)
    if spec.kind == "shots" and labels is not None:
        _, counts = np.unique(labels, return_counts=True)
        short = int((counts < spec.value).sum())
        if short:
            notes.append(f"{short} class(es) have fewer than {spec.value} train samples: all of theirs are used")
    if len(idx) == 0:
        raise HarnessError(f"task {task.name}: {spec.label} leaves no train sample")
    record: dict[str, Any] = {"kind": spec.kind, "value": spec.value, "seed": seed,
                              "stratified": labels is not None, "train": manifest(idx, n, labels)}
    record["fraction"] = record["train"]["n"] / n
    new_val = val
    if spec.kind == "size":
        val_labels = labels_of(val, task)
        vidx = draw(val_labels, len(val), spec, seed + 1, int(spec.value) - total)
        record["val"] = manifest(vidx, len(val), val_labels)
        new_val = select(val, vidx)
    return Drawn([select(src, idx) for src in train], new_val, record, notes)
