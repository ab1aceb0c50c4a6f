"""ResNet v1 (He et al. 2016): torchvision's networks, and Kolesnikov et al.'s widening of them.

``resnet18`` / ``resnet34`` / ``resnet50`` / ``resnet101`` / ``resnet152`` / ``wide_resnet50_2`` /
``wide_resnet101_2`` are torchvision's own (the same seeded weights as ``encoders.resnet.build_resnet``).
``resnet18_xK`` / ``resnet50_xK``: every width times k/4 (Kolesnikov et al. 2019, Section 3.1: the stem
has 16k channels, the stages' outputs 64k..512k for ResNet-50, the pre-logits 512k), built from
torchvision's own blocks; k = 4 is torchvision's network itself, seed for seed. torchvision's blocks
stride in the 3x3 convolution (ResNet "v1.5"), as Kolesnikov et al.'s code does. Taps are
``encoders.resnet.ResNetTaps``'s, the dilated ``block4_os16`` included.
"""

from __future__ import annotations

import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from ..resnet import ResNetTaps, seeded_resnet
from . import ArchSpec, WidenedFamily, register_arch, register_widened
from ._base import EmbeddingByDefault, init_conv_bn, seeded


class ResNetV1(EmbeddingByDefault, ResNetTaps):
    """``ResNetTaps`` whose plain call returns the embedding (the pretraining backbone)."""


class TorchvisionStages(nn.Module):
    """The parts of a torchvision ResNet that ``ResNetTaps`` reads (no classifier), at any widths: a 7x7 stem of
    ``stem`` channels, a max-pool, stages of torchvision's own blocks with ``planes[i]`` planes (x4 at a
    bottleneck's output) and ``depths[i]`` blocks, ``groups`` in a Bottleneck's 3x3 convolution (its width kept at
    the planes), and torchvision's initialisation."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], stem: int, planes: list[int], depths: list[int],
                 groups: int = 1):
        super().__init__()
        self.groups = groups
        self.inplanes = stem
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for i, (p, blocks) in enumerate(zip(planes, depths, strict=True)):
            self.add_module(f"layer{i + 1}", self._stage(block, p, blocks, stride=1 if i == 0 else 2))
        init_conv_bn(self)

    def _unit(self, block: type[BasicBlock] | type[Bottleneck], inplanes: int, planes: int, stride: int = 1,
              downsample: nn.Module | None = None) -> nn.Module:
        # a Bottleneck's inner width is int(planes * base_width / 64) * groups = planes; a BasicBlock takes groups 1
        return block(inplanes, planes, stride, downsample, groups=self.groups, base_width=64 // self.groups)

    def _stage(self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int
               ) -> nn.Sequential:
        out = planes * block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, out, kernel_size=1, stride=stride, bias=False),
                                       nn.BatchNorm2d(out))
        units = [self._unit(block, self.inplanes, planes, stride, downsample)]
        self.inplanes = out
        units += [self._unit(block, out, planes) for _ in range(1, blocks)]
        return nn.Sequential(*units)


class WidenedResNetV1(TorchvisionStages):
    """Every width k/4 times torchvision's: stem ``16k``, stage ``i`` with ``16k * 2**i`` planes."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: tuple[int, ...], k: int):
        super().__init__(block, 16 * k, [16 * k * 2**i for i in range(len(layers))], list(layers))


# resnet18/34/50 are listed encoders (encoders/registry.py registers them); the deeper ones are architectures
# for checkpoints and `harness pretrain --arch` (as encoders: tv:NAME)
TORCHVISION = {"resnet18": True, "resnet34": True, "resnet50": True, "resnet101": False, "resnet152": False,
               "wide_resnet50_2": False, "wide_resnet101_2": False}
WIDENABLE = {"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet50": (Bottleneck, (3, 4, 6, 3))}
CARD = {"embedding": "global average of block4 (after its final ReLU)", "paper": "He et al. 2016 (v1)"}


def _torchvision(arch: str):
    def build(seed: int) -> ResNetV1:
        return ResNetV1(seeded_resnet(arch, seed))

    return build


def _widened(base: str):
    block, layers = WIDENABLE[base]

    def build(k: int, seed: int) -> ResNetV1:
        if k == 4:  # the standard width: torchvision's network, the same weights for the same seed
            return _torchvision(base)(seed)
        return ResNetV1(seeded(seed, lambda: WidenedResNetV1(block, layers, k)))  # type: ignore[arg-type]

    return build


for _arch, _listed in TORCHVISION.items():
    assert hasattr(torchvision.models, _arch), _arch
    register_arch(ArchSpec(_arch, _torchvision(_arch), "resnet_v1", f"torchvision {_arch}",
                           {**CARD, "source": "torchvision"}, listed=_listed))
for _base in WIDENABLE:
    register_widened(WidenedFamily(_base, _widened(_base), "resnet_v1",
                                   f"ResNet-{_base[6:]} v1 (torchvision blocks), widths x k/4",
                                   {**CARD, "source": "torchvision blocks, widened (Kolesnikov et al. 2019)"}))
