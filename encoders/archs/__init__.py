"""Architectures by name: ``build_arch(name, seed) -> TapModel``, for ``harness eval`` (random init) and
``harness pretrain --arch`` alike. One module per family declares its names here when imported.

Three kinds of declaration:

* ``register_arch``: a fixed name (``mobilenet_v2``, ``vgg19_bn``, ``resnet50``...);
* ``register_widened``: a family with Kolesnikov et al.'s widening factor k, named ``BASE_xK`` with
  K an integer from 1 to 16 (``resnet50_x8``, ``resnetv2_50_x16``). k scales every channel width
  (ResNet: the stem has 16k channels and the pre-logits 512k), so k = 4 is the standard width;
* ``register_space``: a seeded search space (Girish et al.), named ``SPACE:K`` with K any integer >= 0
  (``resnet_space:3``, ``mobilenet_space:12``): architecture K of the population, drawn from K alone
  (``space.py``), so that a checkpoint's architecture name suffices to rebuild it.

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


@dataclass(frozen=True)
class SearchSpace:
    name: str  # names are NAME:K
    draw: Callable[[int], dict[str, Any]]  # K -> the drawn architecture (JSON-able; on the encoder card)
    build: Callable[[str, dict[str, Any], int], TapModel]  # (arch name, drawn architecture, seed) -> model
    summary: Callable[[dict[str, Any]], str]  # the drawn architecture in one short line
    family: str
    description: str
    knobs: dict[str, Any]  # knob -> {"choices", "source"}: the declared ranges
    card: dict[str, Any] = field(default_factory=dict)


ARCHS: Registry[ArchSpec] = Registry("architecture", discover="encoders.archs")
WIDENED: Registry[WidenedFamily] = Registry("widened architecture family", discover="encoders.archs")
SPACES: Registry[SearchSpace] = Registry("architecture search space", discover="encoders.archs")
_SPACE_NAME = re.compile(r"^(?P<space>[A-Za-z0-9_]+):(?P<k>.*)$")


def register_arch(spec: ArchSpec) -> ArchSpec:
    return ARCHS.register(spec.name, spec)


def register_widened(spec: WidenedFamily) -> WidenedFamily:
    return WIDENED.register(spec.base, spec)


def register_space(spec: SearchSpace) -> SearchSpace:
    return SPACES.register(spec.name, spec)


def widened_patterns() -> list[str]:
    """``BASE_xK`` for every widened family, as the listing prints them."""
    return [f"{base}_xK" for base in WIDENED]


def space_patterns() -> list[str]:
    """``SPACE:K`` for every search space, as the listing prints them."""
    return [f"{name}:K" for name in SPACES]


def pattern_hint() -> str:
    return (f"(widened: {', '.join(widened_patterns())}, K = {WIDEN_MIN}..{WIDEN_MAX}, 4 = standard width; "
            f"sampled: {', '.join(space_patterns())}, K = 0, 1, 2, ...; `harness encoders` lists the rest)")


def parse_space(name: str) -> tuple[SearchSpace, int] | None:
    """``(space, k)`` for a ``SPACE:K`` name of a search space; None when the name is not of that form.
    A known space with K not a plain non-negative integer is a usage error saying so."""
    if name in SPACES:
        raise UsageError(f"{name!r} is a search space: name one of its architectures, {name}:K with K = 0, 1, 2, "
                         f"..., e.g. {name}:0")
    m = _SPACE_NAME.match(name)
    if m is None or m["space"] not in SPACES:
        return None
    k = m["k"]
    if not k.isdecimal() or not k.isascii() or str(int(k)) != k:
        raise UsageError(f"{name!r}: the architecture index after '{m['space']}:' must be an integer >= 0 "
                         f"without leading zeros, e.g. {m['space']}:0")
    return SPACES[m["space"]], int(k)


def drawn_arch(name: str) -> dict[str, Any] | None:
    """The drawn architecture of a ``SPACE:K`` name (its knobs' values); None for any other name."""
    parsed = parse_space(name)
    return None if parsed is None else parsed[0].draw(parsed[1])


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
    """Whether ``name`` is a registered architecture or a well-formed widened or sampled one (bad factors and
    indices raise)."""
    return name in ARCHS or parse_widened(name) is not None or parse_space(name) is not None


def arch_names() -> list[str]:
    return list(ARCHS)


def arch_card(name: str) -> tuple[str, str, dict[str, Any]]:
    """(family, description, card facts) of an architecture name."""
    if name in ARCHS:
        spec = ARCHS[name]
        return spec.family, spec.description, dict(spec.card)
    sampled = parse_space(name)
    if sampled is not None:
        space, k = sampled
        drawn = space.draw(k)
        return space.family, f"{space.description}: architecture {k}", {
            **space.card, "space": space.name, "space_index": k, "drawn": drawn, "drawn_summary": space.summary(drawn)}
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
    sampled = parse_space(name)
    if sampled is not None:
        space, k = sampled
        return space.build(name, space.draw(k), seed)
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


__all__ = ["ARCHS", "SPACES", "WIDENED", "ArchSpec", "SearchSpace", "WidenedFamily", "arch_card", "arch_cost",
           "arch_names", "build_arch", "drawn_arch", "is_arch", "parse_space", "parse_widened", "pattern_hint",
           "register_arch", "register_space", "register_widened", "space_patterns", "widened_patterns"]
