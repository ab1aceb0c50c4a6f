"""Deterministic validation splits carved from train when a dataset has no official one."""

from __future__ import annotations

import numpy as np


def carve_val(n: int, fraction: float, seed: int, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx), disjoint, covering range(n); stratified by ``labels`` if given.

    Each class keeps at least one training sample; a class with >= 2 samples gives at least
    one to val.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    if labels is None:
        perm = rng.permutation(n)
        k = max(1, int(round(fraction * n)))
        return np.sort(perm[k:]), np.sort(perm[:k])
    labels = np.asarray(labels)
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} samples")
    val: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = min(len(idx) - 1, max(1, int(round(fraction * len(idx))))) if len(idx) > 1 else 0
        val.append(idx[:k])
    val_idx = np.sort(np.concatenate(val)) if val else np.array([], dtype=int)
    train_idx = np.setdiff1d(np.arange(n), val_idx)
    return train_idx, val_idx
