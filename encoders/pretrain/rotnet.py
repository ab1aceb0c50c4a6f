"""RotNet (Gidaris et al. 2018): every image rotated by 0, 90, 180 and 270 degrees, the network says which.

All four rotations of an image go into the same batch (Gidaris et al. found that better than one random rotation
per image). The head is one linear layer on the embedding, as in Kolesnikov et al.'s rotation models (the
network's logits layer). The kept encoder is the backbone; it sees whole images in training, as at evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .augment import AugmentConfig
from .base import Method, MethodConfig, OptimDefaults, full_precision, make_backbone
from .pretext import classification_logs, cross_entropy, kolesnikov_optim

ROTATIONS = 4


@dataclass
class RotNetConfig(MethodConfig):
    """Kolesnikov et al.'s rotation settings: 64 images a batch (x4 rotations), lr 0.1 per 256 images, 5 warmup
    epochs, 35 epochs; Inception crops (area 0.05-1) with flips and colour distortion (brightness ~32/255,
    contrast and saturation 0.5-1.5, hue 0.2), one view per image."""

    epochs: int = 35
    batch_size: int = 64
    optim: OptimDefaults = field(default_factory=kolesnikov_optim)
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(
        global_crops=1, global_scale=(0.05, 1.0), jitter=(0.125, 0.5, 0.5, 0.2), jitter_p=1.0, gray_p=0.0,
        blur_p=0.0))


def rotate_batch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, S, S) -> the 4B rotated images, rotation k (k x 90 degrees counter-clockwise) for the k-th block of
    B, and their labels k."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotnet needs square views, got {tuple(x.shape[-2:])}")
    rotated = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(ROTATIONS)])
    labels = torch.arange(ROTATIONS, device=x.device).repeat_interleave(x.shape[0])
    return rotated, labels


class RotNet(Method):
    def __init__(self, cfg: RotNetConfig, arch: str, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.backbone, width = make_backbone(arch, seed)
        self.head = nn.Linear(width, ROTATIONS)

    def forward(self, views: list[torch.Tensor], epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, labels = rotate_batch(views[0])
        emb = self.backbone(x)
        logits = self.head(emb)
        with full_precision(logits):
            loss = cross_entropy(logits, labels)
        return loss, classification_logs(logits, labels, emb)
