"""The synthetic suite: a procedural 3D world with exact ground truth (spec/synthetic.md)."""

from . import tasks  # noqa: F401  (registers the synthetic tasks)
