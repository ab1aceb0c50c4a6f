"""Batch augmentations with kornia: the same code runs on the GPU (where the batch lives) and on the CPU.

A method asks for ``global_crops`` views at the training resolution and ``local_crops`` smaller views
(SwAV's multi-crop). Each view is drawn independently per image; the RNG is torch's, which the training
loop seeds per step so that a resumed run draws the very same views.
"""

from __future__ import annotations

from dataclasses import dataclass

import kornia.augmentation as K
import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class AugmentConfig:
    """Defaults: MoCo v2's recipe (RandomResizedCrop 0.2-1, jitter 0.4/0.4/0.4/0.1 p .8, gray .2, blur .5, flip)."""

    global_crops: int = 2
    global_scale: tuple[float, float] = (0.2, 1.0)
    local_crops: int = 0
    local_size_frac: float = 96 / 224  # SwAV: 96 px next to 224 px
    local_scale: tuple[float, float] = (0.05, 0.14)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    flip_p: float = 0.5


def _odd(n: float) -> int:
    n = max(3, int(round(n)))
    return n if n % 2 else n + 1


def _pipeline(size: int, scale: tuple[float, float], cfg: AugmentConfig) -> nn.Module:
    b, c, s, h = cfg.jitter
    ops: list[nn.Module] = [K.RandomResizedCrop((size, size), scale=scale), K.RandomHorizontalFlip(p=cfg.flip_p)]
    if cfg.jitter_p > 0:
        ops.append(K.ColorJitter(b, c, s, h, p=cfg.jitter_p))
    if cfg.gray_p > 0:
        ops.append(K.RandomGrayscale(p=cfg.gray_p))
    if cfg.blur_p > 0:  # kernel about 10% of the image side, as in SimCLR/MoCo v2 (23 px at 224)
        ops.append(K.RandomGaussianBlur((_odd(size * 0.1),) * 2, sigma=cfg.blur_sigma, p=cfg.blur_p))
    ops.append(K.Normalize(mean=torch.tensor(IMAGENET_MEAN), std=torch.tensor(IMAGENET_STD)))
    return K.AugmentationSequential(*ops)


class MultiCropAugment(nn.Module):
    """uint8 (B,H,W,3) images -> list of normalised float views: globals first, then locals."""

    def __init__(self, cfg: AugmentConfig, resolution: int):
        super().__init__()
        self.cfg = cfg
        self.global_size = resolution
        self.local_size = max(16, int(round(resolution * cfg.local_size_frac)))
        self.global_aug = _pipeline(self.global_size, cfg.global_scale, cfg)
        self.local_aug = _pipeline(self.local_size, cfg.local_scale, cfg) if cfg.local_crops else None

    @property
    def num_views(self) -> int:
        return self.cfg.global_crops + self.cfg.local_crops

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = images.permute(0, 3, 1, 2).float().div_(255)
        views = [self.global_aug(x) for _ in range(self.cfg.global_crops)]
        if self.local_aug is not None:
            views += [self.local_aug(x) for _ in range(self.cfg.local_crops)]
        return views
