"""VGG-19 with BatchNorm (Simonyan & Zisserman 2015; Kolesnikov et al. 2019's VGG19-BN): torchvision's
``vgg19_bn`` without its last (logits) layer.

Taps, named by stride as everywhere here: ``conv`` (stride 2, 128 channels), ``block1`` (4, 256),
``block2`` (8, 512) and ``block3`` (16, 512) are the inputs of the 2nd..5th max-pools, which
Kolesnikov et al. call block1..block4; ``block4`` (32, 512) is the 5th max-pool's output. ``embedding``
is their *pre-logits*: the input of the last fully-connected layer (4096 = 512k with k = 8), after
torchvision's 7x7 adaptive average pool and the two 4096-wide fully-connected layers (ReLU, dropout).
Those two layers hold 120M of the 139M parameters.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from ..base import Tap
from . import ArchSpec, register_arch
from ._base import ChainTaps, seeded

STRIDE_NAMES = ("conv", "block1", "block2", "block3")


class VGGTaps(ChainTaps):
    def __init__(self, net: torchvision.models.VGG):
        features = net.features
        pools = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
        convs = [m for m in features if isinstance(m, nn.Conv2d)]

        def width_before(i: int) -> int:
            return [c for j, c in enumerate(features) if isinstance(c, nn.Conv2d) and j < i][-1].out_channels

        taps = {f"features.{p - 1}": Tap(name, width_before(p), 2 ** (n + 1))
                for n, (name, p) in enumerate(zip(STRIDE_NAMES, pools[1:], strict=True))}
        taps[f"features.{pools[-1]}"] = Tap("block4", convs[-1].out_channels, 32)
        head = nn.Sequential(*list(net.classifier)[:-1])  # keeps torchvision's keys: classifier.0, classifier.3
        super().__init__({"features": features, "avgpool": net.avgpool, "classifier": head},
                         [f"features.{i}" for i in range(len(features))], taps, head[-3].out_features)

    def embed(self, last: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(last), 1))


register_arch(ArchSpec(
    "vgg19_bn", lambda seed: VGGTaps(seeded(seed, lambda: torchvision.models.vgg19_bn(weights=None))), "vgg",
    "torchvision VGG-19-BN without the logits layer; embedding = the pre-logits (4096)",
    {"source": "torchvision", "paper": "Simonyan & Zisserman 2015; Kolesnikov et al. 2019 (VGG19-BN)",
     "embedding": "pre-logits: 7x7 adaptive average pool, fc-ReLU-dropout twice (4096)",
     "paper_block_names": {"conv": "block1", "block1": "block2", "block2": "block3", "block3": "block4"}}))
