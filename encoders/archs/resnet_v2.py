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

from ..resnet import dilated
from . import ArchSpec, WidenedFamily, register_arch, register_widened
from ._base import StagedTaps, seeded


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=k, stride=stride, padding=k // 2, bias=False)


class _PreActUnit(nn.Module):
    """What both units share: the input pre-activated once (BN-ReLU), the residual branch on it, plus the
    identity, or a 1x1 projection of the pre-activated input where the shape changes. A unit builds its
    branch first, then calls ``finish`` (the order of building sets the seeded weights)."""

    def finish(self, inplanes: int, out: int, stride: int) -> None:
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _conv(inplanes, out, 1, stride) if stride != 1 or inplanes != out else None

    def branch(self, pre: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        shortcut = x if self.downsample is None else self.downsample(pre)
        return self.branch(pre) + shortcut


class PreActBottleneck(_PreActUnit):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.bn1, self.conv1 = nn.BatchNorm2d(inplanes), _conv(inplanes, planes, 1)
        self.bn2, self.conv2 = nn.BatchNorm2d(planes), _conv(planes, planes, 3, stride)
        self.bn3, self.conv3 = nn.BatchNorm2d(planes), _conv(planes, out, 1)
        self.finish(inplanes, out, stride)

    def branch(self, pre: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.relu(self.bn2(self.conv1(pre))))
        return self.conv3(self.relu(self.bn3(y)))


class PreActBasic(_PreActUnit):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(inplanes), _conv(inplanes, planes, 3, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(planes), _conv(planes, planes, 3)
        self.finish(inplanes, planes, stride)

    def branch(self, pre: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.bn2(self.conv1(pre))))


class ResNetV2(StagedTaps):
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
        self.finish(stem, widths)

    def dilated_block4(self, block3: torch.Tensor) -> torch.Tensor:
        with dilated(self.layer4):
            return self.layer4(block3)


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
