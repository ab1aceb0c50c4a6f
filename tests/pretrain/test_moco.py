"""MoCo's two bookkeeping rules: the key encoder's momentum update and the FIFO queue."""

import torch

from encoders.pretrain.moco import MoCo, MoCoConfig


def _moco(queue=5, momentum=0.9):
    torch.manual_seed(0)
    return MoCo(MoCoConfig(queue=queue, momentum=momentum, dim=4), "resnet18", seed=0)


def test_momentum_update_is_exponential_average():
    m = _moco(momentum=0.9)
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(1.0)
    before_key = [p.clone() for p in m.key_backbone.parameters()]
    online = [p.clone() for p in m.backbone.parameters()]
    m._momentum_update()
    for k0, q, k1 in zip(before_key, online, m.key_backbone.parameters(), strict=True):
        torch.testing.assert_close(k1, 0.9 * k0 + 0.1 * q, rtol=0, atol=1e-6)
    assert not any(p.requires_grad for p in m.key_backbone.parameters())


def test_queue_is_a_ring_buffer_of_the_latest_keys():
    m = _moco(queue=5)
    initial = m.queue.clone()
    k1 = torch.arange(12, dtype=torch.float32).view(3, 4)
    m._enqueue(k1)
    torch.testing.assert_close(m.queue[:3], k1)
    torch.testing.assert_close(m.queue[3:], initial[3:])
    assert int(m.queue_ptr) == 3
    k2 = -torch.arange(1, 13, dtype=torch.float32).view(3, 4)
    m._enqueue(k2)  # wraps: rows 3, 4, then 0
    torch.testing.assert_close(m.queue[3:5], k2[:2])
    torch.testing.assert_close(m.queue[0], k2[2])
    torch.testing.assert_close(m.queue[1:3], k1[1:])
    assert int(m.queue_ptr) == 1


def test_training_forward_updates_queue_with_the_keys_and_loss_uses_the_old_queue():
    m = _moco(queue=8)
    g = torch.Generator().manual_seed(1)
    views = [torch.rand(2, 3, 32, 32, generator=g) for _ in range(2)]
    for mod in m.modules():  # BN in eval so that the key encoding can be recomputed identically
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.eval()
    old_queue = m.queue.clone()
    loss, _ = m(views, epoch=0)
    with torch.no_grad():
        k = torch.nn.functional.normalize(m.key_projector(m.key_backbone(views[1])), dim=1)
        q = torch.nn.functional.normalize(m.projector(m.backbone(views[0])), dim=1)
    torch.testing.assert_close(m.queue[:2], k)
    from encoders.pretrain.moco import info_nce

    torch.testing.assert_close(loss, info_nce(q, k, old_queue, m.cfg.temperature))
