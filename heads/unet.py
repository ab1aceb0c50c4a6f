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

GATHER_MAX_POSITIONS = 64  # maps of at most 8 x 8 positions (ResNet-50's strides 32 and 16 at 128-256 px)


def gathered_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A 3x3 convolution (padding 1, stride 1) as one matrix product over each position's gathered
    3 x 3 neighbourhood, channels last: the same arithmetic as ``F.conv2d``, in whatever dtype ``x`` has.

    The neighbourhoods are laid out in the order the weight already has in memory (channels-last
    weights: (kh, kw, C); contiguous ones: (C, kh, kw)), so the weight is never copied. The result
    is a channels-last view of (B, out, H, W)."""
    b, c, h, w = x.shape
    padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))  # (B, H+2, W+2, C)
    shifts = [padded[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)]
    if weight.is_contiguous():
        cols, mat = torch.stack(shifts, dim=4), weight.reshape(weight.shape[0], -1)
    else:
        cols, mat = torch.stack(shifts, dim=3), weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)
    cols = cols.reshape(b * h * w, 9 * c)
    y = cols @ mat.t() if bias is None else torch.addmm(bias, cols, mat.t())
    return y.view(b, h, w, -1).permute(0, 3, 1, 2)


class Conv3x3(nn.Conv2d):
    """Conv2d(cin, cout, 3, padding=1), with the same parameters. On the CPU under autocast, a map of
    at most ``GATHER_MAX_POSITIONS`` positions runs as ``gathered_conv3x3``: there oneDNN's bf16
    convolution is dominated by the weight (a 2048 -> 4096 layer on 4 x 4 maps holds 75M weights
    for 256 positions per batch of 16), and one bf16 GEMM was measured 4x faster at 4 x 4 and 1.4x at
    8 x 8, forward and backward, on a 2-core AMX CPU (whole heads: ``bf16_gain`` in
    benchmarks/results/dense_heads.json). In fp32 (mixed there: slower forward) and on CUDA, the convolution."""

    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
                and x.shape[-2] * x.shape[-1] <= GATHER_MAX_POSITIONS):
            dtype = torch.get_autocast_dtype("cpu")
            return gathered_conv3x3(x.to(dtype), self.weight.to(dtype), self.bias.to(dtype))
        return super().forward(x)


class Conv1x1(nn.Conv2d):
    """Conv2d(cin, cout, 1), with the same parameters. On the CPU under autocast it runs as a linear
    layer over the channels of each position (channels last): oneDNN's bf16 1x1 convolution was
    measured 1.6x (64 x 64 maps) to 4.6x (4 x 4) slower forward and backward than the one GEMM."""

    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            dtype = torch.get_autocast_dtype("cpu")
            w = self.weight.to(dtype).reshape(self.out_channels, self.in_channels)  # 1x1: one layout either way
            return F.linear(x.to(dtype).permute(0, 2, 3, 1), w, self.bias.to(dtype)).permute(0, 3, 1, 2)
        return super().forward(x)


def up(cin: int, cout: int) -> nn.Sequential:
    """Conv3x3(cin, 4*cout) -> PixelShuffle(2) -> LeakyReLU: a learned 2x upsampling."""
    return nn.Sequential(Conv3x3(cin, 4 * cout), nn.PixelShuffle(2), nn.LeakyReLU())


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
        self.final = nn.Sequential(Conv3x3(widths[-1], 4 * out_channels), nn.PixelShuffle(2))

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
        self.fuse = nn.ModuleDict({t: Conv1x1(2 * taps[t].channels, taps[t].channels) for t in self.pyramid.taps})
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
