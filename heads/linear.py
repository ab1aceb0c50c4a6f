"""The single-layer classifier: Linear(D, n) on the pooled embedding (2049*n for ResNet-50).

The embedding is standardised first by a parameter-free BatchNorm (``affine=False``; running
train-set mean and variance at evaluation), as in MAE's linear probing. Frozen embeddings have
per-channel scales that differ by orders of magnitude (a random-init ResNet's especially), and
an unnormalised linear layer trained for a few dozen epochs underfits them: on the synthetic
image-level tasks it trailed scikit-learn's tuned logistic regression on standardised features by
up to 8 points (benchmarks/linear_probe_quality.py). The learnable parameters stay 2049*n.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from harness.common.taps import Tap

from .registry import HeadTarget, embedding_input, register_head


class Standardize(nn.BatchNorm1d):
    """Per-channel standardisation of (..., D) embeddings, no learnable parameters: batch
    statistics in training (frames of a clip pooled together), running ones at evaluation and for
    a training batch of one row (which has no variance)."""

    def __init__(self, channels: int):
        super().__init__(channels, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        if self.training and flat.shape[0] == 1:
            flat = F.batch_norm(flat, self.running_mean, self.running_var, training=False, eps=self.eps)
        else:
            flat = super().forward(flat)
        return flat.reshape(x.shape)


class LinearHead(nn.Module):
    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.norm = Standardize(in_features)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.fc(self.norm(feats["embedding"].float()))


def build_linear(taps: dict[str, Tap], task: HeadTarget) -> LinearHead:
    return LinearHead(taps["embedding"].channels, task.num_outputs)


register_head("linear", inputs=embedding_input, description="Linear(D, n) on the standardised embedding")(build_linear)
