"""benchmarks/pretrain_learning.py records a finished run: ``--from-run`` reads its kNN curve from the resume
state, and ``recheck`` rebuilds the run's initial backbone from its seed and loads the final one, so that with the
monitor's own bank and queries it reproduces the monitor's first and last accuracies."""

import pytest
import torch

from encoders.pretrain.base import make_backbone
from encoders.pretrain.train import PretrainOptions, run_pretrain


@pytest.fixture
def bench(load_benchmark):
    return load_benchmark("pretrain_learning")


def test_from_run_and_recheck_reproduce_the_monitor(tmp_path, bench):
    res = run_pretrain(PretrainOptions(method="simclr", preset="small", out=tmp_path, device="cpu", name="tiny",
                                       limit=64, batch_size=32, epochs=2, resolution=32, knn_every=1,
                                       knn_bank=60, knn_queries=40, seed=3))
    run = tmp_path / "tiny"
    monitor = [h["knn"] for h in res["history"] if "knn" in h]
    assert len(monitor) == 3  # epoch 0 (init), 1, 2
    rec = bench.from_run(run, 60, 40)
    assert rec["knn_init"] == pytest.approx(monitor[0], abs=1e-4)
    assert rec["knn_final"] == pytest.approx(monitor[-1], abs=1e-4)
    assert rec["steps"] == 4 and rec["method"] == "simclr"
    again = bench.recheck(run, 60, 40)
    assert again["init"] == pytest.approx(monitor[0], abs=1e-4)
    assert again["final"] == pytest.approx(monitor[-1], abs=1e-4)
    # binomial standard errors, in points
    se = [100 * (a * (1 - a) / 40) ** 0.5 for a in (again["init"], again["final"])]
    assert again["se_points"] == pytest.approx(se, abs=0.06)
    assert again["gain_se_points"] == pytest.approx((se[0] ** 2 + se[1] ** 2) ** 0.5, abs=0.06)
    # the run trained: its final backbone is not the one the seed draws
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        init, _ = make_backbone("resnet18", 3)
    assert not torch.equal(state["method"]["backbone.conv1.weight"], init.conv1.weight)


def test_from_run_records_every_setting_that_differs_from_the_preset(tmp_path, bench):
    # a warm-up or momentum given with --set is part of the recipe the table shows; the preset's own settings
    # and the run-size options (images, batch, resolution) are not repeated
    run_pretrain(PretrainOptions(method="mocov2", preset="small", out=tmp_path, device="cpu", name="variant",
                                 limit=64, batch_size=32, epochs=1, resolution=32, knn_every=1,
                                 knn_bank=40, knn_queries=20,
                                 overrides={"momentum": "0.9", "optim.warmup_epochs": "1",
                                            "augment.global_scale": "0.3,1"}))
    rec = bench.from_run(tmp_path / "variant", 40, 20)
    assert set(rec["overrides"]) == {"momentum=0.9", "optim.warmup_epochs=1", "augment.global_scale=0.3,1"}
    assert all(f", {kv}" in rec["note"] for kv in rec["overrides"]) and rec["note"].endswith(", 1 epochs")
    assert rec["settings"]["momentum"] == "0.9" and rec["settings"]["queue"] == "512"
