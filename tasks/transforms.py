"""Joint transforms of a sample's image(s), target and valid mask.

``apply_transform`` is what every loader calls from ``__getitem__`` (real splits through
``datasets.base.TransformedSplit``, image-level and pixelwise alike, with ``split_transform`` and
``split_seed``, so every part of a declared spec is applied): one seeded transform per
augmented copy, applied alike to the image (or to every frame of an (S, 3, H, W) stack), the
target and the valid mask, with each target kind resampled as its meaning requires:

- class maps by nearest neighbour (never blending classes), padded with the ignore index;
- depth with invalid pixels kept out of the interpolation (a masked average: the valid
  neighbours' values weighted by the bilinear weights, renormalised), padded as invalid;
- flow like depth, with the vectors scaled by the resize factors and u negated by a
  horizontal flip, padded as invalid;
- image-level labels unchanged.

The order is the one DeepLab trained with: ``resize`` (the base size, also applied at
evaluation), then random ``scale``, then padding to at least the ``crop`` size (the image with
the ImageNet mean, so that it is zero after normalisation; targets as ignored/invalid; bottom
and right, as DeepLab pads), a random ``crop``, and a random horizontal flip.

Built on ``torchvision.transforms.v2.functional`` rather than kornia's
``AugmentationSequential``: the random parameters are drawn here from a ``torch.Generator``
seeded per sample and copy (kornia and the v2 transform classes draw from the global RNG,
which DataLoader workers and tests share), and one drawn geometry is then applied to every
tensor with the v2 kernels, which resize ``Mask`` tensors (int64 class maps, bool masks)
with exact nearest neighbour and pad frames with a per-channel fill. Neither library knows
that depth must not blend with invalid pixels or that flow vectors scale and flip with the
image: those two rules are written here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from .spec import DataRequest, TaskSpec, TransformSpec

TargetKind = Literal["label", "class_map", "depth", "flow"]

IGNORE_INDEX = 255  # class maps pad with it (Cityscapes trainIds' void)
IMAGE_FILL = (0.485, 0.456, 0.406)  # ImageNet mean: padding is zero once the encoder normalises


def target_kind(task: TaskSpec) -> TargetKind:
    """How ``task``'s target resamples: an image label, a class map, or a depth/flow map."""
    if task.output == "image":
        return "label"
    if task.is_classification:
        return "class_map"
    return "flow" if task.num_outputs == 2 else "depth"


def transform_seed(seed: int, aug_copy: int, index: int) -> int:
    """The seed of sample ``index`` in augmented copy ``aug_copy`` of a run seeded ``seed``.

    A hash, not ``seed * K + index``: neighbouring copies and samples get unrelated streams
    and no two (seed, copy, index) triples collide for any dataset size.
    """
    digest = hashlib.blake2b(f"{seed}/{aug_copy}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def split_transform(task: TaskSpec, req: DataRequest) -> TransformSpec:
    """The transform a split of ``task`` applies: the task's train or eval spec. ``--resolution R`` (quick
    runs) resizes every image, train and eval alike, to R x R and drops the crop and the random scale (a
    513 px crop means nothing at 32 x 32), keeping the flip; a smoke test of a 1024 x 2048 task then costs
    what a 32 x 32 one does."""
    spec = task.train_transform if req.train else task.eval_transform
    if req.resolution:
        return TransformSpec(resize=(req.resolution, req.resolution), hflip=spec.hflip)
    return spec


def split_seed(req: DataRequest, index: int) -> int | None:
    """The seed of sample ``index``'s random transform in a split: ``transform_seed`` of the run's seed and
    augmented copy when training, None for evaluation (no random transform)."""
    return transform_seed(req.seed, req.aug_copy, index) if req.train else None


@dataclass(frozen=True)
class Draw:
    """The random geometry of one copy of one sample, drawn once and applied to every tensor."""

    scaled: tuple[int, int] | None  # (H, W) after the random scale; None: no scale
    top: int = 0
    left: int = 0
    flip: bool = False


def draw(spec: TransformSpec, size: tuple[int, int], seed: int) -> Draw:
    """The random parameters for an image of ``size`` (after ``resize``); the same ``seed``
    gives the same draw. Every number is drawn, used or not, so one spec's draws stay aligned."""
    g = torch.Generator().manual_seed(seed)
    u_scale, u_top, u_left, u_flip = torch.rand(4, generator=g, dtype=torch.float64).tolist()
    h, w = size
    scaled = None
    if spec.scale is not None:
        lo, hi = spec.scale
        s = lo + (hi - lo) * u_scale
        scaled = (max(1, round(h * s)), max(1, round(w * s)))
        h, w = scaled
    top = left = 0
    if spec.crop is not None:
        ch, cw = spec.crop
        top = int(u_top * (max(h, ch) - ch + 1))
        left = int(u_left * (max(w, cw) - cw + 1))
    return Draw(scaled, top, left, spec.hflip and u_flip < 0.5)


def apply_transform(sample: dict[str, torch.Tensor], spec: TransformSpec, kind: TargetKind,
                    seed: int | None = None, *, ignore_index: int = IGNORE_INDEX) -> dict[str, torch.Tensor]:
    """``sample``: ``image`` (3, H, W) or (S, 3, H, W) float in [0, 1]; ``target`` (a class index,
    an (H, W) class map, a (1, H, W) depth map or a (2, H, W) flow field in pixels, u then v);
    optional ``valid`` (H, W) bool. ``seed`` fixes the random draws (one seed per sample and
    augmented copy, see ``transform_seed``); None means no random transform (evaluation).

    Depth and flow samples always come out with a ``valid`` mask once anything was applied, so
    every sample of a split has the same keys."""
    out = sample
    if spec.resize is not None:
        out = resize_sample(out, spec.resize, kind)
    if seed is None or not spec.random:
        return out
    d = draw(spec, tuple(out["image"].shape[-2:]), seed)
    if d.scaled is not None:
        out = resize_sample(out, d.scaled, kind)
    if spec.crop is not None:
        out = crop_sample(out, d.top, d.left, spec.crop, kind, ignore_index)
    elif kind in ("depth", "flow"):
        out = _with_valid(out)
    if d.flip:
        out = hflip_sample(out, kind)
    return out


# --------------------------------------------------------------------------------- the geometry

def resize_sample(sample: dict[str, torch.Tensor], size: tuple[int, int], kind: TargetKind) -> dict[str, torch.Tensor]:
    """Every tensor to (H, W) = ``size``: the image bilinear (antialiased), class maps and masks
    by exact nearest neighbour, depth and flow by masked interpolation (flow vectors scaled)."""
    size = (int(size[0]), int(size[1]))
    image = sample["image"]
    h, w = image.shape[-2:]
    out = dict(sample)
    if kind in ("depth", "flow"):
        out = _with_valid(out)
    if (h, w) == size:
        return out
    out["image"] = TF.resize(image, list(size), antialias=True).clamp_(0, 1)
    target, valid = out["target"], out.get("valid")
    if kind == "class_map":
        out["target"] = _nearest(target, size)
    elif kind in ("depth", "flow"):
        out["target"], out["valid"] = masked_resize(target, valid, size)
        if kind == "flow":
            out["target"] = out["target"] * torch.tensor([size[1] / w, size[0] / h],
                                                         dtype=out["target"].dtype).view(2, 1, 1)
    if valid is not None and kind in ("class_map", "label"):
        out["valid"] = _nearest(valid, size)
    return out


def masked_resize(target: torch.Tensor, valid: torch.Tensor,
                  size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, H, W) values resized with their invalid pixels left out: each output value is the
    bilinear-weighted mean of its valid neighbours only. An output pixel is valid where its
    nearest source pixel was valid (holes stay holes) and some valid neighbour contributed."""
    m = valid.to(target.dtype if target.is_floating_point() else torch.float32)[None]
    num = TF.resize(target * m, list(size), antialias=True)
    den = TF.resize(m, list(size), antialias=True)
    has = den > 1e-6
    values = torch.where(has, num / den.clamp(min=1e-6), torch.zeros_like(num))
    return values, _nearest(valid, size) & has[0]


def crop_sample(sample: dict[str, torch.Tensor], top: int, left: int, crop: tuple[int, int], kind: TargetKind,
                ignore_index: int = IGNORE_INDEX) -> dict[str, torch.Tensor]:
    """The (H, W) = ``crop`` window at (top, left), after padding bottom and right to at least
    the crop size: the image with the ImageNet mean, class maps with ``ignore_index``, depth and
    flow as invalid."""
    ch, cw = crop
    out = dict(sample)
    if kind in ("depth", "flow"):
        out = _with_valid(out)
    h, w = out["image"].shape[-2:]
    pad = [0, 0, max(0, cw - w), max(0, ch - h)]  # left, top, right, bottom
    padded = pad[2] > 0 or pad[3] > 0

    def window(x: torch.Tensor, fill) -> torch.Tensor:
        if padded:
            x = TF.pad(x, pad, fill=fill)
        return x[..., top:top + ch, left:left + cw]

    out["image"] = window(out["image"], list(IMAGE_FILL))
    if kind == "class_map":
        out["target"] = _plain(window(tv_tensors.Mask(out["target"]), ignore_index))
    elif kind in ("depth", "flow"):
        out["target"] = window(out["target"], 0.0)
    if "valid" in out:
        out["valid"] = _plain(window(tv_tensors.Mask(out["valid"]), False))
    return out


def hflip_sample(sample: dict[str, torch.Tensor], kind: TargetKind) -> dict[str, torch.Tensor]:
    """Mirror left-right; a flow field's u (horizontal motion) changes sign."""
    out = dict(sample)
    out["image"] = TF.horizontal_flip(out["image"])
    if kind in ("class_map", "depth", "flow"):
        out["target"] = out["target"].flip(-1)
        if kind == "flow":
            out["target"] = out["target"] * torch.tensor([-1.0, 1.0], dtype=out["target"].dtype).view(2, 1, 1)
    if "valid" in out:
        out["valid"] = out["valid"].flip(-1)
    return out


def _with_valid(sample: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if sample.get("valid") is not None:
        return sample
    return {**sample, "valid": torch.ones(sample["target"].shape[-2:], dtype=torch.bool)}


def _nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Exact nearest neighbour (v2's Mask kernel), dtype kept: no class is ever blended."""
    return _plain(TF.resize(tv_tensors.Mask(x), list(size), interpolation=InterpolationMode.NEAREST_EXACT))


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x.as_subclass(torch.Tensor)
