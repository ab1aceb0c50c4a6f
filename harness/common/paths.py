"""Where the harness keeps things on disk. No global state: every function reads the
environment when called, so tests can point HARNESS_CACHE at a temporary folder."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """User cache directory: $HARNESS_CACHE, else $XDG_CACHE_HOME/harness, else ~/.cache/harness."""
    env = os.environ.get("HARNESS_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "harness"


def synthetic_dir() -> Path:
    return cache_root() / "synthetic"


def features_dir() -> Path:
    return cache_root() / "features"


def weights_dir() -> Path:
    """Where encoder weights live: $HARNESS_WEIGHTS, else <cache root>/weights."""
    env = os.environ.get("HARNESS_WEIGHTS")
    return Path(env).expanduser() if env else cache_root() / "weights"


def user_encoders_dir() -> Path:
    """Checkpoints written by ``harness pretrain`` that ``harness encoders`` lists by name."""
    return weights_dir() / "user"
