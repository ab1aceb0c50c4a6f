"""Head registry: each head declares which inputs it reads of an encoder's taps (by stride, see
heads/pyramid.py) and builds itself from their widths."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from torch import nn

from harness.common.registry import Registry
from harness.common.taps import Tap

from .pyramid import HeadInputError, Level


class HeadTarget(Protocol):
    """What a head needs to know of its task (a task record satisfies it)."""

    name: str
    num_outputs: int  # classes, or regression channels
    frames: int  # images per sample (fusion and Siamese heads)


@dataclass(frozen=True)
class HeadEntry:
    name: str
    inputs: Callable[[HeadTarget, Mapping[str, Tap]], list[Level]]  # what the head reads of these taps
    build: Callable[[Mapping[str, Tap], HeadTarget], nn.Module]
    description: str = ""

    def taps(self, task: HeadTarget, taps: Mapping[str, Tap]) -> tuple[str, ...]:
        """The encoder taps to encode for this head, in the order first read. Raises HeadInputError
        (naming the strides there are and those needed) when the taps cannot feed the head."""
        return tuple(dict.fromkeys(lv.tap for lv in self.inputs(task, taps)))

    def describe(self, task: HeadTarget, taps: Mapping[str, Tap]) -> list[dict]:
        """Which tap feeds which input of the head, and how it is made (the record's ``taps``)."""
        return [lv.record() for lv in self.inputs(task, taps)]


HEADS: Registry[HeadEntry] = Registry("head", discover="heads")


def register_head(name: str, inputs: Callable[[HeadTarget, Mapping[str, Tap]], list[Level]], description: str = ""):
    def deco(build: Callable[[Mapping[str, Tap], HeadTarget], nn.Module]):
        HEADS.register(name, HeadEntry(name, inputs, build, description))
        return build

    return deco


def get_head(name: str) -> HeadEntry:
    return HEADS[name]


def embedding_input(task: HeadTarget, taps: Mapping[str, Tap]) -> list[Level]:
    """The pooled vector the single-layer and fusion heads read."""
    emb = taps.get("embedding")
    if emb is None or emb.spatial:
        raise HeadInputError("the head needs a pooled 'embedding' tap, which the encoder does not declare")
    return [Level(None, emb.channels, "embedding")]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = ["HEADS", "HeadEntry", "HeadInputError", "HeadTarget", "count_parameters", "embedding_input", "get_head",
           "register_head"]
