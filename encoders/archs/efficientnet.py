"""EfficientNet-lite0 (Tan & Le; the TF-lite variant without squeeze-excitation, ReLU6): timm's
``efficientnet_lite0`` without its classifier.

Taps are timm's stage outputs (``blocks.0`` 16 channels at stride 2, ``blocks.1`` 24 at 4, ``blocks.2`` 40
at 8, ``blocks.4`` 112 at 16) and, at stride 32, the head convolution after its BatchNorm-ReLU6 (``bn2``,
1280), whose global average is the network's own pooled vector and the ``embedding``. timm's
BatchNorm layers carry their activation (``BatchNormAct2d``).
"""

from __future__ import annotations

from ..base import Tap
from . import ArchSpec, register_arch
from ._base import ChainTaps, seeded

TAPS = {"blocks.0": ("conv", 2), "blocks.1": ("block1", 4), "blocks.2": ("block2", 8), "blocks.4": ("block3", 16)}


def build(seed: int) -> ChainTaps:
    import timm

    net = seeded(seed, lambda: timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0))
    chain = ["conv_stem", "bn1", *(f"blocks.{i}" for i in range(len(net.blocks))), "conv_head", "bn2"]
    info = {f["module"]: f["num_chs"] for f in net.feature_info}
    taps = {path: Tap(name, info[path], stride) for path, (name, stride) in TAPS.items()}
    taps["bn2"] = Tap("block4", net.num_features, 32)
    parts = {name: getattr(net, name) for name in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")}
    return ChainTaps(parts, chain, taps, net.num_features)


register_arch(ArchSpec("efficientnet_lite0", build, "efficientnet_lite", "timm EfficientNet-lite0",
                       {"source": "timm", "paper": "Tan & Le 2019/2020 (lite variant)",
                        "embedding": "global average of the head convolution (1280)"}))
