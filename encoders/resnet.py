"""torchvision ResNets exposing the paper's taps: conv, block1..block4, embedding.

``block4_os16`` is the last stage run with dilation instead of stride (output stride 16,
same frozen weights), the geometry DeepLabv3+ expects without a trainable copy of layer4.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torchvision
from torch import nn

from harness.common.taps import DILATED_TAP

from .base import Tap, TapModel

TAP_ORDER = ("conv", "block1", "block2", "block3", "block4", "embedding")


@contextmanager
def dilated(layer: nn.Sequential, dilation: int = 2):
    """Temporarily run a ResNet stage at stride 1 with dilated 3x3 convs (torchvision's
    ``replace_stride_with_dilation`` geometry: the first block keeps dilation 1, the others
    get ``dilation``). Weights are untouched; the original geometry is restored on exit."""
    saved = []
    for bi, block in enumerate(layer):
        for m in block.modules():
            if isinstance(m, nn.Conv2d):
                saved.append((m, m.stride, m.padding, m.dilation))
                m.stride = (1, 1)
                if m.kernel_size == (3, 3) and bi > 0:
                    m.dilation, m.padding = (dilation, dilation), (dilation, dilation)
    try:
        yield layer
    finally:
        for m, stride, padding, dil in saved:
            m.stride, m.padding, m.dilation = stride, padding, dil


class ResNetTaps(TapModel):
    """Runs a torchvision ResNet only as deep as the deepest requested tap."""

    def __init__(self, net: torchvision.models.ResNet):
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        widths = [net.conv1.out_channels] + [self._width(getattr(net, f"layer{i}")) for i in range(1, 5)]
        strides = [2, 4, 8, 16, 32]
        self.taps = tuple(Tap(n, c, s) for n, c, s in zip(TAP_ORDER[:5], widths, strides, strict=True)) + (
            Tap("embedding", widths[-1], None),
            Tap(DILATED_TAP, widths[-1], 16, derived=True),
        )

    @staticmethod
    def _width(layer: nn.Sequential) -> int:
        last = layer[-1]
        return (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels

    def forward(self, x: torch.Tensor, taps: tuple[str, ...]) -> dict[str, torch.Tensor]:
        want_dilated = DILATED_TAP in taps
        depth = max((TAP_ORDER.index(t) for t in taps if t != DILATED_TAP), default=0)
        if want_dilated:
            depth = max(depth, 3)
        out: dict[str, torch.Tensor] = {}
        x = self.relu(self.bn1(self.conv1(x)))
        out["conv"] = x
        x = self.maxpool(x)
        for i, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4), start=1):
            if depth < i:
                break
            x = layer(x)
            out[f"block{i}"] = x
        if depth >= 5:
            out["embedding"] = torch.flatten(nn.functional.adaptive_avg_pool2d(out["block4"], 1), 1)
        if want_dilated:
            with dilated(self.layer4):
                out[DILATED_TAP] = self.layer4(out["block3"])
        return {t: out[t] for t in taps}


def seeded_resnet(arch: str, seed: int) -> torchvision.models.ResNet:
    """A torchvision ResNet initialised from ``seed``, leaving the global RNG as it was."""
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return getattr(torchvision.models, arch)(weights=None)
    finally:
        torch.random.set_rng_state(gen_state)


def build_resnet(arch: str, seed: int = 0) -> ResNetTaps:
    """A randomly initialised torchvision ResNet (seeded), without its classifier."""
    return ResNetTaps(seeded_resnet(arch, seed))


def infer_resnet_arch(state: dict[str, torch.Tensor]) -> str:
    """torchvision ResNet architecture from a (prefix-free) state dict's keys."""
    bottleneck = any(k.startswith("layer1.0.conv3.") for k in state)
    blocks = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    table = {
        (False, (2, 2, 2, 2)): "resnet18",
        (False, (3, 4, 6, 3)): "resnet34",
        (True, (3, 4, 6, 3)): "resnet50",
        (True, (3, 4, 23, 3)): "resnet101",
        (True, (3, 8, 36, 3)): "resnet152",
    }
    arch = table.get((bottleneck, blocks))
    if arch is None:
        raise ValueError(f"state dict is not a known torchvision ResNet (blocks per stage {blocks})")
    if arch == "resnet50" and "layer1.0.conv2.weight" in state and state["layer1.0.conv2.weight"].shape[0] == 128:
        arch = "wide_resnet50_2"
    return arch
