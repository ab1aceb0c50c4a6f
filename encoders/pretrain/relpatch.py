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

from dataclasses import dataclass, field

import torch

from .augment import AugmentConfig
from .base import Method, MethodConfig, OptimDefaults, full_precision, make_backbone
from .pretext import (
    PatchClassifier,
    classification_logs,
    crop_patches,
    cross_entropy,
    grid_corners,
    kolesnikov_optim,
    preprocess_patches,
)

GRID, CENTRE = 3, 4
NEIGHBOURS = tuple(i for i in range(GRID * GRID) if i != CENTRE)  # class k: the patch at raster position NEIGHBOURS[k]
# (row, column) step from the centre to the neighbour of each class: class 0 up-left ... class 7 down-right
DIRECTIONS = tuple((i // GRID - 1, i % GRID - 1) for i in NEIGHBOURS)


@dataclass
class RelPatchConfig(MethodConfig):
    """Doersch et al.'s gap (half a patch) and jitter (7/96 of a patch), Kolesnikov et al.'s preprocessing, head
    (1,000-d per patch, 4,096 hidden, dropout 0.5) and schedule (128 images a batch, lr 0.1 per 256, 5 warmup
    epochs, 35 epochs), their crops of area 0.76 (here 0.76-1)."""

    epochs: int = 35
    batch_size: int = 128
    gap: float = 0.5  # between neighbouring patches, in patch sides
    jitter: float = 7 / 96  # each patch moves by up to this many patch sides on each axis
    gray_p: float = 0.66
    standardize: bool = True
    embed_dim: int = 1000
    hidden: int = 4096
    dropout: float = 0.5
    optim: OptimDefaults = field(default_factory=kolesnikov_optim)
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(
        global_crops=1, global_scale=(0.76, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0, blur_p=0.0))


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


class RelPatch(Method):
    def __init__(self, cfg: RelPatchConfig, arch: str, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.backbone, width = make_backbone(arch, seed)
        self.head = PatchClassifier(width, cfg.embed_dim, 2, cfg.hidden, len(NEIGHBOURS), cfg.dropout)

    def forward(self, views: list[torch.Tensor], epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = views[0]
        patches = preprocess_patches(cut_patches(x, self.cfg.gap, self.cfg.jitter), self.cfg.gray_p,
                                     self.cfg.standardize)
        b = x.shape[0]
        emb = self.backbone(patches.flatten(0, 1))
        order, labels = pair_order(b, x.device)
        logits = self.head(emb.view(b, GRID * GRID, -1), order)
        with full_precision(logits):
            loss = cross_entropy(logits, labels)
        return loss, classification_logs(logits, labels, emb)
