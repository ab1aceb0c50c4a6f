"""Checkpoint adapters: every published format -> a torchvision ResNet or a timm ViT backbone.

A format is data (where the state dict sits in the file, the backbone's key prefix, which
head keys to drop, which key layouts it may hold), so adding one is a new row, not a new branch.
The format is detected from the keys (or forced with ``--format``); the backbone is then checked
key by key against its architecture (the torchvision ResNet, or the timm ViT whose config the keys
spell: encoders/vit_formats.py) and refused, naming the keys, when anything is missing, left over
or of another shape. Files are untrusted: ``torch.load(weights_only=True)`` or safetensors only.
"""

from __future__ import annotations

import argparse
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from harness.common.errors import HarnessError
from harness.common.registry import Registry

from .archs import build_arch
from .base import TapModel
from .checkpoint import is_harness_checkpoint
from .resnet import infer_resnet_arch
from .vit_formats import (
    CLIP_MEAN,
    CLIP_STD,
    LAYOUTS,
    ViTConfig,
    ViTOptions,
    check_vit,
    has_layout,
    mismatches,
    vit_model,
)

BACKBONE_ROOTS = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
COUNTER_SUFFIX = "num_batches_tracked"  # a BatchNorm step counter, unused in eval: neither required nor hashed


RESNET = "resnet"  # the torchvision ResNet key layout; every other layout is a ViT's (encoders/vit_formats.py)


@dataclass(frozen=True)
class CheckpointFormat:
    name: str
    description: str
    containers: tuple[tuple[str, ...], ...]  # candidate paths of nested keys to the state dict; () = top level
    prefix: str  # the backbone's key prefix inside that state dict
    drop: tuple[str, ...] = ()  # head keys (after the prefix) that are not part of the backbone
    layouts: tuple[str, ...] = (RESNET,)  # key layouts the backbone may have, tried in order
    prefixes: tuple[str, ...] = ()  # other spellings of the prefix (with and without DDP's ``module.``)
    markers: tuple[str, ...] = ()  # keys (after the prefix) that detection also requires
    detect: bool = True  # False: only by --format (a variant the keys cannot tell apart)
    method: str | None = None  # the card's method, when the file's metadata does not say
    vit: ViTOptions = ViTOptions()  # what the keys of a ViT cannot say (heads, activation, pooling)

    @property
    def all_prefixes(self) -> tuple[str, ...]:
        return (self.prefix, *self.prefixes)


FORMATS: Registry[CheckpointFormat] = Registry("checkpoint format", hint="(--format)")


def register_format(fmt: CheckpointFormat) -> CheckpointFormat:
    return FORMATS.register(fmt.name, fmt)


# Detection tries these in order; a format matches when its container holds a key
# ``prefix + <conv1|bn1|layerN>.…``, so MoCo's ``module.encoder_q.`` never passes for SwAV's ``module.``.
register_format(CheckpointFormat("harness", "our `harness pretrain` output (format/meta/state_dict)",
                                 (("state_dict",),), "", ("fc.", "projector.", "prototypes.", "predictor.")))
register_format(CheckpointFormat("vissl", "VISSL / PIRL: classy_state_dict.base_model.model.trunk, `_feature_blocks.`",
                                 (("classy_state_dict", "base_model", "model", "trunk"),), "_feature_blocks."))
register_format(CheckpointFormat("moco", "MoCo v1/v2 (FAIR): state_dict, `module.encoder_q.`, drop fc (v2: MLP)",
                                 (("state_dict",),), "module.encoder_q.", ("fc.",)))
register_format(CheckpointFormat("simsiam", "SimSiam (FAIR): state_dict, `module.encoder.`, drop fc and predictor",
                                 (("state_dict",),), "module.encoder.", ("fc.",)))
register_format(CheckpointFormat("swav", "SwAV (FAIR): flat or state_dict, `module.`, drop projection_head/prototypes",
                                 ((), ("state_dict",)), "module.", ("fc.", "projection_head.", "prototypes.")))
register_format(CheckpointFormat("virb", "reference harness (allenai/ViRB): flat, `model.`, drop model.fc",
                                 ((), ("state_dict",)), "model.", ("fc.",)))
register_format(CheckpointFormat("torchvision", "torchvision ResNet state dict: flat, no prefix, drop fc",
                                 ((), ("state_dict",), ("model",)), "", ("fc.",)))
# Vision transformers (and the ResNet-50s of the same releases). A ViT layout is recognised by its own root
# keys (encoders/vit_formats.py), so a ViT row never passes for a ResNet file, nor a ResNet row for a ViT.
register_format(CheckpointFormat(
    "dino", "DINO (FAIR) training checkpoint: the teacher (as DINO evaluates), `backbone.` (`module.backbone.` "
    "when DDP-wrapped, as ResNet teachers are); the DINO head is outside the prefix; ResNet-50 or ViT",
    (("teacher",),), "backbone.", layouts=(RESNET, "timm"), prefixes=("module.backbone.",), method="DINO"))
register_format(CheckpointFormat(
    "mocov3", "MoCo v3 (FAIR): state_dict, `module.base_encoder.`, drop the projector (ViT head / ResNet fc); "
    "momentum encoder and predictor ignored; ViT-S has 12 heads, as moco-v3 builds it",
    (("state_dict",),), "module.base_encoder.", ("head.", "fc."), layouts=(RESNET, "timm"), method="MoCov3",
    vit=ViTOptions(heads=((384, 12),))))
register_format(CheckpointFormat(
    "dinov2", "DINOv2 (FAIR) backbone: flat, layer scale, optional register tokens, drop mask_token; class token",
    ((),), "", ("mask_token",), layouts=("dinov2",), markers=("mask_token",), method="DINOv2"))
register_format(CheckpointFormat(
    "mae", "MAE (FAIR) and other {'model': ...} timm ViTs (DeiT): drop decoder_*, mask_token, head; class token, "
    "or fc_norm of the mean patch token where the file has fc_norm (fine-tuned)",
    (("model",),), "", ("decoder_", "mask_token", "head."), layouts=("timm",), method="MAE"))
register_format(CheckpointFormat(
    "timm_vit", "flat timm-layout ViT: DINO's released ViT backbones (dino_deitsmall16_pretrain.pth ...), timm, "
    "DeiT; drop head; class token", ((), ("state_dict",)), "", ("head.",), layouts=("timm",)))
_CLIP = ViTOptions(mean=CLIP_MEAN, std=CLIP_STD, normalisation="CLIP mean/std")
register_format(CheckpointFormat(
    "open_clip", "open_clip / OpenAI CLIP visual tower (`visual.`): text tower and visual.proj dropped; class token "
    "after ln_post, before the projection; GELU (most LAION open_clip weights; OpenAI's: open_clip_quickgelu)",
    ((), ("state_dict",)), "visual.", ("proj",), layouts=("open_clip",), prefixes=("module.visual.",),
    method="CLIP", vit=_CLIP))
register_format(CheckpointFormat(
    "open_clip_quickgelu", "as open_clip, with QuickGELU: OpenAI's CLIP weights and open_clip's *-quickgelu models "
    "(the keys cannot tell: --format only)", ((), ("state_dict",)), "visual.", ("proj",), layouts=("open_clip",),
    prefixes=("module.visual.",), detect=False, method="CLIP", vit=replace(_CLIP, act="quick_gelu")))


SAFE_GLOBALS = [argparse.Namespace]


@dataclass
class Backbone:
    """A checked, prefix-free backbone state dict (torchvision ResNet, or timm ViT with ``vit`` set)
    and where it came from."""

    format: str
    arch: str
    state: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    ignored: int = 0  # keys outside the backbone prefix (momentum encoder, queue, predictor, ...)
    vit: ViTConfig | None = None  # the ViT's config as read from the keys; None for a ResNet
    prefix: str = ""  # the prefix the backbone was found under

    @property
    def method(self) -> str | None:
        return FORMATS[self.format].method if self.format in FORMATS else None

    @property
    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """(mean, std) the release feeds its inputs with, when not ImageNet's."""
        opts = FORMATS[self.format].vit if self.format in FORMATS and self.vit is not None else None
        return (opts.mean, opts.std) if opts is not None and opts.mean is not None else None

    def card(self) -> dict[str, Any]:
        """What the encoder card says of the file: its format and, for a ViT, every assumption."""
        out: dict[str, Any] = {"format": self.format}
        if self.prefix:
            out["prefix"] = self.prefix
        if self.vit is not None:
            out.update(self.vit.card())
        return out


def read_checkpoint(path: Path) -> Any:
    """Load an untrusted file without running code: safetensors, or pickle restricted to tensors
    (plus ``argparse.Namespace``, the inert ``args`` that DINO's and MAE's training checkpoints carry:
    built from its attribute dict, never by calling code)."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise HarnessError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"it asks pickle for {found.group(1)}" if found else "it holds objects other than tensors"
        raise HarnessError(
            f"refused to load {path}: {what}, and unpickling arbitrary objects can run code. Checkpoints are "
            "loaded with weights_only=True; re-save the weights (a dict of tensors) with torch.save or as "
            ".safetensors from a trusted environment.") from None
    except Exception as exc:  # truncated or not a torch file at all
        line = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise HarnessError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {line})") from None


def _container(obj: Any, path: tuple[str, ...]) -> Mapping[str, Any] | None:
    for key in path:
        if not isinstance(obj, Mapping) or key not in obj:
            return None
        obj = obj[key]
    return obj if isinstance(obj, Mapping) else None


def _matches(state: Mapping[str, Any], prefix: str) -> bool:
    return any(isinstance(k, str) and k.startswith(prefix) and k[len(prefix):].split(".")[0] in BACKBONE_ROOTS
               for k in state)


def _holds(state: Mapping[str, Any], prefix: str, layout: str) -> bool:
    return _matches(state, prefix) if layout == RESNET else has_layout(state, prefix, layout)


@dataclass(frozen=True)
class _Found:
    state: Mapping[str, Any]
    prefix: str
    layout: str


def _locate(obj: Any, fmt: CheckpointFormat) -> _Found | None:
    """The first container, prefix and layout of ``fmt`` that hold a backbone (and its markers)."""
    for path in fmt.containers:
        state = _container(obj, path)
        if state is None:
            continue
        for prefix in fmt.all_prefixes:
            if not all(prefix + m in state for m in fmt.markers):
                continue
            for layout in fmt.layouts:
                if _holds(state, prefix, layout):
                    return _Found(state, prefix, layout)
    return None


def detect_format(obj: Any) -> CheckpointFormat | None:
    """The first registered format whose container holds backbone keys under its prefix."""
    if is_harness_checkpoint(obj):
        return FORMATS["harness"]
    for fmt in FORMATS.values():
        if fmt.name != "harness" and fmt.detect and _locate(obj, fmt) is not None:
            return fmt
    return None


def _first_container(obj: Any, fmt: CheckpointFormat) -> _Found | None:
    found = _locate(obj, fmt)
    if found is not None:
        return found
    # Nothing under the prefix: report against the first container that looks like a state dict.
    present = [s for s in (_container(obj, p) for p in fmt.containers) if s is not None]
    tensors_only = [s for s in present if s and all(isinstance(v, torch.Tensor) for v in s.values())]
    state = (tensors_only or present or [None])[0]
    if state is None:
        return None
    return _Found(state, fmt.prefix, max(fmt.layouts, key=lambda layout: _closeness(state, fmt.prefix, layout)))


def _closeness(state: Mapping[str, Any], prefix: str, layout: str) -> int:
    """How many of ``layout``'s root keys occur under ``prefix``: a broken file is reported in the
    layout it comes closest to (ties: the format's first)."""
    if layout == RESNET:
        return int(_matches(state, prefix))
    return sum(any(isinstance(k, str) and k.startswith(prefix + r) for k in state) for r in LAYOUTS[layout].roots)


def extract_backbone(obj: Any, fmt_name: str | None = None, source: str = "checkpoint") -> Backbone:
    """Find the backbone in a loaded checkpoint and check it against its architecture."""
    detected = detect_format(obj)
    if fmt_name is not None:
        fmt = FORMATS[fmt_name]
    else:
        fmt = detected or FORMATS["torchvision"]
    hint = "" if fmt_name or detected else (
        f" No known checkpoint format was recognised; formats: {', '.join(FORMATS)} (--format to force one).")
    found = _first_container(obj, fmt)
    if found is None:
        top = list(obj)[:6] if isinstance(obj, Mapping) else type(obj).__name__
        raise HarnessError(f"{source}: not a {fmt.name} checkpoint: no state dict at "
                           f"{' or '.join('/'.join(p) or '<top level>' for p in fmt.containers)} (found {top}).{hint}")
    prefix = found.prefix
    state: dict[str, torch.Tensor] = {}
    ignored = 0
    for key, value in found.state.items():
        if not (isinstance(key, str) and key.startswith(prefix)):
            ignored += 1
            continue
        sub = key[len(prefix):]
        if sub.startswith(fmt.drop) or sub.endswith(COUNTER_SUFFIX):
            continue
        if not isinstance(value, torch.Tensor):
            raise HarnessError(f"{source}: {key} holds a {type(value).__name__}, not a tensor")
        state[sub] = value
    if found.layout != RESNET:
        config, vit_state = check_vit(state, found.layout, fmt.vit, prefix, source, fmt.name, hint)
        return Backbone(fmt.name, config.arch, vit_state, {}, ignored, config, prefix)
    meta = dict(obj.get("meta", {})) if fmt.name == "harness" and isinstance(obj, Mapping) else {}
    arch = str(obj.get("arch")) if fmt.name == "harness" and isinstance(obj, Mapping) else None
    if arch is None:
        try:
            arch = infer_resnet_arch(state)
        except ValueError:
            arch = "resnet50"  # the paper's architecture: report missing keys against it
    check_backbone(state, arch, prefix, source, hint)
    return Backbone(fmt.name, arch, state, meta, ignored, None, prefix)


def check_backbone(state: Mapping[str, torch.Tensor], arch: str, prefix: str = "", source: str = "checkpoint",
                   hint: str = "") -> None:
    """Refuse, naming keys in the file's own spelling, unless ``state`` is exactly ``arch``'s backbone."""
    try:
        with torch.device("meta"):  # names and shapes only: no memory, no initialisation cost
            reference = build_arch(arch).state_dict()
    except HarnessError as exc:  # an unknown name, or a widening factor out of range
        raise HarnessError(f"{source}: unknown architecture {arch!r}: {exc}") from None
    expected = {k: v for k, v in reference.items() if not k.endswith(COUNTER_SUFFIX)}
    missing = [prefix + k for k in expected if k not in state]
    unexpected = [prefix + k for k in state if k not in expected]
    shapes = [f"{prefix}{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = mismatches(missing, unexpected, shapes)
    if problems:
        raise HarnessError(f"{source}: does not hold a {arch} backbone: {'; '.join(problems)}.{hint}")


def backbone_model(backbone: Backbone) -> TapModel:
    """The checked backbone loaded into its architecture (``encoders.archs.build_arch``: torchvision ResNets,
    and every architecture ``harness pretrain --arch`` trains)."""
    with torch.device("meta"):  # every weight is overwritten below: skip the random initialisation
        model = build_arch(backbone.arch)
    if {n for n, _ in model.named_buffers()} - set(model.state_dict()):
        model = build_arch(backbone.arch)  # non-persistent buffers are not in the file: build them for real
    model = model.to_empty(device="cpu")
    for name, buf in model.named_buffers():
        if name.endswith(COUNTER_SUFFIX):
            buf.zero_()  # counters are not weights: dropped from files, reset here, so fingerprints ignore them
    model.load_state_dict(backbone.state, strict=False)  # every other key was checked present above
    return model


def model_for(backbone: Backbone) -> TapModel:
    """The tap model of a checked backbone: its timm ViT, or (``backbone_model``) its CNN."""
    if backbone.vit is not None:
        return vit_model(backbone.vit, backbone.state)
    return backbone_model(backbone)


def load_backbone(path: Path, fmt_name: str | None = None) -> Backbone:
    """Read ``path`` safely and return its checked backbone."""
    return extract_backbone(read_checkpoint(Path(path)), fmt_name, source=str(path))
