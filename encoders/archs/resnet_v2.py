"""ResNet v2 (He et al. 2016b, pre-activation) with Kolesnikov et al.'s widening: ``resnetv2_18``,
``resnetv2_50`` (k = 4, the standard width) and ``resnetv2_18_xK`` / ``resnetv2_50_xK``.

As in Kolesnikov et al.'s code: the stem is a 7x7 stride-2 convolution without BatchNorm or ReLU (the
first unit normalises its input) and a 3x3 stride-2 max-pool; a unit is BN-ReLU-conv three times
(bottleneck: 1x1 to ``16k * 2**i``, 3x3 carrying the stride, 1x1 to ``64k * 2**i``) plus the identity,
or a 1x1 projection of the *pre-activated* input where the shape changes; after the last stage, BN and
ReLU, then the global average (the pre-logits, 512k wide for ResNet-50). The basic unit (ResNet-18,
which the paper does not use) is BN-ReLU-3x3 twice at ``16k * 2**i``.

Taps: ``conv`` is the stem convolution's output (stride 2), ``block1..block3`` the stages' outputs (sums,
not normalised: a pre-activation stage output is the next unit's input), ``block4`` the last stage after
the final BN-ReLU (what is pooled into ``embedding``), and ``block4_os16`` the last stage run dilated
(stride 1, dilation 2 in its 3x3 convolutions after the first unit), then the same BN-ReLU.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.common.taps import DILATED_TAP

from ..base import Tap, TapModel
from ..resnet import dilated
from . import ArchSpec, WidenedFamily, register_arch, register_widened
from ._base import gap, seeded


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=k, stride=stride, padding=k // 2, bias=False)


class PreActBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.bn1, self.conv1 = nn.BatchNorm2d(inplanes), _conv(inplanes, planes, 1)
        self.bn2, self.conv2 = nn.BatchNorm2d(planes), _conv(planes, planes, 3, stride)
        self.bn3, self.conv3 = nn.BatchNorm2d(planes), _conv(planes, out, 1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _conv(inplanes, out, 1, stride) if stride != 1 or inplanes != out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        shortcut = x if self.downsample is None else self.downsample(pre)
        y = self.conv1(pre)
        y = self.conv2(self.relu(self.bn2(y)))
        y = self.conv3(self.relu(self.bn3(y)))
        return y + shortcut


class PreActBasic(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(inplanes), _conv(inplanes, planes, 3, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(planes), _conv(planes, planes, 3)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _conv(inplanes, planes, 1, stride) if stride != 1 or inplanes != planes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        shortcut = x if self.downsample is None else self.downsample(pre)
        return self.conv2(self.relu(self.bn2(self.conv1(pre)))) + shortcut


class ResNetV2(TapModel):
    """Pre-activation ResNet with widening factor ``k`` (stem ``16k`` channels)."""

    def __init__(self, block: type[PreActBasic] | type[PreActBottleneck], layers: tuple[int, ...], k: int):
        super().__init__()
        stem = 16 * k
        self.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = stem
        widths = []
        for i, n in enumerate(layers):
            planes = 16 * k * 2**i
            units = [block(inplanes, planes, 1 if i == 0 else 2)]
            inplanes = planes * block.expansion
            units += [block(inplanes, planes) for _ in range(1, n)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*units))
            widths.append(inplanes)
        self.norm = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU(inplace=True)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.taps = (Tap("conv", stem, 2), *(Tap(f"block{i}", w, 2 ** (i + 1)) for i, w in enumerate(widths, 1)),
                     Tap("embedding", inplanes, None), Tap(DILATED_TAP, inplanes, 16, derived=True))

    def forward(self, x: torch.Tensor, taps: tuple[str, ...] | None = None):
        want = ("embedding",) if taps is None else tuple(taps)
        order = ("conv", "block1", "block2", "block3", "block4", "embedding")
        unknown = [t for t in want if t not in order and t != DILATED_TAP]
        if unknown:
            raise KeyError(f"no tap(s) {unknown}")
        depth = max((order.index(t) for t in want if t != DILATED_TAP), default=0)
        if DILATED_TAP in want:
            depth = max(depth, 3)
        out: dict[str, torch.Tensor] = {}
        x = out["conv"] = self.conv1(x)
        x = self.maxpool(x)
        for i in range(1, min(depth, 4) + 1):
            x = out[f"block{i}"] = getattr(self, f"layer{i}")(x)
        if depth >= 4:
            out["block4"] = self.relu(self.norm(out["block4"]))
        if depth >= 5:
            out["embedding"] = gap(out["block4"])
        if DILATED_TAP in want:
            with dilated(self.layer4):
                out[DILATED_TAP] = self.relu(self.norm(self.layer4(out["block3"])))
        return out["embedding"] if taps is None else {t: out[t] for t in want}


LAYERS = {"resnetv2_18": (PreActBasic, (2, 2, 2, 2)), "resnetv2_50": (PreActBottleneck, (3, 4, 6, 3))}
CARD = {"embedding": "global average of block4 after the final BN-ReLU (the pre-logits)",
        "paper": "He et al. 2016b (v2, pre-activation); widening: Kolesnikov et al. 2019", "source": "this project"}


def _builder(base: str):
    block, layers = LAYERS[base]

    def build(k: int, seed: int) -> ResNetV2:
        return seeded(seed, lambda: ResNetV2(block, layers, k))  # type: ignore[arg-type]

    return build


for _base in LAYERS:
    _depth = _base.split("_")[1]
    register_widened(WidenedFamily(_base, _builder(_base), "resnet_v2",
                                   f"ResNet-{_depth} v2 (pre-activation), widths x k/4", CARD))
    register_arch(ArchSpec(_base, lambda seed, b=_base: _builder(b)(4, seed), "resnet_v2",
                           f"ResNet-{_depth} v2 (pre-activation), standard width (k=4)",
                           {**CARD, "widening_factor": 4}))
