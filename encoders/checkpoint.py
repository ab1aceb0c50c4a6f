"""Our own checkpoint format (``harness pretrain`` output), readable with weights_only=True.

{"format": "harness-pretrain", "format_version": 1, "arch": "resnet18",
 "state_dict": {torchvision-layout backbone keys, no fc},
 "meta": {"method", "arch", "data", "manifest_hash", "epochs", "images", ...}}

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
