"""Any torchvision or timm model as a frozen encoder: ``tv:NAME`` and ``timm:NAME``.

Taps are declared from the model itself, never hard-coded per architecture:

* CNNs: the last feature map at each stride is a tap, named by its stride as for ResNet
  (2 -> ``conv``, 4 -> ``block1``, 8 -> ``block2``, 16 -> ``block3``, 32 -> ``block4``); timm
  gives these through ``features_only`` / ``feature_info`` (channels-last outputs, as Swin's, are
  laid channels-first), torchvision models through ``create_feature_extractor`` after one probe
  forward that measures each node's stride (rounded to the nearest power of two, so SqueezeNet's
  111/55/27/13 maps at 224 are strides 2/4/8/16): at each stride the shallowest-named graph node,
  last in graph order (torchvision ResNets use ResNetTaps as is). For inverted-residual nets
  (MobileNet) that can be the expansion conv feeding the next downsampling block rather than the
  block output; prefer ``timm:`` there, whose taps are declared. ``embedding`` is the global
  average of the deepest map (exactly ResNet's pooled vector).
* The dilated last stage (``block4_os16``, what DeepLabv3+ reads): torchvision ResNets, and every
  timm CNN that timm can build with ``output_stride=16``; that twin is built on the meta device and
  run with this model's own weights (``torch.func.functional_call``), so it costs no memory and
  never changes the fingerprint. Other CNNs have none: DeepLabv3+ then upsamples the stride-32 map.
* ViTs (timm models whose features all share one stride, e.g. ``timm:vit_small_patch16_224``, and
  torchvision's ``vit_*``): one tap per transformer block (encoders/vit.py), on the patch grid.

Weights are random (``pretrained=False``): building never touches the network.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torchvision
from torch import nn

from harness.common.errors import HarnessError, UsageError
from harness.common.taps import DILATED_TAP

from .archs._base import gap, seeded
from .base import EncoderInfo, FrozenEncoder, Tap, TapModel
from .resnet import ResNetTaps
from .vit import ViTTaps, input_size_errors, vit_kwargs

STRIDE_TAPS = {2: "conv", 4: "block1", 8: "block2", 16: "block3", 32: "block4"}
PROBE_SIZE = 224
CHECK_SIZE = 320  # a second probe: a tap's stride must hold at both sizes
# A model's classifier, never a feature tap (SqueezeNet's is a 1x1 conv to 1000 class maps).
CLASSIFIER_MODULES = {"classifier", "fc", "head", "heads"}


def nominal_stride(input_size: int, size: int) -> int | None:
    """The power-of-two stride of a ``size``-wide map of an ``input_size``-wide input (within 15%:
    ceil-mode pooling and unpadded convs leave a pixel more or less), else None."""
    if size <= 0:
        return None
    ratio = input_size / size
    stride = 2 ** round(math.log2(ratio)) if ratio >= 1 else 1
    return stride if abs(ratio / stride - 1) < 0.15 else None


def _stride_taps(reductions: list[int], channels: list[int]) -> dict[str, tuple[int, int]]:
    """tap name -> (feature index, channels): the last feature at each known stride."""
    chosen: dict[str, tuple[int, int]] = {}
    for i, (r, c) in enumerate(zip(reductions, channels, strict=True)):
        if r in STRIDE_TAPS:
            chosen[STRIDE_TAPS[r]] = (i, c)
    return chosen


def _channels_first(x: torch.Tensor, nhwc: bool) -> torch.Tensor:
    return x.permute(0, 3, 1, 2) if nhwc else x


class FeatureListTaps(TapModel):
    """A model returning a list of maps (timm ``features_only``) with taps named by stride; with
    ``dilated`` (the same model built with ``output_stride=16``, on the meta device), the derived tap
    ``block4_os16``: the last stage run dilated with this model's weights."""

    def __init__(self, net: nn.Module, reductions: list[int], channels: list[int], dilated: nn.Module | None = None):
        super().__init__()
        self.net = net
        self.nhwc = "NHWC" in str(getattr(net, "output_fmt", "NCHW"))
        chosen = _stride_taps(reductions, channels)
        if not chosen:
            raise HarnessError(f"model has no feature maps at strides {sorted(STRIDE_TAPS)} (found {reductions})")
        self.index = {name: i for name, (i, _) in chosen.items()}
        self.deepest = max(self.index, key=lambda n: self.index[n])
        order = sorted(chosen, key=lambda n: chosen[n][0])
        self.taps = tuple(Tap(n, chosen[n][1], next(s for s, t in STRIDE_TAPS.items() if t == n)) for n in order) + (
            Tap("embedding", chosen[self.deepest][1], None),)
        # Not a submodule: no parameters of its own (meta), nothing in state_dict or the fingerprint.
        self._dilated = [dilated] if dilated is not None and self.deepest == "block4" else []
        if self._dilated:
            self.taps += (Tap(DILATED_TAP, chosen["block4"][1], 16, derived=True),)

    def _run(self, net: nn.Module, x: torch.Tensor, weights: bool = False) -> list[torch.Tensor]:
        if weights:  # the meta twin, with this model's parameters and buffers
            tensors = {**dict(self.net.named_parameters()), **dict(self.net.named_buffers())}
            feats = torch.func.functional_call(net, tensors, (x,), strict=False)
        else:
            feats = net(x)
        if isinstance(feats, dict):
            feats = list(feats.values())
        return [_channels_first(f, self.nhwc) for f in feats]

    def forward(self, x: torch.Tensor, taps: tuple[str, ...]) -> dict[str, torch.Tensor]:
        with input_size_errors(x):
            return self._forward(x, taps)

    def _forward(self, x: torch.Tensor, taps: tuple[str, ...]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        plain = [t for t in taps if t != DILATED_TAP]
        if DILATED_TAP in taps:
            # Up to stride 16 the dilated twin computes exactly the strided model's maps.
            feats = self._run(self._dilated[0], x, weights=True)
            out[DILATED_TAP] = feats[self.index["block4"]]
            out.update({n: feats[i] for n, i in self.index.items() if n != "block4"})
        if any(t not in out for t in plain):
            feats = self._run(self.net, x)
            out.update({n: feats[i] for n, i in self.index.items()})
        if "embedding" in taps:
            out["embedding"] = gap(out[self.deepest])
        return {t: out[t] for t in taps}


def _timm_dilated_twin(name: str, features: nn.Module, kwargs: dict[str, Any]) -> nn.Module | None:
    """``name`` built with ``output_stride=16`` on the meta device when timm can (same parameter names
    and shapes, last map at stride 16); None otherwise."""
    import timm

    if list(features.feature_info.reduction())[-1] != 32:
        return None
    try:
        with torch.device("meta"):
            twin = timm.create_model(name, pretrained=False, features_only=True, output_stride=16, **kwargs)
    except Exception:  # the architecture takes no output_stride
        return None
    if list(twin.feature_info.reduction())[-1] != 16:
        return None
    mine = {k: tuple(v.shape) for k, v in features.state_dict().items()}
    if {k: tuple(v.shape) for k, v in twin.state_dict().items()} != mine:
        return None
    return twin.eval()


class GraphTaps(TapModel):
    """A torchvision CNN through ``create_feature_extractor``, taps found by a probe forward."""

    def __init__(self, net: nn.Module, name: str):
        super().__init__()
        from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

        net.eval()
        _, nodes = get_graph_node_names(net)
        probe = create_feature_extractor(net, return_nodes=nodes)
        with torch.no_grad():
            shapes, check = ({k: tuple(v.shape) for k, v in probe(torch.zeros(1, 3, size, size)).items()
                              if isinstance(v, torch.Tensor) and v.dim() == 4} for size in (PROBE_SIZE, CHECK_SIZE))
        # A node's depth: that of the outermost module whose last node it is ("features.12.cat" is the
        # output of block "features.12"). At each stride the outermost outputs (stage / block outputs,
        # not the expand conv of the next block) are candidates, and the last of them in graph order is the tap.
        last: dict[str, int] = {}
        for order, node in enumerate(nodes):
            parts = node.split(".")
            for k in range(1, len(parts) + 1):
                last[".".join(parts[:k])] = order
        depth = {node: min(k for k in range(len(node.split("."))) if last[".".join(node.split(".")[:k + 1])] == order)
                 for order, node in enumerate(nodes)}
        best: dict[str, tuple[int, int, str, int, bool]] = {}  # tap -> (depth, -order, node, channels, nhwc)
        for order, node in enumerate(nodes):
            shape = shapes.get(node)
            if not shape or node.split(".")[0] in CLASSIFIER_MODULES:
                continue
            nhwc = shape[2] != shape[3] and shape[1] == shape[2]  # channels-last maps (Swin's stages)
            side, channels = (shape[1], shape[3]) if nhwc else (shape[2], shape[1])
            stride = nominal_stride(PROBE_SIZE, side) if (nhwc or shape[2] == shape[3]) else None
            if stride and nominal_stride(CHECK_SIZE, check[node][1 if nhwc else 2]) != stride:
                continue  # a fixed-size output (VGG's adaptive average pool), not a map that scales with the input
            tap = STRIDE_TAPS.get(stride) if stride else None
            key = (depth[node], -order, node, channels, nhwc)
            if tap and (tap not in best or key < best[tap]):
                best[tap] = key
        chosen = {tap: (node, ch, nhwc) for tap, (_, _, node, ch, nhwc) in best.items()}
        if len(chosen) < 2:
            raise UsageError(f"tv:{name}: found no convolutional feature maps to tap at strides 2-32; "
                             f"try a timm model (timm:NAME), whose feature maps are declared")
        self.node = {t: n for t, (n, _, _) in chosen.items()}
        self.nhwc = {t for t, (_, _, nhwc) in chosen.items() if nhwc}
        self.extractor = create_feature_extractor(net, return_nodes={n: t for t, n in self.node.items()})
        self.deepest = [t for t in STRIDE_TAPS.values() if t in chosen][-1]
        order = [t for t in STRIDE_TAPS.values() if t in chosen]
        strides = {t: s for s, t in STRIDE_TAPS.items()}
        self.taps = tuple(Tap(t, chosen[t][1], strides[t]) for t in order) + (
            Tap("embedding", chosen[self.deepest][1], None),)

    def forward(self, x: torch.Tensor, taps: tuple[str, ...]) -> dict[str, torch.Tensor]:
        out = {t: _channels_first(v, t in self.nhwc) for t, v in self.extractor(x).items()}
        if "embedding" in taps:
            out["embedding"] = gap(out[self.deepest])
        return {t: out[t] for t in taps}


class TorchvisionViTTaps(TapModel):
    """torchvision's ``VisionTransformer``: one tap per encoder layer on the patch grid, ``embedding``
    the class token after the final LayerNorm (torchvision's own convention). Any input size: sides
    padded to a multiple of the patch, the position embedding resampled (bicubic) to the grid."""

    def __init__(self, net: torchvision.models.VisionTransformer):
        super().__init__()
        net.heads = nn.Identity()  # the classifier is not part of the encoder
        self.net = net
        self.patch = int(net.patch_size)
        self.depth = len(net.encoder.layers)
        self.taps = tuple(Tap(f"block{i}", net.hidden_dim, self.patch) for i in range(1, self.depth + 1)) + (
            Tap("embedding", net.hidden_dim, None),)

    def card(self) -> dict[str, Any]:
        return {"patch_size": self.patch, "depth": self.depth, "embedding": "class token after the final norm"}

    def _positions(self, gh: int, gw: int) -> torch.Tensor:
        pos = self.net.encoder.pos_embedding  # (1, 1 + n*n, C)
        cls, grid = pos[:, :1], pos[:, 1:]
        n = int(round(grid.shape[1] ** 0.5))
        if (gh, gw) != (n, n):
            grid = grid.reshape(1, n, n, -1).permute(0, 3, 1, 2)
            grid = nn.functional.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
            grid = grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
        return torch.cat([cls, grid], dim=1)

    def forward(self, x: torch.Tensor, taps: tuple[str, ...]) -> dict[str, torch.Tensor]:
        p = self.patch
        x = nn.functional.pad(x, (0, -x.shape[-1] % p, 0, -x.shape[-2] % p))
        t = self.net.conv_proj(x)
        b, c, gh, gw = t.shape
        t = torch.cat([self.net.class_token.expand(b, -1, -1), t.flatten(2).transpose(1, 2)], dim=1)
        t = self.net.encoder.dropout(t + self._positions(gh, gw))
        wanted = {int(n[5:]) for n in taps if n != "embedding"}
        last = self.depth if "embedding" in taps else max(wanted)
        out: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.net.encoder.layers[:last], start=1):
            t = layer(t)
            if i in wanted:
                out[f"block{i}"] = t[:, 1:].transpose(1, 2).reshape(b, c, gh, gw)
        if "embedding" in taps:
            out["embedding"] = self.net.encoder.ln(t)[:, 0]
        return {n: out[n] for n in taps}


def _card(model: TapModel) -> dict[str, Any]:
    """What a tap model says of itself on the encoder card (a ViT: patch, depth, embedding rule)."""
    card = getattr(model, "card", None)
    return dict(card()) if callable(card) else {}


def torchvision_encoder(name: str, seed: int = 0) -> FrozenEncoder:
    if name not in torchvision.models.list_models(module=torchvision.models):
        from harness.common.errors import unknown_name

        raise unknown_name("torchvision classification model", name,
                           torchvision.models.list_models(module=torchvision.models))
    net = seeded(seed, lambda: torchvision.models.get_model(name, weights=None))
    model: TapModel
    if isinstance(net, torchvision.models.ResNet):
        model = ResNetTaps(net)
    elif isinstance(net, torchvision.models.VisionTransformer):
        model = TorchvisionViTTaps(net)
    else:
        model = GraphTaps(net, name)
    info = EncoderInfo(name=f"tv:{name}", arch=name, source=f"torchvision {name}, random init (seed {seed})",
                       extra={"init_seed": seed, "family": "torchvision", **_card(model)})
    return FrozenEncoder(model, info)


def _timm_create(name: str, seed: int, kwargs: dict[str, Any], size_options: tuple[dict[str, Any], ...]):
    """``timm.create_model`` with the first of ``size_options`` the architecture accepts (inputs of any
    size: interpolated position tables, padded patches), else plain; (model, the option taken)."""
    import timm

    for extra in size_options:
        try:
            return seeded(seed, lambda e=extra: timm.create_model(name, pretrained=False, **e, **kwargs)), extra
        except TypeError as exc:  # the architecture takes no such argument
            if extra and "unexpected keyword argument" in str(exc):
                continue
            raise
    raise AssertionError("unreachable: the last option is plain")  # pragma: no cover


def timm_encoder(name: str, seed: int = 0, **kwargs: Any) -> FrozenEncoder:
    import timm

    if not timm.is_model(name):
        from harness.common.errors import unknown_name

        raise unknown_name("timm model", name, timm.list_models())
    features, size_kw = _timm_create(name, seed, dict(features_only=True, **kwargs), ({"dynamic_img_size": True}, {}))
    reductions, channels = list(features.feature_info.reduction()), list(features.feature_info.channels())
    if len(reductions) > 1 and len(set(reductions)) == 1:  # one stride throughout: a ViT-like token model
        net, _ = _timm_create(name, seed, dict(num_classes=0, **kwargs),
                              (vit_kwargs(), {"dynamic_img_size": True}, {}))
        if not all(hasattr(net, a) for a in ("blocks", "patch_embed", "forward_intermediates")):
            raise UsageError(f"timm:{name}: a single-stride model that is not a ViT; its taps cannot be declared")
        model: TapModel = ViTTaps(net)
    else:
        twin = _timm_dilated_twin(name, features, {**size_kw, **kwargs})
        model = FeatureListTaps(features, reductions, channels, twin)
    info = EncoderInfo(name=f"timm:{name}", arch=name, source=f"timm {name}, random init (seed {seed})",
                       extra={"init_seed": seed, "family": "timm", **_card(model)})
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
