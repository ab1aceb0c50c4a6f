"""MobileNetV2 (Sandler et al. 2018): torchvision's ``mobilenet_v2`` without its classifier.

Taps are the outputs of the last inverted-residual block at each stride (``features.1`` 16 channels at
stride 2, ``features.3`` 24 at 4, ``features.6`` 32 at 8, ``features.13`` 96 at 16) and, at stride 32,
the final 1x1 convolution to 1280 channels (``features.18``), whose global average is the network's own
pooled vector and the ``embedding``.
"""

from __future__ import annotations

import torchvision

from ..base import Tap
from . import ArchSpec, register_arch
from ._base import ChainTaps, seeded

TAPS = {1: ("conv", 2), 3: ("block1", 4), 6: ("block2", 8), 13: ("block3", 16), 18: ("block4", 32)}


def build(seed: int) -> ChainTaps:
    net = seeded(seed, lambda: torchvision.models.mobilenet_v2(weights=None))
    features = net.features
    taps = {f"features.{i}": Tap(name, features[i].out_channels, stride) for i, (name, stride) in TAPS.items()}
    return ChainTaps({"features": features}, [f"features.{i}" for i in range(len(features))], taps,
                     features[-1].out_channels)


register_arch(ArchSpec("mobilenet_v2", build, "mobilenet_v2", "torchvision MobileNetV2 (width 1.0)",
                       {"source": "torchvision", "paper": "Sandler et al. 2018",
                        "embedding": "global average of the final 1x1 convolution (1280)"}))
