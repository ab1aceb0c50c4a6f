"""End-task networks ("heads"), built from an encoder's declared taps. Every module of this
package that registers a head is found by the registry (no import list to keep)."""

from .pyramid import HeadInputError
from .registry import HEADS, HeadTarget, count_parameters, get_head, register_head

__all__ = ["HEADS", "HeadInputError", "HeadTarget", "count_parameters", "get_head", "register_head"]
