"""Vision-transformer checkpoints -> one timm ``VisionTransformer``, by data.

A *layout* is how a release spells a ViT's keys (timm's, which DINO, MAE and MoCo v3 use; DINOv2's;
the open_clip / OpenAI CLIP visual tower). It is a list of rename rules from the file's spelling to
timm's, applied in both directions, so a missing weight is named as the file would spell it. The
architecture is read from the key shapes: width, depth, patch size, class and register tokens,
position grid, layer scale, pre-norm, the MLP's ratio and kind (plain or packed SwiGLU), biases.
What the keys cannot say comes from the format row and is written on the encoder card: the number
of attention heads (a table of standard widths, 64-dimensional heads otherwise), the activation
(GELU or CLIP's QuickGELU), the LayerNorm epsilon, the pooling convention and the input
normalisation. The model is then built with that config and checked key by key: a weight missing,
left over or of another shape is refused, naming the keys.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from harness.common.errors import HarnessError

from .vit import ViTTaps, vit_kwargs

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's preprocessing, kept by open_clip
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Heads per width where the head is not 64-dimensional: ViT-H (1280, 16 heads of 80: ViT paper, open_clip
# ViT-H-14), open_clip ViT-g-14 (1408, head_width 88) and ViT-bigG-14 (1664, head_width 104).
WIDE_HEADS = {1280: 16, 1408: 16, 1664: 16}
HEAD_DIM = 64  # ViT-Ti/S/B/L (3/6/12/16 heads), DINOv2 ViT-g (1536, 24 heads), CLIP B and L


@dataclass(frozen=True)
class ViTLayout:
    """How one family of releases spells a ViT's keys (after the format's prefix)."""

    name: str
    roots: tuple[str, ...]  # each starts some key: how detection recognises the layout
    # (file template, timm template); ``{n}`` is a block index; a template ending in "." renames every key
    # starting with it, any other a single whole key.
    renames: tuple[tuple[str, str], ...] = ()
    eps: float = 1e-6  # LayerNorm epsilon: not in the keys
    fold_class_position: bool = False  # registers present and the class token's position stored in pos_embed


@dataclass(frozen=True)
class ViTOptions:
    """What a format row says of its ViTs that the keys cannot."""

    act: str = "gelu"  # the MLP activation: "gelu" or "quick_gelu" (a packed SwiGLU MLP is always SiLU-gated)
    heads: tuple[tuple[int, int], ...] = ()  # (width, heads) where this release departs from the rule
    pool: str = "token"  # the embedding: "token" (class token after the final norm) or "avg" (mean patch token)
    mean: tuple[float, float, float] | None = None  # input normalisation, when not ImageNet's
    std: tuple[float, float, float] | None = None
    normalisation: str = "ImageNet mean/std"


LAYOUTS: dict[str, ViTLayout] = {}


def register_layout(layout: ViTLayout) -> ViTLayout:
    LAYOUTS[layout.name] = layout
    return layout


TIMM = register_layout(ViTLayout("timm", ("patch_embed.", "blocks.")))
DINOV2 = register_layout(ViTLayout(
    "dinov2", ("patch_embed.", "blocks."),
    renames=(("register_tokens", "reg_token"),
             ("blocks.{n}.mlp.w12.", "blocks.{n}.mlp.fc1."),  # ViT-g's SwiGLU: w12 packs gate and value
             ("blocks.{n}.mlp.w3.", "blocks.{n}.mlp.fc2.")),
    fold_class_position=True))
_RES = "transformer.resblocks.{n}."
OPEN_CLIP = register_layout(ViTLayout(
    "open_clip", ("class_embedding", "transformer.resblocks."),
    renames=(("conv1.", "patch_embed.proj."), ("class_embedding", "cls_token"), ("positional_embedding", "pos_embed"),
             ("ln_pre.", "norm_pre."), (_RES + "ln_1.", "blocks.{n}.norm1."),
             (_RES + "attn.in_proj_weight", "blocks.{n}.attn.qkv.weight"),
             (_RES + "attn.in_proj_bias", "blocks.{n}.attn.qkv.bias"),
             (_RES + "attn.out_proj.", "blocks.{n}.attn.proj."), (_RES + "ls_1.", "blocks.{n}.ls1."),
             (_RES + "ln_2.", "blocks.{n}.norm2."), (_RES + "mlp.c_fc.", "blocks.{n}.mlp.fc1."),
             (_RES + "mlp.c_proj.", "blocks.{n}.mlp.fc2."), (_RES + "ls_2.", "blocks.{n}.ls2."),
             ("ln_post.", "norm.")),
    eps=1e-5))


def has_layout(state: Mapping[str, Any], prefix: str, layout: str) -> bool:
    """Every root of ``layout`` starts some key under ``prefix``."""
    roots = LAYOUTS[layout].roots
    found = {r for k in state if isinstance(k, str) and k.startswith(prefix) for r in roots
             if k[len(prefix):].startswith(r)}
    return len(found) == len(roots)


@dataclass(frozen=True)
class _Rule:
    pattern: re.Pattern
    template: str  # replacement with \1 for the block index


def _rule(src: str, dst: str) -> _Rule:
    whole = not src.endswith(".")
    pattern = "^" + re.escape(src).replace(re.escape("{n}"), r"(\d+)") + ("$" if whole else "")
    return _Rule(re.compile(pattern), dst.replace("{n}", r"\1"))


def _apply(rules: list[_Rule], key: str) -> tuple[str, int | None]:
    for i, rule in enumerate(rules):
        m = rule.pattern.match(key)
        if m:
            return m.expand(rule.template) + key[m.end():], i
    return key, None


class Spelling:
    """timm key <-> the file's key: renames forward, and back through the rules this file used."""

    def __init__(self, layout: ViTLayout, prefix: str):
        self.prefix = prefix
        self.forward = [_rule(f, t) for f, t in layout.renames]
        self.backward = [_rule(t, f) for f, t in layout.renames]
        self.used: set[int] = set()
        self.origin: dict[str, str] = {}

    def to_timm(self, key: str) -> str:
        new, i = _apply(self.forward, key)
        if i is not None:
            self.used.add(i)
        self.origin[new] = key
        return new

    def to_file(self, key: str) -> str:
        if key in self.origin:
            return self.prefix + self.origin[key]
        rules = [r for i, r in enumerate(self.backward) if i in self.used]
        return self.prefix + _apply(rules, key)[0]


@dataclass
class ViTConfig:
    """A ViT's architecture as read from its keys, plus what the format row assumed."""

    layout: str
    width: int
    depth: int
    patch: int
    grid: int  # the stored position grid's side (timm resamples it to each input's grid)
    heads: int
    heads_rule: str
    mlp_hidden: int
    mlp: str  # "mlp" or "swiglu"
    act: str
    eps: float
    class_token: bool
    reg_tokens: int
    class_position: bool  # pos_embed has a position for the class (and register) tokens
    layer_scale: bool
    pre_norm: bool
    fc_norm: bool
    pool: str
    qkv_bias: bool
    normalisation: str
    folded: bool = False  # DINOv2 registers: class position added into the class token

    @property
    def arch(self) -> str:
        return f"vit_w{self.width}_d{self.depth}_p{self.patch}"

    def model_kwargs(self) -> dict[str, Any]:
        from timm.layers import Mlp, SwiGLUPacked

        return dict(img_size=self.grid * self.patch, patch_size=self.patch, num_classes=0, global_pool=self.pool,
                    embed_dim=self.width, depth=self.depth, num_heads=self.heads,
                    mlp_ratio=(self.mlp_hidden + 0.5) / self.width,  # timm takes int(width * ratio): exact hidden
                    qkv_bias=self.qkv_bias, init_values=1.0 if self.layer_scale else None,
                    class_token=self.class_token, no_embed_class=not self.class_position, reg_tokens=self.reg_tokens,
                    pre_norm=self.pre_norm, fc_norm=self.fc_norm, norm_layer=partial(nn.LayerNorm, eps=self.eps),
                    act_layer="silu" if self.mlp == "swiglu" else self.act,
                    mlp_layer=SwiGLUPacked if self.mlp == "swiglu" else Mlp, weight_init="skip", **vit_kwargs())

    def card(self) -> dict[str, Any]:
        """What the encoder card says of the architecture and of every assumption made."""
        act = "SiLU-gated (packed SwiGLU, from the MLP's shapes)" if self.mlp == "swiglu" else (
            {"gelu": "GELU", "quick_gelu": "QuickGELU"}.get(self.act, self.act) + " (assumed by the format: "
            "not in the keys)")
        ratio = self.mlp_hidden / self.width / (2 if self.mlp == "swiglu" else 1)
        return {"layout": self.layout, "width": self.width, "heads": self.heads,
                "heads_rule": f"inferred (not in the keys): {self.heads_rule}", "activation": act,
                "mlp": f"{self.mlp} x{ratio:.4g}", "layernorm_eps": self.eps, "class_token": self.class_token,
                "register_tokens": self.reg_tokens, "layer_scale": self.layer_scale, "pre_norm": self.pre_norm,
                "fc_norm": self.fc_norm, "qkv_bias": self.qkv_bias,
                "position_grid": f"{self.grid}x{self.grid}" + (
                    " (class position folded into the class token)" if self.folded else ""),
                "position_interpolation": "timm: bicubic, antialiased, to each input's grid",
                "normalisation": self.normalisation}


def heads_for(width: int, options: ViTOptions) -> tuple[int, str]:
    table = dict(options.heads)
    if width in table:
        return table[width], f"{table[width]} heads at width {width}, as this release's code builds it"
    if width in WIDE_HEADS:
        return WIDE_HEADS[width], f"{WIDE_HEADS[width]} heads at width {width} (ViT-H/g/bigG table)"
    if width % HEAD_DIM:
        raise HarnessError(f"cannot infer the number of attention heads of width {width} (not a multiple of "
                           f"{HEAD_DIM}, and not a standard ViT width)")
    return width // HEAD_DIM, f"width / {HEAD_DIM} (64-dimensional heads, as ViT-Ti/S/B/L, DINOv2-g and CLIP B/L)"


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def _first(state: Mapping[str, torch.Tensor], pattern: str) -> torch.Tensor | None:
    rx = re.compile(pattern)
    return next((v for k, v in sorted(state.items()) if rx.fullmatch(k)), None)


def _any(state: Mapping[str, torch.Tensor], pattern: str) -> bool:
    return _first(state, pattern) is not None


def infer_config(state: Mapping[str, torch.Tensor], layout: ViTLayout, options: ViTOptions,
                 spell: Spelling, where: str) -> ViTConfig:
    """The architecture from the (timm-named) keys' shapes; refused when the keys cannot be a ViT."""
    proj = state.get("patch_embed.proj.weight")
    if proj is None or proj.dim() != 4 or proj.shape[-1] != proj.shape[-2]:
        what = "missing" if proj is None else f"of shape {tuple(proj.shape)}, not (width, 3, p, p)"
        raise HarnessError(f"{where}: no patch embedding: {spell.to_file('patch_embed.proj.weight')} {what}")
    width, patch = int(proj.shape[0]), int(proj.shape[-1])
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not blocks:
        raise HarnessError(f"{where}: no transformer blocks ({spell.to_file('blocks.0.norm1.weight')} ...)")
    class_token = "cls_token" in state
    reg = state.get("reg_token")
    reg_tokens = int(reg.shape[-2]) if reg is not None and reg.dim() >= 2 else 0
    prefix_tokens = int(class_token) + reg_tokens
    pos = state.get("pos_embed")
    class_position, grid = True, 224 // patch
    if pos is not None:
        n = pos.numel() // width if pos.shape[-1] == width else -1
        # Positions for the patches only, or for the class/register tokens too. Only with registers can both
        # readings fit; register models (timm's, DINOv2's once folded) keep positions for patches only.
        if reg_tokens and _is_square(n):
            class_position, grid = False, math.isqrt(n)
        elif _is_square(n - prefix_tokens):
            grid = math.isqrt(n - prefix_tokens)
        elif prefix_tokens and _is_square(n):
            class_position, grid = False, math.isqrt(n)
        else:
            raise HarnessError(f"{where}: {spell.to_file('pos_embed')} of shape {tuple(pos.shape)} is not a square "
                               f"grid of width-{width} positions (plus {prefix_tokens} class/register tokens)")
    fc1 = _first(state, r"blocks\.\d+\.mlp\.fc1\.weight")
    fc2 = _first(state, r"blocks\.\d+\.mlp\.fc2\.weight")
    hidden, mlp = 4 * width, "mlp"
    if fc1 is not None and fc2 is not None and fc1.dim() == 2 and fc2.dim() == 2:
        hidden = int(fc1.shape[0])
        mlp = "swiglu" if hidden == 2 * int(fc2.shape[1]) else "mlp"
    heads, heads_rule = heads_for(width, options)
    fc_norm = "fc_norm.weight" in state
    pool = "avg" if fc_norm or not class_token else options.pool
    return ViTConfig(layout=layout.name, width=width, depth=max(blocks) + 1, patch=patch, grid=grid, heads=heads,
                     heads_rule=heads_rule, mlp_hidden=hidden, mlp=mlp, act=options.act, eps=layout.eps,
                     class_token=class_token, reg_tokens=reg_tokens, class_position=class_position,
                     layer_scale=_any(state, r"blocks\.\d+\.ls1\.gamma"), pre_norm="norm_pre.weight" in state,
                     fc_norm=fc_norm, pool=pool, qkv_bias=_any(state, r"blocks\.\d+\.attn\.qkv\.bias"),
                     normalisation=options.normalisation)


def _fold_class_position(state: dict[str, torch.Tensor]) -> bool:
    """DINOv2 with registers: its class token takes pos_embed[0] and its registers no position; timm's
    ``no_embed_class`` model adds positions to patches only, so the class position moves into the token."""
    cls, pos, reg = state.get("cls_token"), state.get("pos_embed"), state.get("reg_token")
    if cls is None or pos is None or reg is None or pos.dim() != 3 or cls.shape[-1] != pos.shape[-1]:
        return False
    if not _is_square(pos.shape[1] - 1):
        return False
    state["cls_token"] = cls.reshape(1, 1, -1) + pos[:, :1]
    state["pos_embed"] = pos[:, 1:]
    return True


def _strip_ones(shape: torch.Size) -> tuple[int, ...]:
    dims = list(shape)
    while dims and dims[0] == 1:
        dims.pop(0)
    return tuple(dims)


def _listing(keys: list[str], n: int = 6) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def mismatches(missing: list[str], unexpected: list[str], shapes: list[str]) -> list[str]:
    """How a file's weights differ from an architecture's, one phrase a kind (none where they agree), keys in the
    file's own spelling: what every backbone check (ResNet-like and ViT) reports."""
    problems = []
    if missing:
        problems.append(f"{len(missing)} backbone weights missing: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shapes differ: {_listing(shapes, 3)}")
    return problems


def build_vit(config: ViTConfig) -> nn.Module:
    """The timm ``VisionTransformer`` of ``config``, on the meta device (names and shapes, no memory)."""
    from timm.models.vision_transformer import VisionTransformer

    with torch.device("meta"):
        return VisionTransformer(**config.model_kwargs())


def check_vit(sub: Mapping[str, torch.Tensor], layout_name: str, options: ViTOptions, prefix: str = "",
              source: str = "checkpoint", label: str = "", hint: str = "") -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """Rename ``sub`` (the backbone's keys, prefix removed, heads dropped) to timm's names, read the
    architecture, and refuse unless it is exactly that ViT's state dict. Returns the config and the
    timm-named state (class tokens and positions in timm's shapes)."""
    layout = LAYOUTS[layout_name]
    spell = Spelling(layout, prefix)
    state: dict[str, torch.Tensor] = {}
    for key, value in sub.items():
        new = spell.to_timm(key)
        if new in state:  # two spellings of one weight (w12 and fc1): neither may win silently
            twins = [prefix + k for k in sub if spell.to_timm(k) == new]
            raise HarnessError(f"{source}: {' and '.join(twins)} are the same weight ({new}) spelled twice.{hint}")
        state[new] = value
    where = f"{source}: not a ViT backbone ({label or layout.name})"
    folded = layout.fold_class_position and _fold_class_position(state)
    try:
        config = infer_config(state, layout, options, spell, where)
    except HarnessError as exc:
        raise HarnessError(f"{exc}.{hint}") from None
    config.folded = folded
    reference = build_vit(config).state_dict()
    for k, v in reference.items():  # CLIP stores the class token as (C,) and positions as (N, C)
        if k in state and state[k].shape != v.shape and _strip_ones(state[k].shape) == _strip_ones(v.shape):
            state[k] = state[k].reshape(v.shape)
    missing = [spell.to_file(k) for k in reference if k not in state]
    unexpected = [spell.to_file(k) for k in state if k not in reference]
    shapes = [f"{spell.to_file(k)} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in reference.items()
              if k in state and state[k].shape != v.shape]
    problems = mismatches(missing, unexpected, shapes)
    if problems:
        arch = f"{config.arch} ({config.heads} heads, {label or layout.name})"
        raise HarnessError(f"{source}: does not hold a {arch} backbone: {'; '.join(problems)}.{hint}")
    return config, state


def vit_model(config: ViTConfig, state: Mapping[str, torch.Tensor]) -> ViTTaps:
    """The checked weights in their timm model, with per-block taps (encoders/vit.py)."""
    net = build_vit(config).to_empty(device="cpu")  # every weight is overwritten: skip the initialisation
    net.load_state_dict(dict(state), strict=True)
    return ViTTaps(net.eval())
