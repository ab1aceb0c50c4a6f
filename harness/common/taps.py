"""The vocabulary between encoders and heads: a feature tap an encoder declares (timm's
``feature_info``). Encoders declare taps; heads size themselves from them; neither imports the
other."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tap:
    name: str
    channels: int
    stride: int | None  # None for pooled vectors (``embedding``)

    @property
    def spatial(self) -> bool:
        return self.stride is not None
