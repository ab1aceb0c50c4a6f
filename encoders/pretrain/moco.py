"""MoCo v2 (Chen et al. 2020), with MoCo v1 (He et al. 2020) as its configuration.

A query encoder learns by InfoNCE against one positive key (the other view, encoded by a momentum
copy of the query encoder) and a queue of earlier keys as negatives. Shuffle-BN (shuffle_bn.py) is on
by default, as in the paper's MoCo encoders: split BatchNorm with a shuffled key batch on one process,
the cross-process shuffle under DDP.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .augment import AugmentConfig
from .base import Method, MethodConfig, OptimDefaults, embedding_std, full_precision, make_backbone, mlp
from .distributed import gather_no_grad, world
from .shuffle_bn import DEFAULT_SPLITS, convert_split_bn, shuffled_forward


@dataclass
class MoCoConfig(MethodConfig):
    """MoCo v2 defaults: MLP head 2048-2048-128 (hidden = backbone width), T 0.2, queue 65,536, m 0.999."""

    dim: int = 128
    mlp: bool = True
    queue: int = 65536
    momentum: float = 0.999
    temperature: float = 0.2
    head_bn: bool = False  # BatchNorm in the MLP head's hidden layer (as SimCLR's and MoCo v3's heads)
    last_bn: bool = False  # BatchNorm without affine on the head's output (MoCo v3's projector): centred embeddings
    symmetric: bool = False  # loss of both view orders, both keys enqueued (the MoCo authors' CIFAR demo)
    shuffle_bn: bool = True
    bn_splits: int = 0  # BatchNorm sub-batches per process; 0: 8 on one process (the MoCo demo), 1 under DDP
    optim: OptimDefaults = field(default_factory=lambda: OptimDefaults("sgd", lr=0.03, weight_decay=1e-4,
                                                                      cosine=True))


def mocov1_config() -> MoCoConfig:
    """MoCo v1: linear 128-d head, T 0.07, step schedule (here: constant), no blur, stronger hue jitter."""
    return MoCoConfig(mlp=False, temperature=0.07,
                      optim=OptimDefaults("sgd", lr=0.03, weight_decay=1e-4, cosine=False),
                      augment=AugmentConfig(jitter=(0.4, 0.4, 0.4, 0.4), jitter_p=1.0, blur_p=0.0))


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with the positive in column 0: ``-log softmax([q.k, q.queue] / T)[0]``, batch mean.

    ``q``, ``k`` (B, D) and ``queue`` (N, D) are L2-normalised.
    """
    pos = (q * k).sum(1, keepdim=True)
    neg = q @ queue.T
    logits = torch.cat([pos, neg], 1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


class MoCo(Method):
    def __init__(self, cfg: MoCoConfig, arch: str, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.backbone, width = make_backbone(arch, seed)
        if cfg.mlp:
            self.projector = mlp([width, width, cfg.dim], bn=cfg.head_bn, last_bn=cfg.last_bn)
        elif cfg.last_bn:
            self.projector = mlp([width, cfg.dim], bn=False, last_bn=True)
        else:
            self.projector = nn.Linear(width, cfg.dim)  # MoCo v1 (state dict keys as before)
        if cfg.shuffle_bn:
            self.sync_bn = False  # shuffle-BN replaces SyncBN: each process normalises its own shard
            splits = cfg.bn_splits or (DEFAULT_SPLITS if world().size == 1 else 1)
            convert_split_bn(self.backbone, splits)
            convert_split_bn(self.projector, splits)
        self.key_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.key_projector = copy.deepcopy(self.projector).requires_grad_(False)
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("queue", F.normalize(torch.randn(cfg.queue, cfg.dim, generator=gen), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _momentum_update(self) -> None:
        m = self.cfg.momentum
        for online, key in ((self.backbone, self.key_backbone), (self.projector, self.key_projector)):
            keys, values = list(key.parameters()), [p.detach() for p in online.parameters()]
            torch._foreach_mul_(keys, m)
            torch._foreach_add_(keys, values, alpha=1 - m)

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        """Overwrite the oldest keys (a ring buffer); keys from all ranks, so every rank keeps the same queue."""
        keys = gather_no_grad(keys)
        n, ptr = keys.shape[0], int(self.queue_ptr)
        idx = (torch.arange(n, device=keys.device) + ptr) % self.queue.shape[0]
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.fill_((ptr + n) % self.queue.shape[0])

    def forward(self, views: list[torch.Tensor], epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pairs = [(views[0], views[1]), (views[1], views[0])] if self.cfg.symmetric else [(views[0], views[1])]
        with torch.no_grad():
            # The key encoder moves before it encodes, as in the reference code.
            if self.training:
                self._momentum_update()
            queue = self.queue.clone().detach()
        losses, keys, logs = [], [], {}
        for im_q, im_k in pairs:
            q = F.normalize(self.projector(self.backbone(im_q)).float(), dim=1)
            with torch.no_grad():
                if self.cfg.shuffle_bn and self.training:
                    k = shuffled_forward(self._encode_key, im_k)
                else:
                    k = self._encode_key(im_k)
                if not logs:
                    logs = {"pos": (q * k).sum(1).mean(), "neg": (q @ queue.mean(0)).mean(), "z_std": embedding_std(q)}
            with full_precision(q):
                losses.append(info_nce(q, k, queue, self.cfg.temperature))
            keys.append(k)
        if self.training:
            self._enqueue(torch.cat(keys))
        return sum(losses) / len(losses), logs

    def _encode_key(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.key_projector(self.key_backbone(x)).float(), dim=1)
