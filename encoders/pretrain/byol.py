"""BYOL (Grill et al. 2020): an online network predicts a slow-moving target network's projection."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .augment import AugmentConfig
from .base import (
    Method,
    MethodConfig,
    OptimDefaults,
    cosine_momentum,
    ema_update,
    embedding_std,
    encode_views,
    full_precision,
    mlp,
)


@dataclass
class BYOLConfig(MethodConfig):
    """Published defaults: projector/predictor 4096-256 with BN, target momentum 0.996 -> 1 (cosine),
    LARS lr 0.2 x batch/256, weight decay 1.5e-6, 10 warmup epochs then cosine; crops 0.08-1."""

    epochs: int = 1000
    dim: int = 256
    hidden: int = 4096
    momentum: float = 0.996
    # the predictor's rate over the encoder's (1 in BYOL; Tian et al. 2021 found a faster predictor helps
    # non-contrastive learning, SimSiam keeps the predictor's rate from decaying)
    predictor_lr_mult: float = 1.0
    # True forwards each view through the networks on its own, as the BYOL authors' implementation does, so that
    # every BatchNorm normalises over one view's batch; False (as measured so far) batches the two views together
    bn_per_view: bool = False
    optim: OptimDefaults = field(default_factory=lambda: OptimDefaults(
        "lars", lr=0.2, lr_batch=256, weight_decay=1.5e-6, warmup_epochs=10, cosine=True))
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(global_scale=(0.08, 1.0),
                                                                         jitter=(0.4, 0.4, 0.2, 0.1)))


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """2 - 2 cos(p, z) averaged over the batch (z is the target, no gradient)."""
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=1)).mean()


class BYOL(Method):
    def __init__(self, cfg: BYOLConfig, arch: str, seed: int = 0):
        super().__init__(cfg, arch, seed)
        self.projector = mlp([self.width, cfg.hidden, cfg.dim], bn=True)
        self.predictor = mlp([cfg.dim, cfg.hidden, cfg.dim], bn=True)
        self.target_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.register_buffer("tau", torch.tensor(cfg.momentum))

    def param_groups(self) -> list[dict]:
        if self.cfg.predictor_lr_mult == 1.0:
            return super().param_groups()
        head = set(map(id, self.predictor.parameters()))
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in head]
        return [{"params": rest}, {"params": list(self.predictor.parameters()), "lr_mult": self.cfg.predictor_lr_mult}]

    def forward(self, views: list[torch.Tensor], epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.cfg.bn_per_view:
            z = torch.cat([self.projector(self.backbone(v)) for v in views[:2]])
            p1, p2 = (self.predictor(zv).float() for zv in z.chunk(2))
            with torch.no_grad():
                t1, t2 = (self.target_projector(self.target_backbone(v)).float() for v in views[:2])
        else:
            z = self.projector(encode_views(self.backbone, views[:2]))
            p1, p2 = self.predictor(z).float().chunk(2)
            with torch.no_grad():
                t1, t2 = self.target_projector(encode_views(self.target_backbone, views[:2])).float().chunk(2)
        with full_precision(p1):
            loss = (byol_loss(p1, t2) + byol_loss(p2, t1)) / 2
        return loss, {"z_std": embedding_std(z[:p1.shape[0]]),
                                                                "target_std": embedding_std(t1)}

    @torch.no_grad()
    def on_after_step(self, progress: float) -> None:
        ema_update(self.target_backbone, self.backbone, float(self.tau))
        ema_update(self.target_projector, self.projector, float(self.tau))
        self.tau.fill_(cosine_momentum(self.cfg.momentum, progress))
