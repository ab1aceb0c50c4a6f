"""End-task networks ("heads"), built from an encoder's declared taps."""

from . import deeplab, fusion, linear, unet  # noqa: F401  (registers)
from .registry import HEADS, count_parameters, get_head, register_head

__all__ = ["HEADS", "count_parameters", "get_head", "register_head"]
