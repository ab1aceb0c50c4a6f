"""A step whose gradients are not finite (CPU bf16 convolution backward can return garbage weight gradients for
kernel taps that see only padding) is dropped, as a loss scaler would, and five in a row stop the run."""

from contextlib import nullcontext

import torch

from encoders.pretrain.base import Method
from encoders.pretrain.train import train_step


class Poisoned(Method):
    """A linear model whose gradient is replaced by `poison` on the steps asked for."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)
        self.poison: float | None = None

    def forward(self, views, epoch):
        return self.lin(views[0]).pow(2).mean(), {"z_std": torch.tensor(0.5)}

    def on_after_backward(self, epoch):
        if self.poison is not None:
            self.lin.weight.grad[0, 1] = self.poison


def _step(m, opt):
    return train_step(m, m, opt, torch.amp.GradScaler(enabled=False), lambda x: [x], torch.ones(8, 4), 0,
                      nullcontext(), False)


def test_non_finite_or_overflowing_gradients_skip_the_step_and_finite_ones_apply():
    torch.manual_seed(0)
    m = Poisoned()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    for poison in (float("nan"), float("inf"), 3e38):  # 3e38 is finite, but the gradient norm overflows
        before = [p.detach().clone() for p in m.parameters()]
        m.poison = poison
        loss, logs = _step(m, opt)
        assert logs["skipped_step"] == 1.0 and logs["z_std"] == 0.5
        assert all(torch.equal(a, b) for a, b in zip(before, m.parameters(), strict=True))
        assert all(p.grad is None for p in m.parameters())
    m.poison = None
    before = m.lin.weight.detach().clone()
    loss, logs = _step(m, opt)
    assert logs["skipped_step"] == 0.0 and not torch.equal(before, m.lin.weight)


def test_five_skipped_steps_in_a_row_stop_the_run_with_one_line(tmp_path, monkeypatch):
    import pytest

    import encoders.pretrain.train as train
    from harness.common.errors import HarnessError

    monkeypatch.setattr(train, "train_step", lambda *a, **k: (1.0, {"skipped_step": 1.0}))
    opts = train.PretrainOptions(method="simclr", out=tmp_path, device="cpu", limit=96, batch_size=16, epochs=1,
                                 resolution=32, knn_every=0)
    with pytest.raises(HarnessError, match="not finite in 5 steps in a row.*without --amp"):
        train.run_pretrain(opts)
