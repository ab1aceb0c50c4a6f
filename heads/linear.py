"""The single-layer classifier: Linear(D, n) on the pooled embedding (2049*n for ResNet-50)."""

from __future__ import annotations

import torch
from torch import nn

from encoders.base import Tap
from tasks.spec import TaskSpec

from .registry import register_head


class LinearHead(nn.Module):
    taps = ("embedding",)

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.fc(feats["embedding"].float())


@register_head("linear", taps=lambda task: ("embedding",), description="Linear(D, n) on the embedding")
def build_linear(taps: dict[str, Tap], task: TaskSpec) -> LinearHead:
    return LinearHead(taps["embedding"].channels, task.num_outputs)
