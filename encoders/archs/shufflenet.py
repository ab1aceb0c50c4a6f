"""ShuffleNetV2 x1.0 (Ma et al. 2018): torchvision's ``shufflenet_v2_x1_0`` without its classifier.

Taps: the stem convolution (``conv``, 24 channels, stride 2), its 3x3 max-pool (``block1``, 24, stride 4:
the only map at that stride), the three stages (``block2`` 116, ``block3`` 232, ``block4`` 464 at
strides 8, 16, 32) and the final 1x1 convolution (``conv5``, 1024, stride 32), whose global average is
the network's own pooled vector and the ``embedding``; at stride 32 the tap is ``conv5``'s map.
"""

from __future__ import annotations

import torchvision

from ..base import Tap
from . import ArchSpec, register_arch
from ._base import ChainTaps, seeded

CHAIN = ["conv1", "maxpool", "stage2", "stage3", "stage4", "conv5"]


def build(seed: int) -> ChainTaps:
    net = seeded(seed, lambda: torchvision.models.shufflenet_v2_x1_0(weights=None))
    widths = net._stage_out_channels  # [24, 116, 232, 464, 1024]
    taps = {"conv1": Tap("conv", widths[0], 2), "maxpool": Tap("block1", widths[0], 4),
            "stage2": Tap("block2", widths[1], 8), "stage3": Tap("block3", widths[2], 16),
            "conv5": Tap("block4", widths[4], 32)}
    return ChainTaps({name: getattr(net, name) for name in CHAIN}, CHAIN, taps, widths[4])


register_arch(ArchSpec("shufflenet_v2_x1_0", build, "shufflenet_v2", "torchvision ShuffleNetV2 x1.0",
                       {"source": "torchvision", "paper": "Ma et al. 2018",
                        "embedding": "global average of conv5 (1024), as the network pools"}))
