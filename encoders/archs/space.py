"""Seeded architecture search spaces (Girish et al. 2022, "One Network Doesn't Rule Them All"): ``resnet_space:K``
and ``mobilenet_space:K`` name architecture K of a population of ResNet-like and MobileNet-like networks.

The paper samples 69 ResNet-like networks (blocks per stage, BasicBlock or Bottleneck, width, groups; Section
3.1) and 47 MobileNet-like ones (width multiplier, blocks in each of 6 stages; its NAS space adds, per cell, an
MBConv kernel of 3, 5 or 7 and an expansion ratio of 3 or 6; Section 4.1 and Appendix C). Where the paper gives
a range we use it; where it does not, the range is ours and each knob says so (``Knob.source``).

Why a hash and not a random generator: every knob of architecture K is drawn on its own from
``sha256("SPACE:K:KNOB")``, so the draw depends on K alone, never on the global RNG, on torch's or numpy's
random streams or on the Python version, and adding a knob later leaves every other knob's draw as it was.
K picks the architecture; the ``seed`` of ``build_arch`` picks its initial weights, as for every architecture.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from ..base import Tap
from . import SearchSpace, register_space
from ._base import ChainTaps, init_conv_bn, seeded
from .resnet_v1 import ResNetV1, TorchvisionStages

PAPER = "Girish et al. 2022, One Network Doesn't Rule Them All"


@dataclass(frozen=True)
class Knob:
    """One decision of a space: its values (drawn uniformly) and where the range comes from."""

    name: str
    choices: tuple[Any, ...]
    source: str  # "paper: ..." or "ours: ..."

    def draw(self, space: str, k: int, slot: str = "") -> Any:
        """The value architecture ``k`` takes for this knob (at ``slot``: a stage or a cell)."""
        key = f"{space}:{k}:{self.name}{'.' + slot if slot else ''}".encode()
        return self.choices[int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % len(self.choices)]

    def describe(self) -> dict[str, Any]:
        return {"choices": list(self.choices), "source": self.source}


def make_divisible(value: float, divisor: int = 8) -> int:
    """MobileNet's channel rounding: the nearest multiple of ``divisor``, never below 90% of ``value``."""
    out = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * value else out


# --------------------------------------------------------------------------- ResNet-like

RESNET_STAGE_MAX = (3, 4, 6, 3)  # ResNet-34/50's blocks per stage: the deepest the space goes
RESNET_KNOBS = {
    "block": Knob("block", ("basic", "bottleneck"), "paper: BasicBlock and Bottleneck (Section 3.1)"),
    **{f"depth{i + 1}": Knob(f"depth{i + 1}", tuple(range(1, n + 1)),
                             f"ours: 1 to ResNet-50's {n} (the paper varies blocks per stage, no range given)")
       for i, n in enumerate(RESNET_STAGE_MAX)},
    "width": Knob("width", (0.5, 0.75, 1.0, 1.25, 1.5),
                  "ours: multiplier of ResNet's 64..512 planes (the paper varies width, no range given)"),
    "groups": Knob("groups", (1, 2, 4), "ours: groups of a Bottleneck's 3x3 convolution (the paper varies the "
                                        "number of groups, no range given; torchvision's BasicBlock has none)"),
}


def draw_resnet(k: int) -> dict[str, Any]:
    """The ResNet-like architecture ``k``: block type, blocks per stage, width multiplier, groups, channels."""
    d = {name: knob.draw("resnet_space", k) for name, knob in RESNET_KNOBS.items()}
    groups = d["groups"] if d["block"] == "bottleneck" else 1
    width = d["width"]
    planes = [make_divisible(64 * width * 2**i) for i in range(4)]
    expansion = 4 if d["block"] == "bottleneck" else 1
    return {"block": d["block"], "depths": [d[f"depth{i + 1}"] for i in range(4)], "width": width,
            "groups": groups, "channels": [make_divisible(64 * width)] + [p * expansion for p in planes]}


def resnet_summary(a: dict[str, Any]) -> str:
    groups = f" g{a['groups']}" if a["block"] == "bottleneck" else ""
    return f"{a['block']} {'-'.join(map(str, a['depths']))} w{a['width']:g}{groups}"


class SpaceResNet(TorchvisionStages):
    """A drawn ResNet-like architecture as the parts of a torchvision ResNet that ``ResNetTaps`` reads."""

    def __init__(self, a: dict[str, Any]):
        block = Bottleneck if a["block"] == "bottleneck" else BasicBlock
        super().__init__(block, a["channels"][0], [c // block.expansion for c in a["channels"][1:]],
                         list(a["depths"]), a["groups"])


class ResNetSpaceNet(ResNetV1):
    """A drawn ResNet-like network: ``ResNetTaps``' taps (the dilated ``block4_os16`` included), and a card
    that states the drawn architecture (also when loaded back from a checkpoint)."""

    def __init__(self, name: str, arch: dict[str, Any], seed: int):
        super().__init__(seeded(seed, lambda: SpaceResNet(arch)))  # type: ignore[arg-type]
        self._card = {"space": name.split(":")[0], "drawn": arch, "drawn_summary": resnet_summary(arch)}

    def card(self) -> dict[str, Any]:
        return dict(self._card)


# --------------------------------------------------------------------------- MobileNet-like

MOBILE_CHANNELS = (24, 40, 80, 96, 192, 320)  # Appendix C, times the width multiplier
MOBILE_STRIDES = (2, 2, 2, 1, 2, 1)  # downsampling at the start of stages 1, 2, 3 and 5 (Appendix C)
MOBILE_STAGE_MAX = (4, 4, 4, 4, 4, 1)  # 4 cells in the first five stages, 1 in the last (Appendix C)
MOBILE_STEM, MOBILE_FIRST, MOBILE_LAST = 32, 16, 1280  # ProxylessNAS's defaults (the paper's [2])
MOBILE_KNOBS = {
    "width": Knob("width", (0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
                  "ours, up to the paper's 1.75 (Appendix D; the paper varies the width multiplier)"),
    **{f"depth{i + 1}": Knob(f"depth{i + 1}", tuple(range(1, n + 1)),
                             f"paper: up to {n} cells (Appendix C), zero operations dropping all but the first"
                             if n > 1 else "paper: 1 cell (Appendix C)")
       for i, n in enumerate(MOBILE_STAGE_MAX)},
    "kernel": Knob("kernel", (3, 5, 7), "paper: MBConv kernel 3, 5 or 7, per cell (Section 4.1)"),
    "expansion": Knob("expansion", (3, 6), "paper: MBConv expansion 3 or 6, per cell (Section 4.1)"),
}


def draw_mobilenet(k: int) -> dict[str, Any]:
    """The MobileNet-like architecture ``k``: width multiplier, and per stage its cells' (kernel, expansion)."""
    space = "mobilenet_space"
    width = MOBILE_KNOBS["width"].draw(space, k)
    stages = []
    for s in range(len(MOBILE_CHANNELS)):
        depth = MOBILE_KNOBS[f"depth{s + 1}"].draw(space, k)
        stages.append([[MOBILE_KNOBS["kernel"].draw(space, k, f"{s + 1}.{c + 1}"),
                        MOBILE_KNOBS["expansion"].draw(space, k, f"{s + 1}.{c + 1}")] for c in range(depth)])
    return {"width": width, "stages": stages, "depths": [len(s) for s in stages],
            "channels": [make_divisible(MOBILE_FIRST * width)] + [make_divisible(c * width) for c in MOBILE_CHANNELS]
            + [mobile_last(width)]}


def mobile_last(width: float) -> int:
    """The final 1x1 convolution: 1280 channels, widened with the network above width 1 (MobileNetV2's rule)."""
    return make_divisible(MOBILE_LAST * width) if width > 1 else MOBILE_LAST


def mobilenet_summary(a: dict[str, Any]) -> str:
    cells = " | ".join(" ".join(f"k{kk}e{e}" for kk, e in stage) for stage in a["stages"])
    return f"w{a['width']:g} [{cells}]"


def conv_bn(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True
            ) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """Mobile inverted bottleneck (MobileNetV2, ProxylessNAS): 1x1 expansion (none at ratio 1), kxk depthwise,
    linear 1x1 projection; the identity added when the input and output shapes agree."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        mid = cin * expansion
        layers = [conv_bn(cin, mid)] if expansion != 1 else []
        layers += [conv_bn(mid, mid, kernel, stride, groups=mid), conv_bn(mid, cout, act=False)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


TAP_STAGES = {0: ("block1", 4), 1: ("block2", 8), 3: ("block3", 16)}  # the last stage at each stride below 32


def _mobilenet_features(a: dict[str, Any]) -> tuple[nn.Sequential, dict[int, tuple[str, int, int]]]:
    """The network as one Sequential, and the taps: feature index -> (tap name, channels, stride)."""
    width, first = a["width"], a["channels"][0]
    stem = make_divisible(MOBILE_STEM * width)
    mods: list[nn.Module] = [conv_bn(3, stem, 3, 2), MBConv(stem, first, 3, 1, 1)]
    taps = {1: ("conv", first, 2)}
    cin = first
    for s, (cells, stride) in enumerate(zip(a["stages"], MOBILE_STRIDES, strict=True)):
        cout = a["channels"][s + 1]
        for c, (kernel, expansion) in enumerate(cells):
            mods.append(MBConv(cin, cout, kernel, stride if c == 0 else 1, expansion))
            cin = cout
        if s in TAP_STAGES:
            name, tap_stride = TAP_STAGES[s]
            taps[len(mods) - 1] = (name, cout, tap_stride)
    mods.append(conv_bn(cin, a["channels"][-1]))
    taps[len(mods) - 1] = ("block4", a["channels"][-1], 32)
    features = nn.Sequential(*mods)
    init_conv_bn(features)  # torchvision's MobileNetV2 initialisation: the same (He's gain for ReLU and ReLU6)
    return features, taps


class MobileNetSpaceNet(ChainTaps):
    """A drawn MobileNet-like network: taps after the first block (stride 2), after the last cell at strides 4,
    8 and 16, and the final 1x1 convolution (stride 32), whose global average is the embedding."""

    def __init__(self, name: str, arch: dict[str, Any], seed: int):
        features, taps = seeded(seed, lambda: _mobilenet_features(arch))
        declared = {f"features.{i}": Tap(n, c, s) for i, (n, c, s) in taps.items()}
        super().__init__({"features": features}, [f"features.{i}" for i in range(len(features))], declared,
                         arch["channels"][-1])
        self._card = {"space": name.split(":")[0], "drawn": arch, "drawn_summary": mobilenet_summary(arch)}

    def card(self) -> dict[str, Any]:
        return dict(self._card)


register_space(SearchSpace(
    "resnet_space", draw_resnet, lambda name, a, seed: ResNetSpaceNet(name, a, seed), resnet_summary,
    "resnet_space", "ResNet-like network of a seeded search space (blocks per stage, block type, width, groups)",
    {k: v.describe() for k, v in RESNET_KNOBS.items()},
    {"paper": PAPER, "embedding": "global average of block4 (after its final ReLU)",
     "source": "torchvision blocks"}))
register_space(SearchSpace(
    "mobilenet_space", draw_mobilenet, lambda name, a, seed: MobileNetSpaceNet(name, a, seed), mobilenet_summary,
    "mobilenet_space", "MobileNet-like network of a seeded search space (width, cells per stage, MBConv kernel "
                       "and expansion per cell)",
    {k: v.describe() for k, v in MOBILE_KNOBS.items()},
    {"paper": PAPER, "embedding": "global average of the final 1x1 convolution",
     "layout": "ProxylessNAS: 3x3 stem (32w), MBConv1 3x3 (16w), 6 stages of MBConv (24, 40, 80, 96, 192, 320 "
               "x w; stride 2 at stages 1, 2, 3, 5), 1x1 to 1280 (x w above 1)"}))
