"""The vocabulary between encoders and heads: a feature tap an encoder declares (timm's
``feature_info``). Encoders declare taps; heads size themselves from them; neither imports the
other."""

from __future__ import annotations

from dataclasses import dataclass

# The last stage run with dilation instead of stride (output stride 16): the same frozen weights,
# what DeepLabv3+ reads. Derived: not one of the encoder's own blocks.
DILATED_TAP = "block4_os16"

# The input normalisation every ImageNet-trained encoder here expects.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Tap:
    name: str
    channels: int
    stride: int | None  # None for pooled vectors (``embedding``)
    derived: bool = False  # a re-computation of another tap (e.g. dilated), not one of the encoder's blocks

    @property
    def spatial(self) -> bool:
        return self.stride is not None
