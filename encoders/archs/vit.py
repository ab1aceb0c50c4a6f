"""Vision transformers: ViT-Tiny/16 and ViT-Small/16 (Dosovitskiy et al. 2021; DeiT sizes), timm's models
through ``encoders.vit.ViTTaps`` (a tap per block on the 1/16 patch grid, the class token as embedding),
built for any input size (interpolated position embedding)."""

from __future__ import annotations

from ..vit import ViTTaps, vit_kwargs
from . import ArchSpec, register_arch
from ._base import EmbeddingByDefault, seeded


class ViT(EmbeddingByDefault, ViTTaps):
    """``ViTTaps`` whose plain call returns the embedding (the pretraining backbone)."""


def _builder(timm_name: str):
    def build(seed: int) -> ViT:
        import timm

        return ViT(seeded(seed, lambda: timm.create_model(timm_name, pretrained=False, num_classes=0, **vit_kwargs())))

    return build


for _name, _timm, _size in (("vit_tiny_patch16", "vit_tiny_patch16_224", "Tiny"),
                            ("vit_small_patch16", "vit_small_patch16_224", "Small")):
    register_arch(ArchSpec(_name, _builder(_timm), "vit", f"timm ViT-{_size}/16 ({_timm}), any input size",
                           {"source": f"timm {_timm}", "paper": "Dosovitskiy et al. 2021 (DeiT sizes)",
                            "embedding": "class token after the final norm"}))
