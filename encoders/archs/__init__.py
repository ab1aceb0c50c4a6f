"""Architectures by name: ``build_arch(name, seed) -> TapModel``, for ``harness eval`` (random init) and
``harness pretrain --arch`` alike. One module per family declares its names here when imported.

Two kinds of declaration:

* ``register_arch``: a fixed name (``mobilenet_v2``, ``vgg19_bn``, ``resnet50``...);
* ``register_widened``: a family with Kolesnikov et al.'s widening factor k, named ``BASE_xK`` with
  K an integer from 1 to 16 (``resnet50_x8``, ``resnetv2_50_x16``). k scales every channel width
  (ResNet: the stem has 16k channels and the pre-logits 512k), so k = 4 is the standard width.

Every model returns its embedding when called without taps (``forward(x)``), and declares its taps
shallow to deep, named by stride (``conv`` 2, ``block1`` 4 .. ``block4`` 32, ``embedding``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import torch

from harness.common.errors import UsageError, unknown_name
from harness.common.registry import Registry

from ..base import TapModel, model_cost

WIDEN_MIN, WIDEN_MAX = 1, 16
_WIDENED_NAME = re.compile(r"^(?P<base>.+)_x(?P<factor>[^_]*)$")


@dataclass(frozen=True)
class ArchSpec:
    name: str
    build: Callable[[int], TapModel]  # seed -> randomly initialised model
    family: str
    description: str
    card: dict[str, Any] = field(default_factory=dict)  # facts for the encoder card (EncoderInfo.extra)
    listed: bool = True  # also a random-init encoder by this name (`harness eval --encoder NAME`, listed)


@dataclass(frozen=True)
class WidenedFamily:
    base: str  # names are BASE_xK
    build: Callable[[int, int], TapModel]  # (k, seed) -> model
    family: str
    description: str
    card: dict[str, Any] = field(default_factory=dict)


ARCHS: Registry[ArchSpec] = Registry("architecture", discover="encoders.archs")
WIDENED: Registry[WidenedFamily] = Registry("widened architecture family", discover="encoders.archs")


def register_arch(spec: ArchSpec) -> ArchSpec:
    return ARCHS.register(spec.name, spec)


def register_widened(spec: WidenedFamily) -> WidenedFamily:
    return WIDENED.register(spec.base, spec)


def widened_patterns() -> list[str]:
    """``BASE_xK`` for every widened family, as the listing prints them."""
    return [f"{base}_xK" for base in WIDENED]


def pattern_hint() -> str:
    return (f"(widened: {', '.join(widened_patterns())}, K = {WIDEN_MIN}..{WIDEN_MAX}, 4 = standard width; "
            "`harness encoders` lists the rest)")


def parse_widened(name: str) -> tuple[WidenedFamily, int] | None:
    """``(family, k)`` for a ``BASE_xK`` name of a widened family; None when the name is not of that form.
    A known base with a factor outside 1..16 (or not an integer) is a usage error saying so."""
    m = _WIDENED_NAME.match(name)
    if m is None or m["base"] not in WIDENED:
        return None
    factor = m["factor"]
    if not factor.isdigit() or not WIDEN_MIN <= int(factor) <= WIDEN_MAX:
        raise UsageError(f"{name!r}: the widening factor after '_x' must be an integer from {WIDEN_MIN} to "
                         f"{WIDEN_MAX} (4 is the standard width), e.g. {m['base']}_x8")
    return WIDENED[m["base"]], int(factor)


def is_arch(name: str) -> bool:
    """Whether ``name`` is a registered architecture or a well-formed widened one (bad factors raise)."""
    return name in ARCHS or parse_widened(name) is not None


def arch_names() -> list[str]:
    return list(ARCHS)


def arch_card(name: str) -> tuple[str, str, dict[str, Any]]:
    """(family, description, card facts) of an architecture name."""
    if name in ARCHS:
        spec = ARCHS[name]
        return spec.family, spec.description, dict(spec.card)
    widened = parse_widened(name)
    if widened is None:
        raise unknown_name("architecture", name, arch_names(), hint=pattern_hint())
    fam, k = widened
    return fam.family, f"{fam.description}, widening factor k={k}", {**fam.card, "widening_factor": k}


def build_arch(name: str, seed: int = 0) -> TapModel:
    """A randomly initialised model of architecture ``name`` (seeded; the global RNG is left as it was).

    Under ``torch.device("meta")`` nothing is allocated: names, shapes and FLOPs only.
    """
    spec = ARCHS.get(name)
    if spec is not None:
        return spec.build(seed)
    widened = parse_widened(name)
    if widened is None:
        raise unknown_name("architecture", name, arch_names(), hint=pattern_hint())
    fam, k = widened
    return fam.build(k, seed)


def arch_cost(name: str, resolution: int) -> dict[str, int]:
    """Parameters and FLOPs (multiply-adds) per image at ``resolution`` px, counted on the meta device
    (``encoders.base.model_cost``); remembered per process."""
    return dict(_arch_cost(name, resolution))


@cache
def _arch_cost(name: str, resolution: int) -> dict[str, int]:
    with torch.device("meta"):
        model = build_arch(name)
    return model_cost(model, resolution)


__all__ = ["ARCHS", "WIDENED", "ArchSpec", "WidenedFamily", "arch_card", "arch_cost", "arch_names", "build_arch",
           "is_arch", "parse_widened", "pattern_hint", "register_arch", "register_widened", "widened_patterns"]
