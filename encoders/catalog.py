"""The paper's 30 encoders (Kotar et al., Table 3) plus ``supervised_in`` and ``random``, as data.

Each row says what the encoder is (method, pretraining data, size, epochs, balance), which
file holds its weights, in which checkpoint format, and where the public copy comes from.
URLs are those published in the FAIR MoCo / SwAV / VISSL READMEs and in the reference
implementation's README (allenai/ViRB); the authors' own files are in ViRB's ``model.`` format.
``sha256`` stays None until a user has verified a download (a prefix is allowed: torchvision
file names carry the first 8 hex digits of the file's SHA-256).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import EncoderInfo

FAIR_MOCO = "https://dl.fbaipublicfiles.com/moco/moco_checkpoints"
FAIR_SWAV = "https://dl.fbaipublicfiles.com/deepcluster"
VISSL_ZOO = "https://dl.fbaipublicfiles.com/vissl/model_zoo"
VIRB_S3 = "https://prior-model-weights.s3.us-east-2.amazonaws.com/contrastive_encoders"
TORCHVISION_R50_V1 = "https://download.pytorch.org/models/resnet50-0676ba61.pth"


@dataclass(frozen=True)
class CatalogEntry:
    """Where an encoder's weights come from; what the encoder is lives in ``info`` (one card)."""

    info: EncoderInfo
    format: str | None  # checkpoint format (encoders/adapters.py); None: no file (random init)
    filename: str | None  # expected file name in the weights directory
    url: str | None  # where the public weights come from
    sha256: str | None = None  # verified digest (or a prefix of it), None until verified
    trained_by_authors: bool = False  # "Trained by us" column of Table 3

    # The card's fields, read through (so a row is written once).
    name = property(lambda self: self.info.name)
    title = property(lambda self: self.info.title)
    method = property(lambda self: self.info.method)
    data = property(lambda self: self.info.data)
    size = property(lambda self: self.info.size)
    epochs = property(lambda self: self.info.epochs)
    balanced = property(lambda self: self.info.balanced)
    arch = property(lambda self: self.info.arch)


def _row(name: str, title: str, method: str, data: str, size: str | None, epochs: int | None,
         balanced: bool | None, fmt: str | None, filename: str | None, url: str | None, **kw: Any) -> CatalogEntry:
    info = EncoderInfo(name=name, arch="resnet50", method=method, data=data, size=size, epochs=epochs,
                       balanced=balanced, title=title, source="catalog",
                       corruption=None if method == "none" else "none")
    return CatalogEntry(info, fmt, filename, url, **kw)


# (CLI suffix, Table 3 data label, size, epochs, balanced, ViRB file stem for SwAV / MoCov2)
_AUTHOR_VARIANTS: tuple[tuple[str, str, str, str, int, bool, str, str], ...] = (
    ("in100", "ImageNet 100", "ImageNet", "1.3M", 100, True, "SWAV_100", "MoCov2_100"),
    ("in50", "ImageNet 50", "ImageNet", "1.3M", 50, True, "SWAV_50", "MoCov2_50"),
    ("in_half200", "Half ImageNet 200", "ImageNet-1/2", "0.5M", 200, True, "SWAVHalfImagenet", "MoCov2HalfImagenet"),
    ("in_half100", "Half ImageNet 100", "ImageNet-1/2", "0.5M", 100, True,
     "SWAVHalfImagenet_100", "MoCov2HalfImagenet_100"),
    ("in_quarter200", "Quarter ImageNet 200", "ImageNet-1/4", "0.25M", 200, True,
     "SWAVQuarterImagenet", "MoCov2QuarterImagenet"),
    ("in_lin200", "Linear Unbalanced ImageNet 200", "ImageNet-1/2-Lin", "0.5M", 200, False,
     "SWAVUnbalancedImagenet", "MoCov2UnbalancedImagenet"),
    ("in_lin100", "Linear Unbalanced ImageNet 100", "ImageNet-1/2-Lin", "0.5M", 100, False,
     "SWAVUnbalancedImagenet_100", "MoCov2UnbalancedImagenet_100"),
    ("in_log200", "Log Unbalanced ImageNet 200", "ImageNet-1/4-Log", "0.25M", 200, False,
     "SWAVLogImagenet", "MoCov2LogImagenet"),
    ("places200", "Places 200", "Places", "1.3M", 200, True, "SWAVPlaces", "MoCov2Places"),
    ("kinetics200", "Kinetics 200", "Kinetics", "1.3M", 200, True, "SWAVKinetics", "MoCov2Kinetics"),
    ("taskonomy200", "Taskonomy 200", "Taskonomy", "1.3M", 200, True, "SWAVTaskonomy", "MoCov2Taskonomy"),
    ("combo200", "Combination 200", "Combination", "1.3M", 200, True, "SWAVCombination", "MoCov2Combination"),
)


def _fair_rows() -> tuple[list[CatalogEntry], list[CatalogEntry]]:
    swav = [_row(f"swav_in{ep}", f"SwAV ImageNet {ep}", "SwAV", "ImageNet", "1.3M", ep, True, "swav",
                         f"swav_{ep}ep_pretrain.pth.tar", f"{FAIR_SWAV}/swav_{ep}ep_pretrain.pth.tar")
            for ep in (800, 200)]
    moco2 = [_row(f"mocov2_in{ep}", f"MoCov2 ImageNet {ep}", "MoCov2", "ImageNet", "1.3M", ep, True, "moco",
                          f"moco_v2_{ep}ep_pretrain.pth.tar",
                          f"{FAIR_MOCO}/moco_v2_{ep}ep/moco_v2_{ep}ep_pretrain.pth.tar")
             for ep in (800, 200)]
    return swav, moco2


def _author_rows(method: str, prefix: str, stem_index: int) -> list[CatalogEntry]:
    rows = []
    for suffix, title, data, size, epochs, balanced, *stems in _AUTHOR_VARIANTS:
        stem = stems[stem_index]
        rows.append(_row(f"{prefix}_{suffix}", f"{method} {title}", method, data, size, epochs, balanced,
                                 "virb", f"{stem}.pt", f"{VIRB_S3}/{stem}.pt", trained_by_authors=True))
    return rows


def _build_catalog() -> dict[str, CatalogEntry]:
    fair_swav, fair_moco2 = _fair_rows()
    rows = [
        *fair_swav, *_author_rows("SwAV", "swav", 0),
        *fair_moco2, *_author_rows("MoCov2", "mocov2", 1),
        _row("mocov1_in200", "MoCov1 ImageNet 200", "MoCov1", "ImageNet", "1.3M", 200, True, "moco",
                     "moco_v1_200ep_pretrain.pth.tar",
                     f"{FAIR_MOCO}/moco_v1_200ep/moco_v1_200ep_pretrain.pth.tar"),
        _row("pirl_in800", "PIRL ImageNet 800", "PIRL", "ImageNet", "1.3M", 800, True, "vissl",
                     "pirl_in800_model_final_checkpoint_phase799.torch",
                     f"{VISSL_ZOO}/pirl_jigsaw_4node_pirl_jigsaw_4node_resnet_22_07_20.34377f59/"
                     "model_final_checkpoint_phase799.torch"),
        _row("supervised_in", "Supervised ImageNet", "supervised", "ImageNet", "1.3M", None, True,
                     "torchvision", "resnet50-0676ba61.pth", TORCHVISION_R50_V1, sha256="0676ba61"),
        _row("random", "Random", "none", "-", None, None, None, None, None, None),
    ]
    return {r.name: r for r in rows}


CATALOG: dict[str, CatalogEntry] = _build_catalog()
PAPER_ENCODERS: tuple[str, ...] = tuple(n for n in CATALOG if n not in ("supervised_in", "random"))
