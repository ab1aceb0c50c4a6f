"""MoCo's shuffling BatchNorm (He et al. 2020, Section 3.3).

With plain BatchNorm the query and the key of an image are normalised with statistics of the same
batch, and the encoder can lower the InfoNCE loss through that channel instead of learning features.
MoCo breaks it by normalising the key encoder's batch in a different grouping than the query's:

* on one process (the MoCo authors' single-GPU demo): both encoders normalise ``splits`` sub-batches,
  each with its own statistics (``SplitBatchNorm2d``), and the key encoder sees its batch shuffled,
  so that an image's key shares its sub-batch with other images than its query does;
* under DDP (the reference code): every process normalises its own shard, and the keys' inputs are
  gathered from all processes, shuffled with a permutation broadcast from rank 0, encoded shard by
  shard, gathered again and unshuffled (``shuffled_forward``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.layers import BatchNormAct2d
from torch import nn

from .distributed import gather_no_grad, world

DEFAULT_SPLITS = 8  # the MoCo demo's --bn-splits on one GPU


def effective_splits(batch: int, splits: int) -> int:
    """The largest d <= ``splits`` that divides ``batch`` into sub-batches of at least 2 images."""
    for d in range(min(splits, batch // 2), 1, -1):
        if batch % d == 0:
            return d
    return 1


class _SplitMixin:
    """BatchNorm that, in training, normalises ``splits`` sub-batches with their own mean and variance.

    Sub-batch j holds the images j, j + s, j + 2s, ... (one ``batch_norm`` call on the batch reshaped to
    (B/s, s*C, ...)). The running statistics move towards the mean over sub-batches of their statistics;
    evaluation is plain BatchNorm, and the parameters and buffers are BatchNorm's (same state dict keys).
    If ``splits`` does not divide the batch, the largest divisor below it is used (``effective_splits``).
    """

    splits: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = effective_splits(x.shape[0], self.splits)
        if not self.training or s == 1 or not self.track_running_stats:
            return super().forward(x)  # (a norm-act layer applies its activation there itself)
        b, c, rest = x.shape[0], x.shape[1], x.shape[2:]
        self.num_batches_tracked.add_(1)
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        mean, var = self.running_mean.repeat(s), self.running_var.repeat(s)
        weight = self.weight.repeat(s) if self.weight is not None else None
        bias = self.bias.repeat(s) if self.bias is not None else None
        out = F.batch_norm(x.reshape(b // s, s * c, *rest), mean, var, weight, bias, True, momentum, self.eps)
        with torch.no_grad():
            self.running_mean.copy_(mean.view(s, c).mean(0))
            self.running_var.copy_(var.view(s, c).mean(0))
        return self._after_norm(out.reshape(b, c, *rest))

    def _after_norm(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return super().extra_repr() + f", splits={self.splits}"


class SplitBatchNorm2d(_SplitMixin, nn.BatchNorm2d):
    __doc__ = _SplitMixin.__doc__

    def __init__(self, num_features: int, splits: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.splits = splits


class SplitBatchNorm1d(_SplitMixin, nn.BatchNorm1d):
    """SplitBatchNorm2d's rule for (B, C) features (a projection head's BatchNorm)."""

    def __init__(self, num_features: int, splits: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.splits = splits


class SplitBatchNormAct2d(_SplitMixin, BatchNormAct2d):
    """timm's BatchNorm with its activation (EfficientNet's layers): split statistics, then dropout and act."""

    def __init__(self, num_features: int, splits: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.splits = splits

    def _after_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(x))


def _split_copy(child: nn.modules.batchnorm._BatchNorm, splits: int) -> nn.Module:
    common = {"eps": child.eps, "momentum": child.momentum, "affine": child.affine,
              "track_running_stats": child.track_running_stats}
    if type(child) is BatchNormAct2d:
        new: nn.Module = SplitBatchNormAct2d(child.num_features, splits, **common)
        new.act, new.drop = child.act, child.drop
    else:
        cls = SplitBatchNorm2d if type(child) is nn.BatchNorm2d else SplitBatchNorm1d
        new = cls(child.num_features, splits, **common)
    new.load_state_dict(child.state_dict())
    new.train(child.training)
    return new


SPLITTABLE = (nn.BatchNorm1d, nn.BatchNorm2d, BatchNormAct2d)


def convert_split_bn(module: nn.Module, splits: int) -> nn.Module:
    """Replace every BatchNorm in ``module`` (torch's 1d/2d, timm's BatchNormAct2d) by its split version with the
    same state and parameters' values (in place). Another BatchNorm kind would be left unsplit, silently
    weakening shuffle-BN: it is refused."""
    if splits <= 1:
        return module
    for name, child in module.named_children():
        if isinstance(child, _SplitMixin):
            continue
        if type(child) in SPLITTABLE:
            setattr(module, name, _split_copy(child, splits))
        elif isinstance(child, nn.modules.batchnorm._BatchNorm):
            raise TypeError(f"shuffle-BN cannot split {type(child).__name__} ({name}); "
                            f"known: {', '.join(c.__name__ for c in SPLITTABLE)}")
        else:
            convert_split_bn(child, splits)
    return module


@torch.no_grad()
def shuffled_forward(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``fn`` applied to a shuffled batch, outputs returned in the input order.

    One process: a permutation of the local batch (torch's RNG). DDP: the inputs of all ranks are
    gathered, permuted with rank 0's permutation, each rank encodes its shard of the permuted batch,
    and the outputs are gathered and put back in order; each rank keeps the outputs of its own inputs.
    """
    size, rank = world().size, world().rank
    if size == 1:
        perm = torch.randperm(x.shape[0], device=x.device)
        return fn(x[perm])[torch.argsort(perm)]
    b = x.shape[0]
    everything = gather_no_grad(x)
    perm = torch.randperm(everything.shape[0], device=x.device)
    dist.broadcast(perm, 0)
    out = gather_no_grad(fn(everything[perm[rank * b:(rank + 1) * b]]))  # out[i] belongs to input perm[i]
    ordered = torch.empty_like(out)
    ordered[perm] = out
    return ordered[rank * b:(rank + 1) * b]
