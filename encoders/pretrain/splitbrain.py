"""Split-brain autoencoders (Zhang et al. 2017): a view in CIE Lab, one network predicts its colour (ab) from its
lightness (L), another its lightness from its colour, each as per-pixel classification over quantised values.

Targets as Zhang et al.: ab on a grid of 10 (bins centred on multiples of 10, those whose cell holds some sRGB
colour: 261 with kornia's D65 conversion, where Zhang et al.'s gamut keeps 313), L in 50 bins of 2; cross-entropy
on each. Each network predicts from its deepest spatial feature map (a 1x1 convolution to the bins, bilinearly
upsampled) at a quarter of the view's resolution (``target_stride``), the targets being the Lab view averaged
over target_stride x target_stride pixels, then quantised.

Zhang et al. split one network's channels in two halves and evaluate the two halves' features concatenated. The
harness keeps one standard backbone of ``--arch``, which ``harness eval`` loads back and feeds RGB images. So the
two halves are two whole networks of that architecture, and the kept encoder is the L -> ab network
(``backbone``): it sees the view's lightness as an RGB image, the achromatic grey of the same L (Lab (L, 0, 0)
back to RGB, ImageNet-normalised), so an RGB image at evaluation is the kind of input it trained on plus the
colour it never saw. The ab -> L network (``ab_net``) sees (0, a/100, b/100) and is trained, saved in the run
state, and not exported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import kornia
import torch
import torch.nn.functional as F
from torch import nn

from .augment import AugmentConfig
from .base import Method, MethodConfig, OptimDefaults, embedding_std, full_precision, make_backbone
from .pretext import from_unit, kolesnikov_optim, to_unit

L_MAX = 100.0


@dataclass
class SplitBrainConfig(MethodConfig):
    """Zhang et al.'s targets (ab grid 10, 50 L bins of 2) and losses (cross-entropy both ways, equal weights).
    They trained with Adam in Caffe; the harness's optimisers are SGD and LARS, so the schedule is the other pretext
    methods' (SGD, lr 0.1 per 256 images, 5 warmup epochs, 35 epochs, batch 128). Crops of area 0.2-1 with flips,
    no colour jitter or greying (colour is the target)."""

    epochs: int = 35
    batch_size: int = 128
    ab_grid: float = 10.0
    l_bins: int = 50
    target_stride: int = 4
    optim: OptimDefaults = field(default_factory=kolesnikov_optim)
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(
        global_crops=1, global_scale=(0.2, 1.0), jitter_p=0.0, gray_p=0.0, blur_p=0.0))


@cache
def _ab_bins(grid: float) -> torch.Tensor:
    g = torch.linspace(0, 1, 65)
    rgb = torch.stack(torch.meshgrid(g, g, g, indexing="ij")).reshape(1, 3, -1, 1)
    ab = kornia.color.rgb_to_lab(rgb)[0, 1:].reshape(2, -1).T
    return torch.unique(torch.round(ab / grid), dim=0) * grid


def ab_bins(grid: float = 10.0) -> torch.Tensor:
    """(Q, 2) ab bin centres: multiples of ``grid`` whose cell (nearest-centre) holds an sRGB colour, found on a
    65^3 grid of the RGB cube; lexicographic order (a, then b)."""
    return _ab_bins(float(grid)).clone()


def quantise_ab(ab: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Index of the nearest bin centre for each pixel of ``ab`` (B, 2, H, W) -> (B, H, W)."""
    flat = ab.permute(0, 2, 3, 1).reshape(-1, 2).float()
    idx = torch.cdist(flat, bins.float()).argmin(1)
    return idx.view(ab.shape[0], *ab.shape[2:])


def quantise_l(lightness: torch.Tensor, bins: int) -> torch.Tensor:
    """Bin of each lightness value (B, 1, H, W), L in [0, 100] in ``bins`` bins of equal width -> (B, H, W)."""
    return (lightness[:, 0] / (L_MAX / bins)).floor().long().clamp_(0, bins - 1)


def lab_split(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RGB in [0, 1] (B, 3, H, W) -> (Lab, the L -> ab network's input, the ab -> L network's input)."""
    lab = kornia.color.rgb_to_lab(rgb.clamp(0, 1))
    zeros = torch.zeros_like(lab[:, :1])
    grey = kornia.color.lab_to_rgb(torch.cat([lab[:, :1], zeros, zeros], 1), clip=True)
    return lab, from_unit(grey), torch.cat([zeros, lab[:, 1:] / 100], 1)


def deepest_spatial_tap(net: nn.Module) -> str:
    """The name of the last (deepest) spatial tap a backbone declares, derived ones left out."""
    spatial = [t.name for t in net.taps if t.spatial and not t.derived]
    if not spatial:
        raise ValueError("split-brain needs a backbone with a spatial feature map")
    return spatial[-1]


class SplitBrain(Method):
    def __init__(self, cfg: SplitBrainConfig, arch: str, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.backbone, _ = make_backbone(arch, seed)  # L -> ab: the kept encoder
        self.ab_net, _ = make_backbone(arch, seed + 1_000_003)  # ab -> L
        self.tap = deepest_spatial_tap(self.backbone)
        taps = {t.name: t for t in self.backbone.taps}
        self.register_buffer("bins", ab_bins(cfg.ab_grid), persistent=False)
        self.ab_head = nn.Conv2d(taps[self.tap].channels, len(self.bins), 1)
        self.l_head = nn.Conv2d(taps[self.tap].channels, cfg.l_bins, 1)

    def _predict(self, net: nn.Module, head: nn.Module, x: torch.Tensor, size: tuple[int, int]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        out = net(x, (self.tap, "embedding"))
        logits = F.interpolate(head(out[self.tap]).float(), size=size, mode="bilinear", align_corners=False)
        return logits, out["embedding"]

    def forward(self, views: list[torch.Tensor], epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = views[0]
        with full_precision(x):
            lab, grey, chroma = lab_split(to_unit(x.float()))
            target = F.avg_pool2d(lab, self.cfg.target_stride)
            ab_target, l_target = quantise_ab(target[:, 1:], self.bins), quantise_l(target[:, :1], self.cfg.l_bins)
        size = tuple(ab_target.shape[-2:])
        ab_logits, emb = self._predict(self.backbone, self.ab_head, grey.to(x.dtype), size)
        l_logits, _ = self._predict(self.ab_net, self.l_head, chroma.to(x.dtype), size)
        with full_precision(ab_logits):
            loss_ab = F.cross_entropy(ab_logits, ab_target)
            loss_l = F.cross_entropy(l_logits, l_target)
        return loss_ab + loss_l, {
            "acc": (ab_logits.detach().argmax(1) == ab_target).float().mean(),
            "acc_l": (l_logits.detach().argmax(1) == l_target).float().mean(),
            "loss_ab": loss_ab.detach(), "loss_l": loss_l.detach(), "z_std": embedding_std(emb)}
