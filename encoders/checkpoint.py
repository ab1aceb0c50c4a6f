"""Our own checkpoint format (``harness pretrain`` output), readable with weights_only=True.

{"format": "harness-pretrain", "format_version": 1, "arch": "resnet18",
 "state_dict": {the backbone's own keys},
 "meta": {"method", "arch", "data", "manifest_hash", "epochs", "images", ...}}

``arch`` is any name ``encoders.archs.build_arch`` knows (``resnet18``, ``resnetv2_50_x8``, ``mobilenet_v2``,
``vit_small_patch16``...) and ``state_dict`` is that model's state dict as it stands (BatchNorm step counters
may be left out): for torchvision ResNets, torchvision's keys without ``fc``, as every version-1 file has.
``harness eval`` loads it strictly into ``build_arch(arch)`` (``encoders.adapters.check_backbone``).

Only plain containers, strings, numbers and tensors, so loading never needs to unpickle code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from harness.common.atomic import atomic_path

HARNESS_FORMAT = "harness-pretrain"
HARNESS_FORMAT_VERSION = 1


def save_harness_checkpoint(path: Path, arch: str, backbone_state: dict[str, torch.Tensor],
                            meta: dict[str, Any]) -> Path:
    obj = {"format": HARNESS_FORMAT, "format_version": HARNESS_FORMAT_VERSION, "arch": arch,
           "state_dict": {k: v.detach().cpu() for k, v in backbone_state.items()},
           "meta": {**meta, "arch": arch}}
    with atomic_path(Path(path)) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def is_harness_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == HARNESS_FORMAT
