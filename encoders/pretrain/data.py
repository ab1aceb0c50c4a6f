"""Pretraining data: a folder of images (ImageNet layout, labels kept only for bookkeeping), the synthetic
corpus, and the paper's subsets (Section 3.2), written as a seeded manifest that can be saved and reused.

A manifest lists every image once (a path, or ``synth:<index>``) with its class; its hash names the
data in checkpoint metadata. Variants choose images per class with a seeded generator:
``half``/``quarter`` keep a uniform fraction, ``lin`` keeps n images of class n, ``log`` keeps
round(C ** ((n-1)/(C-1))) of class n (1 for the first class, C for the last: 1 and 1000 for ImageNet),
and several sources merge a random quarter of each.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from harness.common.atomic import write_json
from harness.common.errors import HarnessError, UsageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".JPEG", ".JPG", ".PNG")
SYNTH = "synth"
MANIFEST_VERSION = 1


@dataclass
class Manifest:
    sources: list[dict]  # how to read items: {"kind": "synth", "size": 64} or {"kind": "folder", "root": ...}
    items: list[str]  # "synth:<i>" or "<source index>:<relative path>"
    labels: list[int]
    classes: list[str]
    variant: str = "full"
    seed: int = 0
    version: int = MANIFEST_VERSION
    extra: dict = field(default_factory=dict)
    corrupt: str | None = None  # a corruption applied to every image before augmentation (corrupt.py)

    def __len__(self) -> int:
        return len(self.items)

    def digest(self) -> str:
        """sha256 of what decides the images (sources, items, labels, a corruption and its seed), not of
        where the file was saved. A clean manifest hashes as it did before corruptions existed."""
        decides: dict = {"sources": self.sources, "items": self.items, "labels": self.labels}
        if self.corrupt:
            decides.update(corrupt=self.corrupt, seed=self.seed)
        body = json.dumps(decides, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()

    def save(self, path: Path) -> None:
        write_json(Path(path), {**asdict(self), "sha256": self.digest()})

    @classmethod
    def load(cls, path: Path) -> Manifest:
        try:
            obj = json.loads(Path(path).read_text())
            stored = obj.pop("sha256", None)
            manifest = cls(**obj)
        except (OSError, ValueError, TypeError) as exc:
            raise UsageError(f"--manifest {path}: not a readable manifest ({exc})") from None
        if stored is not None and stored != manifest.digest():
            raise HarnessError(f"--manifest {path}: its items do not match its sha256; the file was edited")
        return manifest

    def describe(self) -> str:
        names = [SYNTH if s["kind"] == SYNTH else Path(s["root"]).name for s in self.sources]
        return "+".join(names) + ("" if self.variant == "full" else f"-{self.variant}")


# ---- class-count rules -------------------------------------------------------------------------------------

def linear_counts(num_classes: int) -> list[int]:
    """ImageNet-1/2-Lin: class n (1-based) keeps n images."""
    return list(range(1, num_classes + 1))


def log_counts(num_classes: int, top: int | None = None) -> list[int]:
    """ImageNet-1/4-Log: exponential from 1 image (first class) to ``top`` (default C) for the last."""
    top = num_classes if top is None else top
    if num_classes == 1:
        return [top]
    rate = math.log(top) / (num_classes - 1)
    return [math.floor(math.exp(rate * n) + 0.5) for n in range(num_classes)]


def fraction_counts(sizes: Sequence[int], frac: float) -> list[int]:
    return [max(1, math.floor(s * frac + 0.5)) if s else 0 for s in sizes]


VARIANTS = ("full", "half", "quarter", "lin", "log")


def _class_counts(variant: str, sizes: list[int]) -> list[int]:
    if variant == "full":
        return list(sizes)
    if variant == "half":
        return fraction_counts(sizes, 0.5)
    if variant == "quarter":
        return fraction_counts(sizes, 0.25)
    if variant == "lin":
        return [min(c, s) for c, s in zip(linear_counts(len(sizes)), sizes, strict=True)]
    if variant == "log":
        return [min(c, s) for c, s in zip(log_counts(len(sizes)), sizes, strict=True)]
    raise UsageError(f"--variant {variant!r}: use one of {', '.join(VARIANTS)}")


def subset(manifest: Manifest, variant: str, seed: int) -> Manifest:
    """Keep per class (in sorted class order) the number of images the variant asks for, chosen at random."""
    labels = np.asarray(manifest.labels)
    sizes = [int((labels == c).sum()) for c in range(len(manifest.classes))]
    counts = _class_counts(variant, sizes)
    rng = np.random.default_rng([seed, 0x5EB5E7])
    keep: list[int] = []
    for c, n in enumerate(counts):
        members = np.flatnonzero(labels == c)
        keep.extend(sorted(rng.permutation(members)[:n].tolist()))
    keep.sort()
    return Manifest(manifest.sources, [manifest.items[i] for i in keep], [manifest.labels[i] for i in keep],
                    manifest.classes, variant, seed)


def limit_manifest(manifest: Manifest, limit: int, seed: int) -> Manifest:
    """At most ``limit`` images, a seeded random choice kept in manifest order."""
    if limit >= len(manifest):
        return manifest
    keep = sorted(np.random.default_rng([seed, 0x11A17]).permutation(len(manifest))[:limit].tolist())
    return Manifest(manifest.sources, [manifest.items[i] for i in keep], [manifest.labels[i] for i in keep],
                    manifest.classes, manifest.variant, manifest.seed, extra={**manifest.extra, "limit": limit},
                    corrupt=manifest.corrupt)


# ---- sources -----------------------------------------------------------------------------------------------

def synthetic_manifest(n: int, size: int) -> Manifest:
    from tasks.synthetic import CORPUS_CLASSES, corpus

    labels = corpus(n, size, fields=("shape_cls",))["shape_cls"]
    return Manifest([{"kind": SYNTH, "size": size}], [f"synth:{i}" for i in range(n)],
                    [int(x) for x in labels], list(CORPUS_CLASSES))


def folder_manifest(root: Path, source_index: int = 0) -> Manifest:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise HarnessError(f"--data {root}: no such folder; expected an ImageNet-style folder root/<class>/*.jpg")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    items, labels = [], []
    for c, name in enumerate(classes):
        for f in sorted((root / name).rglob("*")):
            if f.suffix in IMAGE_SUFFIXES and f.is_file():
                items.append(f"{source_index}:{f.relative_to(root).as_posix()}")
                labels.append(c)
    if not items:
        raise HarnessError(f"--data {root}: found no images; expected root/<class>/*.jpg (or .png)")
    return Manifest([{"kind": "folder", "root": str(root.resolve())}], items, labels, classes)


def combine(manifests: list[Manifest], seed: int) -> Manifest:
    """The paper's combination: a random quarter of each dataset, merged (classes kept apart)."""
    sources, items, labels, classes = [], [], [], []
    for k, m in enumerate(manifests):
        q = subset(m, "quarter", seed + k)
        offset = len(classes)
        for item in q.items:
            _, rel = item.split(":", 1)
            items.append(f"{len(sources)}:{rel}")
        labels.extend(lab + offset for lab in q.labels)
        classes.extend(f"{Path(m.sources[0].get('root', SYNTH)).name}/{c}" for c in m.classes)
        sources.append(m.sources[0])
    return Manifest(sources, items, labels, classes, "combination", seed)


def build_manifest(data: list[str], variant: str, seed: int, limit: int | None, resolution: int,
                   synth_size: int = 2000, corrupt: str | None = None) -> Manifest:
    """``--data synth`` or one or more folders; the variant applies to a single source; ``corrupt``
    (``jpeg:10``, ...) is checked and recorded, and ``ManifestImages`` applies it."""
    from .corrupt import parse_corruption

    corruption = parse_corruption(corrupt)
    if not data:
        raise UsageError("--data: give 'synth' or an image folder")
    data = [SYNTH if d == "synthetic" else d for d in data]  # the suite's one name, with its long alias
    if len(data) > 1:
        if SYNTH in data:
            raise UsageError("--data synth cannot be combined with folders")
        if variant != "full":
            raise UsageError("several --data folders make the 'combination' variant; leave --variant out")
        manifest = combine([folder_manifest(Path(d), i) for i, d in enumerate(data)], seed)
    else:
        if data[0] == SYNTH:
            n = limit if (limit and variant == "full") else synth_size
            manifest = synthetic_manifest(n, resolution)
        else:
            manifest = folder_manifest(Path(data[0]))
        if variant != "full":
            manifest = subset(manifest, variant, seed)
    manifest = limit_manifest(manifest, limit, seed) if limit else manifest
    if corruption:
        manifest.corrupt, manifest.seed = str(corruption), seed  # the seed also draws random corruptions
    return manifest


# ---- reading images ----------------------------------------------------------------------------------------

class ManifestImages(Dataset):
    """uint8 (H, W, 3) tensors at ``size`` x ``size`` (shorter side resized, centre crop) for every item,
    with the manifest's corruption applied (item i seeded by the manifest seed and i)."""

    def __init__(self, manifest: Manifest, size: int):
        from .corrupt import corrupt_images, parse_corruption

        self.manifest, self.size = manifest, size
        self.corruption = parse_corruption(manifest.corrupt)
        self._synth: np.ndarray | None = None
        synth = [i for i, s in enumerate(manifest.sources) if s["kind"] == SYNTH]
        if synth:
            from tasks.synthetic import corpus

            idx = [int(it.split(":", 1)[1]) for it in manifest.items]
            n = max(idx) + 1 if idx else 0
            src_size = manifest.sources[synth[0]]["size"]
            images = corpus(n, src_size, fields=("image",))["image"]
            self._synth = images[idx]
            if src_size != size:
                self._synth = _resize_uint8(self._synth, size)
            self._synth = corrupt_images(self._synth, self.corruption, manifest.seed)

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self._synth is not None:
            return torch.from_numpy(self._synth[i])
        src, rel = self.manifest.items[i].split(":", 1)
        path = Path(self.manifest.sources[int(src)]["root"]) / rel
        image = _load_image(path, self.size)
        if self.corruption is None:
            return image
        from .corrupt import image_rng

        return torch.from_numpy(self.corruption.apply(image.numpy(), image_rng(self.manifest.seed, i)))


def _resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def _load_image(path: Path, size: int) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = size / min(w, h)
            im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
            w, h = im.size
            left, top = (w - size) // 2, (h - size) // 2
            im = im.crop((left, top, left + size, top + size))
            return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy())
    except OSError as exc:
        raise HarnessError(f"cannot read image {path}: {exc}") from None


def epoch_batches(num_items: int, global_batch: int, epoch: int, seed: int) -> list[list[int]]:
    """The global batches of an epoch: a seeded permutation, the last incomplete batch dropped."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(num_items, generator=gen).tolist()
    steps = num_items // global_batch
    return [perm[s * global_batch:(s + 1) * global_batch] for s in range(steps)]
