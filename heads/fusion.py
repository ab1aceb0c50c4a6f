"""Multi-input fusion classifier: S frame embeddings -> Linear(S*D, 512) -> ReLU -> Linear(512, n).

The reference flattens the (B, S, D) embeddings, so frame order matters (egomotion needs it).
ResNet-50, S=2, n=5: 2,100,229 parameters; S=6, n=400: 6,497,168.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.common.taps import Tap

from .linear import Standardize
from .registry import HeadTarget, embedding_input, register_head

HIDDEN = 512


class FusionHead(nn.Module):
    def __init__(self, in_features: int, frames: int, num_classes: int, hidden: int = HIDDEN):
        super().__init__()
        self.frames = frames
        self.norm = Standardize(in_features)
        self.fuse = nn.Sequential(nn.Linear(frames * in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = feats["embedding"].float()
        if emb.dim() != 3 or emb.shape[1] != self.frames:
            raise ValueError(f"fusion head expects (B, {self.frames}, D) embeddings, got {tuple(emb.shape)}")
        return self.fuse(self.norm(emb).flatten(1))


@register_head("fusion", inputs=embedding_input,
               description="per-frame embeddings concatenated -> Linear(S*D, 512) -> ReLU -> Linear(512, n)")
def build_fusion(taps: dict[str, Tap], task: HeadTarget) -> FusionHead:
    return FusionHead(taps["embedding"].channels, task.frames, task.num_outputs)
