"""Encoder registry: a name maps to a builder; ``create_encoder`` resolves names and paths.

Builders are declared with ``@register_encoder`` (one decorator per family, as timm does)
and never download anything. The paper's catalog (encoders/catalog.py) is registered here
too; its builders read the weights file from the weights directory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from harness.common.errors import HarnessError, unknown_name
from harness.common.paths import user_encoders_dir
from harness.common.registry import Registry

from .adapters import load_backbone, model_for
from .any_model import any_model_encoder
from .archs import ARCHS, arch_card, arch_cost, build_arch, parse_space, parse_widened, pattern_hint
from .base import FLOPS_COUNTING, EncoderInfo, FrozenEncoder
from .catalog import CATALOG, CatalogEntry
from .checkpoint import is_harness_checkpoint
from .resnet import ResNetTaps, build_resnet
from .weights import fetch, is_available, missing_weights_error, resolve_weights_dir, weight_path


@dataclass(frozen=True)
class EncoderEntry:
    builder: Callable[[int], FrozenEncoder]  # seed -> encoder
    info: EncoderInfo  # what the encoder is (the card every record copies)
    description: str = ""
    catalog: CatalogEntry | None = None  # set for the paper's encoders (weights file, format, URL)

    @property
    def name(self) -> str:
        return self.info.name


ENCODERS: Registry[EncoderEntry] = Registry("encoder")


def register_encoder(info: EncoderInfo, description: str = "", catalog: CatalogEntry | None = None):
    def deco(builder: Callable[[int], FrozenEncoder]) -> Callable[[int], FrozenEncoder]:
        ENCODERS.register(info.name, EncoderEntry(builder, info, description, catalog))
        return builder

    return deco


def _random_resnet(card: EncoderInfo) -> Callable[[int], FrozenEncoder]:
    def build(seed: int = 0) -> FrozenEncoder:
        info = replace(card, source=f"random init (seed {seed})", extra={**card.extra, "init_seed": seed})
        return FrozenEncoder(build_resnet(card.arch, seed), info)

    return build


for _arch in ("resnet18", "resnet34", "resnet50"):
    _card = EncoderInfo(name=_arch, arch=_arch)
    register_encoder(_card, description=f"torchvision {_arch}, random init (seeded)")(_random_resnet(_card))
register_encoder(CATALOG["random"].info, description="the paper's random-init ResNet-50 baseline (seeded)",
                 catalog=CATALOG["random"])(_random_resnet(CATALOG["random"].info))

# The card of a random-init architecture states its cost at these input sizes (the synthetic suite's and ImageNet's).
CARD_RESOLUTIONS = (64, 224)


def arch_encoder(name: str, seed: int = 0) -> FrozenEncoder:
    """A random-init encoder of any architecture ``encoders.archs.build_arch`` knows (``resnetv2_50``,
    ``resnet50_x8``, ``mobilenet_v2``...), its card giving parameters and FLOPs per image."""
    family, description, facts = arch_card(name)
    model = build_arch(name, seed)
    own = getattr(model, "card", None)  # a ViT's patch size, depth and embedding convention
    info = EncoderInfo(name=name, arch=name, source=f"random init (seed {seed})",
                       extra={"init_seed": seed, "family": family, "description": description, **facts,
                              **(own() if callable(own) else {})})
    encoder = FrozenEncoder(model, info)
    costs = [encoder.cost(r) for r in CARD_RESOLUTIONS]
    info.extra["cost"] = {"params": costs[0]["params"], "flops": {str(c["resolution"]): c["flops"] for c in costs},
                          "flops_counting": FLOPS_COUNTING}
    return encoder


def _random_arch(name: str) -> Callable[[int], FrozenEncoder]:
    def build(seed: int = 0) -> FrozenEncoder:
        return arch_encoder(name, seed)

    return build


for _spec in ARCHS.values():
    if _spec.listed and _spec.name not in ENCODERS:
        register_encoder(EncoderInfo(name=_spec.name, arch=_spec.name, extra={"family": _spec.family, **_spec.card}),
                         description=f"{_spec.description}, random init (seeded)")(_random_arch(_spec.name))


def _from_catalog(entry: CatalogEntry) -> Callable[[int], FrozenEncoder]:
    def build(seed: int = 0) -> FrozenEncoder:  # pretrained: the seed does not apply
        return _catalog_encoder(entry, None, None, False)

    return build


for _entry in CATALOG.values():
    if _entry.filename is not None:
        register_encoder(_entry.info, description=_entry.title, catalog=_entry)(_from_catalog(_entry))


# How `harness pretrain` names methods, spelled as the paper's tables do.
METHOD_SPELLING = {"mocov2": "MoCov2", "mocov1": "MoCov1", "swav": "SwAV", "simclr": "SimCLR", "byol": "BYOL",
                   "pirl": "PIRL", "rotnet": "RotNet", "jigsaw": "Jigsaw", "relpatch": "RelPatchLoc",
                   "exemplar": "Exemplar", "splitbrain": "SplitBrain"}


def _size_label(images: Any) -> str | None:
    """An image count as the catalog writes dataset sizes (1.3M, 0.5M, 4K)."""
    if not isinstance(images, (int, float)) or isinstance(images, bool) or images <= 0:
        return None
    if images >= 1e5:
        return f"{images / 1e6:.2g}M"
    return f"{images / 1e3:.3g}K" if images >= 1e3 else str(int(images))


def info_from_meta(name: str, arch: str, meta: dict[str, Any], source: str) -> EncoderInfo:
    """The card of a `harness pretrain` checkpoint (or any file with no catalog row)."""
    method = str(meta.get("method") or "unknown")
    data = str(meta.get("data") or "-")
    balanced = None if data == "-" else not data.endswith(("-lin", "-log"))  # the unbalanced subset variants
    epochs = meta.get("epochs")
    return EncoderInfo(name=name, arch=arch, method=METHOD_SPELLING.get(method.lower(), method), data=data,
                       size=_size_label(meta.get("images")), epochs=epochs if isinstance(epochs, int) else None,
                       balanced=balanced, source=source,
                       corruption=str(meta.get("corrupt") or "none") if meta.get("method") else None)


def encoder_from_file(path: Path, fmt: str | None = None, name: str | None = None,
                      catalog: CatalogEntry | None = None) -> FrozenEncoder:
    """Any supported checkpoint file (format detected from its keys unless ``fmt``), checked strictly."""
    path = Path(path)
    backbone = load_backbone(path, fmt)
    meta = backbone.meta
    name = name or path.stem.split(".")[0]
    if catalog is not None:
        info = replace(catalog.info, name=name, arch=backbone.arch, source=str(path))
    else:
        info = info_from_meta(name, backbone.arch, meta, str(path))
        if not meta.get("method") and backbone.method:
            info.method = backbone.method  # the release the format belongs to (DINO, MAE, CLIP, ...)
    model = model_for(backbone)
    card = getattr(model, "card", None)  # a ViT's patch size, depth and embedding convention
    info.extra = {**info.extra, **backbone.card(), **(card() if callable(card) else {}),
                  **({"meta": meta} if meta else {})}
    return FrozenEncoder(model, info, *(backbone.normalisation or ()))


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
    """Resolve, in order: a catalog name with a weights file, a registered random-init name, a widened
    architecture (``resnet50_x8``) or a sampled one (``resnet_space:3``), ``tv:NAME`` / ``timm:NAME``, a
    ``harness pretrain`` output by name, a checkpoint path.

    Never downloads unless ``download`` is set.
    """
    entry = CATALOG.get(name)
    if entry is not None and entry.filename is not None:
        return _catalog_encoder(entry, fmt, weights_dir, download)
    if name in ENCODERS:
        return ENCODERS[name].builder(seed)
    if parse_widened(name) is not None or parse_space(name) is not None:  # BASE_xK, SPACE:K (bad K says so)
        return arch_encoder(name, seed)
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
    raise unknown_name("encoder", name, [*ENCODERS, *user],
                       hint=f"(or tv:NAME, timm:NAME, or a checkpoint path) {pattern_hint()}")


def _peek_meta(path: Path) -> dict:
    """The metadata of our own checkpoint format, read lazily (mmap) and safely; {} otherwise."""
    if path.suffix == ".safetensors":
        return {}
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return {}
    return dict(obj.get("meta", {})) if is_harness_checkpoint(obj) else {}


def cost_columns(arch: str) -> dict[str, int | None]:
    """``params``, ``flops_64`` and ``flops_224`` (multiply-adds per image) of an architecture, counted on the
    meta device; None where the architecture is not one ``build_arch`` knows (a foreign checkpoint)."""
    try:
        costs = [arch_cost(arch, r) for r in CARD_RESOLUTIONS]
    except HarnessError:
        return {"params": None, **{f"flops_{r}": None for r in CARD_RESOLUTIONS}}
    return {"params": costs[0]["params"], **{f"flops_{c['resolution']}": c["flops"] for c in costs}}


def list_encoders(weights_dir: Path | None = None) -> list[dict]:
    """Every encoder ``create_encoder`` resolves by name, with whether it can be built now, its parameters
    and FLOPs per image at 64 and 224 px (``cost_columns``)."""
    rows = []
    for e in ENCODERS.values():
        cat, info = e.catalog, e.info
        row = {"name": e.name, "method": info.method, "data": info.data, "epochs": info.epochs, "arch": info.arch,
               "size": info.size, "balanced": info.balanced, "corrupt": info.corruption or "-",
               "available": is_available(cat, weights_dir) if cat else True, "description": e.description}
        if cat is not None:
            row.update(format=cat.format, file=cat.filename, url=cat.url,
                       sha256=cat.sha256, trained_by_authors=cat.trained_by_authors,
                       path=str(weight_path(cat, weights_dir)) if cat.filename else None)
        row.update(cost_columns(info.arch))
        rows.append(row)
    for stem, path in user_encoders(weights_dir).items():
        if stem in ENCODERS:
            continue
        meta = _peek_meta(path)
        info = info_from_meta(stem, str(meta.get("arch", "?")), meta, str(path))
        rows.append({"name": stem, "method": info.method if meta else "user", "data": info.data,
                     "epochs": info.epochs, "arch": info.arch, "size": info.size, "balanced": info.balanced,
                     "corrupt": info.corruption or "-",
                     "available": True, "description": "harness pretrain output / user checkpoint",
                     "path": str(path), **cost_columns(info.arch)})
    return rows


__all__ = ["ENCODERS", "EncoderEntry", "ResNetTaps", "create_encoder", "encoder_from_file", "list_encoders",
           "register_encoder", "user_encoders"]
