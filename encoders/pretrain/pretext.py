"""What the pretext methods share (rotnet, jigsaw, relpatch, exemplar, splitbrain): the settings of Kolesnikov et
al. 2019 ("Revisiting self-supervised visual representation learning"), patches cut from a batch of views, the
patch preprocessing that hides low-level cues, and the patch classifier head.

A pretext method takes its own transformation of the batch inside ``forward`` (rotate, tile, cut patch pairs,
convert to Lab); the view pipeline (augment.py) only crops and, where the method asks, jitters colours. The views
arrive ImageNet-normalised, as every method's do; ``to_unit`` undoes that where a method needs pixel values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from harness.common.taps import IMAGENET_MEAN, IMAGENET_STD

from .augment import AugmentConfig
from .base import Method, MethodConfig, OptimDefaults, embedding_std, full_precision


def kolesnikov_optim() -> OptimDefaults:
    """Kolesnikov et al.'s schedule for every pretext task: SGD, momentum 0.9, lr 0.1 per 256 images, weight decay
    1e-4, 5 warmup epochs, 35 epochs. Theirs decays the rate 10x after epochs 15 and 25; the harness's schedules
    are cosine or constant, and the cosine stands in for the steps."""
    return OptimDefaults("sgd", lr=0.1, lr_batch=256, momentum=0.9, weight_decay=1e-4, warmup_epochs=5, cosine=True)


@dataclass
class PatchTaskConfig(MethodConfig):
    """What the patch tasks (jigsaw, relpatch) take from Kolesnikov et al.: each patch grey with probability 0.66
    and standardised, a 1,000-d embedding per patch and a 4,096-unit hidden layer with dropout 0.5; 128 images a
    batch, lr 0.1 per 256, 5 warmup epochs, 35 epochs; one crop of area 0.76-1 a step, no colour augmentation."""

    epochs: int = 35
    batch_size: int = 128
    gray_p: float = 0.66
    standardize: bool = True
    embed_dim: int = 1000
    hidden: int = 4096
    dropout: float = 0.5
    optim: OptimDefaults = field(default_factory=kolesnikov_optim)
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(
        global_crops=1, global_scale=(0.76, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0, blur_p=0.0))


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


class PatchTask(Method):
    """A patch task: patches cut from each view, each preprocessed and encoded by the backbone on its own, and a
    ``PatchClassifier`` over ordered sets of one image's patch embeddings."""

    cfg: PatchTaskConfig

    def __init__(self, cfg: PatchTaskConfig, arch: str, seed: int, patches: int, classes: int):
        super().__init__(cfg, arch, seed)
        self.head = PatchClassifier(self.width, cfg.embed_dim, patches, cfg.hidden, classes, cfg.dropout)

    def encode_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """Patches (B, P, C, p, p) preprocessed and encoded -> embeddings (B * P, width)."""
        return self.backbone(preprocess_patches(patches, self.cfg.gray_p, self.cfg.standardize).flatten(0, 1))

    def classify(self, emb: torch.Tensor, b: int, order: torch.Tensor, labels: torch.Tensor
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss and logs of the examples ``order`` (B, K, n) of ``b`` images' patch embeddings, classes
        ``labels`` (B * K)."""
        logits = self.head(emb.view(b, -1, emb.shape[-1]), order)
        with full_precision(logits):
            loss = cross_entropy(logits, labels)
        return loss, classification_logs(logits, labels, emb)
