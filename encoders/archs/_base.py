"""What the architecture families share: seeded building, and running a CNN as a chain of parts with taps.

Every model built here is a ``TapModel`` whose ``forward(x)`` without taps returns the embedding
(B, D): the same module is the frozen encoder (``forward(x, taps)``) and the backbone that
``harness pretrain`` trains, so a pretraining checkpoint is its state dict as it stands.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from ..base import Tap, TapModel

M = TypeVar("M", bound=nn.Module)


def seeded(seed: int, build: Callable[[], M]) -> M:
    """Build with torch's CPU generator seeded from ``seed``, leaving the caller's random stream as it was."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return build()
    finally:
        torch.random.set_rng_state(state)


def gap(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling to a (B, C) vector."""
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


class EmbeddingByDefault:
    """Mixin for an existing ``TapModel`` class: called without taps, it returns the embedding tensor."""

    def forward(self, x: torch.Tensor, taps: tuple[str, ...] | None = None):  # type: ignore[override]
        if taps is None:
            return super().forward(x, ("embedding",))["embedding"]  # type: ignore[misc]
        return super().forward(x, taps)  # type: ignore[misc]


class ChainTaps(TapModel):
    """A CNN run as a chain of submodules (dotted paths into its own attributes, in order), with a tap
    after some of them and the embedding made from the last output by ``embed`` (the global average).

    The paths are looked up at every call, so that converting a BatchNorm in place (SyncBN, MoCo's split
    BN) reaches the chain. Only as much of the chain runs as the deepest requested tap needs.
    """

    def __init__(self, parts: dict[str, nn.Module], chain: list[str], taps: dict[str, Tap], embedding: int):
        super().__init__()
        for name, module in parts.items():
            self.add_module(name, module)
        unknown = [p for p in taps if p not in chain]
        if unknown:
            raise ValueError(f"taps after {unknown}, which are not in the chain")
        self.chain = list(chain)
        self.tap_at = {path: tap.name for path, tap in taps.items()}
        order = [tap for path in chain for p, tap in taps.items() if p == path]
        self.taps = tuple(order) + (Tap("embedding", embedding, None),)

    def embed(self, last: torch.Tensor) -> torch.Tensor:
        """The embedding from the chain's last output."""
        return gap(last)

    def forward(self, x: torch.Tensor, taps: tuple[str, ...] | None = None):
        want = ("embedding",) if taps is None else tuple(taps)
        unknown = [t for t in want if t != "embedding" and t not in self.tap_at.values()]
        if unknown:
            raise KeyError(f"no tap(s) {unknown}")
        needed = {t for t in want if t != "embedding"}
        full = "embedding" in want
        out: dict[str, torch.Tensor] = {}
        for path in self.chain:
            if not full and not needed - out.keys():
                break
            x = self.get_submodule(path)(x)
            if path in self.tap_at:
                out[self.tap_at[path]] = x
        if full:
            out["embedding"] = self.embed(x)
        return out["embedding"] if taps is None else {t: out[t] for t in want}
