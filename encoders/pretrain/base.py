"""What every method shares: a backbone of any registered architecture (its embedding out), MLP heads, optimiser
defaults.

A method is an ``nn.Module`` whose ``forward(views, epoch)`` returns the loss; everything it must carry
across a restart (queues, target networks) lives in its parameters and buffers, so that ``state_dict``
is the whole method state.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn

from encoders.archs import arch_names, build_arch, is_arch, pattern_hint
from harness.common.errors import UsageError, unknown_name

from .augment import AugmentConfig


@dataclass
class OptimDefaults:
    """Published optimiser settings; ``lr`` is for ``lr_batch`` images and scales linearly with the batch."""

    name: str = "sgd"  # sgd | lars
    lr: float = 0.03
    lr_batch: int = 256
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.0
    cosine: bool = True
    final_lr_frac: float = 0.0


@dataclass
class MethodConfig:
    """Fields shared by all methods; subclasses add theirs. ``epochs``/``batch_size`` are the published ones."""

    epochs: int = 200
    batch_size: int = 256
    optim: OptimDefaults = field(default_factory=OptimDefaults)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def _coerce(value: str, current: Any) -> Any:
    if isinstance(current, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true/false, got {value!r}")
    if isinstance(current, int):
        return int(value)
    if isinstance(current, float):
        return float(value)
    if isinstance(current, tuple):
        parts = [p for p in value.replace("(", "").replace(")", "").split(",") if p.strip()]
        if len(parts) != len(current):
            raise ValueError(f"expected {len(current)} comma-separated numbers, got {value!r}")
        return tuple(type(c)(p) for c, p in zip(current, parts, strict=True))
    return value


def apply_overrides(cfg: MethodConfig, overrides: dict[str, str]) -> MethodConfig:
    """``key=value`` settings from the CLI; ``optim.lr`` / ``augment.blur_p`` reach the nested records."""
    for key, value in overrides.items():
        target, name = cfg, key
        if "." in key:
            head, name = key.split(".", 1)
            target = getattr(cfg, head, None)
            if target is None or not hasattr(target, "__dataclass_fields__"):
                raise UsageError(f"--set {key}: {head!r} is not a group of settings")
        known = [f.name for f in fields(target)]
        if name not in known:
            raise UsageError(f"--set {key}: unknown setting {name!r}; known: {', '.join(known)}")
        try:
            setattr(target, name, _coerce(value, getattr(target, name)))
        except ValueError as exc:
            raise UsageError(f"--set {key}={value}: {exc}") from None
    return cfg


def check_arch(arch: str) -> None:
    """A usage error now, before any data is prepared, unless ``arch`` names an architecture."""
    try:
        if not is_arch(arch):
            raise unknown_name("architecture", arch, arch_names(), hint=pattern_hint())
    except UsageError as exc:
        raise UsageError(f"--arch: {exc}") from None


def make_backbone(arch: str, seed: int) -> tuple[nn.Module, int]:
    """The backbone a method trains, and its embedding width (which every method sizes its projector from).

    Any architecture of ``encoders.archs`` (torchvision ResNets, ResNet v2 and RevNet with widening factors,
    VGG-19-BN, MobileNetV2, ShuffleNetV2, SqueezeNet, EfficientNet-lite0, ViTs), seeded from ``seed``. Called
    on images it returns their embedding; its state dict is the ``harness`` checkpoint's, which ``harness eval``
    loads back strictly into ``build_arch(arch)``. For torchvision ResNets the weights and state dict keys are
    torchvision's (without ``fc``), as before.
    """
    try:
        net = build_arch(arch, seed)
    except UsageError as exc:
        raise UsageError(f"--arch: {exc}") from None
    width = {t.name: t for t in net.taps}["embedding"].channels
    return net, width


def mlp(dims: list[int], bn: bool, last_bn: bool = False) -> nn.Sequential:
    """Linear layers with ReLU (and BN) between; ``dims = [in, hidden..., out]``."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        last = i == len(dims) - 2
        layers.append(nn.Linear(a, b, bias=not (bn and not last) and not (last and last_bn)))
        if not last:
            if bn:
                layers.append(nn.BatchNorm1d(b))
            layers.append(nn.ReLU(inplace=True))
        elif last_bn:
            layers.append(nn.BatchNorm1d(b, affine=False))
    return nn.Sequential(*layers)


class Method(nn.Module):
    """Base class: ``backbone`` is the encoder we keep; ``forward(views, epoch) -> (loss, logs)``, where
    ``logs`` are detached scalar diagnostics (averaged per epoch into the run history)."""

    backbone: nn.Module
    sync_bn: bool = True  # SyncBatchNorm under DDP on GPUs (MoCo's shuffle-BN turns it off)

    def __init__(self, cfg: MethodConfig | None = None, arch: str | None = None, seed: int = 0):
        """With ``arch``: keep ``cfg`` and build the backbone (``make_backbone``), whose embedding width
        ``width`` sizes the method's heads."""
        super().__init__()
        if arch is not None:
            self.cfg = cfg
            self.backbone, self.width = make_backbone(arch, seed)

    def forward(self, views: list[torch.Tensor], epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def param_groups(self) -> list[dict]:
        """The optimiser's parameter groups; a group's ``lr_mult`` scales the scheduled rate (BYOL's predictor)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def on_after_backward(self, epoch: int) -> None:
        """Hook between backward and the optimiser step (SwAV freezes its prototypes here)."""

    @torch.no_grad()
    def on_after_step(self, progress: float) -> None:
        """Hook after the optimiser step; ``progress`` in [0, 1] over the whole run (momentum encoders)."""


def encode_views(backbone: nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
    """Backbone embeddings of all views, one forward per resolution (multi-crop), in view order."""
    out, i = [], 0
    while i < len(views):
        j = i
        while j < len(views) and views[j].shape[-1] == views[i].shape[-1]:
            j += 1
        out.append(backbone(torch.cat(views[i:j])))
        i = j
    return torch.cat(out)


def full_precision(x: torch.Tensor):
    """A context in which autocast is off, for losses computed in float32 on (cast) embeddings."""
    return torch.autocast(x.device.type, enabled=False)


@torch.no_grad()
def embedding_std(z: torch.Tensor) -> torch.Tensor:
    """Per-dimension standard deviation of the L2-normalised embeddings, averaged over dimensions.

    The collapse check of SimSiam (Chen & He 2021): 0 when every sample maps to one point, about
    1/sqrt(d) when the embeddings spread over the sphere (0.088 for d = 128).
    """
    return torch.nn.functional.normalize(z.detach().float(), dim=1).std(0).mean()


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- m * target + (1 - m) * online, for parameters; BN statistics stay the target's own."""
    targets, values = list(target.parameters()), [p.detach() for p in online.parameters()]
    torch._foreach_mul_(targets, momentum)
    torch._foreach_add_(targets, values, alpha=1 - momentum)


def cosine_momentum(base: float, progress: float) -> float:
    """BYOL's schedule: from ``base`` to 1 along a cosine."""
    return 1 - (1 - base) * (math.cos(math.pi * progress) + 1) / 2
