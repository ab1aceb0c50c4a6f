"""torch.distributed helpers: world info from torchrun, an all-gather that carries gradients, SyncBN.

Contrastive losses need the negatives of every rank; a plain ``all_gather`` cuts the graph, so
``gather_with_grad`` sends each rank's slice of the gradient back to the rank that produced it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world() -> World:
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return World()


def init_from_env(device: torch.device) -> World:
    """Join the process group that torchrun describes in the environment (no-op when not launched by it)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) < 2:
        return World()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return world()


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.batch, ctx.rank = x.shape[0], dist.get_rank()
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # Every rank's loss depends on every slice: sum the gradients, keep our own slice.
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.batch:(ctx.rank + 1) * ctx.batch]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` over ranks along dim 0, gradients flowing back to each rank's own slice."""
    if world().size == 1:
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    if world().size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world().size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, 0)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if world().size > 1:
        dist.all_reduce(x)
    return x


def convert_sync_bn(model: nn.Module) -> nn.Module:
    """Every BatchNorm synchronised across ranks, on any architecture: timm's converter, which turns timm's
    BatchNorm-with-activation layers (EfficientNet) into their synchronised twins with the activation kept,
    where ``nn.SyncBatchNorm.convert_sync_batchnorm`` would drop it."""
    from timm.layers import convert_sync_batchnorm

    return convert_sync_batchnorm(model)


def maybe_sync_bn(model: nn.Module, device: torch.device) -> nn.Module:
    """SyncBN across ranks on GPUs (torch's SyncBatchNorm has no CPU kernel, so gloo runs keep local BN);
    not for a method that sets ``sync_bn = False`` (MoCo's shuffle-BN)."""
    if world().size > 1 and device.type == "cuda" and getattr(model, "sync_bn", True):
        return convert_sync_bn(model)
    return model
