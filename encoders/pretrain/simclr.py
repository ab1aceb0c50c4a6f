"""SimCLR (Chen et al. 2020): NT-Xent over the two views, negatives gathered from every rank with gradient."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .augment import AugmentConfig
from .base import Method, MethodConfig, OptimDefaults, embedding_std, encode_views, full_precision, make_backbone, mlp
from .distributed import gather_with_grad, world


@dataclass
class SimCLRConfig(MethodConfig):
    """Published defaults: 2-layer head (hidden = width, BN) to 128, T 0.1 with LARS lr 0.3 x batch/256,
    weight decay 1e-6, 10 warmup epochs then cosine; crops 0.08-1, jitter 0.8 strength, blur p 0.5."""

    dim: int = 128
    temperature: float = 0.1
    optim: OptimDefaults = field(default_factory=lambda: OptimDefaults(
        "lars", lr=0.3, lr_batch=256, weight_decay=1e-6, warmup_epochs=10, cosine=True))
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(
        global_scale=(0.08, 1.0), jitter=(0.8, 0.8, 0.8, 0.2)))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Local anchors (this rank's 2B views) against all 2WB views but themselves; positive = the other view."""
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    b, rank, size = z1.shape[0], world().rank, world().size
    cand = torch.cat([gather_with_grad(z1), gather_with_grad(z2)])  # (2WB, D): all view-1, then all view-2
    anchors = torch.cat([z1, z2])
    logits = anchors @ cand.T / temperature
    local = torch.arange(b, device=z1.device) + rank * b
    self_idx = torch.cat([local, local + size * b])
    pos_idx = torch.cat([local + size * b, local])
    logits[torch.arange(2 * b, device=z1.device), self_idx] = float("-inf")
    return F.cross_entropy(logits, pos_idx)


class SimCLR(Method):
    def __init__(self, cfg: SimCLRConfig, arch: str, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.backbone, width = make_backbone(arch, seed)
        self.projector = mlp([width, width, cfg.dim], bn=True)

    def forward(self, views: list[torch.Tensor], epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z1, z2 = self.projector(encode_views(self.backbone, views[:2])).float().chunk(2)
        with full_precision(z1):
            loss = nt_xent(z1, z2, self.cfg.temperature)
        return loss, {"z_std": embedding_std(z1)}
