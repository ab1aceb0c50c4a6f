"""RevNet-50 (Gomez et al. 2017) as Kolesnikov et al. (2019, Section 3.1) define it: ``revnet50`` (k = 4)
and ``revnet50_xK``.

A reversible unit splits its input channel-wise into halves ``x1, x2`` and returns the concatenation
``(x2, x1 + F(x2))``, where ``F`` is a pre-activation bottleneck on half the channels without a shortcut
(BN-ReLU-1x1 to C/8, BN-ReLU-3x3, BN-ReLU-1x1 back to C/2). Two such units make one unit of Gomez et al.
As in the authors' code: the 7x7 stride-2 stem convolution maps to ``64k`` channels directly (a
reversible unit cannot change its width) and a 3x3 stride-2 max-pool follows; stages of 3, 4, 6, 3 units
work at ``64k, 128k, 256k, 512k`` channels (ResNet-50's widths and depth); between stages a 2x2
average pool (stride 2) and zero channels padded on both sides double the width; after the last stage
BN and ReLU (the paper's main RevNet50 row; its "(-)" variant drops that ReLU), then the global average.

Why reversible: a unit's input is computed from its output (``x2 = y[:C/2]``, ``x1 = y[C/2:] - F(x2)``),
so training need not keep activations inside a stage. ``RevStage`` stores only the stage's output and,
in backward, walks the units from the last: reconstruct the input, recompute ``F`` with autograd on,
back-propagate through it (``_ReversibleStage``). BatchNorm running statistics are put back after the
recomputation, so a step updates them once, as without it. The reversible stream is kept in float32
under autocast, so reconstruction errors stay at float32 rounding. ``benchmarks/revnet_memory.py``
measures what this saves.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from . import ArchSpec, WidenedFamily, register_arch, register_widened
from ._base import StagedTaps, seeded

LAYERS = (3, 4, 6, 3)


class ResidualFunction(nn.Module):
    """``F`` of a reversible unit: a pre-activation bottleneck on ``half`` channels, without a shortcut."""

    def __init__(self, half: int):
        super().__init__()
        mid = half // 4
        self.bn1, self.conv1 = nn.BatchNorm2d(half), nn.Conv2d(half, mid, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(mid), nn.Conv2d(mid, mid, 3, padding=1, bias=False)
        self.bn3, self.conv3 = nn.BatchNorm2d(mid), nn.Conv2d(mid, half, 1, bias=False)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(self.relu(self.bn1(x)))
        y = self.conv2(self.relu(self.bn2(y)))
        return self.conv3(self.relu(self.bn3(y)))


class RevUnit(nn.Module):
    """``(x1, x2) -> (x2, x1 + F(x2))``, channel halves."""

    def __init__(self, channels: int):
        super().__init__()
        self.f = ResidualFunction(channels // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        return torch.cat([x2, x1 + self.f(x2).to(x1.dtype)], dim=1)


@contextmanager
def _statistics_kept(module: nn.Module):
    """BatchNorm running statistics (and step counters) restored on exit: a recomputation must not count."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
             and m.track_running_stats]
    saved = [(m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, mean, var, count in saved:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


class _ReversibleStage(torch.autograd.Function):
    """A stage of reversible units that keeps only its output for backward.

    ``apply(x, stage, *params)``: the parameters are inputs so that autograd (and DDP's hooks) receive
    their gradients from ``backward``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, stage: RevStage, *params: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        device = x.device.type
        ctx.stage, ctx.n_params = stage, len(params)
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        with torch.no_grad():
            y = stage.run(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):  # type: ignore[override]
        (y,) = ctx.saved_tensors
        stage: RevStage = ctx.stage
        device, enabled, dtype = ctx.autocast
        grads: dict[nn.Parameter, torch.Tensor] = {}
        y, grad_y = y.detach(), grad_y.contiguous()
        with _statistics_kept(stage), torch.autocast(device, dtype=dtype, enabled=enabled):
            for unit in reversed(stage.units):
                half = y.shape[1] // 2
                x2, y1 = y[:, :half], y[:, half:]
                g_x2_direct, g_y1 = grad_y[:, :half], grad_y[:, half:]
                params = [p for p in unit.parameters() if p.requires_grad]
                with torch.enable_grad():
                    x2_leaf = x2.detach().requires_grad_(True)
                    f = unit.f(x2_leaf)
                    g_x2_f, *g_params = torch.autograd.grad(f, [x2_leaf, *params], g_y1.to(f.dtype))
                for p, g in zip(params, g_params, strict=True):
                    grads[p] = grads[p] + g if p in grads else g
                with torch.no_grad():
                    x1 = y1 - f.detach().to(y1.dtype)
                    y = torch.cat([x1, x2], dim=1)
                    grad_y = torch.cat([g_y1, g_x2_direct + g_x2_f.to(g_x2_direct.dtype)], dim=1)
        wanted = [p for p in stage.parameters() if p.requires_grad]
        return (grad_y, None, *(grads.get(p) for p in wanted))


class RevStage(nn.Module):
    """Reversible units at one width; ``reversible`` (on by default) chooses the memory-saving backward."""

    def __init__(self, channels: int, units: int):
        super().__init__()
        self.units = nn.ModuleList(RevUnit(channels) for _ in range(units))
        self.reversible = True

    def run(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            x = unit(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()  # the reversible stream stays float32 (autocast still runs F's convolutions in half)
        params = [p for p in self.parameters() if p.requires_grad]
        if self.reversible and torch.is_grad_enabled() and (x.requires_grad or params):
            return _ReversibleStage.apply(x, self, *params)
        return self.run(x)


def pool_and_double(x: torch.Tensor, pool: bool = True) -> torch.Tensor:
    """Between stages: 2x2 average pool, stride 2 (windows cut by the border averaged over what is
    inside, as TensorFlow's SAME padding), then zero channels on both sides to double the width."""
    if pool:
        x = F.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False)
    c = x.shape[1]
    return F.pad(x, (0, 0, 0, 0, c // 2, c - c // 2))


@contextmanager
def _dilated_stage(stage: RevStage, dilation: int = 2):
    """The stage's 3x3 convolutions dilated (its input then comes unpooled): the os16 geometry."""
    convs = [u.f.conv2 for u in stage.units]
    for c in convs:
        c.dilation, c.padding = (dilation, dilation), (dilation, dilation)
    try:
        yield stage
    finally:
        for c in convs:
            c.dilation, c.padding = (1, 1), (1, 1)


class RevNet(StagedTaps):
    def __init__(self, k: int = 4, layers: tuple[int, ...] = LAYERS):
        super().__init__()
        width = 64 * k
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        widths = [width * 2**i for i in range(len(layers))]
        for i, (w, n) in enumerate(zip(widths, layers, strict=True), start=1):
            self.add_module(f"layer{i}", RevStage(w, n))
        self.finish(width, widths)

    @property
    def stages(self) -> list[RevStage]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def set_reversible(self, on: bool) -> RevNet:
        """Reversible backward on (default) or plain autograd through the same units (for comparison)."""
        for s in self.stages:
            s.reversible = on
        return self

    def stage_input(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Between stages the width doubles (a reversible unit cannot change it): ``pool_and_double``."""
        return pool_and_double(x) if i > 1 else x

    def dilated_block4(self, block3: torch.Tensor) -> torch.Tensor:
        with _dilated_stage(self.layer4):
            return self.layer4(pool_and_double(block3, pool=False))


CARD = {"embedding": "global average of block4 after the final BN-ReLU (the pre-logits)",
        "paper": "Gomez et al. 2017; unit and widths as Kolesnikov et al. 2019", "source": "this project",
        "reversible": "activations inside a stage recomputed in backward (benchmarks/revnet_memory.py)"}


def _build(k: int, seed: int) -> RevNet:
    return seeded(seed, lambda: RevNet(k))


register_widened(WidenedFamily("revnet50", _build, "revnet", "RevNet-50 (reversible units), widths x k/4", CARD))
register_arch(ArchSpec("revnet50", lambda seed: _build(4, seed), "revnet", "RevNet-50, standard width (k=4)",
                       {**CARD, "widening_factor": 4}))
