"""Run the frozen encoder once over a split and serve the taps a head needs.

``get_features`` is the one entry point: a cache hit loads (or streams) the stored taps; a
miss encodes with a DataLoader (workers, pinned memory on CUDA, autocast, channels_last)
while streaming the taps into a new cache entry; when the taps would not fit the disk budget,
the split is encoded on the fly at every use instead, and the caller is told so.

Pixelwise splits are evaluated at native resolution, where samples may differ in size
(KITTI's pairs, a folder of photos): a loader batch that does not stack is split by size into
buckets that are encoded when full, every encoder batch holds one size, and the entry keeps
one group per size (harness/cache.py, the ``grouped`` layout). Encoder batches shrink to fit
the memory budget when the images are large (a 1024 x 2048 Cityscapes frame).

``image_batches`` is where images come from: the loader's workers decode them, or, for splits of
JPEG files on a GPU (``EncodeSettings.decode``), the workers read bytes and each batch is decoded
on the device (harness/decode.py). ``encode_shared`` feeds one such pass to several encoders, each
writing the cache entry its own run would: one decode for many encoders.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from encoders.base import FrozenEncoder

from . import decode
from .cache import (
    CorruptEntry,
    EntryWriter,
    FeatureKey,
    GroupedEntryWriter,
    MemoryFeatures,
    assemble,
    entry_path,
    load_memory,
    open_entry,
    open_stream,
    remove_entry,
    shape_signature,
    verify,
)
from .common import interrupt
from .common.locks import EntryLock
from .common.progress import log, progress
from .train import batch_memory_budget

Batch = tuple[dict[str, torch.Tensor], torch.Tensor, "torch.Tensor | None"]
ImageBatch = tuple[dict[str, torch.Tensor], torch.Tensor]  # the batch (images on the device), dataset positions


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
    memory_budget: int | None = None  # bytes one encoder batch may take; None: train.batch_memory_budget
    decode: str = "auto"  # auto | cpu | device: where JPEGs are decoded (harness/decode.py)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    rebuilt: int = 0
    on_the_fly: int = 0
    waited: int = 0  # entries another process was encoding: waited for and read
    encode_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    prepared: set = field(default_factory=set)  # entry paths a shared pass wrote for this run (a miss, not a hit)


ENCODE_BYTES_PER_PIXEL = 512  # transient fp32 activations of a ResNet-50-sized encoder per input pixel (generous)
SURVEY = 8  # samples whose image size is looked at before encoding (evenly spaced)


def _collate(samples: list[dict[str, torch.Tensor]]):
    """A stacked batch, or the list of samples when their sizes differ (bucketed by size later)."""
    first = samples[0]
    if any(s.keys() != first.keys() for s in samples):
        raise ValueError("samples of one split carry different keys (e.g. some without 'valid'); a loader must "
                         "return the same keys for every sample")
    if any(s[k].shape != first[k].shape for s in samples[1:] for k in first):
        return samples
    return {k: torch.stack([s[k] for s in samples]) for k in first}


def _stack(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


def _size_key(sample: dict[str, torch.Tensor]) -> tuple:
    return tuple(tuple(v.shape) for _, v in sorted(sample.items()))


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


def image_batches(dataset: Dataset, settings: EncodeSettings, sampler=None, desc: str = "encode",
                  notes: list[str] | None = None, label: str = "") -> Iterator[ImageBatch]:
    """(batch, dataset positions) in dataset order (or ``sampler`` order), every sample included,
    the images on the device: decoded there (harness/decode.py) when ``settings.decode`` chooses
    it, else decoded by the loader. ``notes`` gets one line saying where ``label`` was decoded.

    Every batch holds samples of one size. When a loader batch mixes sizes, its samples wait
    in per-size buckets that are encoded when they hold ``batch_size`` samples (or when more
    than two batches' worth wait), the rest at the end; the order then differs from the
    dataset's."""
    choice = decode.choose(dataset, settings.device, settings.decode)
    if choice.on_device:
        yield from _device_batches(dataset, settings, sampler, desc, notes, label)
        return
    if notes is not None and (settings.decode != "auto" or (settings.device.type == "cuda"
                                                            and decode.file_source(dataset) is not None)):
        notes.append(f"{label}: images decoded by the loader on the CPU ({choice.why})")
    order = list(sampler) if sampler is not None else None
    dl = loader(dataset, settings.batch_size, settings.device, settings.num_workers, sampler)
    buckets: dict[tuple, list[tuple[dict[str, torch.Tensor], int]]] = {}
    waiting = pos = 0

    def flush(key: tuple):
        items = buckets.pop(key)
        return _on_device(_stack([s for s, _ in items]), settings), torch.tensor([i for _, i in items])

    for batch in progress(dl, desc=desc, total=len(dl)):
        interrupt.check()
        if isinstance(batch, dict) and waiting:  # buckets are filling: this batch's samples join them
            batch = [{k: v[j] for k, v in batch.items()} for j in range(len(batch["target"]))]
        if isinstance(batch, dict):
            b = len(batch["target"])
            index = torch.tensor(order[pos:pos + b]) if order is not None else torch.arange(pos, pos + b)
            pos += b
            yield _on_device(batch, settings), index
            continue
        for sample in batch:  # sizes differ: bucket by size
            key = _size_key(sample)
            buckets.setdefault(key, []).append((sample, order[pos] if order is not None else pos))
            pos, waiting = pos + 1, waiting + 1
            if len(buckets[key]) >= settings.batch_size:
                waiting -= len(buckets[key])
                yield flush(key)
        while waiting > 2 * settings.batch_size:  # many sizes: encode the fullest bucket early
            key = max(buckets, key=lambda k: len(buckets[k]))
            waiting -= len(buckets[key])
            yield flush(key)
    for key in list(buckets):
        yield flush(key)


def _on_device(batch: dict[str, torch.Tensor], settings: EncodeSettings) -> dict[str, torch.Tensor]:
    images = batch["image"].to(settings.device, non_blocking=True)
    if settings.channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return {**batch, "image": images}


def _device_batches(dataset: Dataset, settings: EncodeSettings, sampler, desc: str, notes: list[str] | None,
                    label: str) -> Iterator[ImageBatch]:
    """The device path: workers read bytes, each batch is decoded and resized on the device."""
    raw = decode.RawFiles(dataset)
    size = raw.size
    order = list(sampler) if sampler is not None else None
    dl = DataLoader(raw, batch_size=settings.batch_size, sampler=sampler, shuffle=False,
                    num_workers=settings.num_workers, collate_fn=decode.collate_raw,
                    pin_memory=settings.device.type == "cuda", drop_last=False,
                    prefetch_factor=4 if settings.num_workers else None)
    pos = on_host = files = 0
    for batch in progress(dl, desc=desc, total=len(dl)):
        interrupt.check()
        images, host = decode.decode_batch(batch["frames"], batch["stacked"], size, settings.device)
        on_host += host
        files += sum(len(f) for f in batch["frames"])
        b = len(batch["target"])
        index = torch.tensor(order[pos:pos + b]) if order is not None else torch.arange(pos, pos + b)
        pos += b
        yield _on_device({"image": images, "target": batch["target"]}, settings), index
    if notes is not None:
        fallback = (f"; {on_host} of {files} file(s) decoded on the CPU (not a sequential 1- or 3-component JPEG, "
                    f"or refused by the device)") if on_host else ""
        notes.append(f"{label}: images decoded in batches on {settings.device} (torchvision decode_jpeg) and "
                     f"resized there{fallback}")


def _forward(encoder: FrozenEncoder, images: torch.Tensor, taps: tuple[str, ...],
             settings: EncodeSettings) -> dict[str, torch.Tensor]:
    with autocast_for(settings.device, settings.precision):
        out = encoder(images, taps)
    return {k: v.contiguous() for k, v in out.items()}


def encode_batches(encoder: FrozenEncoder, dataset: Dataset, taps: tuple[str, ...], settings: EncodeSettings,
                   sampler=None, desc: str = "encode", with_index: bool = False,
                   notes: list[str] | None = None, label: str = "") -> Iterator[Batch]:
    """Encoded batches (``image_batches`` says in which order). ``with_index`` adds each batch's
    dataset positions as a fourth element."""
    prepare(encoder, settings)
    for batch, index in image_batches(dataset, settings, sampler, desc, notes, label):
        out = _forward(encoder, batch["image"], taps, settings)
        yield (out, batch["target"], batch.get("valid"), index) if with_index else \
            (out, batch["target"], batch.get("valid"))


class OnTheFlyFeatures:
    """Encodes its split at every pass: for pixelwise taps that exceed the disk budget.

    ``max_batch``: the most samples one encoder batch may hold (the memory budget's figure
    for the split's largest images); a pass asked for bigger batches gets batches this big."""

    def __init__(self, encoder: FrozenEncoder, dataset: Dataset, taps: tuple[str, ...], settings: EncodeSettings,
                 max_batch: int | None = None, sample_shapes: dict | None = None):
        self.encoder, self.dataset, self.taps, self.settings = encoder, dataset, taps, settings
        self.max_batch, self._shapes = max_batch, sample_shapes

    def __len__(self) -> int:
        return len(self.dataset)

    def shapes(self) -> dict | None:
        """Per-sample shapes of the first sample (the split's others may differ)."""
        return self._shapes

    def batches(self, batch_size: int, device: torch.device, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[Batch]:
        order = torch.randperm(len(self), generator=generator).tolist() if shuffle else None
        bs = min(batch_size, self.max_batch) if self.max_batch else batch_size
        s = EncodeSettings(**{**self.settings.__dict__, "batch_size": bs})
        for feats, target, valid in encode_batches(self.encoder, self.dataset, self.taps, s, sampler=order):
            yield ({k: v.to(device) for k, v in feats.items()}, target.to(device),
                   valid.to(device) if valid is not None else None)


@dataclass
class Probe:
    """What sample 0 (its tap shapes, ``_tap_shapes``) and a look at a few samples' sizes tell about a split."""

    tap_shapes: dict[str, tuple[int, ...]]
    target_shape: tuple[int, ...]
    target_dtype: np.dtype
    valid_shape: tuple[int, ...] | None
    pixels0: int  # input pixels of sample 0 (per frame)
    frames: int
    mean_pixels: float  # over the surveyed samples
    max_pixels: int
    sizes: set[tuple[int, int]]  # image sizes seen in the survey

    @property
    def spatial(self) -> bool:
        """Pixelwise taps or targets: stored in the grouped layout, whose samples may differ in size."""
        return any(len(s) >= 3 for s in self.tap_shapes.values()) or len(self.target_shape) >= 2

    def tap_bytes(self, pixels: float, itemsize: int) -> float:
        """One sample's taps at ``pixels`` input pixels: spatial taps grow with the image, pooled ones do not."""
        ratio = pixels / max(self.pixels0, 1)
        return sum(math.prod(s) * itemsize * (ratio if len(s) >= 3 else 1.0) for s in self.tap_shapes.values())

    def encode_batch(self, budget: int, cap: int) -> int:
        """Samples per encoder batch that fit ``budget`` at the split's largest surveyed size."""
        per = self.max_pixels * self.frames * (ENCODE_BYTES_PER_PIXEL + 3 * 4) + self.tap_bytes(self.max_pixels, 4)
        return int(max(1, min(cap, budget // max(per, 1))))

    def sample_shapes(self) -> dict:
        return {"taps": self.tap_shapes, "target": self.target_shape}


@dataclass
class Survey:
    """A look at a split before it is encoded: sample 0 and the image sizes of up to SURVEY samples
    spread over it (decoded, not encoded). It depends on the split alone, so a shared pass takes it
    once for all its encoders."""

    sample: dict[str, torch.Tensor]
    sizes: list[tuple[int, int]]


def survey(dataset: Dataset) -> Survey:
    sample = dataset[0]
    n = len(dataset)
    picks = sorted({int(i) for i in np.linspace(0, n - 1, min(n, SURVEY))} - {0})
    return Survey(sample, [tuple(sample["image"].shape[-2:])] + [tuple(dataset[i]["image"].shape[-2:]) for i in picks])


def _tap_shapes(encoder: FrozenEncoder, image: torch.Tensor, taps: tuple[str, ...],
                settings: EncodeSettings) -> dict[str, tuple[int, ...]]:
    """Per-sample tap shapes for one image, from a forward pass on the meta device (meta copies of the
    weights: shapes only, no arithmetic, as ``model_cost`` counts FLOPs). An encoder that does what
    meta tensors cannot (reads a value) gets one real single-image forward instead. Remembered per
    encoder and input shape: a run's splits (and its reads of what a shared pass wrote) ask again."""
    known = _TAP_SHAPES.setdefault(encoder, {})
    if (tuple(image.shape), taps) not in known:
        known[tuple(image.shape), taps] = _measure_taps(encoder, image.unsqueeze(0), taps, settings)
    return dict(known[tuple(image.shape), taps])


_TAP_SHAPES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # encoder -> {(image shape, taps): shapes}


def _measure_taps(encoder: FrozenEncoder, x: torch.Tensor, taps: tuple[str, ...],
                  settings: EncodeSettings) -> dict[str, tuple[int, ...]]:
    try:
        meta = {name: torch.empty_like(t, device="meta")
                for name, t in itertools.chain(encoder.named_parameters(), encoder.named_buffers())}
        with torch.no_grad():
            out = torch.func.functional_call(encoder, meta, (torch.empty_like(x, device="meta"), taps))
    except Exception:  # noqa: BLE001 - any failure on meta tensors: measure for real
        with torch.no_grad():
            out = encoder.to(settings.device)(x.to(settings.device), taps)
    return {k: tuple(v.shape[1:]) for k, v in out.items()}


def _probe(encoder: FrozenEncoder, dataset: Dataset, taps: tuple[str, ...], settings: EncodeSettings,
           look: Survey | None = None) -> Probe:
    """Tap shapes (``_tap_shapes``) and target shape/dtype from sample 0, and the surveyed image sizes;
    ``look``: the split's survey when already taken (by a shared pass for its other encoders)."""
    look = look if look is not None else survey(dataset)
    sample = look.sample
    tap_shapes = _tap_shapes(encoder, sample["image"], taps, settings)
    target = torch.as_tensor(sample["target"])
    valid = sample.get("valid")
    pixels = [h * w for h, w in look.sizes]
    return Probe(tap_shapes, tuple(target.shape), target.numpy().dtype, tuple(valid.shape) if valid is not None
                 else None, pixels[0], int(np.prod(sample["image"].shape[:-3])) or 1, float(np.mean(pixels)),
                 max(pixels), set(look.sizes))


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
    probe = _probe(encoder, dataset, taps, settings)
    budget = settings.memory_budget if settings.memory_budget is not None else batch_memory_budget(settings.device)
    max_batch = probe.encode_batch(budget, max(settings.batch_size, 256))
    if max_batch < settings.batch_size:  # large images: fewer per encoder batch
        settings = replace(settings, batch_size=max_batch)
    itemsize = np.dtype(key.dtype).itemsize
    est = n * probe.tap_bytes(probe.mean_pixels, itemsize)
    fits_ram = est <= settings.ram_budget
    if est > settings.disk_budget or (not settings.use_cache and not fits_ram):
        stats.on_the_fly += 1
        why = (f"disk budget {_gib(settings.disk_budget)}" if settings.use_cache else
               f"RAM budget {_gib(settings.ram_budget)} and the cache is off")
        stats.notes.append(f"{key.split}: taps need {_gib(est)} > {why}; encoded on the fly at every use "
                           f"(each training epoch, each evaluation), not cached")
        if len(probe.sizes) > 1:
            stats.notes.append(f"{key.split}: samples differ in size; encoded and scored at native size, batched by "
                               f"size")
        return OnTheFlyFeatures(encoder, dataset, taps, settings, max_batch, probe.sample_shapes())

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
        return _encode_and_store(encoder, dataset, taps, key, settings, desc, root, n, probe, fits_ram, est, stats,
                                 lock)
    finally:
        if lock is not None:
            lock.release()


def _cached(key: FeatureKey, root, fits_ram: bool, est: float, settings: EncodeSettings, stats: CacheStats):
    """The published entry (in memory or streamed), or None (absent; a corrupt one is removed)."""
    try:
        fh = open_entry(key, root)
        if fh is None:
            return None
        with fh:
            verify(fh)
            feats = load_memory(fh) if fits_ram else None
        if str(entry_path(key, root)) not in stats.prepared:  # else: a shared pass's miss, counted there
            stats.hits += 1
        if not fits_ram:
            stats.notes.append(_streamed(key, est, settings))
            feats = open_stream(entry_path(key, root))
        _note_sizes(key, feats, stats)
        return feats
    except CorruptEntry as exc:
        remove_entry(key, root)
        stats.rebuilt += 1
        stats.notes.append(f"{key.split}: corrupt cache entry rebuilt ({exc})")
        return None


class _Store:
    """Where one split's encoded batches go: the new cache entry (when caching) and, when the taps
    fit the RAM budget, memory."""

    def __init__(self, key: FeatureKey, n: int, probe: Probe, taps: tuple[str, ...], root, use_cache: bool,
                 keep: bool, est: float, lock: EntryLock | None):
        self.key, self.probe, self.taps, self.keep, self.lock = key, probe, taps, keep, lock
        self.writer = None
        if use_cache:
            self.writer = GroupedEntryWriter(key, n, root, expected_bytes=int(est)) if probe.spatial else \
                EntryWriter(key, n, probe.tap_shapes, probe.target_shape, probe.target_dtype, probe.valid_shape, root)
        self.kept: dict[str, dict[str, list]] = {}  # per shape signature: taps, target, valid, index

    def add(self, feats: dict[str, torch.Tensor], target: torch.Tensor, valid, index: torch.Tensor) -> None:
        stored = {k: v.to("cpu", getattr(torch, self.key.dtype)) for k, v in feats.items()}
        if isinstance(self.writer, GroupedEntryWriter):
            self.writer.write(stored, target, valid, index)
        elif self.writer is not None:
            self.writer.write(stored, target, valid)
        if self.lock is not None:
            self.lock.touch()
        if self.keep:
            part = self.kept.setdefault(shape_signature(stored, target, valid) if self.probe.spatial else "",
                                        {"target": [], "valid": [], "index": [], **{t: [] for t in self.taps}})
            for k, v in stored.items():
                part[k].append(v)
            part["target"].append(target)
            part["index"].append(index)
            if valid is not None:
                part["valid"].append(valid)

    def publish(self) -> None:
        if self.writer is not None:
            self.writer.publish()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()

    def in_memory(self):
        p = self.kept.values()
        return assemble([MemoryFeatures({t: torch.cat(q[t]) for t in self.taps}, torch.cat(q["target"]),
                                        torch.cat(q["valid"]).bool() if q["valid"] else None) for q in p],
                        [torch.cat(q["index"]) for q in p])


def _encode_and_store(encoder, dataset, taps, key, settings, desc, root, n, probe, fits_ram, est, stats, lock):
    store = _Store(key, n, probe, taps, root, settings.use_cache, fits_ram, est, lock)
    try:
        for feats, target, valid, index in encode_batches(encoder, dataset, taps, settings, desc=desc,
                                                          with_index=True, notes=stats.notes, label=key.split):
            store.add(feats, target, valid, index)
        store.publish()
    except BaseException:
        store.abort()
        raise
    if fits_ram:
        feats = store.in_memory()
    else:
        stats.notes.append(_streamed(key, est, settings))
        feats = open_stream(entry_path(key, root))
    _note_sizes(key, feats, stats)
    return feats


# ------------------------------------------------------------------ one decode for several encoders

@dataclass
class SharedJob:
    """One encoder's part of a shared pass: its taps, its cache entry (keyed as a run of its own
    would key it) and the stats of its run."""

    encoder: FrozenEncoder
    taps: tuple[str, ...]
    key: FeatureKey
    stats: CacheStats


def encode_shared(jobs: list[SharedJob], dataset: Dataset, settings: EncodeSettings, desc: str = "encode") -> int:
    """Write the missing cache entries of several encoders on one split in one pass: each batch is
    decoded once and fed to every encoder. Each entry is what ``get_features`` would have written
    for that encoder alone; the runs that follow read it (``stats.prepared`` counts it as their
    miss, not a hit). Entries already cached, encoded by another process meanwhile, or too large
    for the disk budget (encoded on the fly at every use) are left to ``get_features``. Needs the
    cache: without it, nothing is done. Returns the number of entries written."""
    if not settings.use_cache or not jobs:
        return 0
    root = settings.cache_root
    n = len(dataset)
    budget = settings.memory_budget if settings.memory_budget is not None else batch_memory_budget(settings.device)
    todo: list[tuple[SharedJob, Probe, float, EntryLock]] = []
    batch = settings.batch_size
    look = None
    try:
        for job in jobs:
            if _present(job.key, root):
                continue
            look = look if look is not None else survey(dataset)  # once per split, for every encoder
            probe = _probe(job.encoder, dataset, job.taps, settings, look)
            est = n * probe.tap_bytes(probe.mean_pixels, np.dtype(job.key.dtype).itemsize)
            if est > settings.disk_budget:
                continue
            lock = EntryLock(entry_path(job.key, root))
            if not lock.acquire(on_wait=lambda owner: log(f"{desc}: waiting for {owner.get('host', '?')}:"
                                                          f"{owner.get('pid', '?')}, which is encoding it")):
                continue  # another process wrote it meanwhile: the run reads it
            todo.append((job, probe, est, lock))
            batch = min(batch, probe.encode_batch(budget, max(settings.batch_size, 256)))
        if not todo:
            return 0
        return _encode_shared(todo, dataset, replace(settings, batch_size=batch), desc, root, n)
    finally:
        for *_, lock in todo:
            lock.release()


def _present(key: FeatureKey, root) -> bool:
    """A published, intact entry (a corrupt one is removed, to be rebuilt)."""
    try:
        fh = open_entry(key, root)
        if fh is None:
            return False
        with fh:
            verify(fh)
        return True
    except CorruptEntry:
        remove_entry(key, root)
        return False


def _encode_shared(todo, dataset, settings: EncodeSettings, desc: str, root, n: int) -> int:
    t0 = time.perf_counter()
    stores = []
    for job, probe, est, lock in todo:
        prepare(job.encoder, settings)
        stores.append(_Store(job.key, n, probe, job.taps, root, True, False, est, lock))
    notes: list[str] = []
    split = todo[0][0].key.split
    try:
        with torch.no_grad():
            for batch, index in image_batches(dataset, settings, desc=desc, notes=notes, label=split):
                for (job, *_), store in zip(todo, stores, strict=True):
                    store.add(_forward(job.encoder, batch["image"], job.taps, settings), batch["target"],
                              batch.get("valid"), index)
        for store in stores:
            store.publish()
    except BaseException:
        for store in stores:
            store.abort()
        raise
    share = (time.perf_counter() - t0) / len(todo)
    for job, *_ in todo:
        job.stats.misses += 1
        job.stats.encode_s += share
        job.stats.prepared.add(str(entry_path(job.key, root)))
        job.stats.notes.extend(notes)
        if len(todo) > 1:
            job.stats.notes.append(f"{split}: encoded in one pass with {len(todo) - 1} other encoder(s), each image "
                                   f"decoded once (encode_s: this encoder's share of the pass)")
    return len(todo)


def _note_sizes(key: FeatureKey, feats, stats: CacheStats) -> None:
    """A split of several sizes says so in the record, with the sizes and their counts."""
    if not hasattr(feats, "sizes"):
        return
    sizes = ", ".join(f"{'x'.join(map(str, shape[-2:]))} ({count})" for shape, count in feats.sizes())
    stats.notes.append(f"{key.split}: samples of {len(feats.parts())} sizes, encoded and scored at native size, "
                       f"batched by size: {sizes}")


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**27 else f"{nbytes / 2**20:.2f} MiB"


def _streamed(key: FeatureKey, est: float, settings: EncodeSettings) -> str:
    return (f"{key.split}: taps need {_gib(est)} > RAM budget {_gib(settings.ram_budget)}; "
            f"streamed from the disk cache")
