"""Relative patch location (Doersch et al. 2015): given a centre patch and one of its eight neighbours, say where
the neighbour lies (up-left, up, up-right, left, right, down-left, down, down-right).

Doersch et al.'s geometry, scaled to the view: a 3x3 layout of square patches with a gap of half a patch between
neighbours (48 px for their 96 px patches) and each patch jittered by up to 7/96 of its side on each axis, the
largest such layout that fits the view, placed at a random offset in it. Patches are preprocessed as Kolesnikov et
al.'s (grey with probability 0.66, standardised; pretext.py). Every patch goes through the backbone on its own, and
the head classifies all eight (neighbour, centre) pairs of each image, as Kolesnikov et al.'s code does. Kept
encoder: the backbone (Kolesnikov et al. evaluate it on nine patches averaged; ``harness eval`` on whole images).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .pretext import PatchTask, PatchTaskConfig, crop_patches, grid_corners

GRID, CENTRE = 3, 4
NEIGHBOURS = tuple(i for i in range(GRID * GRID) if i != CENTRE)  # class k: the patch at raster position NEIGHBOURS[k]
# (row, column) step from the centre to the neighbour of each class: class 0 up-left ... class 7 down-right
DIRECTIONS = tuple((i // GRID - 1, i % GRID - 1) for i in NEIGHBOURS)


@dataclass
class RelPatchConfig(PatchTaskConfig):
    """Doersch et al.'s gap (half a patch) and jitter (7/96 of a patch); Kolesnikov et al.'s preprocessing, head,
    schedule and crops of area 0.76 (here 0.76-1), as every patch task (``PatchTaskConfig``)."""

    gap: float = 0.5  # between neighbouring patches, in patch sides
    jitter: float = 7 / 96  # each patch moves by up to this many patch sides on each axis


def patch_layout(side: int, gap: float, jitter: float) -> tuple[int, int, int]:
    """(patch, pitch, jitter) in px: the largest patch whose 3x3 layout with ``gap`` and ``jitter`` (in patch
    sides) fits a ``side`` px view; pitch = patch + gap is the distance between neighbouring patches' corners."""
    patch = int(side // (GRID + (GRID - 1) * gap + 2 * jitter))
    if patch < 1:
        raise ValueError(f"a {side} px view has no room for 3x3 patches with gap {gap} and jitter {jitter}")
    return patch, patch + round(gap * patch), int(jitter * patch)


def cut_patches(x: torch.Tensor, gap: float, jitter: float) -> torch.Tensor:
    """The nine patches of each view (B, C, S, S) -> (B, 9, C, p, p), raster order; the layout at a random place in
    the view, every patch jittered on its own."""
    b, side = x.shape[0], x.shape[-1]
    patch, pitch, jit = patch_layout(side, gap, jitter)
    span = (GRID - 1) * pitch + patch  # the layout without jitter
    origin = torch.randint(jit, side - span - jit + 1, (b,), device=x.device)
    tops, lefts = grid_corners(b, GRID, pitch, patch, origin=origin, jitter=(-jit, jit), device=x.device)
    return crop_patches(x, tops, lefts, patch)


def pair_order(b: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The eight (neighbour, centre) pairs of each of ``b`` images as patch indices (b, 8, 2), and their classes."""
    order = torch.tensor([[i, CENTRE] for i in NEIGHBOURS], device=device)
    labels = torch.arange(len(NEIGHBOURS), device=device)
    return order.expand(b, -1, -1), labels.repeat(b)


class RelPatch(PatchTask):
    cfg: RelPatchConfig

    def __init__(self, cfg: RelPatchConfig, arch: str, seed: int = 0):
        super().__init__(cfg, arch, seed, 2, len(NEIGHBOURS))

    def forward(self, views: list[torch.Tensor], epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = views[0]
        emb = self.encode_patches(cut_patches(x, self.cfg.gap, self.cfg.jitter))
        order, labels = pair_order(x.shape[0], x.device)
        return self.classify(emb, x.shape[0], order, labels)
