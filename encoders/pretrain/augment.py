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

from harness.common.taps import IMAGENET_MEAN, IMAGENET_STD


@dataclass
class AugmentConfig:
    """Defaults: MoCo v2's recipe (RandomResizedCrop 0.2-1, jitter 0.4/0.4/0.4/0.1 p .8, gray .2, blur .5, flip)."""

    global_crops: int = 2
    global_scale: tuple[float, float] = (0.2, 1.0)
    # output side of the global crops in px; 0: the run's resolution. Smaller crops of the same renders make a
    # CPU step cheaper (32 px: about 2.6x for ResNet-18) while kNN and evaluation stay at the run's resolution
    global_size: int = 0
    local_crops: int = 0
    local_size_frac: float = 96 / 224  # SwAV: 96 px next to 224 px
    local_scale: tuple[float, float] = (0.05, 0.14)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    flip_p: float = 0.5


_LUMA = (0.299, 0.587, 0.114)


class BatchColorJitter(nn.Module):
    """Brightness, contrast, saturation and hue jitter with per-image factors, in one random order per batch.

    kornia's ColorJitter goes through HSV and was about 8x the cost of every other augmentation together on
    the CPU; here hue is a rotation of the chroma plane in YIQ space (a linear map), the rest are blends, as
    in torchvision. Randomness comes from torch's global RNG, like kornia's.
    """

    def __init__(self, brightness: float, contrast: float, saturation: float, hue: float, p: float):
        super().__init__()
        self.b, self.c, self.s, self.h, self.p = brightness, contrast, saturation, hue, p
        rgb2yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
        self.register_buffer("rgb2yiq", rgb2yiq, persistent=False)
        self.register_buffer("yiq2rgb", torch.linalg.inv(rgb2yiq), persistent=False)

    @staticmethod
    def _gray(x: torch.Tensor) -> torch.Tensor:
        return _LUMA[0] * x[:, 0:1] + _LUMA[1] * x[:, 1:2] + _LUMA[2] * x[:, 2:3]

    def _hue(self, x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        theta = shift * 2 * torch.pi
        cos, sin = theta.cos(), theta.sin()
        zero, one = torch.zeros_like(cos), torch.ones_like(cos)
        rot = torch.stack([torch.stack([one, zero, zero], -1), torch.stack([zero, cos, -sin], -1),
                           torch.stack([zero, sin, cos], -1)], -2)  # (B, 3, 3)
        m = self.yiq2rgb @ rot @ self.rgb2yiq
        return torch.einsum("bij,bjhw->bihw", m, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, dev = x.shape[0], x.device

        def factor(r: float) -> torch.Tensor:
            return torch.empty(n, 1, 1, 1).uniform_(max(0.0, 1 - r), 1 + r).to(dev)

        apply = (torch.rand(n) < self.p).to(dev).view(n, 1, 1, 1)
        fb, fc, fs = factor(self.b), factor(self.c), factor(self.s)
        fh = torch.empty(n).uniform_(-self.h, self.h).to(dev)
        out = x
        for op in torch.randperm(4).tolist():
            if op == 0 and self.b > 0:
                out = out * fb
            elif op == 1 and self.c > 0:
                out = torch.lerp(self._gray(out).mean((2, 3), keepdim=True), out, fc)
            elif op == 2 and self.s > 0:
                out = torch.lerp(self._gray(out), out, fs)
            elif op == 3 and self.h > 0:
                out = self._hue(out, fh)
            else:
                continue
            out = out.clamp_(0, 1)
        return torch.where(apply, out, x)


def _odd(n: float) -> int:
    n = max(3, round(n))
    return n if n % 2 else n + 1


def _pipeline(size: int, scale: tuple[float, float], cfg: AugmentConfig) -> nn.Module:
    b, c, s, h = cfg.jitter
    ops: list[nn.Module] = [K.RandomResizedCrop((size, size), scale=scale), K.RandomHorizontalFlip(p=cfg.flip_p)]
    if cfg.jitter_p > 0:
        ops.append(BatchColorJitter(b, c, s, h, p=cfg.jitter_p))
    if cfg.gray_p > 0:
        ops.append(K.RandomGrayscale(p=cfg.gray_p))
    if cfg.blur_p > 0:  # kernel about 10% of the image side, as in SimCLR/MoCo v2 (23 px at 224)
        ops.append(K.RandomGaussianBlur((_odd(size * 0.1),) * 2, sigma=cfg.blur_sigma, p=cfg.blur_p))
    ops.append(K.Normalize(mean=torch.tensor(IMAGENET_MEAN), std=torch.tensor(IMAGENET_STD)))
    return nn.Sequential(*ops)


class MultiCropAugment(nn.Module):
    """uint8 (B,H,W,3) images -> list of normalised float views: globals first, then locals."""

    def __init__(self, cfg: AugmentConfig, resolution: int):
        super().__init__()
        self.cfg = cfg
        self.global_size = cfg.global_size or resolution
        self.local_size = max(16, round(resolution * cfg.local_size_frac))
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
