"""Jigsaw puzzles (Noroozi & Favaro 2016), as Kolesnikov et al. 2019 train them.

A view is cut into a 3x3 grid of cells and a tile is taken from each cell at a random place inside it (the
leftover of the cell is the gap that hides edge continuity). Every tile goes through the backbone on its own; the
puzzle is a permutation of the nine tiles drawn from a fixed set, and the head, given the tile embeddings in the
puzzle's order, says which permutation of the set it was. Because each tile is encoded on its own, shuffling the
embeddings is shuffling the tiles: as in Kolesnikov et al.'s code, one pass over the tiles serves every
permutation asked of them (``perms_per_image``; 0: all of the set).

The set: ``permutations`` permutations of 9 chosen greedily for maximal Hamming distance (``hamming_set``), from a
fixed seed so that every run and checkpoint shares it. Kept encoder: the backbone. Kolesnikov et al. evaluate it by
averaging the embeddings of nine patches; ``harness eval`` gives it the whole image, as every encoder.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from .pretext import PatchTask, PatchTaskConfig, crop_patches, grid_corners

GRID = 3
TILES = GRID * GRID


@dataclass
class JigsawConfig(PatchTaskConfig):
    """Kolesnikov et al.'s settings: 100 permutations (Noroozi & Favaro's maximal-Hamming set), a 255 px crop of the
    image resized to 292 (area 0.76; here crops of area 0.76-1) cut into cells of 85 px with 64 px tiles
    (``tile_frac`` 64/85); preprocessing, head and schedule as every patch task (``PatchTaskConfig``)."""

    permutations: int = 100
    perm_seed: int = 0  # which maximal-Hamming set (a property of the task, not of the run's seed)
    perms_per_image: int = 0  # puzzles made from each image's tiles per step; 0: every permutation of the set
    tile_frac: float = 64 / 85


@cache
def hamming_set(n: int, seed: int = 0) -> np.ndarray:
    """``n`` permutations of 9 (rows of an (n, 9) int64 array) chosen for maximal Hamming distance.

    Greedy farthest-point selection over all 9! permutations: from a first one drawn with ``seed``, each next one
    maximises its minimum Hamming distance to those already chosen, ties going to the largest total distance
    (Noroozi & Favaro's criterion, their Algorithm 1), then to the lowest index in lexicographic order. The minimum
    pairwise distance of the set is what keeps its puzzles apart (a random set of 100 has pairs 2-3 apart).
    """
    if not 2 <= n <= 362_880:
        raise ValueError(f"permutations must be between 2 and 9! = 362880, got {n}")
    cands = np.array(list(itertools.permutations(range(TILES))), dtype=np.int8)
    first = int(np.random.default_rng(seed).integers(len(cands)))
    chosen = [first]
    dist = (cands != cands[first]).sum(1)
    nearest, total = dist.astype(np.int64), dist.astype(np.int64)
    nearest[first] = -1
    for _ in range(n - 1):
        j = int(np.argmax(nearest * (TILES * n + 1) + total))
        chosen.append(j)
        dist = (cands != cands[j]).sum(1)
        nearest = np.minimum(nearest, dist)
        total += dist
        nearest[chosen] = -1
    out = cands[chosen].astype(np.int64)
    out.setflags(write=False)
    return out


def min_pairwise_hamming(perms: np.ndarray) -> int:
    """The smallest Hamming distance between two rows of ``perms``."""
    d = (perms[:, None, :] != perms[None, :, :]).sum(-1)
    np.fill_diagonal(d, perms.shape[1] + 1)
    return int(d.min())


def tile_layout(side: int, tile_frac: float) -> tuple[int, int]:
    """(cell, tile) sides in px for a ``side`` px view: three cells a side, a tile ``tile_frac`` of a cell."""
    cell = side // GRID
    tile = max(1, min(cell, round(cell * tile_frac)))
    return cell, tile


def cut_tiles(x: torch.Tensor, tile_frac: float) -> torch.Tensor:
    """The nine tiles of each view (B, C, S, S) -> (B, 9, C, t, t), raster order (row by row), each at a random
    place inside its cell."""
    cell, tile = tile_layout(x.shape[-1], tile_frac)
    tops, lefts = grid_corners(x.shape[0], GRID, cell, tile, jitter=(0, cell - tile), device=x.device)
    return crop_patches(x, tops, lefts, tile)


def shuffle_tiles(tiles: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """The puzzle of permutation ``perm``: position j holds tile ``perm[j]`` (tiles (B, 9, ...))."""
    return tiles[:, perm]


class Jigsaw(PatchTask):
    cfg: JigsawConfig

    def __init__(self, cfg: JigsawConfig, arch: str, seed: int = 0):
        super().__init__(cfg, arch, seed, TILES, cfg.permutations)
        self.register_buffer("perms", torch.from_numpy(hamming_set(cfg.permutations, cfg.perm_seed).copy()))

    def forward(self, views: list[torch.Tensor], epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = views[0]
        b = x.shape[0]
        emb = self.encode_patches(cut_tiles(x, self.cfg.tile_frac))
        n, k = self.cfg.permutations, self.cfg.perms_per_image
        labels = (torch.arange(n, device=x.device).expand(b, n) if k <= 0
                  else torch.randint(n, (b, k), device=x.device))
        return self.classify(emb, b, self.perms[labels], labels.reshape(-1))
