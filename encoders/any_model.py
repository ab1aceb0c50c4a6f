"""Any torchvision or timm model as a frozen encoder: ``tv:NAME`` and ``timm:NAME``.

Taps are declared from the model itself, never hard-coded per architecture:

* CNNs: the last feature map at each stride is a tap, named by its stride as for ResNet
  (2 -> ``conv``, 4 -> ``block1``, 8 -> ``block2``, 16 -> ``block3``, 32 -> ``block4``); timm
  gives these through ``features_only`` / ``feature_info``, torchvision models through
  ``create_feature_extractor`` after one probe forward that measures each node's stride: at each
  stride the shallowest-named graph node, last in graph order (torchvision ResNets use ResNetTaps
  as is). For inverted-residual nets (MobileNet) that can be the expansion conv feeding the next
  downsampling block rather than the block output; prefer ``timm:`` there, whose taps are declared.
  ``embedding`` is the global average of the deepest map (exactly ResNet's pooled vector).
* ViTs (timm models whose features all share one stride, e.g. ``timm:vit_tiny_patch16_224``):
  ``block1..block4`` are the outputs of the transformer blocks at 1/4, 1/2, 3/4 and the full
  depth; their patch tokens (class/register tokens dropped) are laid back on the patch grid as
  (B, C, H/p, W/p) maps, so every block tap has stride p (the patch size) and there is no
  ``conv`` tap. ``embedding`` is the model's own pre-logits vector (class token after the final
  norm, or the token mean for models pooled that way). Inputs of any size divisible by p work
  (``dynamic_img_size``).

Weights are random (``pretrained=False``): building never touches the network.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torchvision
from torch import nn

from harness.common.errors import HarnessError, UsageError

from .base import EncoderInfo, FrozenEncoder, Tap, TapModel
from .resnet import ResNetTaps

STRIDE_TAPS = {2: "conv", 4: "block1", 8: "block2", 16: "block3", 32: "block4"}
PROBE_SIZE = 224


def _seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """Build with a fixed seed without disturbing the caller's random stream."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return build()
    finally:
        torch.random.set_rng_state(state)


def _gap(x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


def _stride_taps(reductions: list[int], channels: list[int]) -> dict[str, tuple[int, int]]:
    """tap name -> (feature index, channels): the last feature at each known stride."""
    chosen: dict[str, tuple[int, int]] = {}
    for i, (r, c) in enumerate(zip(reductions, channels, strict=True)):
        if r in STRIDE_TAPS:
            chosen[STRIDE_TAPS[r]] = (i, c)
    return chosen


class FeatureListTaps(TapModel):
    """A model returning a list of maps (timm ``features_only``) with taps named by stride."""

    def __init__(self, net: nn.Module, reductions: list[int], channels: list[int]):
        super().__init__()
        self.net = net
        chosen = _stride_taps(reductions, channels)
        if not chosen:
            raise HarnessError(f"model has no feature maps at strides {sorted(STRIDE_TAPS)} (found {reductions})")
        self.index = {name: i for name, (i, _) in chosen.items()}
        self.deepest = max(self.index, key=lambda n: self.index[n])
        order = sorted(chosen, key=lambda n: chosen[n][0])
        self.taps = tuple(Tap(n, chosen[n][1], next(s for s, t in STRIDE_TAPS.items() if t == n)) for n in order) + (
            Tap("embedding", chosen[self.deepest][1], None),)

    def forward(self, x: torch.Tensor, taps: tuple[str, ...]) -> dict[str, torch.Tensor]:
        feats = self.net(x)
        if isinstance(feats, dict):
            feats = list(feats.values())
        out = {n: feats[i] for n, i in self.index.items()}
        if "embedding" in taps:
            out["embedding"] = _gap(out[self.deepest])
        return {t: out[t] for t in taps}


class ViTTaps(TapModel):
    """A timm ViT: block outputs at quarter depths as patch-grid maps, pre-logits embedding."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        depth = len(net.blocks)
        self.block_index = {f"block{q}": max(0, round(depth * q / 4) - 1) for q in range(1, 5)}
        patch = net.patch_embed.patch_size
        stride = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        width = int(net.embed_dim)
        self.taps = tuple(Tap(n, width, stride) for n in self.block_index) + (
            Tap("embedding", int(net.num_features), None),)

    def forward(self, x: torch.Tensor, taps: tuple[str, ...]) -> dict[str, torch.Tensor]:
        names = [t for t in taps if t in self.block_index]
        wanted = sorted({self.block_index[n] for n in names})
        if "embedding" in taps:
            final, inter = self.net.forward_intermediates(x, indices=wanted or [0], output_fmt="NCHW")
        else:
            inter = self.net.forward_intermediates(x, indices=wanted, output_fmt="NCHW", intermediates_only=True,
                                                   stop_early=True)
            final = None
        by_index = dict(zip(wanted, inter, strict=True))
        out = {n: by_index[self.block_index[n]] for n in names}
        if final is not None:
            out["embedding"] = self.net.forward_head(final, pre_logits=True)
        return {t: out[t] for t in taps}


class GraphTaps(TapModel):
    """A torchvision CNN through ``create_feature_extractor``, taps found by a probe forward."""

    def __init__(self, net: nn.Module, name: str):
        super().__init__()
        from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

        net.eval()
        _, nodes = get_graph_node_names(net)
        probe = create_feature_extractor(net, return_nodes=nodes)
        with torch.no_grad():
            shapes = {k: tuple(v.shape) for k, v in probe(torch.zeros(1, 3, PROBE_SIZE, PROBE_SIZE)).items()
                      if isinstance(v, torch.Tensor) and v.dim() == 4}
        # At each stride, the outermost nodes (fewest dots: stage / block outputs, not the expand conv
        # of the next block) are candidates, and the last of them in graph order is the tap.
        best: dict[str, tuple[int, int, str, int]] = {}  # tap -> (depth, -order, node, channels)
        for order, node in enumerate(nodes):
            shape = shapes.get(node)
            if shape and shape[2] == shape[3] and PROBE_SIZE % shape[2] == 0:
                tap = STRIDE_TAPS.get(PROBE_SIZE // shape[2])
                key = (node.count("."), -order, node, shape[1])
                if tap and (tap not in best or key < best[tap]):
                    best[tap] = key
        chosen = {tap: (node, ch) for tap, (_, _, node, ch) in best.items()}
        if len(chosen) < 2:
            raise UsageError(f"tv:{name}: found no convolutional feature maps to tap (is it a transformer? "
                             f"use timm:{name}-like timm models, whose taps are declared)")
        self.node = {t: n for t, (n, _) in chosen.items()}
        self.extractor = create_feature_extractor(net, return_nodes={n: t for t, n in self.node.items()})
        self.deepest = [t for t in STRIDE_TAPS.values() if t in chosen][-1]
        order = [t for t in STRIDE_TAPS.values() if t in chosen]
        strides = {t: s for s, t in STRIDE_TAPS.items()}
        self.taps = tuple(Tap(t, chosen[t][1], strides[t]) for t in order) + (
            Tap("embedding", chosen[self.deepest][1], None),)

    def forward(self, x: torch.Tensor, taps: tuple[str, ...]) -> dict[str, torch.Tensor]:
        out = self.extractor(x)
        if "embedding" in taps:
            out["embedding"] = _gap(out[self.deepest])
        return {t: out[t] for t in taps}


def torchvision_encoder(name: str, seed: int = 0) -> FrozenEncoder:
    if name not in torchvision.models.list_models(module=torchvision.models):
        from harness.common.errors import unknown_name

        raise unknown_name("torchvision classification model", name,
                           torchvision.models.list_models(module=torchvision.models))
    net = _seeded(seed, lambda: torchvision.models.get_model(name, weights=None))
    if isinstance(net, (torchvision.models.VisionTransformer, torchvision.models.SwinTransformer)):
        raise UsageError(f"tv:{name} is a transformer without declared feature maps; use a timm ViT "
                         "(e.g. timm:vit_tiny_patch16_224), whose block taps are declared")
    model: TapModel = ResNetTaps(net) if isinstance(net, torchvision.models.ResNet) else GraphTaps(net, name)
    info = EncoderInfo(name=f"tv:{name}", arch=name, source=f"torchvision {name}, random init (seed {seed})",
                       extra={"init_seed": seed, "family": "torchvision"})
    return FrozenEncoder(model, info)


def timm_encoder(name: str, seed: int = 0, **kwargs: Any) -> FrozenEncoder:
    import timm

    if not timm.is_model(name):
        from harness.common.errors import unknown_name

        raise unknown_name("timm model", name, timm.list_models())
    features = _seeded(seed, lambda: timm.create_model(name, pretrained=False, features_only=True, **kwargs))
    reductions, channels = list(features.feature_info.reduction()), list(features.feature_info.channels())
    if len(reductions) > 1 and len(set(reductions)) == 1:  # one stride throughout: a ViT-like token model
        net = _seeded(seed, lambda: timm.create_model(name, pretrained=False, num_classes=0,
                                                      dynamic_img_size=True, **kwargs))
        if not all(hasattr(net, a) for a in ("blocks", "patch_embed", "forward_intermediates")):
            raise UsageError(f"timm:{name}: a single-stride model that is not a ViT; its taps cannot be declared")
        model: TapModel = ViTTaps(net)
    else:
        model = FeatureListTaps(features, reductions, channels)
    info = EncoderInfo(name=f"timm:{name}", arch=name, source=f"timm {name}, random init (seed {seed})",
                       extra={"init_seed": seed, "family": "timm"})
    return FrozenEncoder(model, info)


FAMILIES: dict[str, Callable[[str, int], FrozenEncoder]] = {"tv": torchvision_encoder, "timm": timm_encoder}


def any_model_encoder(spec: str, seed: int = 0) -> FrozenEncoder | None:
    """``tv:NAME`` / ``timm:NAME`` -> encoder; None when ``spec`` names no model family."""
    family, sep, name = spec.partition(":")
    if not sep or family not in FAMILIES:
        return None
    if not name:
        raise UsageError(f"{spec!r}: give a model name after '{family}:'")
    return FAMILIES[family](name, seed)
