"""A task's output_scale: the head predicts target / scale, and everything downstream (loss, metric,
the record) sees predictions in the target's units."""

import dataclasses

import torch
from torch import nn

from harness.train import evaluate, fit, predict
from tasks.registry import get_task
from tasks.spec import OptimConfig


class Const(nn.Module):
    """A pixel head whose output is one learnt value per channel, everywhere."""

    def __init__(self, channels: int):
        super().__init__()
        self.value = nn.Parameter(torch.zeros(channels))

    def forward(self, x, size):
        n = x["f"].shape[0]
        return self.value.view(1, -1, 1, 1).expand(n, -1, *size)


class Source:
    """Feature source: every target is the constant flow (15, -5) px."""

    def __init__(self, n=8):
        self.x = {"f": torch.zeros(n, 1)}
        self.y = torch.tensor([15.0, -5.0]).view(1, 2, 1, 1).expand(n, 2, 4, 4).clone()
        self.valid = torch.ones(n, 4, 4, dtype=torch.bool)

    def batches(self, batch_size, device, shuffle=False, generator=None):
        yield self.x, self.y, self.valid


def test_predictions_are_the_head_output_times_the_scale():
    flow = get_task("synth_flow")
    assert flow.output_scale == 10.0 and get_task("synth_depth").output_scale == 1.0
    head = Const(2)
    with torch.no_grad():
        head.value.copy_(torch.tensor([1.5, -0.5]))
    y = torch.zeros(3, 2, 4, 4)
    pred = predict(head, {"f": torch.zeros(3, 1)}, y, flow)
    assert pred.shape == y.shape and torch.equal(pred[:, 0], torch.full((3, 4, 4), 15.0))
    scores = evaluate(head, Source(), flow, torch.device("cpu"))
    assert scores["epe"] < 1e-6 and scores["one_minus_fl_all"] == 1.0  # exactly the target, in pixels
    unscaled = evaluate(head, Source(), dataclasses.replace(flow, output_scale=1.0), torch.device("cpu"))
    assert abs(unscaled["epe"] - (13.5**2 + 4.5**2) ** 0.5) < 1e-4


def test_training_learns_in_scaled_units():
    """Adam moves a parameter about lr per step: at scale 10 the prediction moves 10x as far."""
    flow = get_task("synth_flow")
    moved = {}
    for scale in (1.0, 10.0):
        head = Const(2)
        task = dataclasses.replace(flow, output_scale=scale)
        fit(head, [Source()], Source(), task, OptimConfig("adam", 0.1), 20, torch.device("cpu"), 0, 8)
        moved[scale] = float(predict(head, Source().x, Source().y, task)[0, 0, 0, 0])
    assert 1.5 < moved[1.0] < 2.5  # 20 steps of about 0.1
    assert abs(moved[10.0] - 15.0) < 3.0  # within the outlier threshold of 15 px (the best epoch is kept)
