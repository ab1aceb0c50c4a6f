"""What the pretext methods share (rotnet, jigsaw, relpatch, exemplar, splitbrain): the settings of Kolesnikov et
al. 2019 ("Revisiting self-supervised visual representation learning"), patches cut from a batch of views, the
patch preprocessing that hides low-level cues, and the patch classifier head.

A pretext method takes its own transformation of the batch inside ``forward`` (rotate, tile, cut patch pairs,
convert to Lab); the view pipeline (augment.py) only crops and, where the method asks, jitters colours. The views
arrive ImageNet-normalised, as every method's do; ``to_unit`` undoes that where a method needs pixel values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.common.taps import IMAGENET_MEAN, IMAGENET_STD

from .base import OptimDefaults, embedding_std


def kolesnikov_optim() -> OptimDefaults:
    """Kolesnikov et al.'s schedule for every pretext task: SGD, momentum 0.9, lr 0.1 per 256 images, weight decay
    1e-4, 5 warmup epochs, 35 epochs. Theirs decays the rate 10x after epochs 15 and 25; the harness's schedules
    are cosine or constant, and the cosine stands in for the steps."""
    return OptimDefaults("sgd", lr=0.1, lr_batch=256, momentum=0.9, weight_decay=1e-4, warmup_epochs=5, cosine=True)


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, 3) + (1,) * (x.dim() - 2)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(shape)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(shape)
    return mean, std


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised images (B, 3, ...) back to RGB in [0, 1]."""
    mean, std = _stats(x)
    return x * std + mean


def from_unit(x: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] to the ImageNet normalisation every backbone sees (and ``harness eval`` feeds)."""
    mean, std = _stats(x)
    return (x - mean) / std


def crop_patches(x: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor, size: int) -> torch.Tensor:
    """Square patches of side ``size`` cut from images ``x`` (B, C, H, W) at per-image, per-patch corners
    ``tops`` / ``lefts`` (B, N) -> (B, N, C, size, size)."""
    steps = torch.arange(size, device=x.device)
    rows = (tops[:, :, None, None] + steps[None, None, :, None]).long()  # (B, N, size, 1)
    cols = (lefts[:, :, None, None] + steps[None, None, None, :]).long()  # (B, N, 1, size)
    batch = torch.arange(x.shape[0], device=x.device)[:, None, None, None]
    return x.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 1, 4, 2, 3)  # (B, N, C, size, size)


def grid_corners(b: int, grid: int, cell: int, size: int, origin: torch.Tensor | int = 0,
                 jitter: tuple[int, int] = (0, 0), device: torch.device | None = None) -> tuple[torch.Tensor, ...]:
    """Top-left corners (B, grid*grid), raster order, of patches of side ``size`` laid on a grid of pitch ``cell``
    from ``origin``, each moved by an offset drawn uniformly from ``jitter`` = (low, high) on each axis."""
    idx = torch.arange(grid * grid, device=device)
    base_r, base_c = (idx // grid) * cell, (idx % grid) * cell
    lo, hi = jitter
    off = torch.randint(lo, hi + 1, (2, b, grid * grid), device=device) if hi > lo else torch.full(
        (2, b, grid * grid), lo, device=device)
    origin = torch.as_tensor(origin, device=device).reshape(-1, 1) if torch.is_tensor(origin) else origin
    return origin + base_r[None] + off[0], origin + base_c[None] + off[1]


def preprocess_patches(patches: torch.Tensor, gray_p: float, standardize: bool) -> torch.Tensor:
    """Kolesnikov et al.'s patch preprocessing against low-level shortcuts (chromatic aberration, colour
    continuity): each patch (..., 3, h, w), given ImageNet-normalised, turns grey (the mean of R, G and B) with
    probability ``gray_p`` on its own, and with ``standardize`` is scaled to zero mean and unit standard deviation
    over its pixels and channels (``tf.image.per_image_standardization``: std floored at 1/sqrt(pixels x 3)).
    Without ``standardize`` the patch keeps the ImageNet normalisation the encoder sees at evaluation."""
    shape = patches.shape
    x = to_unit(patches.reshape(-1, *shape[-3:]).float())
    if gray_p > 0:
        grey = (torch.rand(x.shape[0], 1, 1, 1, device=x.device) < gray_p)
        x = torch.where(grey, x.mean(1, keepdim=True).expand_as(x), x)
    if standardize:
        n = x[0].numel()
        mean = x.mean((1, 2, 3), keepdim=True)
        std = x.std((1, 2, 3), keepdim=True, correction=0).clamp_min(n ** -0.5)
        x = (x - mean) / std
    else:
        x = from_unit(x)
    return x.reshape(shape).to(patches.dtype)


class PatchClassifier(nn.Module):
    """Kolesnikov et al.'s head for the patch tasks: each patch's embedding through a linear layer to
    ``embed_dim`` (the network's 1,000-d "logits"), the patches of one example concatenated in a given order,
    then AlexNet's fc7-fc8: a hidden layer (BatchNorm, ReLU, dropout) and the classes."""

    def __init__(self, width: int, embed_dim: int, patches: int, hidden: int, classes: int, dropout: float):
        super().__init__()
        self.embed = nn.Linear(width, embed_dim)
        self.fc = nn.Sequential(nn.Linear(patches * embed_dim, hidden, bias=False), nn.BatchNorm1d(hidden),
                                nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, classes))

    def forward(self, emb: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """``emb`` (B, P, width): the patch embeddings of B images; ``order`` (B, K, n): for each of K examples
        per image, which n patches to concatenate, in that order -> logits (B * K, classes)."""
        e = self.embed(emb)  # (B, P, E)
        b, k, n = order.shape
        picked = torch.gather(e[:, None].expand(b, k, *e.shape[1:]), 2,
                              order[..., None].expand(b, k, n, e.shape[-1]))  # (B, K, n, E)
        return self.fc(picked.reshape(b * k, n * e.shape[-1]))


def classification_logs(logits: torch.Tensor, labels: torch.Tensor, emb: torch.Tensor) -> dict[str, torch.Tensor]:
    """What every pretext method logs: its pretext accuracy (``acc``) and the backbone embedding's spread."""
    return {"acc": (logits.detach().argmax(1) == labels).float().mean(), "z_std": embedding_std(emb)}


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy in float32 on (possibly bf16) logits."""
    return F.cross_entropy(logits.float(), labels)
