"""Frozen encoders that declare their feature taps (timm's ``feature_info`` habit).

A tap is a named intermediate output with a known width and stride. Heads read the
declaration to size themselves, so no head hard-codes ResNet-50 widths.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from harness.common.taps import IMAGENET_MEAN, IMAGENET_STD, Tap


class TapModel(nn.Module):
    """A backbone that returns the requested taps: ``forward(x, taps) -> {name: tensor}``."""

    taps: tuple[Tap, ...]

    def forward(self, x: torch.Tensor, taps: tuple[str, ...]) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError


FLOPS_COUNTING = "multiply-adds (one per multiply-accumulate: torchvision's and the papers' GFLOPs)"


def model_cost(model: TapModel, resolution: int | tuple[int, int]) -> dict[str, Any]:
    """Parameters and FLOPs per image of ``model`` computing every tap it declares (derived taps left out)
    at ``resolution`` x ``resolution``. FLOPs are multiply-adds (``FlopCounterMode`` counts 2 per
    multiply-accumulate; halved here): torchvision's ResNet-50 is 4.09 GFLOPs at 224. Counted on the meta
    device with meta copies of the weights, so it costs no memory and no arithmetic, whatever the model."""
    params = sum(p.numel() for p in model.parameters())
    meta = {name: torch.empty_like(t, device="meta")
            for name, t in itertools.chain(model.named_parameters(), model.named_buffers())}
    taps = tuple(t.name for t in model.taps if not t.derived)
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    x = torch.zeros(1, 3, h, w, device="meta")
    was_training = model.training
    model.train(False)
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            torch.func.functional_call(model, meta, (x, taps))
    finally:
        model.train(was_training)
    size = int(h) if h == w else [int(h), int(w)]
    return {"params": int(params), "flops": int(counter.get_total_flops()) // 2, "resolution": size}


@dataclass
class EncoderInfo:
    """The one record of what an encoder is (timm's pretrained-config habit): catalog rows,
    registry entries and checkpoints all carry one, and every result record copies it whole,
    so that ``harness report`` never has to look an encoder up again."""

    name: str
    arch: str
    method: str = "none"  # as the paper writes it: SwAV, MoCov2, MoCov1, PIRL, supervised, none (or ours: SimCLR...)
    data: str = "-"  # pretraining data, as Table 3 writes it
    size: str | None = None  # pretraining set size: "1.3M", "0.5M", "0.25M"
    epochs: int | None = None
    balanced: bool | None = None  # False for the linearly / logarithmically unbalanced subsets
    corruption: str | None = None  # pretraining-data corruption (Cole et al.): "none", "jpeg:10"; None: not pretrained
    source: str = "random init"  # where the weights came from (a file, random init and its seed)
    title: str = ""  # the paper's name for it (Table 3)
    extra: dict[str, Any] = field(default_factory=dict)


class FrozenEncoder(nn.Module):
    """Eval mode forever, no gradient, input normalisation inside.

    Inputs are float images in [0, 1], (B, 3, H, W) or sequences (B, S, 3, H, W); sequences
    are folded into the batch for the backbone and unfolded in every returned tap.
    """

    def __init__(self, model: TapModel, info: EncoderInfo,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD):
        super().__init__()
        self.model = model
        self.info = info
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        super().train(False)
        self._fingerprint: str | None = None
        self._costs: dict[int | tuple[int, int], dict[str, Any]] = {}

    def train(self, mode: bool = True) -> FrozenEncoder:
        # BatchNorm statistics stay frozen whatever a caller asks.
        return super().train(False)

    @property
    def taps(self) -> dict[str, Tap]:
        return {t.name: t for t in self.model.taps}

    @property
    def name(self) -> str:
        return self.info.name

    def fingerprint(self) -> str:
        """SHA-256 of the backbone weights (names, dtypes, shapes and bytes), hex.

        Two files holding the same weights get the same fingerprint, whatever their format.
        """
        if self._fingerprint is None:
            h = hashlib.sha256()
            for key, value in sorted(self.model.state_dict().items()):
                t = value.detach().to("cpu").contiguous()
                h.update(key.encode())
                h.update(str(t.dtype).encode())
                h.update(str(tuple(t.shape)).encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def cost(self, resolution: int | tuple[int, int]) -> dict[str, Any]:
        """``{"params", "flops", "resolution"}``: the backbone's parameters and its FLOPs per image
        (multiply-adds) at ``resolution`` px, every declared tap computed (``model_cost``)."""
        if resolution not in self._costs:
            self._costs[resolution] = model_cost(self.model, resolution)
        return dict(self._costs[resolution])

    @torch.no_grad()
    def forward(self, images: torch.Tensor, taps: tuple[str, ...] = ("embedding",)) -> dict[str, torch.Tensor]:
        unknown = [t for t in taps if t not in self.taps]
        if unknown:
            raise KeyError(f"encoder {self.name} has no tap(s) {unknown}; it declares {list(self.taps)}")
        seq = images.dim() == 5
        if seq:
            b, s = images.shape[:2]
            images = images.flatten(0, 1)
        elif images.dim() != 4:
            raise ValueError(f"expected (B,3,H,W) or (B,S,3,H,W) images, got shape {tuple(images.shape)}")
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        out = self.model(x, tuple(taps))
        if seq:
            out = {k: v.unflatten(0, (b, s)) for k, v in out.items()}
        return out
