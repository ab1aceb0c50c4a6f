import os

import pytest
import torch

os.environ.setdefault("HARNESS_QUIET", "1")
# Two xdist workers on a 2-core machine: one intra-op thread each, so that they do not oversubscribe the
# cores (subprocesses started by tests pick their own threads).
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test sees its own HARNESS_CACHE unless it sets one; synthetic data is shared per session."""
    root = tmp_path_factory.getbasetemp() / "harness-cache"
    monkeypatch.setenv("HARNESS_CACHE", str(root))
    monkeypatch.setenv("HARNESS_WEIGHTS", str(tmp_path_factory.getbasetemp() / "harness-weights"))


@pytest.fixture(scope="session")
def load_benchmark():
    """``load_benchmark("pretrain_probe")``: a script of ``benchmarks/`` (not a package) as a module."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "benchmarks"

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, root / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load
