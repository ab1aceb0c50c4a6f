"""Encoder registry: a name maps to a builder; ``create_encoder`` resolves names and paths.

Builders are declared with ``@register_encoder`` (one decorator per family, as timm does)
and never download anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.errors import HarnessError, unknown_name

from .base import EncoderInfo, FrozenEncoder
from .resnet import ResNetTaps, build_resnet, infer_resnet_arch


@dataclass(frozen=True)
class EncoderEntry:
    name: str
    builder: Callable[[int], FrozenEncoder]  # seed -> encoder
    method: str
    data: str
    epochs: int | None
    arch: str
    description: str = ""

    def available(self) -> bool:
        return True


ENCODERS: dict[str, EncoderEntry] = {}


def register_encoder(name: str, *, arch: str, method: str = "none", data: str = "-", epochs: int | None = None,
                     description: str = ""):
    def deco(builder: Callable[[int], FrozenEncoder]) -> Callable[[int], FrozenEncoder]:
        if name in ENCODERS:
            raise ValueError(f"encoder {name!r} registered twice")
        ENCODERS[name] = EncoderEntry(name, builder, method, data, epochs, arch, description)
        return builder

    return deco


def _random_resnet(arch: str, name: str) -> Callable[[int], FrozenEncoder]:
    def build(seed: int = 0) -> FrozenEncoder:
        info = EncoderInfo(name=name, arch=arch, method="none", source=f"random init (seed {seed})",
                           extra={"init_seed": seed})
        return FrozenEncoder(build_resnet(arch, seed), info)

    return build


for _arch in ("resnet18", "resnet34", "resnet50"):
    register_encoder(_arch, arch=_arch, description=f"torchvision {_arch}, random init (seeded)")(
        _random_resnet(_arch, _arch))
register_encoder("random", arch="resnet50", description="the paper's random-init ResNet-50 baseline (seeded)")(
    _random_resnet("resnet50", "random"))


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read an untrusted checkpoint without running code (weights_only / safetensors)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle refusing a global, a corrupt file, ...
        raise HarnessError(
            f"refused to load {path}: it is not a plain tensor checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]}). Checkpoints are loaded with weights_only=True because "
            "pickle can run code; re-save it as a state dict or safetensors file.") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise HarnessError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj


def encoder_from_file(path: Path) -> FrozenEncoder:
    """A torchvision-layout ResNet state dict (``fc.*`` dropped), checked strictly."""
    state = load_state_dict_file(path)
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        arch = infer_resnet_arch(backbone)
    except ValueError as exc:
        raise HarnessError(f"{path}: {exc}") from None
    model = build_resnet(arch)
    missing, unexpected = model.load_state_dict(backbone, strict=False)
    if missing or unexpected:
        raise HarnessError(f"{path}: backbone weights do not match {arch}: missing {list(missing)[:8]}, "
                           f"unexpected {list(unexpected)[:8]}")
    info = EncoderInfo(name=path.stem, arch=arch, source=str(path))
    return FrozenEncoder(model, info)


def create_encoder(name: str, seed: int = 0) -> FrozenEncoder:
    """Resolve a registered name or a path to a checkpoint file."""
    if name in ENCODERS:
        return ENCODERS[name].builder(seed)
    path = Path(name).expanduser()
    if path.exists():
        return encoder_from_file(path)
    raise unknown_name("encoder", name, ENCODERS, hint="(or give a path to a checkpoint file)")


__all__ = ["ENCODERS", "EncoderEntry", "ResNetTaps", "create_encoder", "register_encoder"]
