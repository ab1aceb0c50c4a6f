"""The synthetic suite: a procedural 3D world with exact ground truth (README.md, "The synthetic suite").

``corpus`` is the public way in for other packages (pretraining reads its images from here);
the store's file layout stays this package's business.
"""

from __future__ import annotations

import numpy as np

from . import tasks  # noqa: F401  (registers the synthetic tasks)
from .render import SHAPE_NAMES
from .store import load_split

CORPUS_CLASSES: tuple[str, ...] = tuple(SHAPE_NAMES)


def corpus(n: int, size: int, fields: tuple[str, ...] = ("image", "shape_cls"), split: str = "train"
           ) -> dict[str, np.ndarray]:
    """The first ``n`` single-frame renders of ``split`` at ``size`` px (rendered once, then read
    from the cache): ``image`` (n, size, size, 3) uint8 and ``shape_cls`` labels."""
    return load_split("single", split, n, size, fields=fields)


__all__ = ["CORPUS_CLASSES", "corpus"]
