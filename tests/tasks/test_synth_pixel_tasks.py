"""The multi-frame and pixelwise synthetic tasks: records, samples, and `harness eval` end to end."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from harness.cli import app
from tasks.losses import LOSSES
from tasks.metrics import METRICS
from tasks.registry import get_task
from tasks.spec import DataRequest
from tasks.synthetic import tasks as synth_tasks
from tasks.synthetic.store import DEFAULT_SIZES

EXPECTED = {  # name: (head, metric, frames, num_outputs)
    "synth_egomotion": ("fusion", "top1", 2, 5),
    "synth_action": ("fusion", "top1", 6, 5),
    "synth_seg": ("deeplabv3plus", "miou", 1, 7),
    "synth_walkable": ("deeplabv3plus", "miou", 1, 2),
    "synth_depth": ("unet", "neg_l1", 1, 1),
    "synth_flow": ("siamese_unet", "one_minus_fl_all", 2, 2),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_task_records(name):
    task = get_task(name)
    assert (task.head, task.metric, task.frames, task.num_outputs) == EXPECTED[name]
    assert task.metric in METRICS and task.loss in LOSSES and task.suite == "synth"
    assert task.chance is not None and task.output == ("pixel" if task.head not in ("fusion",) else "image")


def _samples(name: str, n: int = 3, size: int = 32) -> list[dict[str, torch.Tensor]]:
    task = get_task(name)
    ds = task.dataset(task, DataRequest(split="train", data_root=None, resolution=size, limit=n, train=True))
    assert len(ds) == n
    return [ds[i] for i in range(n)]


def test_samples_have_the_shapes_heads_and_metrics_expect():
    ego, act = _samples("synth_egomotion")[0], _samples("synth_action")[0]
    assert ego["image"].shape == (2, 3, 32, 32) and ego["target"].dtype == torch.long
    assert act["image"].shape == (6, 3, 32, 32) and 0 <= int(act["target"]) < 5
    seg, walk = _samples("synth_seg")[0], _samples("synth_walkable")[0]
    assert seg["target"].shape == (32, 32) and seg["target"].dtype == torch.long and int(seg["target"].max()) < 7
    assert set(walk["target"].unique().tolist()) <= {0, 1}
    for s in _samples("synth_depth"):
        assert s["target"].shape == (1, 32, 32) and s["target"].dtype == torch.float32
        assert torch.equal(s["valid"], s["target"][0] > 0)
    flow = _samples("synth_flow")[0]
    assert flow["image"].shape == (2, 3, 32, 32) and flow["target"].shape == (2, 32, 32)
    assert flow["valid"].dtype == torch.bool and flow["valid"].any()


@pytest.fixture
def tiny_splits(monkeypatch):
    """Shrink val/test so that a run takes seconds; 37 test samples leave a partial last batch."""
    for kind in DEFAULT_SIZES:
        monkeypatch.setitem(DEFAULT_SIZES[kind], "val", 12)
        monkeypatch.setitem(DEFAULT_SIZES[kind], "test", 37)
    monkeypatch.setitem(synth_tasks.PIXEL_SIZES, "val", 12)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_harness_eval_end_to_end(name, tmp_path, tiny_splits):
    """Tiny run (8 train samples, 32 px, 1 epoch): the record names the right metric and every
    test sample (and every valid test pixel) is scored."""
    res = CliRunner().invoke(app, ["eval", "--encoder", "resnet18", "--task", name, "--limit", "8", "--epochs", "1",
                                   "--grid", "single", "--resolution", "32", "--batch-size", "16", "--json",
                                   "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    task = get_task(name)
    assert rec["status"] == "ok" and rec["metric"] == task.metric and rec["head"] == task.head
    assert rec["metric"] in rec["secondary"]["test"] and rec["test"] == rec["secondary"]["test"][task.metric]
    test = task.dataset(task, DataRequest(split="test", data_root=None, resolution=32, limit=None, train=False))
    assert rec["n"]["test"] == len(test) == 37 and rec["n"]["train"] == 8
    if task.output == "pixel":
        assert rec["output_resolution"] == [32, 32]
        valid = sum(int(test[i]["valid"].sum()) if "valid" in test[i] else 32 * 32 for i in range(len(test)))
        assert rec["secondary"]["test"]["pixels"] == valid
    else:
        assert rec["secondary"]["test"]["n"] == len(test)
