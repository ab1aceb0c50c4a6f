"""Exemplar (Dosovitskiy et al. 2014), with the triplet term of Kolesnikov et al. 2019 (after Doersch & Zisserman
2017): every image of the batch is a class of its own, its heavily augmented copies the class's examples.

Two terms on the L2-normalised output of a linear layer on the embedding (``embed_dim``, Kolesnikov et al.'s
1,000-d logits layer):

* instance classification within the batch (``cls_weight``): each copy is classified among the batch's images by
  its cosine similarity to each image's prototype, the normalised mean of that image's copies (its own image's
  without itself), at temperature ``temperature``. Exemplar-CNN's classifier has one weight vector per training
  image; the training loop hands a method its views, not the images' indices, so the prototypes are the batch's.
* the semi-hard triplet loss (Schroff et al. 2015; ``triplet_weight``, margin 0.5) on squared distances, as
  Kolesnikov et al. train Exemplar: for each pair of copies of one image, the nearest copy of another image that
  is farther than the positive (the farthest one where none is).

Kolesnikov et al.'s own Exemplar is the triplet term alone (``--set cls_weight=0``). The kept encoder is the
backbone; it sees whole (augmented) images in training, as at evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .augment import AugmentConfig
from .base import Method, MethodConfig, OptimDefaults, embedding_std, full_precision
from .pretext import kolesnikov_optim, preprocess_patches


@dataclass
class ExemplarConfig(MethodConfig):
    """Kolesnikov et al.'s Exemplar: 64 images a batch, 8 Inception-preprocessed copies each (crops of area 0.05-1,
    flips, colour distortion), each grey with probability 0.66 and standardised, 1,000-d embedding, triplet
    margin 0.5; lr 0.1 per 256 images, 5 warmup epochs, 35 epochs. The number of copies is
    ``augment.global_crops``."""

    epochs: int = 35
    batch_size: int = 64
    embed_dim: int = 1000
    margin: float = 0.5
    triplet_weight: float = 1.0
    cls_weight: float = 1.0
    temperature: float = 0.1
    standardize: bool = True
    optim: OptimDefaults = field(default_factory=kolesnikov_optim)
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(
        global_crops=8, global_scale=(0.05, 1.0), jitter=(0.125, 0.5, 0.5, 0.2), jitter_p=1.0, gray_p=0.66,
        blur_p=0.0))


def exemplar_labels(images: int, copies: int, device: torch.device | None = None) -> torch.Tensor:
    """The class of each copy when the copies come view by view (copy v of image b at index v * images + b)."""
    return torch.arange(images, device=device).repeat(copies)


def semihard_triplet_loss(z: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """FaceNet's semi-hard triplet loss on squared Euclidean distances, averaged over all (anchor, positive) pairs;
    every class must have the same number (>= 2) of members."""
    n = z.shape[0]
    d = torch.cdist(z, z).square()
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    per = int(same[0].sum()) - 1
    pos = (same & ~eye).nonzero()[:, 1].view(n, per)  # (N, per): each anchor's positives
    d_ap = torch.gather(d, 1, pos)  # (N, per)
    d_an = d[:, None, :].expand(n, per, n)
    neg = ~same[:, None, :]
    semi = torch.where(neg & (d_an > d_ap[..., None]), d_an, torch.inf).amin(2)
    hardest = torch.where(~same, d, -torch.inf).amax(1, keepdim=True).expand(n, per)
    d_neg = torch.where(torch.isfinite(semi), semi, hardest)
    return F.relu(d_ap - d_neg + margin).mean()


def batch_instance_logits(z: torch.Tensor, labels: torch.Tensor, images: int, temperature: float) -> torch.Tensor:
    """Logits (N, images) of each normalised copy against each image's prototype: the normalised mean of the
    image's copies, its own image's without the copy itself."""
    sums = torch.zeros(images, z.shape[1], dtype=z.dtype, device=z.device).index_add_(0, labels, z)
    logits = z @ F.normalize(sums, dim=1).T
    own = (z * F.normalize(sums[labels] - z, dim=1)).sum(1)
    logits = logits.scatter(1, labels[:, None], own[:, None])
    return logits / temperature


class Exemplar(Method):
    def __init__(self, cfg: ExemplarConfig, arch: str, seed: int = 0):
        super().__init__(cfg, arch, seed)
        self.head = nn.Linear(self.width, cfg.embed_dim)

    def forward(self, views: list[torch.Tensor], epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if len(views) < 2:
            raise ValueError("exemplar needs at least 2 copies of each image (augment.global_crops)")
        b = views[0].shape[0]
        x = torch.cat(views)
        if self.cfg.standardize:
            x = preprocess_patches(x, 0.0, True)
        emb = self.backbone(x)
        labels = exemplar_labels(b, len(views), x.device)
        with full_precision(emb):
            z = F.normalize(self.head(emb.float()), dim=1)
            logits = batch_instance_logits(z, labels, b, self.cfg.temperature)
            cls = F.cross_entropy(logits, labels)
            triplet = semihard_triplet_loss(z, labels, self.cfg.margin)
        loss = self.cfg.cls_weight * cls + self.cfg.triplet_weight * triplet
        return loss, {"acc": (logits.detach().argmax(1) == labels).float().mean(), "z_std": embedding_std(emb),
                      "triplet": triplet.detach(), "cls": cls.detach()}
