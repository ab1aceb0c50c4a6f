"""Head registry: each head declares the taps it reads and builds itself from their widths."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from encoders.base import Tap
from harness.errors import unknown_name
from tasks.spec import TaskSpec


@dataclass(frozen=True)
class HeadEntry:
    name: str
    taps: Callable[[TaskSpec], tuple[str, ...]]  # which encoder taps the head reads
    build: Callable[[dict[str, Tap], TaskSpec], nn.Module]
    description: str = ""


HEADS: dict[str, HeadEntry] = {}


def register_head(name: str, taps: Callable[[TaskSpec], tuple[str, ...]], description: str = ""):
    def deco(build: Callable[[dict[str, Tap], TaskSpec], nn.Module]):
        if name in HEADS:
            raise ValueError(f"head {name!r} registered twice")
        HEADS[name] = HeadEntry(name, taps, build, description)
        return build

    return deco


def get_head(name: str) -> HeadEntry:
    if name not in HEADS:
        raise unknown_name("head", name, HEADS)
    return HEADS[name]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
