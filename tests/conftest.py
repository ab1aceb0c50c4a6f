import os

import pytest
import torch

os.environ.setdefault("HARNESS_QUIET", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test sees its own HARNESS_CACHE unless it sets one; synthetic data is shared per session."""
    root = tmp_path_factory.getbasetemp() / "harness-cache"
    monkeypatch.setenv("HARNESS_CACHE", str(root))
    monkeypatch.setenv("HARNESS_WEIGHTS", str(tmp_path_factory.getbasetemp() / "harness-weights"))
