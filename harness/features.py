"""Run the frozen encoder once over a split and serve the taps a head needs.

``get_features`` is the one entry point: a cache hit loads (or streams) the stored taps; a
miss encodes with a DataLoader (workers, pinned memory on CUDA, autocast, channels_last)
while streaming the taps into a new cache entry; when the taps would not fit the disk budget,
the split is encoded on the fly at every use instead, and the caller is told so.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from encoders.base import FrozenEncoder

from .cache import (
    CorruptEntry,
    EntryWriter,
    FeatureKey,
    MemoryFeatures,
    StreamFeatures,
    entry_path,
    load_memory,
    open_entry,
    remove_entry,
    verify,
)
from .common.locks import EntryLock
from .common.progress import log, progress

Batch = tuple[dict[str, torch.Tensor], torch.Tensor, "torch.Tensor | None"]

# Kept under this name for callers that build in-memory features directly.
Features = MemoryFeatures


@dataclass
class EncodeSettings:
    device: torch.device
    batch_size: int = 64
    num_workers: int = 0
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    channels_last: bool = True
    use_cache: bool = True
    ram_budget: int = 8 << 30  # bytes of features kept in memory for head training
    disk_budget: int = 20 << 30  # bytes one cache entry may take; above it, encode on the fly
    cache_root: object = None  # Path | None: default harness.common.paths.features_dir()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    rebuilt: int = 0
    on_the_fly: int = 0
    waited: int = 0  # entries another process was encoding: waited for and read
    encode_s: float = 0.0
    notes: list[str] = field(default_factory=list)


def _collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


def loader(dataset: Dataset, batch_size: int, device: torch.device, num_workers: int = 0,
           sampler=None) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=num_workers,
                      collate_fn=_collate, pin_memory=device.type == "cuda", drop_last=False,
                      persistent_workers=False, prefetch_factor=4 if num_workers else None)


def autocast_for(device: torch.device, precision: str):
    """fp16 autocast on CUDA by default; full precision on the CPU unless bf16 is asked for."""
    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=device.type, dtype=dtype)


def prepare(encoder: FrozenEncoder, settings: EncodeSettings) -> FrozenEncoder:
    encoder.to(settings.device)
    if settings.channels_last:
        encoder.to(memory_format=torch.channels_last)
    return encoder


def encode_batches(encoder: FrozenEncoder, dataset: Dataset, taps: tuple[str, ...], settings: EncodeSettings,
                   sampler=None, desc: str = "encode") -> Iterator[Batch]:
    """Encoded batches in dataset order (or ``sampler`` order), every sample included."""
    prepare(encoder, settings)
    dl = loader(dataset, settings.batch_size, settings.device, settings.num_workers, sampler)
    for batch in progress(dl, desc=desc, total=len(dl)):
        images = batch["image"].to(settings.device, non_blocking=True)
        if settings.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_for(settings.device, settings.precision):
            out = encoder(images, taps)
        out = {k: v.contiguous() for k, v in out.items()}
        yield out, batch["target"], batch.get("valid")


class OnTheFlyFeatures:
    """Encodes its split at every pass: for pixelwise taps that exceed the disk budget."""

    def __init__(self, encoder: FrozenEncoder, dataset: Dataset, taps: tuple[str, ...], settings: EncodeSettings):
        self.encoder, self.dataset, self.taps, self.settings = encoder, dataset, taps, settings

    def __len__(self) -> int:
        return len(self.dataset)

    def batches(self, batch_size: int, device: torch.device, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[Batch]:
        order = torch.randperm(len(self), generator=generator).tolist() if shuffle else None
        s = EncodeSettings(**{**self.settings.__dict__, "batch_size": batch_size})
        for feats, target, valid in encode_batches(self.encoder, self.dataset, self.taps, s, sampler=order):
            yield ({k: v.to(device) for k, v in feats.items()}, target.to(device),
                   valid.to(device) if valid is not None else None)


def _probe(encoder: FrozenEncoder, dataset: Dataset, taps: tuple[str, ...], settings: EncodeSettings):
    """Tap shapes and target shape/dtype from one sample (cheap: one forward pass)."""
    sample = dataset[0]
    with torch.no_grad():
        out = encoder.to(settings.device)(sample["image"].unsqueeze(0).to(settings.device), taps)
    tap_shapes = {k: tuple(v.shape[1:]) for k, v in out.items()}
    target = torch.as_tensor(sample["target"])
    valid = sample.get("valid")
    return tap_shapes, tuple(target.shape), target.numpy().dtype, (tuple(valid.shape) if valid is not None else None)


def get_features(encoder: FrozenEncoder, dataset: Dataset, taps: tuple[str, ...], key: FeatureKey,
                 settings: EncodeSettings, stats: CacheStats, desc: str = "encode"):
    """A feature source for one split: cached (memory or stream), freshly encoded, or on the fly."""
    t0 = time.perf_counter()
    try:
        return _get_features(encoder, dataset, taps, key, settings, stats, desc)
    finally:
        stats.encode_s += time.perf_counter() - t0


def _get_features(encoder, dataset, taps, key, settings, stats, desc):
    root = settings.cache_root
    n = len(dataset)
    tap_shapes, target_shape, target_dtype, valid_shape = _probe(encoder, dataset, taps, settings)
    itemsize = np.dtype(key.dtype).itemsize
    est = n * sum(int(np.prod(s)) * itemsize for s in tap_shapes.values())
    fits_ram = est <= settings.ram_budget
    if est > settings.disk_budget or (not settings.use_cache and not fits_ram):
        stats.on_the_fly += 1
        why = (f"disk budget {settings.disk_budget / 2**30:.1f} GiB" if settings.use_cache else
               f"RAM budget {settings.ram_budget / 2**30:.1f} GiB and the cache is off")
        stats.notes.append(f"{key.split}: taps need {est / 2**30:.1f} GiB > {why}; encoded on the fly at every epoch")
        return OnTheFlyFeatures(encoder, dataset, taps, settings)

    lock = None
    if settings.use_cache:
        # One writer per entry across processes: the others wait for it to be published, then read it.
        while True:
            cached = _cached(key, root, fits_ram, est, settings, stats)
            if cached is not None:
                return cached
            lock = EntryLock(entry_path(key, root))
            if lock.acquire(on_wait=lambda owner: log(f"{desc}: waiting for {owner.get('host', '?')}:"
                                                      f"{owner.get('pid', '?')}, which is encoding it")):
                break
            stats.waited += 1
            stats.notes.append(f"{key.split}: encoded by another process; waited {lock.waited_s:.0f}s and read it")
        if lock.broke:
            stats.notes.append(f"{key.split}: took over a stale cache lock ({lock.broke})")
    stats.misses += 1

    try:
        return _encode_and_store(encoder, dataset, taps, key, settings, desc, root, n, tap_shapes, target_shape,
                                 target_dtype, valid_shape, fits_ram, est, stats, lock)
    finally:
        if lock is not None:
            lock.release()


def _cached(key: FeatureKey, root, fits_ram: bool, est: int, settings: EncodeSettings, stats: CacheStats):
    """The published entry (in memory or streamed), or None (absent; a corrupt one is removed)."""
    try:
        fh = open_entry(key, root)
        if fh is None:
            return None
        with fh:
            verify(fh)
            feats = load_memory(fh) if fits_ram else None
        stats.hits += 1
        if fits_ram:
            return feats
        stats.notes.append(_streamed(key, est, settings))
        return StreamFeatures(entry_path(key, root))
    except CorruptEntry as exc:
        remove_entry(key, root)
        stats.rebuilt += 1
        stats.notes.append(f"{key.split}: corrupt cache entry rebuilt ({exc})")
        return None


def _encode_and_store(encoder, dataset, taps, key, settings, desc, root, n, tap_shapes, target_shape, target_dtype,
                      valid_shape, fits_ram, est, stats, lock):
    writer = EntryWriter(key, n, tap_shapes, target_shape, target_dtype, valid_shape, root) if settings.use_cache \
        else None
    kept: dict[str, list] = {"target": [], "valid": []}
    kept.update({t: [] for t in taps})
    try:
        for feats, target, valid in encode_batches(encoder, dataset, taps, settings, desc=desc):
            stored = {k: v.to("cpu", getattr(torch, key.dtype)) for k, v in feats.items()}
            if writer is not None:
                writer.write(stored, target, valid)
                lock.touch()
            if fits_ram:
                for k, v in stored.items():
                    kept[k].append(v)
                kept["target"].append(target)
                if valid is not None:
                    kept["valid"].append(valid)
        if writer is not None:
            writer.publish()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if fits_ram:
        return MemoryFeatures({t: torch.cat(kept[t]) for t in taps}, torch.cat(kept["target"]),
                              torch.cat(kept["valid"]).bool() if kept["valid"] else None)
    stats.notes.append(_streamed(key, est, settings))
    return StreamFeatures(entry_path(key, root))


def _streamed(key: FeatureKey, est: int, settings: EncodeSettings) -> str:
    return (f"{key.split}: taps need {est / 2**30:.1f} GiB > RAM budget {settings.ram_budget / 2**30:.1f} GiB; "
            f"streamed from the disk cache")
