"""Frozen encoders with declared feature taps."""

from .base import EncoderInfo, FrozenEncoder, Tap
from .registry import ENCODERS, create_encoder, register_encoder

__all__ = ["ENCODERS", "EncoderInfo", "FrozenEncoder", "Tap", "create_encoder", "register_encoder"]
