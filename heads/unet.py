"""U-Net (depth) and Siamese U-Net (optical flow) decoders over the frozen encoder's feature pyramid.

The inputs are chosen by stride (heads/pyramid.py): the encoder's deepest map at each of strides 2,
4, 8, 16, 32 it has, or the simple pyramid a plain backbone (a ViT) gets. Widths come from the declared
taps, so ResNet-18, ResNet-50, a MobileNet and a ViT share one definition. The decoder walks up from the
deepest level; skips are added FPN-style (resize to the skip, then ``+``). Where the finest level is
coarser than stride 2 (a ConvNeXt, a ViT), more learned 2x upsamplings take it there before the final
layer. With ResNet-50 taps and one output channel the U-Net has 99,689,988 parameters and the Siamese
U-Net 110,843,204.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from harness.common.taps import Tap

from .pyramid import Level, PyramidBuilder, unet_levels
from .registry import HeadTarget, register_head


def up(cin: int, cout: int) -> nn.Sequential:
    """Conv3x3(cin, 4*cout) -> PixelShuffle(2) -> LeakyReLU: a learned 2x upsampling."""
    return nn.Sequential(nn.Conv2d(cin, 4 * cout, 3, padding=1), nn.PixelShuffle(2), nn.LeakyReLU())


def resize_to(x: torch.Tensor, size: tuple[int, int] | torch.Size | None) -> torch.Tensor:
    """Bilinear resize to ``size`` (no-op when it already matches), so odd input sizes come out exact."""
    if size is None or tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class UNetDecoder(nn.Module):
    """Levels deepest first: up(level i -> width of level i+1) + skip, ..., then learned 2x steps until
    stride 2, then Conv3x3 -> PixelShuffle(2) to the input's resolution."""

    def __init__(self, levels: list[Level], out_channels: int):
        super().__init__()
        widths = [lv.channels for lv in levels]
        self.ups = nn.ModuleList(up(a, b) for a, b in pairwise(widths))
        finest = levels[-1].stride
        refine = []
        while finest > 2:
            refine.append(up(widths[-1], widths[-1]))
            finest /= 2
        self.refine = nn.Sequential(*refine)
        self.final = nn.Sequential(nn.Conv2d(widths[-1], 4 * out_channels, 3, padding=1), nn.PixelShuffle(2))

    def forward(self, pyramid: list[torch.Tensor], size: tuple[int, int] | None = None) -> torch.Tensor:
        x = pyramid[0]
        for block, skip in zip(self.ups, pyramid[1:], strict=True):
            x = resize_to(block(x), skip.shape[-2:]) + skip
        return resize_to(self.final(self.refine(x)), size)


class UNetHead(nn.Module):
    """Single-frame U-Net: ``forward(feats, size)`` -> (B, out, *size)."""

    def __init__(self, taps: Mapping[str, Tap], out_channels: int):
        super().__init__()
        self.pyramid = PyramidBuilder(unet_levels(taps), taps)
        self.decoder = UNetDecoder(self.pyramid.levels, out_channels)

    def forward(self, feats: dict[str, torch.Tensor], size: tuple[int, int] | None = None) -> torch.Tensor:
        return self.decoder(self.pyramid({t: feats[t].float() for t in self.pyramid.taps}), size)


class SiameseUNetHead(nn.Module):
    """Two frames: at every tap read, concat the frames' features and fuse them with a 1x1 conv back
    to the single-frame width; then the pyramid and the U-Net decoder run on the fused maps."""

    def __init__(self, taps: Mapping[str, Tap], out_channels: int):
        super().__init__()
        self.pyramid = PyramidBuilder(unet_levels(taps, "Siamese U-Net"), taps)
        self.fuse = nn.ModuleDict({t: nn.Conv2d(2 * taps[t].channels, taps[t].channels, 1) for t in self.pyramid.taps})
        self.decoder = UNetDecoder(self.pyramid.levels, out_channels)

    def forward(self, feats: dict[str, torch.Tensor], size: tuple[int, int] | None = None) -> torch.Tensor:
        fused = {}
        for t in self.pyramid.taps:
            f = feats[t].float()
            if f.dim() != 5 or f.shape[1] != 2:
                raise ValueError(f"siamese U-Net expects (B, 2, C, H, W) at tap {t}, got {tuple(f.shape)}")
            fused[t] = self.fuse[t](f.flatten(1, 2))
        return self.decoder(self.pyramid(fused), size)


def _unet_inputs(task: HeadTarget, taps: Mapping[str, Tap]) -> list[Level]:
    return unet_levels(taps, "Siamese U-Net" if task.frames > 1 else "U-Net")


@register_head("unet", inputs=_unet_inputs,
               description="U-Net: up(in,out)=Conv3x3->PixelShuffle(2)->LeakyReLU, additive skips, out x H x W")
def build_unet(taps: Mapping[str, Tap], task: HeadTarget) -> UNetHead:
    return UNetHead(taps, task.num_outputs)


@register_head("siamese_unet", inputs=_unet_inputs,
               description="two frames fused per tap by 1x1 convs, then the U-Net decoder (flow: 2 channels)")
def build_siamese_unet(taps: Mapping[str, Tap], task: HeadTarget) -> SiameseUNetHead:
    return SiameseUNetHead(taps, task.num_outputs)
