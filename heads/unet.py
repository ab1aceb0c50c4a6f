"""U-Net (depth) and Siamese U-Net (optical flow) decoders over the frozen encoder's taps.

Widths come from the declared taps, so ResNet-18 and ResNet-50 share one definition. Skips
are added FPN-style (resize to the skip, then ``+``). With ResNet-50 taps and one output
channel the U-Net has 99,689,988 parameters and the Siamese U-Net 110,843,204.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from harness.common.taps import Tap

from .registry import HeadTarget, register_head

# Deepest first: the decoder walks up this pyramid.
PYRAMID = ("block4", "block3", "block2", "block1", "conv")


def up(cin: int, cout: int) -> nn.Sequential:
    """Conv3x3(cin, 4*cout) -> PixelShuffle(2) -> LeakyReLU: a learned 2x upsampling."""
    return nn.Sequential(nn.Conv2d(cin, 4 * cout, 3, padding=1), nn.PixelShuffle(2), nn.LeakyReLU())


def resize_to(x: torch.Tensor, size: tuple[int, int] | torch.Size | None) -> torch.Tensor:
    """Bilinear resize to ``size`` (no-op when it already matches), so odd input sizes come out exact."""
    if size is None or tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class UNetDecoder(nn.Module):
    def __init__(self, widths: dict[str, int], out_channels: int):
        super().__init__()
        self.ups = nn.ModuleList(up(widths[a], widths[b]) for a, b in pairwise(PYRAMID))
        self.final = nn.Sequential(nn.Conv2d(widths[PYRAMID[-1]], 4 * out_channels, 3, padding=1), nn.PixelShuffle(2))

    def forward(self, pyramid: dict[str, torch.Tensor], size: tuple[int, int] | None = None) -> torch.Tensor:
        x = pyramid[PYRAMID[0]]
        for block, skip_name in zip(self.ups, PYRAMID[1:], strict=True):
            skip = pyramid[skip_name]
            x = resize_to(block(x), skip.shape[-2:]) + skip
        return resize_to(self.final(x), size)


class UNetHead(nn.Module):
    """Single-frame U-Net: ``forward(feats, size)`` -> (B, out, *size)."""

    def __init__(self, taps: dict[str, Tap], out_channels: int):
        super().__init__()
        self.decoder = UNetDecoder({t: taps[t].channels for t in PYRAMID}, out_channels)

    def forward(self, feats: dict[str, torch.Tensor], size: tuple[int, int] | None = None) -> torch.Tensor:
        return self.decoder({t: feats[t].float() for t in PYRAMID}, size)


class SiameseUNetHead(nn.Module):
    """Two frames: at every tap, concat the frames' features and fuse them with a 1x1 conv back
    to the single-frame width; then the U-Net decoder runs on the fused pyramid."""

    def __init__(self, taps: dict[str, Tap], out_channels: int):
        super().__init__()
        self.fuse = nn.ModuleDict({t: nn.Conv2d(2 * taps[t].channels, taps[t].channels, 1) for t in PYRAMID})
        self.decoder = UNetDecoder({t: taps[t].channels for t in PYRAMID}, out_channels)

    def forward(self, feats: dict[str, torch.Tensor], size: tuple[int, int] | None = None) -> torch.Tensor:
        fused = {}
        for t in PYRAMID:
            f = feats[t].float()
            if f.dim() != 5 or f.shape[1] != 2:
                raise ValueError(f"siamese U-Net expects (B, 2, C, H, W) at tap {t}, got {tuple(f.shape)}")
            fused[t] = self.fuse[t](f.flatten(1, 2))
        return self.decoder(fused, size)


@register_head("unet", taps=lambda task: PYRAMID,
               description="U-Net: up(in,out)=Conv3x3->PixelShuffle(2)->LeakyReLU, additive skips, out x H x W")
def build_unet(taps: dict[str, Tap], task: HeadTarget) -> UNetHead:
    return UNetHead(taps, task.num_outputs)


@register_head("siamese_unet", taps=lambda task: PYRAMID,
               description="two frames fused per tap by 1x1 convs, then the U-Net decoder (flow: 2 channels)")
def build_siamese_unet(taps: dict[str, Tap], task: HeadTarget) -> SiameseUNetHead:
    return SiameseUNetHead(taps, task.num_outputs)
