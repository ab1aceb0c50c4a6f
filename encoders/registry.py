"""Encoder registry: a name maps to a builder; ``create_encoder`` resolves names and paths.

Builders are declared with ``@register_encoder`` (one decorator per family, as timm does)
and never download anything. The paper's catalog (encoders/catalog.py) is registered here
too; its builders read the weights file from the weights directory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.common.errors import HarnessError, unknown_name
from harness.common.paths import user_encoders_dir
from harness.common.registry import Registry

from .adapters import backbone_model, load_backbone, read_checkpoint
from .any_model import any_model_encoder
from .base import EncoderInfo, FrozenEncoder
from .catalog import CATALOG, CatalogEntry
from .checkpoint import is_harness_checkpoint
from .resnet import ResNetTaps, build_resnet
from .weights import fetch, is_available, missing_weights_error, resolve_weights_dir, weight_path


@dataclass(frozen=True)
class EncoderEntry:
    name: str
    builder: Callable[[int], FrozenEncoder]  # seed -> encoder
    method: str
    data: str
    epochs: int | None
    arch: str
    description: str = ""
    catalog: CatalogEntry | None = None  # set for the paper's encoders (weights file, format, URL)

    def available(self, weights_dir: Path | None = None) -> bool:
        return is_available(self.catalog, weights_dir) if self.catalog is not None else True


ENCODERS: Registry[EncoderEntry] = Registry("encoder")


def register_encoder(name: str, *, arch: str, method: str = "none", data: str = "-", epochs: int | None = None,
                     description: str = "", catalog: CatalogEntry | None = None):
    def deco(builder: Callable[[int], FrozenEncoder]) -> Callable[[int], FrozenEncoder]:
        ENCODERS.register(name, EncoderEntry(name, builder, method, data, epochs, arch, description, catalog))
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
register_encoder("random", arch="resnet50", description="the paper's random-init ResNet-50 baseline (seeded)",
                 catalog=CATALOG["random"])(_random_resnet("resnet50", "random"))


def _from_catalog(entry: CatalogEntry) -> Callable[[int], FrozenEncoder]:
    def build(seed: int = 0) -> FrozenEncoder:  # pretrained: the seed does not apply
        return _catalog_encoder(entry, None, None, False)

    return build


for _entry in CATALOG.values():
    if _entry.filename is not None:
        register_encoder(_entry.name, arch=_entry.arch, method=_entry.method, data=_entry.data, epochs=_entry.epochs,
                         description=_entry.title, catalog=_entry)(_from_catalog(_entry))


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read an untrusted checkpoint without running code (weights_only / safetensors)."""
    obj = read_checkpoint(Path(path))
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise HarnessError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj


def encoder_from_file(path: Path, fmt: str | None = None, name: str | None = None,
                      catalog: CatalogEntry | None = None) -> FrozenEncoder:
    """Any supported checkpoint file (format detected from its keys unless ``fmt``), checked strictly."""
    path = Path(path)
    backbone = load_backbone(path, fmt)
    meta = backbone.meta
    info = EncoderInfo(
        name=name or path.stem.split(".")[0], arch=backbone.arch,
        method=catalog.method if catalog else str(meta.get("method", "unknown")),
        data=catalog.data if catalog else str(meta.get("data", "-")),
        source=str(path), extra={"format": backbone.format, **({"meta": meta} if meta else {}),
                                 **({"epochs": catalog.epochs} if catalog else {})})
    return FrozenEncoder(backbone_model(backbone), info)


USER_SUFFIXES = (".pt", ".pth", ".safetensors")


def user_encoders(directory: Path | None = None) -> dict[str, Path]:
    """``harness pretrain`` outputs (and any checkpoint dropped there), by file stem."""
    folder = resolve_weights_dir(directory) / "user" if directory is not None else user_encoders_dir()
    if not folder.is_dir():
        return {}
    return {p.name[: -len(p.suffix)]: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix in USER_SUFFIXES}


def _catalog_encoder(entry: CatalogEntry, fmt: str | None, weights_dir: Path | None, download: bool) -> FrozenEncoder:
    path = weight_path(entry, weights_dir)
    if path is None:
        raise HarnessError(f"encoder {entry.name!r} has no weights file")
    if not path.is_file():
        if not download:
            raise missing_weights_error(entry, weights_dir)
        fetch(entry, weights_dir)
    return encoder_from_file(path, fmt or entry.format, name=entry.name, catalog=entry)


def create_encoder(name: str, seed: int = 0, *, fmt: str | None = None, weights_dir: Path | None = None,
                   download: bool = False) -> FrozenEncoder:
    """Resolve, in order: a catalog name with a weights file, a registered random-init name,
    ``tv:NAME`` / ``timm:NAME``, a ``harness pretrain`` output by name, a checkpoint path.

    Never downloads unless ``download`` is set.
    """
    entry = CATALOG.get(name)
    if entry is not None and entry.filename is not None:
        return _catalog_encoder(entry, fmt, weights_dir, download)
    if name in ENCODERS:
        return ENCODERS[name].builder(seed)
    any_model = any_model_encoder(name, seed)
    if any_model is not None:
        return any_model
    user = user_encoders(weights_dir)
    if name in user:
        return encoder_from_file(user[name], fmt, name=name)
    path = Path(name).expanduser()
    if path.is_file():
        return encoder_from_file(path, fmt)
    if path.exists():
        raise HarnessError(f"{path} is not a checkpoint file")
    raise unknown_name("encoder", name, [*ENCODERS, *user], hint="(or tv:NAME, timm:NAME, or a checkpoint path)")


def _peek_meta(path: Path) -> dict:
    """The metadata of our own checkpoint format, read lazily (mmap) and safely; {} otherwise."""
    if path.suffix == ".safetensors":
        return {}
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return {}
    return dict(obj.get("meta", {})) if is_harness_checkpoint(obj) else {}


def list_encoders(weights_dir: Path | None = None) -> list[dict]:
    """Every encoder ``create_encoder`` resolves by name, with whether it can be built now."""
    rows = []
    for e in ENCODERS.values():
        cat = e.catalog
        row = {"name": e.name, "method": e.method, "data": e.data, "epochs": e.epochs, "arch": e.arch,
               "corrupt": "none" if cat is not None and e.method != "none" else "-",  # pretrained on clean data
               "available": is_available(cat, weights_dir) if cat else True, "description": e.description}
        if cat is not None:
            row.update(size=cat.size, balanced=cat.balanced, format=cat.format, file=cat.filename, url=cat.url,
                       sha256=cat.sha256, trained_by_authors=cat.trained_by_authors,
                       path=str(weight_path(cat, weights_dir)) if cat.filename else None)
        rows.append(row)
    for stem, path in user_encoders(weights_dir).items():
        if stem in ENCODERS:
            continue
        meta = _peek_meta(path)
        rows.append({"name": stem, "method": str(meta.get("method", "user")), "data": str(meta.get("data", "-")),
                     "epochs": meta.get("epochs"), "arch": str(meta.get("arch", "?")),
                     "corrupt": str(meta.get("corrupt", "none" if meta.get("method") else "-")), "available": True,
                     "description": "harness pretrain output / user checkpoint", "path": str(path)})
    return rows


__all__ = ["ENCODERS", "EncoderEntry", "ResNetTaps", "create_encoder", "encoder_from_file", "list_encoders",
           "register_encoder", "user_encoders"]
