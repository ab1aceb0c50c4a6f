"""BYOL's ``bn_per_view``: each view goes through the networks on its own, as in the BYOL authors' code, so a
view's projections and predictions depend only on that view's batch; batched views share BatchNorm statistics."""

import pytest
import torch

from encoders.pretrain import create_method, get_method
from encoders.pretrain.base import apply_overrides


def _byol(per_view: bool):
    cfg = apply_overrides(get_method("byol").config(), {"hidden": "32", "dim": "8", "bn_per_view": str(per_view)})
    return create_method("byol", cfg, "resnet18", 0).train()


@pytest.mark.parametrize("per_view", [True, False])
def test_view_two_content_reaches_view_one_only_through_shared_batch_norm(per_view):
    torch.manual_seed(0)
    method = _byol(per_view)
    v1, v2 = torch.rand(6, 3, 32, 32), torch.rand(6, 3, 32, 32)
    z1 = {}
    for name, other in (("a", v2), ("b", v2 * 0.2 + 0.7)):  # the second view's batch shifted and squeezed
        def grab(_m, _i, out, name=name):  # the projector's first output holds view 1 (alone, or first of 12)
            z1.setdefault(name, out[:6].detach().clone())

        hook = method.projector.register_forward_hook(grab)
        with torch.no_grad():
            method([v1, other], epoch=0)
        hook.remove()
    same = torch.allclose(z1["a"], z1["b"], atol=1e-5)
    assert same is per_view


def test_per_view_loss_is_the_symmetric_loss_of_separate_forwards():
    torch.manual_seed(1)
    method = _byol(True)
    v1, v2 = torch.rand(5, 3, 32, 32), torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        loss, _ = method([v1, v2], epoch=0)
        p = [method.predictor(method.projector(method.backbone(v))) for v in (v1, v2)]
        t = [method.target_projector(method.target_backbone(v)) for v in (v1, v2)]
    def term(a, b):  # 2 - 2 cos, by hand in float64
        a, b = a.double(), b.double()
        return (2 - 2 * (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean()

    expected = (term(p[0], t[1]) + term(p[1], t[0])) / 2
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
