"""Content-addressed feature cache (HDF5).

An entry holds the taps of one encoder over one split of one task, under one transform and
augmentation copy. Its key hashes everything that changes the features: the encoder's
weight fingerprint, task, split, dataset size, transform, taps, resolution, augmentation copy,
storage dtype and the cache format version. Any change is a miss.

Entries are written under a temporary name, fsynced, checksummed and published by an atomic
rename, with a ``complete`` mark written last: a killed or failed encode leaves at most a
``.tmp`` file that no reader opens. A published entry whose checksum no longer matches (a
corrupted disk, a truncated copy) is detected on open and rebuilt.

Two layouts. ``fixed``: every sample has the same shapes, one (N, ...) dataset per tap plus
``target`` and ``valid``. ``grouped`` (pixelwise splits, whose samples may differ in size when
they are evaluated at native resolution): one HDF5 group per shape signature under
``groups/``, each holding the same datasets for its samples plus their dataset ``index``,
appended batch by batch as sizes turn up. Both are one file, published and checksummed the
same way, so a grouped entry is as atomic as a fixed one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from .common.diskspace import GuardedFile, ensure_space
from .common.paths import features_dir

CACHE_FORMAT_VERSION = 1
TMP_SUFFIX = ".tmp"


@dataclass(frozen=True)
class FeatureKey:
    encoder_fingerprint: str
    task: str
    split: str
    n: int
    transform: str
    taps: tuple[str, ...]
    resolution: int | None
    aug_copy: int = 0
    dtype: str = "float16"
    data: str = ""  # dataset identity beyond the task (e.g. data root)
    format_version: int = CACHE_FORMAT_VERSION

    def digest(self) -> str:
        payload = json.dumps(asdict(self), sort_keys=True, default=list)
        return hashlib.sha256(payload.encode()).hexdigest()[:40]


def entry_path(key: FeatureKey, root: Path | None = None) -> Path:
    root = Path(root) if root is not None else features_dir()
    d = key.digest()
    return root / d[:2] / f"{d}.h5"


def _checksum_update(h: hashlib._Hash, arr: np.ndarray) -> None:
    h.update(np.ascontiguousarray(arr).view(np.uint8).reshape(-1).data)


class CorruptEntry(Exception):
    pass


class EntryWriter:
    """Streams batches into a temporary HDF5 file; ``publish`` makes it visible atomically."""

    def __init__(self, key: FeatureKey, n: int, tap_shapes: dict[str, tuple[int, ...]],
                 target_shape: tuple[int, ...], target_dtype: np.dtype, valid_shape: tuple[int, ...] | None,
                 root: Path | None = None, expected_bytes: int | None = None):
        self.key, self.n = key, n
        self.path = entry_path(key, root)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}{TMP_SUFFIX}")
        self.what = f"the feature cache entry for {key.task}/{key.split}"
        if expected_bytes is None:
            per_sample = sum(int(np.prod(s)) for s in tap_shapes.values()) * np.dtype(key.dtype).itemsize
            if target_shape is not None:
                per_sample += int(np.prod(target_shape)) * np.dtype(target_dtype).itemsize
            per_sample += int(np.prod(valid_shape)) if valid_shape is not None else 0
            expected_bytes = n * per_sample
        ensure_space(self.path.parent, expected_bytes, self.what)
        # Written through a GuardedFile: a full disk is one clear error, never a crashed HDF5 library.
        self.file = GuardedFile(self.tmp)
        self.fh = h5py.File(self.file, "w")
        self.hashes: dict[str, hashlib._Hash] = {}
        self.dtype = np.dtype(key.dtype)

        def make(name: str, shape: tuple[int, ...], dtype) -> None:
            per = int(np.prod(shape)) * np.dtype(dtype).itemsize or 1
            rows = int(max(1, min(n, (1 << 20) // per)))  # ~1 MiB chunks along the sample axis
            self.fh.create_dataset(name, shape=(n, *shape), dtype=dtype, chunks=(rows, *shape) if n else None)
            self.hashes[name] = hashlib.blake2b(digest_size=16)

        for tap, shape in tap_shapes.items():
            make(f"taps/{tap}", shape, self.dtype)
        if target_shape is not None:  # None: a subclass lays its datasets out itself (GroupedEntryWriter)
            make("target", target_shape, target_dtype)
        if valid_shape is not None:
            make("valid", valid_shape, np.bool_)
        self.pos = 0

    def write(self, taps: dict[str, torch.Tensor], target: torch.Tensor, valid: torch.Tensor | None) -> None:
        b = len(target)
        sl = slice(self.pos, self.pos + b)
        arrays = {f"taps/{k}": v.detach().to("cpu").numpy().astype(self.dtype, copy=False) for k, v in taps.items()}
        arrays["target"] = target.numpy()
        if valid is not None:
            arrays["valid"] = valid.numpy().astype(np.bool_)
        for name, arr in arrays.items():
            self.fh[name][sl] = arr
            _checksum_update(self.hashes[name], arr)
        self.pos += b
        if self.file.error is not None:  # stop at once: encoding the rest would be wasted
            self.abort()
            self.file.check(self.what)

    def publish(self) -> Path:
        if self.pos != self.n:
            raise RuntimeError(f"cache entry expected {self.n} samples, got {self.pos}")
        self.fh.attrs["key"] = json.dumps(asdict(self.key), default=list)
        self.fh.attrs["checksums"] = json.dumps({k: h.hexdigest() for k, h in self.hashes.items()})
        self.fh.attrs["created"] = time.time()
        self.fh.attrs["complete"] = True  # last: a file without it is never read
        self.fh.flush()
        self.fh.close()
        self.file.fsync()
        self.file.close()
        if self.file.error is not None:
            self.tmp.unlink(missing_ok=True)
            self.file.check(self.what)
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self.fh.close()
        except Exception:  # noqa: BLE001 - already broken; removing the file is what matters
            pass
        self.file.close()
        self.tmp.unlink(missing_ok=True)


GROUPED = "grouped"


def shape_signature(taps: dict[str, torch.Tensor], target: torch.Tensor, valid: torch.Tensor | None) -> str:
    """Per-sample shapes of a batch (taps, target, valid) as a canonical string: one group each."""
    sig = {"taps": {k: list(v.shape[1:]) for k, v in sorted(taps.items())}, "target": list(target.shape[1:]),
           "valid": list(valid.shape[1:]) if valid is not None else None}
    return json.dumps(sig, sort_keys=True)


class GroupedEntryWriter(EntryWriter):
    """Streams batches of samples whose sizes differ into one entry, a group per shape
    signature (the ``grouped`` layout); each batch must be of one size. ``publish`` and
    ``abort`` are EntryWriter's."""

    def __init__(self, key: FeatureKey, n: int, root: Path | None = None, expected_bytes: int | None = None):
        super().__init__(key, n, {}, None, None, None, root, expected_bytes=expected_bytes)
        self.fh.attrs["layout"] = GROUPED
        self.groups: dict[str, str] = {}  # signature -> HDF5 group name

    def _group(self, sig: str, arrays: dict[str, np.ndarray]) -> str:
        name = self.groups.get(sig)
        if name is not None:
            return name
        name = self.groups[sig] = f"groups/g{len(self.groups)}"
        self.fh.create_group(name).attrs["signature"] = sig
        for sub, arr in arrays.items():
            shape = arr.shape[1:]
            per = int(np.prod(shape)) * arr.dtype.itemsize or 1
            rows = int(max(1, min(self.n, (1 << 20) // per)))  # ~1 MiB chunks along the sample axis
            self.fh.create_dataset(f"{name}/{sub}", shape=(0, *shape), maxshape=(None, *shape), dtype=arr.dtype,
                                   chunks=(rows, *shape))
            self.hashes[f"{name}/{sub}"] = hashlib.blake2b(digest_size=16)
        return name

    def write(self, taps: dict[str, torch.Tensor], target: torch.Tensor, valid: torch.Tensor | None,
              index: torch.Tensor | None = None) -> None:
        """Append one same-size batch; ``index``: the samples' positions in the dataset."""
        b = len(target)
        if index is None:
            index = torch.arange(self.pos, self.pos + b)
        arrays = {f"taps/{k}": v.detach().to("cpu").numpy().astype(self.dtype, copy=False) for k, v in taps.items()}
        arrays["target"] = target.numpy()
        if valid is not None:
            arrays["valid"] = valid.numpy().astype(np.bool_)
        arrays["index"] = np.asarray(index, dtype=np.int64)
        group = self._group(shape_signature(taps, target, valid), arrays)
        for sub, arr in arrays.items():
            ds = self.fh[f"{group}/{sub}"]
            start = ds.shape[0]
            ds.resize(start + b, axis=0)
            ds[start:start + b] = arr
            _checksum_update(self.hashes[f"{group}/{sub}"], arr)
        self.pos += b
        if self.file.error is not None:  # a full disk: stop at once (see EntryWriter.write)
            self.abort()
            self.file.check(self.what)


def open_entry(key: FeatureKey, root: Path | None = None) -> h5py.File | None:
    """The published entry for ``key``, verified complete; None if absent. Raises CorruptEntry."""
    path = entry_path(key, root)
    if not path.exists():
        return None
    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise CorruptEntry(f"{path}: unreadable ({exc})") from None
    try:
        if not fh.attrs.get("complete", False) or json.loads(fh.attrs["key"]) != json.loads(
                json.dumps(asdict(key), default=list)):
            raise CorruptEntry(f"{path}: incomplete or foreign entry")
    except (KeyError, ValueError, OSError) as exc:
        fh.close()
        raise CorruptEntry(f"{path}: bad attributes ({exc})") from None
    except CorruptEntry:
        fh.close()
        raise
    return fh


def verify(fh: h5py.File, block_bytes: int = 64 << 20) -> None:
    """Recompute every dataset's checksum; raise CorruptEntry on a mismatch."""
    try:
        expected = json.loads(fh.attrs["checksums"])
        for name, digest in expected.items():
            ds = fh[name]
            h = hashlib.blake2b(digest_size=16)
            per = max(1, int(np.prod(ds.shape[1:])) * ds.dtype.itemsize)
            step = max(1, block_bytes // per)
            for start in range(0, ds.shape[0], step):
                _checksum_update(h, ds[start:start + step])
            if h.hexdigest() != digest:
                raise CorruptEntry(f"{fh.filename}: checksum mismatch in {name}")
    except (OSError, KeyError, ValueError) as exc:
        raise CorruptEntry(f"{fh.filename}: unreadable data ({exc})") from None


def remove_entry(key: FeatureKey, root: Path | None = None) -> None:
    entry_path(key, root).unlink(missing_ok=True)


# ---------------------------------------------------------------- reading back


class MemoryFeatures:
    """Encoded split held in memory (CPU or GPU): taps (N, ...), targets, optional masks."""

    def __init__(self, taps: dict[str, torch.Tensor], target: torch.Tensor, valid: torch.Tensor | None = None):
        self.taps, self.target, self.valid = taps, target, valid

    def __len__(self) -> int:
        return len(self.target)

    def batch(self, idx: torch.Tensor, device: torch.device):
        # index_select, not v[idx]: the same rows, gathered 2-3x faster on the CPU (a dense head's shuffled batches)
        feats = {k: v.index_select(0, idx.to(v.device)).to(device, non_blocking=True) for k, v in self.taps.items()}
        valid = self.valid.index_select(0, idx.to(self.valid.device)).to(device) if self.valid is not None else None
        return feats, self.target.index_select(0, idx.to(self.target.device)).to(device), valid

    def batches(self, batch_size: int, device: torch.device, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator:
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for start in range(0, len(self), batch_size):
            yield self.batch(order[start:start + batch_size], device)

    def to(self, device: torch.device) -> MemoryFeatures:
        v = self.valid.to(device) if self.valid is not None else None
        return MemoryFeatures({k: t.to(device) for k, t in self.taps.items()}, self.target.to(device), v)

    def shapes(self) -> dict:
        """Per-sample shapes (taps, target): what sizing an evaluation batch needs."""
        return {"taps": {k: tuple(v.shape[1:]) for k, v in self.taps.items()}, "target": tuple(self.target.shape[1:])}


def _groups(fh: h5py.File) -> list[h5py.Group] | None:
    """The size groups of a ``grouped`` entry in creation order; None for a ``fixed`` entry."""
    if fh.attrs.get("layout") != GROUPED:
        return None
    if "groups" not in fh:  # an empty split
        return []
    return [fh["groups"][name] for name in sorted(fh["groups"], key=lambda g: int(g[1:]))]


def _load_group(g: h5py.Group | h5py.File) -> MemoryFeatures:
    taps = {name: torch.from_numpy(g["taps"][name][:]) for name in g["taps"]}
    valid = torch.from_numpy(g["valid"][:]) if "valid" in g else None
    return MemoryFeatures(taps, torch.from_numpy(g["target"][:]), valid)


def load_memory(fh: h5py.File):
    """The entry in memory: MemoryFeatures, or GroupedFeatures when its samples come in several sizes."""
    groups = _groups(fh)
    if groups is None:
        return _load_group(fh)
    return assemble([_load_group(g) for g in groups], [torch.from_numpy(g["index"][:]) for g in groups])


def open_stream(path: Path):
    """The entry read from disk as it is consumed: StreamFeatures, or GroupedFeatures of them."""
    with h5py.File(path, "r") as fh:
        groups = _groups(fh)
        if groups is None:
            return StreamFeatures(path)
        names = [g.name.lstrip("/") for g in groups]
        index = [torch.from_numpy(g["index"][:]) for g in groups]
    return assemble([StreamFeatures(path, group=name) for name in names], index)


def assemble(parts: list, index: list[torch.Tensor]):
    """One source per size; a split of a single size is served by its one part directly."""
    if len(parts) == 1:
        return parts[0]
    return GroupedFeatures(parts, index)


class GroupedFeatures:
    """A split whose samples differ in size (native-resolution evaluation): one same-size
    source per size, every batch drawn from one of them.

    ``parts()`` lets the evaluation size its batches per part. Shuffled passes (training)
    interleave the parts' batches in a seeded random order when they are in memory, and visit
    streamed parts one after the other (in random order), which keeps disk reads sequential
    and one prefetch thread alive at a time.
    """

    def __init__(self, parts: list, index: list[torch.Tensor] | None = None):
        self._parts = list(parts)
        self.index = index  # per part: the samples' positions in the dataset

    def __len__(self) -> int:
        return sum(len(p) for p in self._parts)

    def parts(self) -> list:
        return list(self._parts)

    def sizes(self) -> list[tuple[tuple[int, ...], int]]:
        """(target shape, samples) per part."""
        return [(p.shapes()["target"], len(p)) for p in self._parts]

    def batches(self, batch_size: int, device: torch.device, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator:
        if not shuffle:
            for p in self._parts:
                yield from p.batches(batch_size, device)
            return
        order = torch.randperm(len(self._parts), generator=generator).tolist()
        if not all(isinstance(p, MemoryFeatures) for p in self._parts):
            for i in order:
                yield from self._parts[i].batches(batch_size, device, True, generator)
            return
        iters = [self._parts[i].batches(batch_size, device, True, generator) for i in order]
        schedule = [j for j, i in enumerate(order) for _ in range(math.ceil(len(self._parts[i]) / batch_size))]
        for j in torch.randperm(len(schedule), generator=generator).tolist():
            yield next(iters[schedule[j]])

    def to(self, device: torch.device) -> GroupedFeatures:
        return GroupedFeatures([p.to(device) for p in self._parts], self.index)


class StreamFeatures:
    """Encoded split read from disk in chunk-aligned blocks, with a prefetch thread.

    Shuffling permutes blocks and the samples within each block, which keeps reads
    sequential on disk while mixing batches.
    """

    def __init__(self, path: Path, block_rows: int | None = None, group: str = ""):
        self.path, self.group = Path(path), group  # group: one size group of a grouped entry
        with h5py.File(self.path, "r") as fh:
            g = self._root(fh)
            self.n = int(g["target"].shape[0])
            self.tap_names = list(g["taps"])
            chunk = g["target"].chunks[0] if g["target"].chunks else self.n
            per = sum(int(np.prod(g["taps"][t].shape[1:])) * g["taps"][t].dtype.itemsize for t in self.tap_names)
            self.block_rows = block_rows or max(chunk, int(max(1, (256 << 20) // max(per, 1)) // chunk * chunk))
            self.has_valid = "valid" in g
            self._shapes = {"taps": {t: tuple(g["taps"][t].shape[1:]) for t in self.tap_names},
                            "target": tuple(g["target"].shape[1:])}

    def _root(self, fh: h5py.File):
        return fh[self.group] if self.group else fh

    def shapes(self) -> dict:
        return self._shapes

    def __len__(self) -> int:
        return self.n

    def _read(self, fh: h5py.File, start: int, stop: int) -> MemoryFeatures:
        g = self._root(fh)
        taps = {t: torch.from_numpy(g["taps"][t][start:stop]) for t in self.tap_names}
        valid = torch.from_numpy(g["valid"][start:stop]) if self.has_valid else None
        return MemoryFeatures(taps, torch.from_numpy(g["target"][start:stop]), valid)

    def batches(self, batch_size: int, device: torch.device, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator:
        starts = list(range(0, self.n, self.block_rows))
        if shuffle:
            starts = [starts[i] for i in torch.randperm(len(starts), generator=generator).tolist()]
        q: queue.Queue = queue.Queue(maxsize=2)
        stop = threading.Event()

        def producer() -> None:
            try:
                with h5py.File(self.path, "r") as fh:
                    for s in starts:
                        if stop.is_set():
                            return
                        q.put(self._read(fh, s, min(s + self.block_rows, self.n)))
            except Exception as exc:  # noqa: BLE001 - handed to the consumer
                q.put(exc)
            q.put(None)

        thread = threading.Thread(target=producer, daemon=True)
        thread.start()
        try:
            while (block := q.get()) is not None:
                if isinstance(block, Exception):
                    raise block
                yield from block.batches(batch_size, device, shuffle, generator)
        finally:
            stop.set()
            while thread.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    thread.join(timeout=0.05)


# ---------------------------------------------------------------- housekeeping


@dataclass
class EntryInfo:
    path: Path
    size: int
    complete: bool
    key: dict | None


def list_entries(root: Path | None = None) -> list[EntryInfo]:
    root = Path(root) if root is not None else features_dir()
    out: list[EntryInfo] = []
    if not root.exists():
        return out
    for p in sorted(root.rglob("*.h5*")):
        if p.name.endswith(TMP_SUFFIX):
            out.append(EntryInfo(p, p.stat().st_size, False, None))
            continue
        try:
            with h5py.File(p, "r") as fh:
                key = json.loads(fh.attrs["key"]) if "key" in fh.attrs else None
                out.append(EntryInfo(p, p.stat().st_size, bool(fh.attrs.get("complete", False)), key))
        except OSError:
            out.append(EntryInfo(p, p.stat().st_size, False, None))
    return out


def clear(root: Path | None = None, task: str | None = None, incomplete_only: bool = False) -> tuple[int, int]:
    """Delete entries (all, one task's, or only incomplete ones); returns (files, bytes)."""
    root = Path(root) if root is not None else features_dir()
    if task is None and not incomplete_only:
        entries = list_entries(root)
        total = sum(e.size for e in entries)
        shutil.rmtree(root, ignore_errors=True)
        return len(entries), total
    files = size = 0
    for e in list_entries(root):
        if (incomplete_only and not e.complete) or (task is not None and e.key and e.key.get("task") == task):
            e.path.unlink(missing_ok=True)
            files, size = files + 1, size + e.size
    return files, size
