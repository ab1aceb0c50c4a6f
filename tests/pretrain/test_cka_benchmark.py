"""benchmarks/pretrain_cka.py: the early-vs-late block and the pooling over seeds, against hand computation."""

from __future__ import annotations

import importlib.util
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("pretrain_cka", ROOT / "benchmarks" / "pretrain_cka.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_early_late_is_the_mean_of_the_upper_right_block(bench):
    # 4 taps: early = taps 0, 1; late = taps 2, 3 -> cells (0,2), (0,3), (1,2), (1,3)
    m = [[1.0, 0.9, 0.1, 0.2],
         [0.9, 1.0, 0.3, 0.6],
         [0.1, 0.3, 1.0, 0.8],
         [0.2, 0.6, 0.8, 1.0]]
    assert bench.early_late(m) == pytest.approx((0.1 + 0.2 + 0.3 + 0.6) / 4)
    # 6 taps (a ResNet's conv, block1-4, embedding): a 3x3 block
    m6 = [[float(10 * i + j) for j in range(6)] for i in range(6)]
    assert bench.early_late(m6) == pytest.approx(sum(10 * i + j for i in range(3) for j in range(3, 6)) / 9)


def test_seed_groups_pool_labels_that_differ_only_in_the_seed(bench):
    rows = {"mocov2_s0": {"early_vs_late": 0.56}, "mocov2_s1": {"early_vs_late": 0.50},
            "mocov2_s2": {"early_vs_late": 0.53}, "swav_s0": {"early_vs_late": 0.48},
            "swav_s1": {"early_vs_late": 0.44}, "random_init": {"early_vs_late": 0.71},
            "byol_s0": {"early_vs_late": 0.6}, "swav_small": {"early_vs_late": 0.1}}
    g = bench.seed_groups(rows)
    assert set(g) == {"mocov2", "swav"}  # one seed only (byol) or no seed suffix: not a group
    assert g["mocov2"]["labels"] == ["mocov2_s0", "mocov2_s1", "mocov2_s2"]
    assert g["mocov2"]["mean"] == pytest.approx(0.53, abs=1e-4)
    assert g["mocov2"]["sd"] == pytest.approx(statistics.stdev([0.56, 0.50, 0.53]), abs=1e-4)
    assert g["swav"]["sd"] == pytest.approx(0.0283, abs=1e-4)  # |0.48 - 0.44| / sqrt(2)
