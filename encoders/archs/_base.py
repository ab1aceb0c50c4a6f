"""What the architecture families share: seeded building, torchvision's initialisation, running a CNN as a chain of
parts with taps, and the stem-stages-final-BN-ReLU layout of the pre-activation networks (ResNet v2, RevNet).

Every model built here is a ``TapModel`` whose ``forward(x)`` without taps returns the embedding
(B, D): the same module is the frozen encoder (``forward(x, taps)``) and the backbone that
``harness pretrain`` trains, so a pretraining checkpoint is its state dict as it stands.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from harness.common.taps import DILATED_TAP

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


def init_conv_bn(module: nn.Module) -> None:
    """torchvision's ResNet initialisation, which every CNN built here shares: convolutions He-normal (fan out),
    BatchNorm scales 1 and shifts 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


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


class StagedTaps(TapModel):
    """A 7x7 stride-2 stem (``conv1``), a max-pool and four stages ``layer1..layer4`` whose last output goes through a
    final BN-ReLU (``norm``, ``relu``) before the global average: the pre-activation networks (ResNet v2, RevNet).

    Taps: ``conv`` (the stem's output), ``block1..block4`` (the stages' outputs, ``block4`` after the final
    BN-ReLU), ``embedding``, and the dilated ``block4_os16`` (``dilated_block4``). A subclass builds ``conv1``,
    ``maxpool`` and the stages in its own order (the order sets the seeded weights), then calls ``finish``.
    """

    ORDER = ("conv", "block1", "block2", "block3", "block4", "embedding")

    def finish(self, stem: int, widths: list[int]) -> None:
        """The final BN-ReLU, torchvision's initialisation, and the taps of a ``stem``-wide stem and stages of
        ``widths`` channels."""
        self.norm = nn.BatchNorm2d(widths[-1])
        self.relu = nn.ReLU(inplace=True)
        init_conv_bn(self)
        self.taps = (Tap("conv", stem, 2), *(Tap(f"block{i}", w, 2 ** (i + 1)) for i, w in enumerate(widths, 1)),
                     Tap("embedding", widths[-1], None), Tap(DILATED_TAP, widths[-1], 16, derived=True))

    def stage_input(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """What stage ``i`` (1-based) is given from the previous output (the identity unless a subclass says)."""
        return x

    def dilated_block4(self, block3: torch.Tensor) -> torch.Tensor:
        """The last stage run at stride 1 with dilated 3x3 convolutions, from ``block3`` (before the final BN-ReLU)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, taps: tuple[str, ...] | None = None):
        want = ("embedding",) if taps is None else tuple(taps)
        unknown = [t for t in want if t not in self.ORDER and t != DILATED_TAP]
        if unknown:
            raise KeyError(f"no tap(s) {unknown}")
        depth = max((self.ORDER.index(t) for t in want if t != DILATED_TAP), default=0)
        if DILATED_TAP in want:
            depth = max(depth, 3)
        out: dict[str, torch.Tensor] = {}
        x = out["conv"] = self.conv1(x)
        x = self.maxpool(x)
        for i in range(1, min(depth, 4) + 1):
            x = out[f"block{i}"] = getattr(self, f"layer{i}")(self.stage_input(i, x))
        if depth >= 4:
            out["block4"] = self.relu(self.norm(out["block4"]))
        if depth >= 5:
            out["embedding"] = gap(out["block4"])
        if DILATED_TAP in want:
            out[DILATED_TAP] = self.relu(self.norm(self.dilated_block4(out["block3"])))
        return out["embedding"] if taps is None else {t: out[t] for t in want}
