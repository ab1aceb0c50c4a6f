"""Joint transforms of a sample's image(s), target and valid mask.

``apply_transform`` is what every pixelwise loader calls from ``__getitem__``: one seeded
transform per augmented copy, applied alike to the image (or frames), the target and the
valid mask, with each target kind resampled as its meaning requires: class maps by nearest
neighbour (never blending classes), depth with its invalid pixels kept out of the
interpolation, flow with its vectors scaled by the resize factors (and u negated by a
horizontal flip).

This first version resizes only (``TransformSpec.resize``); random crop, scale and flip
follow (issue 13), keeping this signature.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from .spec import TransformSpec

TargetKind = Literal["label", "class_map", "depth", "flow"]


def apply_transform(sample: dict[str, torch.Tensor], spec: TransformSpec, kind: TargetKind,
                    seed: int | None = None) -> dict[str, torch.Tensor]:
    """``sample``: ``image`` (3, H, W) or (S, 3, H, W) float in [0, 1]; ``target`` (a class index,
    an (H, W) class map, a (1, H, W) depth map or a (2, H, W) flow field in pixels); optional
    ``valid`` (H, W) bool. ``seed`` fixes the random draws (one seed per sample and augmented
    copy); None means no random transform (evaluation)."""
    if spec.resize is None:
        return sample
    return resize_sample(sample, spec.resize, kind)


def resize_sample(sample: dict[str, torch.Tensor], size: tuple[int, int], kind: TargetKind) -> dict[str, torch.Tensor]:
    image = sample["image"]
    h, w = image.shape[-2:]
    if (h, w) == tuple(size):
        return sample
    frames = image if image.dim() == 4 else image[None]
    out = dict(sample)
    out["image"] = F.interpolate(frames, size=size, mode="bilinear", align_corners=False,
                                 antialias=True).clamp_(0, 1)
    if image.dim() == 3:
        out["image"] = out["image"][0]
    target, valid = sample["target"], sample.get("valid")
    if kind == "class_map":
        out["target"] = _nearest(target[None, None].float(), size)[0, 0].to(target.dtype)
    elif kind in ("depth", "flow"):
        mask = valid if valid is not None else torch.ones(target.shape[-2:], dtype=torch.bool)
        m = mask[None, None].float()
        num = F.interpolate(target[None] * m, size=size, mode="bilinear", align_corners=False)
        den = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
        resized = torch.where(den > 1e-6, num / den.clamp(min=1e-6), torch.zeros_like(num))[0]
        if kind == "flow":
            resized = resized * torch.tensor([size[1] / w, size[0] / h]).view(2, 1, 1)
        out["target"] = resized
        out["valid"] = _nearest(mask[None, None].float(), size)[0, 0].bool() & (den[0, 0] > 1e-6)
    if valid is not None and kind == "class_map":
        out["valid"] = _nearest(valid[None, None].float(), size)[0, 0].bool()
    return out


def _nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="nearest-exact")
