"""Deterministic validation splits carved from train when a dataset has no official one.

A carve never leaves train or val empty: below ``MIN_CARVE`` samples there is no split to make,
and ``carve_problem`` says so in the one line that both ``harness data check`` (beforehand) and
``harness eval`` (at the start of the task) print.
"""

from __future__ import annotations

import numpy as np

MIN_CARVE = 2  # one sample to train the head on, one to select it on


def carve_problem(split: str, n: int) -> str | None:
    """Why ``n`` samples of ``split`` cannot be carved into train and val (None: they can), as
    ``<split>: <what is wrong>``, the form of a ``data check`` problem."""
    if n >= MIN_CARVE:
        return None
    return (f"{split}: {n} sample{'' if n == 1 else 's'}, too few to carve a validation split from (at least "
            f"{MIN_CARVE} are needed: one to train the head on, one to select it on)")


def _size(fraction: float, n: int) -> int:
    """Val's share of ``n`` samples: at least one, and at least one left to train on."""
    return min(n - 1, max(1, int(round(fraction * n))))


def carve_val(n: int, fraction: float, seed: int, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx), disjoint, covering range(n), neither empty; stratified by ``labels`` if given.

    Stratified: each class keeps at least one training sample, and a class with >= 2 samples gives
    at least one to val. When every class has a single sample (a tiny subset), that rule would
    leave val empty; val then takes ``fraction`` of the samples (at least one) at random, so some
    of its classes are not in train. Raises ValueError below ``MIN_CARVE`` samples (callers say why
    first, with ``carve_problem``).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val fraction must be in (0, 1), got {fraction}")
    if n < MIN_CARVE:
        raise ValueError(carve_problem("train", n))
    rng = np.random.default_rng(seed)
    if labels is None:
        perm = rng.permutation(n)
        k = _size(fraction, n)
        return np.sort(perm[k:]), np.sort(perm[:k])
    labels = np.asarray(labels)
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} samples")
    val: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = _size(fraction, len(idx)) if len(idx) > 1 else 0
        val.append(idx[:k])
    val_idx = np.sort(np.concatenate(val))
    if not len(val_idx):  # every class a singleton
        val_idx = np.sort(rng.permutation(n)[: _size(fraction, n)])
    train_idx = np.setdiff1d(np.arange(n), val_idx)
    return train_idx, val_idx
