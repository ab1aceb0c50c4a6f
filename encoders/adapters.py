"""Checkpoint adapters: every published ResNet-50 format -> one torchvision-layout backbone.

A format is data (where the state dict sits in the file, the backbone's key prefix, which
head keys to drop), so adding one is a new row, not a new branch. The format is detected from
the keys (or forced with ``--format``); the backbone is then checked key by key against the
torchvision architecture and refused, naming the keys, when anything is missing, left over
or of another shape. Files are untrusted: ``torch.load(weights_only=True)`` or safetensors only.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.common.errors import HarnessError
from harness.common.registry import Registry

from .checkpoint import is_harness_checkpoint
from .resnet import ResNetTaps, build_resnet, infer_resnet_arch

BACKBONE_ROOTS = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
COUNTER_SUFFIX = "num_batches_tracked"  # a BatchNorm step counter, unused in eval: neither required nor hashed


@dataclass(frozen=True)
class CheckpointFormat:
    name: str
    description: str
    containers: tuple[tuple[str, ...], ...]  # candidate paths of nested keys to the state dict; () = top level
    prefix: str  # the backbone's key prefix inside that state dict
    drop: tuple[str, ...] = ()  # head keys (after the prefix) that are not part of the backbone


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


@dataclass
class Backbone:
    """A checked, prefix-free torchvision ResNet state dict and where it came from."""

    format: str
    arch: str
    state: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    ignored: int = 0  # keys outside the backbone prefix (momentum encoder, queue, predictor, ...)


def read_checkpoint(path: Path) -> Any:
    """Load an untrusted file without running code: safetensors, or pickle restricted to tensors."""
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


def detect_format(obj: Any) -> CheckpointFormat | None:
    """The first registered format whose container holds backbone keys under its prefix."""
    if is_harness_checkpoint(obj):
        return FORMATS["harness"]
    for fmt in FORMATS.values():
        if fmt.name == "harness":
            continue
        for path in fmt.containers:
            state = _container(obj, path)
            if state is not None and _matches(state, fmt.prefix):
                return fmt
    return None


def _first_container(obj: Any, fmt: CheckpointFormat) -> Mapping[str, Any] | None:
    for path in fmt.containers:
        state = _container(obj, path)
        if state is not None and _matches(state, fmt.prefix):
            return state
    # Nothing under the prefix: report against the first container that looks like a state dict.
    present = [s for s in (_container(obj, p) for p in fmt.containers) if s is not None]
    tensors_only = [s for s in present if s and all(isinstance(v, torch.Tensor) for v in s.values())]
    return (tensors_only or present or [None])[0]


def _listing(keys: list[str], n: int = 6) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def extract_backbone(obj: Any, fmt_name: str | None = None, source: str = "checkpoint") -> Backbone:
    """Find the backbone in a loaded checkpoint and check it against its torchvision ResNet."""
    detected = detect_format(obj)
    if fmt_name is not None:
        fmt = FORMATS[fmt_name]
    else:
        fmt = detected or FORMATS["torchvision"]
    hint = "" if fmt_name or detected else (
        f" No known checkpoint format was recognised; formats: {', '.join(FORMATS)} (--format to force one).")
    container = _first_container(obj, fmt)
    if container is None:
        top = list(obj)[:6] if isinstance(obj, Mapping) else type(obj).__name__
        raise HarnessError(f"{source}: not a {fmt.name} checkpoint: no state dict at "
                           f"{' or '.join('/'.join(p) or '<top level>' for p in fmt.containers)} (found {top}).{hint}")
    state: dict[str, torch.Tensor] = {}
    ignored = 0
    for key, value in container.items():
        if not (isinstance(key, str) and key.startswith(fmt.prefix)):
            ignored += 1
            continue
        sub = key[len(fmt.prefix):]
        if sub.startswith(fmt.drop) or sub.endswith(COUNTER_SUFFIX):
            continue
        if not isinstance(value, torch.Tensor):
            raise HarnessError(f"{source}: {key} holds a {type(value).__name__}, not a tensor")
        state[sub] = value
    meta = dict(obj.get("meta", {})) if fmt.name == "harness" and isinstance(obj, Mapping) else {}
    arch = str(obj.get("arch")) if fmt.name == "harness" and isinstance(obj, Mapping) else None
    if arch is None:
        try:
            arch = infer_resnet_arch(state)
        except ValueError:
            arch = "resnet50"  # the paper's architecture: report missing keys against it
    check_backbone(state, arch, fmt.prefix, source, hint)
    return Backbone(fmt.name, arch, state, meta, ignored)


def check_backbone(state: Mapping[str, torch.Tensor], arch: str, prefix: str = "", source: str = "checkpoint",
                   hint: str = "") -> None:
    """Refuse, naming keys in the file's own spelling, unless ``state`` is exactly ``arch``'s backbone."""
    try:
        with torch.device("meta"):  # names and shapes only: no memory, no initialisation cost
            reference = build_resnet(arch).state_dict()
    except AttributeError:
        raise HarnessError(f"{source}: unknown architecture {arch!r} (expected a torchvision ResNet)") from None
    expected = {k: v for k, v in reference.items() if not k.endswith(COUNTER_SUFFIX)}
    missing = [prefix + k for k in expected if k not in state]
    unexpected = [prefix + k for k in state if k not in expected]
    shapes = [f"{prefix}{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} backbone weights missing: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shapes differ: {_listing(shapes, 3)}")
    if problems:
        raise HarnessError(f"{source}: does not hold a {arch} backbone: {'; '.join(problems)}.{hint}")


def backbone_model(backbone: Backbone) -> ResNetTaps:
    with torch.device("meta"):  # every weight is overwritten below: skip the random initialisation
        model = build_resnet(backbone.arch)
    model = model.to_empty(device="cpu")
    for name, buf in model.named_buffers():
        if name.endswith(COUNTER_SUFFIX):
            buf.zero_()  # counters are not weights: dropped from files, reset here, so fingerprints ignore them
    model.load_state_dict(backbone.state, strict=False)  # every other key was checked present above
    return model


def load_backbone(path: Path, fmt_name: str | None = None) -> Backbone:
    """Read ``path`` safely and return its checked backbone."""
    return extract_backbone(read_checkpoint(Path(path)), fmt_name, source=str(path))
