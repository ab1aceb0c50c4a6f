"""Vision transformers as frozen encoders: one tap per transformer block, on the patch grid.

Every block's output is a tap (``block1`` .. ``blockD``): its patch tokens (class, distillation and
register tokens dropped) laid back on the patch grid as a (B, C, H/p, W/p) map, so every block tap
has stride p, the patch size. A ViT has nothing finer: the dense heads build a simple feature
pyramid (ViTDet) from the last block themselves, in trained layers of the head (heads/pyramid.py),
never in the frozen encoder.

``embedding`` follows the checkpoint's own convention, which the encoder card states: the class
token after the final norm (DINO, MoCo v3, DeiT, CLIP) or the mean of the patch tokens (through
``fc_norm`` where the model has one: MAE fine-tuning, BEiT).

Inputs of any size work: the position embedding is interpolated to the input's grid
(``dynamic_img_size``), and a side that is not a multiple of the patch size is padded on the
bottom/right to the next multiple (``dynamic_img_pad``); the heads resize their output to the input.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from harness.common.errors import HarnessError

from .base import Tap, TapModel

# timm's ``global_pool`` -> how the pooled ``embedding`` is made, as the card says it.
POOLING = {
    "token": "class token after the final norm",
    "avg": "mean of the patch tokens (then fc_norm where the model has one)",
    "avgmax": "mean + max of the patch tokens",
    "max": "max of the patch tokens",
    "map": "attention pooling of the patch tokens",
}


def patch_size(net: nn.Module) -> int:
    patch = net.patch_embed.patch_size
    return int(patch[0] if isinstance(patch, (tuple, list)) else patch)


class ViTTaps(TapModel):
    """A timm ``VisionTransformer`` (or a model with its ``blocks`` / ``patch_embed`` /
    ``forward_intermediates`` interface): per-block patch-grid taps and the pooled embedding."""

    def __init__(self, net: nn.Module):
        super().__init__()
        for attr in ("blocks", "patch_embed", "forward_intermediates", "forward_head"):
            if not hasattr(net, attr):
                raise TypeError(f"{type(net).__name__} is not a timm-style vision transformer (no {attr})")
        self.net = net
        self.depth = len(net.blocks)
        self.patch = patch_size(net)
        width = int(net.embed_dim)
        pool = getattr(net, "global_pool", "token") or ("token" if getattr(net, "has_class_token", True) else "avg")
        self.pool = pool
        self.taps = tuple(Tap(f"block{i}", width, self.patch) for i in range(1, self.depth + 1)) + (
            Tap("embedding", int(net.num_features), None),)

    @property
    def embedding_rule(self) -> str:
        return POOLING.get(self.pool, self.pool)

    def card(self) -> dict[str, Any]:
        """What the encoder card says of this model (``EncoderInfo.extra``)."""
        return {"patch_size": self.patch, "depth": self.depth, "embedding": self.embedding_rule,
                "prefix_tokens": int(getattr(self.net, "num_prefix_tokens", 1))}

    def _pool(self, final: torch.Tensor) -> torch.Tensor:
        if getattr(self.net, "global_pool", "") in POOLING:
            return self.net.forward_head(final, pre_logits=True)
        prefix = int(getattr(self.net, "num_prefix_tokens", 1))
        return final[:, 0] if self.pool == "token" else final[:, prefix:].mean(1)

    def forward(self, x: torch.Tensor, taps: tuple[str, ...]) -> dict[str, torch.Tensor]:
        with input_size_errors(x):
            return self._forward(x, taps)

    def _forward(self, x: torch.Tensor, taps: tuple[str, ...]) -> dict[str, torch.Tensor]:
        blocks = {t: int(t[5:]) - 1 for t in taps if t != "embedding"}
        wanted = sorted(set(blocks.values()))
        out: dict[str, torch.Tensor] = {}
        if "embedding" in taps:
            final, inter = self.net.forward_intermediates(x, indices=wanted or [self.depth - 1], output_fmt="NCHW")
            out["embedding"] = self._pool(final)
        else:
            inter = self.net.forward_intermediates(x, indices=wanted, output_fmt="NCHW", intermediates_only=True,
                                                   stop_early=True)
        by_index = dict(zip(wanted, inter[: len(wanted)], strict=True)) if wanted else {}
        out.update({t: by_index[i] for t, i in blocks.items()})
        return {t: out[t] for t in taps}


@contextmanager
def input_size_errors(x: torch.Tensor):
    """An architecture that takes only its native input size (timm asserts it) fails in one line
    that says what to do, not with an internal assertion."""
    try:
        yield
    except AssertionError as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else "assertion failed"
        raise HarnessError(f"this architecture cannot take a {x.shape[-2]}x{x.shape[-1]} input ({msg}); it takes "
                           "only its native size: run with --resolution set to it (e.g. 224)") from None


def vit_kwargs() -> dict[str, Any]:
    """What every ViT built here is created with: any input size (interpolated positions, padding)."""
    return {"dynamic_img_size": True, "dynamic_img_pad": True}
