"""Head registry: each head declares the taps it reads and builds itself from their widths."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from torch import nn

from harness.common.registry import Registry
from harness.common.taps import Tap


class HeadTarget(Protocol):
    """What a head needs to know of its task (a task record satisfies it)."""

    name: str
    num_outputs: int  # classes, or regression channels
    frames: int  # images per sample (fusion and Siamese heads)


@dataclass(frozen=True)
class HeadEntry:
    name: str
    taps: Callable[[HeadTarget], tuple[str, ...]]  # which encoder taps the head reads
    build: Callable[[dict[str, Tap], HeadTarget], nn.Module]
    description: str = ""


HEADS: Registry[HeadEntry] = Registry("head", discover="heads")


def register_head(name: str, taps: Callable[[HeadTarget], tuple[str, ...]], description: str = ""):
    def deco(build: Callable[[dict[str, Tap], HeadTarget], nn.Module]):
        HEADS.register(name, HeadEntry(name, taps, build, description))
        return build

    return deco


def get_head(name: str) -> HeadEntry:
    return HEADS[name]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
