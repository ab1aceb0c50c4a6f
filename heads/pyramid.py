"""What a dense head reads of an encoder: a feature pyramid chosen by stride, never by tap name.

An encoder declares its taps (name, channels, stride). A dense head asks for strides:

* a CNN gives its own maps at strides 2, 4, 8, 16, 32 where it has them (at each stride the deepest
  declared tap: a stage's output, not a layer inside it); a ConvNeXt simply starts at 4;
* a plain backbone whose maps all share one stride (a ViT: every block on the patch grid) gets a
  simple feature pyramid (ViTDet, Li et al. 2022) built from its last block: deconvolutions to 1/4 and
  1/2 of the patch stride, the grid itself, and a 2x max-pool. These layers are trained with the head
  (they are *its* parameters), never part of the frozen encoder.

DeepLabv3+ asks for a low-level level (stride 4, else the finest) and a stride-16 level: the
encoder's last stage run dilated where it declares one (``derived`` tap at stride 16: ResNets), the
native grid of a /16 ViT, else the stride-32 map upsampled x2.

``Level.how`` says how each input was made; the result record copies it (``taps``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.common.taps import Tap

UNET_STRIDES = (2, 4, 8, 16, 32)
DEEPLAB_LOW, DEEPLAB_HIGH = 4, 16

HOW_TAP = "encoder tap"
HOW_DILATED = "encoder's last stage run dilated (same frozen weights, output stride 16)"
HOW_UPSAMPLED = "stride-32 tap upsampled x2 (bilinear; the architecture has no dilated form)"
HOW_DECONV4 = "simple pyramid: two 2x2 transposed convs (x4) from the last block"
HOW_DECONV2 = "simple pyramid: one 2x2 transposed conv (x2) from the last block"
HOW_GRID = "simple pyramid: the last block's own grid"
HOW_POOL = "simple pyramid: 2x2 max-pool of the last block"


class HeadInputError(ValueError):
    """The encoder's taps cannot feed this head (the message names both and the strides)."""


@dataclass(frozen=True)
class Level:
    """One input of a dense head: its stride and width, the encoder tap it comes from and how."""

    stride: float | None  # None: a pooled vector
    channels: int
    tap: str
    how: str = HOW_TAP
    role: str = ""  # what the head uses it for ("aspp", "low-level"); default: its stride

    def record(self) -> dict:
        """The result record's account of this input."""
        d = asdict(self)
        role = d.pop("role") or (f"stride {self.stride:g}" if self.stride is not None else self.tap)
        return {"input": role, **d}


def spatial_taps(taps: Mapping[str, Tap]) -> list[Tap]:
    """The encoder's own spatial maps (derived re-computations excluded), shallow to deep."""
    return [t for t in taps.values() if t.spatial and not t.derived]


def _strides(taps: Mapping[str, Tap]) -> list[int]:
    return sorted({t.stride for t in taps.values() if t.spatial})


def _no_input(head: str, taps: Mapping[str, Tap], need: str) -> HeadInputError:
    have = _strides(taps)
    return HeadInputError(f"the {head} head needs {need}; the encoder's taps have "
                          f"{'strides ' + ', '.join(map(str, have)) if have else 'no spatial maps at all'}")


def is_plain(taps: Mapping[str, Tap]) -> bool:
    """One stride throughout (a ViT): the dense heads build their own pyramid from the last map."""
    own = spatial_taps(taps)
    return len(own) > 0 and len({t.stride for t in own}) == 1


def simple_pyramid_levels(taps: Mapping[str, Tap]) -> list[Level]:
    """ViTDet's four levels from the last block, deepest first: x0.5 (pool), x1, x2, x4."""
    last = spatial_taps(taps)[-1]
    s, c = last.stride, last.channels
    return [Level(2 * s, c, last.name, HOW_POOL), Level(s, c, last.name, HOW_GRID),
            Level(s / 2, max(1, c // 2), last.name, HOW_DECONV2), Level(s / 4, max(1, c // 4), last.name, HOW_DECONV4)]


def unet_levels(taps: Mapping[str, Tap], head: str = "U-Net") -> list[Level]:
    """The U-Net's inputs, deepest first: the deepest map at each of strides 2-32 the encoder has,
    or the simple pyramid of a plain backbone."""
    own = spatial_taps(taps)
    if not own:
        raise _no_input(head, taps, "spatial feature maps (any of strides 2, 4, 8, 16, 32)")
    if is_plain(taps):
        return simple_pyramid_levels(taps)
    at: dict[int, Tap] = {}
    for t in own:  # declared shallow to deep: the last one at a stride is the deepest
        if t.stride in UNET_STRIDES:
            at[t.stride] = t
    if not at:
        raise _no_input(head, taps, "spatial feature maps at strides 2, 4, 8, 16 or 32")
    return [Level(s, at[s].channels, at[s].name) for s in sorted(at, reverse=True)]


def _nearest(levels: list[Level], stride: float) -> Level:
    return min(levels, key=lambda lv: (abs(math.log2(lv.stride / stride)), lv.stride))


def deeplab_levels(taps: Mapping[str, Tap]) -> tuple[Level, Level]:
    """(low-level input, ASPP input) of DeepLabv3+."""
    own = spatial_taps(taps)
    if not own:
        raise _no_input("DeepLabv3+", taps, "spatial feature maps (a stride-4 and a stride-16 one)")
    if is_plain(taps):
        levels = simple_pyramid_levels(taps)
        high = next((lv for lv in levels if lv.stride == DEEPLAB_HIGH), None) or levels[1]
        low = next((lv for lv in levels if lv.stride == DEEPLAB_LOW), None) or levels[-1]
        return low, high
    deepest = own[-1]
    dilated = [t for t in taps.values() if t.derived and t.stride == DEEPLAB_HIGH]
    if dilated:
        high = Level(DEEPLAB_HIGH, dilated[-1].channels, dilated[-1].name, HOW_DILATED)
    elif deepest.stride == 2 * DEEPLAB_HIGH:
        high = Level(DEEPLAB_HIGH, deepest.channels, deepest.name, HOW_UPSAMPLED)
    else:
        high = Level(deepest.stride, deepest.channels, deepest.name)
    finer = [t for t in own if t.stride < high.stride]
    if not finer:
        raise _no_input("DeepLabv3+", taps, f"a low-level map finer than its stride-{high.stride:g} input")
    exact = [t for t in finer if t.stride == DEEPLAB_LOW]
    pick = exact[-1] if exact else min(finer, key=lambda t: (t.stride, -own.index(t)))
    return Level(pick.stride, pick.channels, pick.name), high


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of each position of a (B, C, H, W) map (ViTDet's norm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _deconv(cin: int, cout: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2)


class PyramidBuilder(nn.Module):
    """Makes the head's input levels from the encoder's features: taps as they are, and the few
    trained (simple pyramid) or fixed (pool, x2 upsampling) operations ``Level.how`` names."""

    def __init__(self, levels: list[Level], taps: Mapping[str, Tap]):
        super().__init__()
        self.levels = list(levels)
        self.ops = nn.ModuleDict()
        for i, lv in enumerate(self.levels):
            c = taps[lv.tap].channels
            if lv.how == HOW_DECONV2:
                self.ops[str(i)] = _deconv(c, lv.channels)
            elif lv.how == HOW_DECONV4:
                mid = max(1, c // 2)
                self.ops[str(i)] = nn.Sequential(_deconv(c, mid), LayerNorm2d(mid), nn.GELU(),
                                                 _deconv(mid, lv.channels))

    @property
    def taps(self) -> tuple[str, ...]:
        """The encoder taps read, in the order first needed."""
        return tuple(dict.fromkeys(lv.tap for lv in self.levels))

    def forward(self, feats: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for i, lv in enumerate(self.levels):
            x = feats[lv.tap]
            if str(i) in self.ops:
                x = self.ops[str(i)](x)
            elif lv.how == HOW_POOL:
                x = F.max_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)
            elif lv.how == HOW_UPSAMPLED:
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            out.append(x)
        return out
