"""Per-group learning rates: BYOL's ``predictor_lr_mult`` puts the predictor in its own group whose scheduled
rate is scaled, and every other trainable parameter keeps the base rate."""

import torch

from encoders.pretrain import create_method, get_method
from encoders.pretrain.base import OptimDefaults, apply_overrides
from encoders.pretrain.train import build_optimizer, set_lr


def _byol(overrides):
    return create_method("byol", apply_overrides(get_method("byol").config(), overrides), "resnet18", 0)


def test_predictor_group_moves_mult_times_as_far_under_plain_sgd():
    method = _byol({"predictor_lr_mult": "10", "hidden": "64", "dim": "16"})
    opt = build_optimizer(method, OptimDefaults("sgd", lr=0.1, momentum=0.0, weight_decay=0.0), 0.1)
    trainable = [p for p in method.parameters() if p.requires_grad]
    grouped = [p for g in opt.param_groups for p in g["params"]]
    assert sorted(map(id, grouped)) == sorted(map(id, trainable))  # each trainable parameter exactly once
    set_lr(opt, 0.05)
    assert sorted(g["lr"] for g in opt.param_groups) == [0.05, 0.5]
    for p in trainable:
        p.grad = torch.ones_like(p)
    pred_w, enc_w = method.predictor[0].weight, method.backbone.conv1.weight
    before = pred_w.detach().clone(), enc_w.detach().clone()
    opt.step()
    assert torch.allclose(before[0] - pred_w.detach(), torch.full_like(pred_w, 0.5))
    assert torch.allclose(before[1] - enc_w.detach(), torch.full_like(enc_w, 0.05))


def test_default_is_one_group_at_the_scheduled_rate():
    method = _byol({"hidden": "64", "dim": "16"})
    opt = build_optimizer(method, OptimDefaults("sgd", lr=0.1, momentum=0.0, weight_decay=0.0), 0.1)
    set_lr(opt, 0.2)
    assert [g["lr"] for g in opt.param_groups] == [0.2]
