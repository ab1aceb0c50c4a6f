"""SqueezeNet 1.1 (Iandola et al. 2016): torchvision's ``squeezenet1_1`` without its classifier.

Its maps are NOT exact multiples of the input: the stem is an unpadded 3x3 stride-2 convolution and the
max-pools use ``ceil_mode``, so a 224 px input gives 111, 55, 27 and 13 px maps (64 px: 31, 15, 7, 3).
The taps declare the nominal power-of-two strides (2, 4, 8, 16: the map is ``ceil(size / stride)`` or one
less); consumers must resize rather than assume ``size // stride``. Taps: the stem after its ReLU
(``conv``, 64 channels), and the last Fire module before each max-pool and at the end (``block1`` 128,
``block2`` 256, ``block3`` 512). There is no stride-32 map. The network's own pooled vector comes after its
1000-way classifier convolution; the ``embedding`` here is the global average of ``block3`` (512).
"""

from __future__ import annotations

import torchvision

from ..base import Tap
from . import ArchSpec, register_arch
from ._base import ChainTaps, seeded

TAPS = {1: ("conv", 64, 2), 4: ("block1", 128, 4), 7: ("block2", 256, 8), 12: ("block3", 512, 16)}


def build(seed: int) -> ChainTaps:
    net = seeded(seed, lambda: torchvision.models.squeezenet1_1(weights=None))
    features = net.features
    taps = {f"features.{i}": Tap(name, ch, stride) for i, (name, ch, stride) in TAPS.items()}
    return ChainTaps({"features": features}, [f"features.{i}" for i in range(len(features))], taps, 512)


register_arch(ArchSpec("squeezenet1_1", build, "squeezenet", "torchvision SqueezeNet 1.1 (nominal strides)",
                       {"source": "torchvision", "paper": "Iandola et al. 2016",
                        "embedding": "global average of the last Fire module (512)",
                        "strides": "nominal: maps are ceil(size/stride) or one less (111/55/27/13 at 224)"}))
