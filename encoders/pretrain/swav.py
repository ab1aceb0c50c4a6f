"""SwAV (Caron et al. 2020): swapped prediction of online cluster codes, with multi-crop.

Codes come from Sinkhorn-Knopp on the two global crops (equipartition over prototypes within the
batch, plus an optional queue of earlier features); every other crop must predict them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .augment import AugmentConfig
from .base import Method, MethodConfig, OptimDefaults, embedding_std, encode_views, full_precision, mlp
from .distributed import all_reduce_sum, world


@dataclass
class SwAVConfig(MethodConfig):
    """Published defaults: 3,000 prototypes, eps 0.05, 3 iterations, T 0.1, 2048-2048-128 head
    (hidden 2048), prototypes frozen for 1 epoch, queue 3,840 from epoch 15, LARS lr 4.8 at batch 4,096
    with warmup and cosine decay to 0.0048, weight decay 1e-6, multi-crop 2x224 (0.14-1) + 6x96 (0.05-0.14)."""

    epochs: int = 800
    dim: int = 128
    hidden: int = 2048
    prototypes: int = 3000
    epsilon: float = 0.05
    sinkhorn_iters: int = 3
    temperature: float = 0.1
    freeze_prototypes_epochs: int = 1
    queue: int = 3840
    queue_start_epoch: int = 15
    optim: OptimDefaults = field(default_factory=lambda: OptimDefaults(
        "lars", lr=4.8, lr_batch=4096, weight_decay=1e-6, warmup_epochs=10, cosine=True, final_lr_frac=0.001))
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(
        global_crops=2, global_scale=(0.14, 1.0), local_crops=6, local_scale=(0.05, 0.14),
        jitter=(0.8, 0.8, 0.8, 0.2)))


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float, iters: int) -> torch.Tensor:
    """Codes (B, K) from prototype scores (B, K): rows sum to 1, columns approach B/K over the whole
    (all-rank) batch. Sums are all-reduced so DDP gives the codes of the concatenated batch."""
    q = torch.exp(scores.double() / epsilon).T  # (K, B)
    n_batch = q.shape[1] * world().size
    n_proto = q.shape[0]
    q /= all_reduce_sum(q.sum())
    for _ in range(iters):
        q /= all_reduce_sum(q.sum(1, keepdim=True))
        q /= n_proto
        q /= q.sum(0, keepdim=True)
        q /= n_batch
    q *= n_batch
    return q.T.to(scores.dtype)


def swapped_prediction(scores: list[torch.Tensor], codes: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """Mean over code crops i of the cross-entropy of every other crop's softmax(scores / T) against codes[i]."""
    total = scores[0].new_zeros(())
    for i, q in enumerate(codes):
        sub = [-(q * F.log_softmax(s / temperature, dim=1)).sum(1).mean() for v, s in enumerate(scores) if v != i]
        total = total + torch.stack(sub).mean()
    return total / len(codes)


class SwAV(Method):
    def __init__(self, cfg: SwAVConfig, arch: str, seed: int = 0):
        super().__init__(cfg, arch, seed)
        self.projector = mlp([self.width, cfg.hidden, cfg.dim], bn=True)
        self.prototypes = nn.Linear(cfg.dim, cfg.prototypes, bias=False)
        # One queue per global crop, per rank (as in the reference code), filled from queue_start_epoch.
        local_len = max(0, cfg.queue // max(1, world().size))
        self.register_buffer("queue", torch.zeros(cfg.augment.global_crops, local_len, cfg.dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        # the prototypes as the previous step left them: a diagnostic of whether they move (not state)
        self.register_buffer("_prototypes_before", self.prototypes.weight.detach().clone(), persistent=False)

    def forward(self, views: list[torch.Tensor], epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.no_grad():  # prototypes live on the unit sphere
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
            moved = (self.prototypes.weight - self._prototypes_before).norm(dim=1).mean()
            self._prototypes_before.copy_(self.prototypes.weight)
        z = F.normalize(self.projector(encode_views(self.backbone, views)).float(), dim=1)
        with full_precision(z):
            loss, logs = self._swapped(z, views[0].shape[0], epoch)
        logs["proto_step"] = moved
        return loss, logs

    def _swapped(self, z: torch.Tensor, bs: int, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Codes of the global crops (Sinkhorn, with the queue once it is full), then swapped prediction."""
        all_scores = self.prototypes(z)
        scores = list(all_scores.split(bs))
        codes = []
        use_queue = self.training and self.queue.shape[1] > 0 and epoch >= self.cfg.queue_start_epoch
        for i in range(self.cfg.augment.global_crops):
            with torch.no_grad():
                out = scores[i].detach()
                if use_queue:
                    if int(self.queue_filled) >= self.queue.shape[1]:  # use it only once full
                        out = torch.cat([self.queue[i] @ self.prototypes.weight.T, out])
                    self.queue[i, bs:] = self.queue[i, :-bs].clone()
                    self.queue[i, :bs] = z[i * bs:(i + 1) * bs].detach()
                codes.append(sinkhorn(out, self.cfg.epsilon, self.cfg.sinkhorn_iters)[-bs:])
        if use_queue:
            self.queue_filled.add_(bs)
        with torch.no_grad():
            used = torch.cat([c.argmax(1) for c in codes]).unique().numel() / self.cfg.prototypes
            logs = {"z_std": embedding_std(z[:bs]), "codes_used": torch.tensor(float(used)),
                    "code_max": codes[0].max(1).values.mean()}
        return swapped_prediction(scores, codes, self.cfg.temperature), logs

    def on_after_backward(self, epoch: int) -> None:
        if epoch < self.cfg.freeze_prototypes_epochs:
            self.prototypes.weight.grad = None
