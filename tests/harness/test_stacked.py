"""The stacked grid (harness/stacked.py) against the per-configuration loop it replaces.

Each member must be the same experiment as ``fit`` on its own: same initial weights, batches,
update rule, learning rates, selection. Only floating-point rounding may differ (batched matmuls,
the bias folded into the weight), so the tolerance is: per epoch, train losses within 1e-4
(relative), val scores within one val sample (1/N), weights within 1e-3, and learning rates,
chosen configuration and chosen epoch exactly equal.
"""

import pytest
import torch

from harness.cache import MemoryFeatures
from harness.stacked import fit_grid, supports
from harness.train import evaluate, fit
from heads.fusion import FusionHead
from heads.linear import LinearHead
from tasks.spec import DEFAULT_GRID, OptimConfig
from tests.harness import toy

CPU = torch.device("cpu")


def blobs(n: int, classes: int, dim: int, seed: int, frames: int = 1, noise: float = 1.6) -> MemoryFeatures:
    """Overlapping Gaussian classes (val accuracy well below 1, so the curves move), stored as fp16 like the cache."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * 1.5 + 3.0
    y = torch.randint(0, classes, (n,), generator=g)
    x = centers[y] + noise * torch.randn(n, dim, generator=g) * torch.linspace(0.2, 5, dim)
    if frames > 1:
        x = torch.stack([x] + [torch.randn(n, dim, generator=g) for _ in range(frames - 1)], 1)
    return MemoryFeatures({"embedding": x.half()}, y)


def separate(build, grid, seeds, train, val, task, epochs, batch_size):
    """What the runner did before: one ``fit`` per configuration and seed, seeded as it seeds them."""
    out = {}
    for s in seeds:
        out[s] = []
        for i, cfg in enumerate(grid):
            torch.manual_seed(s * 1000 + i)
            out[s].append(fit(build(), train, val, task, cfg, epochs, CPU, s, batch_size))
    return out


def assert_same(ref, got, n_val):
    for s in ref:
        for a, b in zip(ref[s], got[s], strict=True):
            assert b.config == a.config
            assert b.lrs == pytest.approx(a.lrs, rel=1e-12)
            for ha, hb in zip(a.history, b.history, strict=True):
                assert hb["epoch"] == ha["epoch"]
                assert hb["train_loss"] == pytest.approx(ha["train_loss"], rel=1e-4)
                assert abs(hb["val"] - ha["val"]) <= 1 / n_val + 1e-12
            assert (b.best_epoch, b.best_val) == (a.best_epoch, pytest.approx(a.best_val, abs=1 / n_val))
            assert b.state.keys() == a.state.keys()
            for k in a.state:
                assert torch.allclose(b.state[k].float(), a.state[k].float(), atol=1e-3, rtol=1e-3), k
        pick = [max(range(len(r)), key=lambda i, r=r: r[i].best_val) for r in (ref[s], got[s])]
        assert pick[0] == pick[1], f"seed {s}: chose configuration {pick[1]}, separate training chose {pick[0]}"


def test_linear_grid_and_seeds_match_separate_training():
    task = toy.toy_task(epochs=6)
    train, val = blobs(150, 3, 24, 0, noise=4.0), blobs(90, 3, 24, 1, noise=4.0)
    build = lambda: LinearHead(24, 3)  # noqa: E731
    ref = separate(build, DEFAULT_GRID, [0, 1], [train], val, task, 6, 16)
    got = fit_grid(build, DEFAULT_GRID, [0, 1], [train], val, task, 6, CPU, 16)
    assert_same(ref, got, len(val))
    vals = [h["val"] for r in got[0] for h in r.history]
    assert 0.4 < max(vals) < 1 and len(set(vals)) > 4  # the curves move: the comparison means something
    # the chosen state loads into the head and scores its recorded val
    head = build()
    best = max(got[1], key=lambda r: r.best_val)
    head.load_state_dict(best.state)
    assert evaluate(head, val, task, CPU)["top1"] == pytest.approx(best.best_val, abs=1 / len(val))


def test_fusion_head_matches_separate_training():
    task = toy.toy_task(epochs=3)
    train, val = blobs(70, 3, 8, 2, frames=2), blobs(40, 3, 8, 3, frames=2)
    build = lambda: FusionHead(8, 2, 3)  # noqa: E731
    grid = (DEFAULT_GRID[1], DEFAULT_GRID[3])
    assert_same(separate(build, grid, [0], [train], val, task, 3, 16),
                fit_grid(build, grid, [0], [train], val, task, 3, CPU, 16), len(val))


def test_every_update_rule_and_schedule_and_a_one_row_batch():
    """Adam with L2 decay, AdamW, SGD with decay and without momentum, step and cosine schedules; 65 train
    samples in batches of 16 leave a last batch of one row (standardised with the running statistics)."""
    task = toy.toy_task()
    grid = (OptimConfig("adam", 1e-3, weight_decay=1e-2, schedule="step"),
            OptimConfig("adamw", 2e-3, weight_decay=5e-2, schedule="cosine"),
            OptimConfig("sgd", 5e-2, weight_decay=1e-3, momentum=0.0, schedule="step"),
            OptimConfig("sgd", 1e-2, schedule="cosine"))
    train, val = blobs(65, 3, 12, 4), blobs(60, 3, 12, 5)
    build = lambda: LinearHead(12, 3)  # noqa: E731
    ref = separate(build, grid, [3], [train], val, task, 4, 16)
    got = fit_grid(build, grid, [3], [train], val, task, 4, CPU, 16)
    assert_same(ref, got, len(val))
    assert got[3][0].lrs[-1] == pytest.approx(1e-4) and got[3][3].lrs[1] < got[3][3].lrs[0]


class Streamed:
    """A source that is not in memory: seeds then take one pass each."""

    def __init__(self, inner):
        self.inner = inner

    def __len__(self):
        return len(self.inner)

    def batches(self, *a, **k):
        yield from self.inner.batches(*a, **k)


def test_sources_not_in_memory_take_one_pass_per_seed_and_augmented_copies_cycle():
    task = toy.toy_task()
    copies = [blobs(48, 3, 10, 6), blobs(48, 3, 10, 7)]  # epoch e reads copy e mod 2, as fit does
    val = blobs(30, 3, 10, 8)
    build = lambda: LinearHead(10, 3)  # noqa: E731
    grid = DEFAULT_GRID[:2]
    ref = separate(build, grid, [0, 5], copies, val, task, 3, 16)
    assert_same(ref, fit_grid(build, grid, [0, 5], [Streamed(c) for c in copies], Streamed(val), task, 3, CPU, 16),
                len(val))
    assert_same(ref, fit_grid(build, grid, [0, 5], copies, val, task, 3, CPU, 16), len(val))


def test_what_the_engine_takes():
    """Single-layer and fusion heads trained with cross-entropy; anything else keeps the per-configuration loop."""
    from dataclasses import replace

    task = toy.toy_task()
    assert supports(lambda: LinearHead(4, 3), DEFAULT_GRID, task)
    assert not supports(lambda: LinearHead(4, 3), DEFAULT_GRID, replace(task, loss="l1"))
    assert not supports(lambda: torch.nn.Linear(4, 3), DEFAULT_GRID, task)
