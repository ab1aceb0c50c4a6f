"""Deterministic, stratified train/test splits for releases that ship none the paper used.

Caltech-101 (30 train images per class), EuroSAT and SUN397 (80% train) have no official
split matching the paper's train sizes. These helpers make one that does not depend on the
filesystem's listing order or on a random generator's state: within each class, the images
are ordered by the SHA-256 of ``salt + "/" + the image's path relative to the release root``
(the salt is the task name, so two datasets' splits are unrelated), and the first ``quota``
of that order are train. The same files always give the same split, on any machine.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np


def hash_key(salt: str, rel: str) -> bytes:
    return hashlib.sha256(f"{salt}/{rel}".encode()).digest()


def proportional_quotas(counts: Sequence[int], fraction: float) -> np.ndarray:
    """Per-class train counts whose total is exactly ``floor(fraction * sum(counts))``.

    Each class gets ``floor(fraction * n_c)``; the images still owed go one at a time to the
    classes with the largest remainders (ties: the lower class index), so the split is
    stratified and the total matches the paper's figure on the full release (e.g. SUN397:
    floor(0.8 x 108,754) = 87,003)."""
    counts = np.asarray(counts, dtype=np.int64)
    exact = counts * fraction
    quotas = np.floor(exact).astype(np.int64)
    owed = int(math.floor(float(counts.sum()) * fraction + 1e-9)) - int(quotas.sum())
    if owed > 0:
        rema = exact - quotas
        order = sorted(range(len(counts)), key=lambda c: (-rema[c], c))
        for c in order[:owed]:
            quotas[c] += 1
    return quotas


def split_by_hash(rels: Sequence[str], labels: np.ndarray, quotas: np.ndarray, salt: str, split: str) -> list[int]:
    """Indices (in listing order) of ``split``: per class, the ``quotas[c]`` images first in hash order
    are ``"train"``, the others ``"test"``."""
    labels = np.asarray(labels, dtype=np.int64)
    train = np.zeros(len(rels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        ranked = sorted(idx.tolist(), key=lambda i: hash_key(salt, rels[i]))
        train[ranked[: int(quotas[c])]] = True
    return np.flatnonzero(train if split == "train" else ~train).tolist()


def missing_numbers(numbers: Sequence[int]) -> list[int]:
    """The numbers absent from 1..max(numbers): releases that number each class's images from 1
    (Caltech-101 ``image_NNNN.jpg``, EuroSAT ``<Class>_<i>.jpg``) show a deleted file as a gap."""
    if not numbers:
        return []
    present = set(numbers)
    return [k for k in range(1, max(present) + 1) if k not in present]
