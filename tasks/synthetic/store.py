"""Generate synthetic splits once, store them as HDF5 in the cache directory, reuse them.

A file holds one (kind, split, resolution, seed) stream and its first ``n`` samples. Since
every sample has its own seed, a file with more samples serves any smaller request by
its prefix. Files are published atomically: a killed generation leaves no file that
reads as complete.
"""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np

from harness.common.atomic import atomic_path
from harness.common.diskspace import ensure_space, write_h5
from harness.common.locks import EntryLock
from harness.common.paths import synthetic_dir
from harness.common.progress import progress

from .world import KINDS, SPLITS, make_sample, sample_rng

FORMAT_VERSION = 1
DEFAULT_SEED = 0

# Default split sizes keep a full CPU eval of a synthetic task within a few minutes.
DEFAULT_SIZES: dict[str, dict[str, int]] = {
    "single": {"train": 2000, "val": 500, "test": 500},
    "pairs": {"train": 1000, "val": 250, "test": 250},
    "clips": {"train": 600, "val": 150, "test": 150},
}

FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "single": (("image", "uint8"), ("shape_cls", "int64"), ("count", "int64"), ("num_steps", "int64"),
               ("seg", "uint8"), ("walkable", "uint8"), ("depth", "float32")),
    "pairs": (("frames", "uint8"), ("action", "int64"), ("flow", "float32"), ("flow_valid", "uint8"),
              ("depth", "float32")),
    "clips": (("frames", "uint8"), ("action", "int64")),
}


def _name(kind: str, split: str, size: int, seed: int, n: int) -> str:
    return f"{kind}_{split}_{size}px_seed{seed}_v{FORMAT_VERSION}_n{n}.h5"


def _existing(root: Path, kind: str, split: str, size: int, seed: int, n: int) -> Path | None:
    pattern = re.compile(rf"^{kind}_{split}_{size}px_seed{seed}_v{FORMAT_VERSION}_n(\d+)\.h5$")
    best: tuple[int, Path] | None = None
    if root.is_dir():
        for p in root.iterdir():
            m = pattern.match(p.name)
            if m and int(m.group(1)) >= n and (best is None or int(m.group(1)) < best[0]):
                best = (int(m.group(1)), p)
    return best[1] if best else None


def generate(kind: str, split: str, n: int, size: int, seed: int = DEFAULT_SEED) -> dict[str, np.ndarray]:
    """Generate ``n`` samples in memory (deterministic in all arguments)."""
    if kind not in KINDS or split not in SPLITS:
        raise ValueError(f"unknown synthetic kind/split {kind!r}/{split!r}")
    cols: dict[str, list] = {name: [] for name, _ in FIELDS[kind]}
    for i in progress(range(n), desc=f"render {kind}/{split} {size}px", total=n):
        sample = make_sample(kind, sample_rng(seed, kind, split, i), size)
        for name, _ in FIELDS[kind]:
            cols[name].append(getattr(sample, name))
    return {name: np.asarray(cols[name], dtype=dtype) for name, dtype in FIELDS[kind]}


def ensure_split(kind: str, split: str, n: int, size: int, seed: int = DEFAULT_SEED,
                 root: Path | None = None) -> Path:
    """Path of an HDF5 file holding at least ``n`` samples; generated if missing."""
    root = Path(root) if root is not None else synthetic_dir()
    found = _existing(root, kind, split, size, seed, n)
    if found is not None:
        return found
    target = root / _name(kind, split, size, seed, n)
    with EntryLock(target) as lock:  # one renderer per file across processes; the others wait and read it
        if not lock.acquire():
            return target
        return _render(kind, split, n, size, seed, root, target)


def _render(kind: str, split: str, n: int, size: int, seed: int, root: Path, target: Path) -> Path:
    arrays = generate(kind, split, n, size, seed)
    root.mkdir(parents=True, exist_ok=True)
    what = f"the synthetic {kind}/{split} renders"
    ensure_space(root, sum(a.nbytes for a in arrays.values()), what)
    with atomic_path(target) as tmp:
        with write_h5(tmp, what) as fh:
            for name, arr in arrays.items():
                chunks = (min(64, len(arr)),) + arr.shape[1:] if arr.ndim > 1 and len(arr) else None
                fh.create_dataset(name, data=arr, chunks=chunks)
            fh.attrs.update({"kind": kind, "split": split, "n": n, "size": size, "seed": seed,
                             "format_version": FORMAT_VERSION, "complete": True})
    return target


def load_split(kind: str, split: str, n: int, size: int, seed: int = DEFAULT_SEED,
               fields: tuple[str, ...] | None = None, root: Path | None = None) -> dict[str, np.ndarray]:
    """The first ``n`` samples of a split as numpy arrays (generating the file if needed)."""
    path = ensure_split(kind, split, n, size, seed, root)
    names = fields or tuple(name for name, _ in FIELDS[kind])
    with h5py.File(path, "r") as fh:
        if not fh.attrs.get("complete", False):
            raise RuntimeError(f"synthetic file {path} is incomplete; delete it and re-run")
        return {name: fh[name][:n] for name in names}
