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



def test_symmetric_loss_averages_both_view_orders_and_enqueues_both_keys():
    torch.manual_seed(0)
    m = MoCo(MoCoConfig(queue=8, momentum=0.9, dim=4, symmetric=True, shuffle_bn=False), "resnet18", seed=0)
    for mod in m.modules():  # BN in eval: the encodings can be recomputed identically
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.eval()
    g = torch.Generator().manual_seed(1)
    views = [torch.rand(2, 3, 32, 32, generator=g) for _ in range(2)]
    old_queue = m.queue.clone()
    loss, _ = m(views, epoch=0)
    from encoders.pretrain.moco import info_nce

    with torch.no_grad():
        def enc(net, proj, x):
            return torch.nn.functional.normalize(proj(net(x)), dim=1)

        q1, q2 = enc(m.backbone, m.projector, views[0]), enc(m.backbone, m.projector, views[1])
        k1, k2 = enc(m.key_backbone, m.key_projector, views[0]), enc(m.key_backbone, m.key_projector, views[1])
    expected = (info_nce(q1, k2, old_queue, m.cfg.temperature) + info_nce(q2, k1, old_queue, m.cfg.temperature)) / 2
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(m.queue[:4], torch.cat([k2, k1]))  # the keys of both orders, in order
    assert int(m.queue_ptr) == 4


def test_last_bn_centres_the_embedding_over_the_batch():
    torch.manual_seed(0)
    m = MoCo(MoCoConfig(queue=8, dim=8, head_bn=True, last_bn=True, shuffle_bn=False), "resnet18", seed=0)
    z = m.projector(m.backbone(torch.rand(16, 3, 32, 32)))
    # BatchNorm without affine on the output: every dimension has zero mean and unit variance over the batch
    torch.testing.assert_close(z.mean(0), torch.zeros(8), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.var(0, unbiased=False), torch.ones(8), atol=1e-2, rtol=0)
    assert isinstance(m.projector[-1], torch.nn.BatchNorm1d) and m.projector[-1].weight is None

def test_shuffle_bn_normalises_the_keys_over_a_shuffled_split_and_unshuffles_them():
    """One process: the key batch is permuted with torch's RNG, BN statistics come from sub-batches of the
    permuted batch (positions j, j+s, ...), checked against a float64 hand computation; keys come back in order."""
    from encoders.pretrain.shuffle_bn import SplitBatchNorm2d

    m = MoCo(MoCoConfig(queue=8, momentum=0.9, dim=4, bn_splits=2), "resnet18", seed=0)
    bn = m.key_backbone.bn1
    assert isinstance(bn, SplitBatchNorm2d) and isinstance(m.backbone.layer1[0].bn2, SplitBatchNorm2d)
    g = torch.Generator().manual_seed(3)
    views = [torch.rand(4, 3, 32, 32, generator=g) for _ in range(2)]
    seen = {}
    bn.register_forward_hook(lambda mod, inp, out: seen.update(x=inp[0].detach().clone(), y=out.detach().clone()))
    old_mean, old_var = bn.running_mean.clone(), bn.running_var.clone()
    torch.manual_seed(11)
    perm = torch.randperm(4)
    assert sorted(perm[0::2].tolist()) != [0, 2]  # the shuffled split differs from the unshuffled one
    torch.manual_seed(11)
    m(views, epoch=0)

    with torch.no_grad():
        torch.testing.assert_close(seen["x"], m.key_backbone.conv1(views[1][perm]))  # the permuted batch
    x = seen["x"].double()
    expected = torch.empty_like(x)
    means, variances = [], []
    for j in range(2):  # sub-batch j: positions j and j + 2 of the permuted batch
        part = x[[j, j + 2]]
        n = part.numel() / part.shape[1]
        mean = part.sum((0, 2, 3)) / n
        var = ((part - mean.view(1, -1, 1, 1)) ** 2).sum((0, 2, 3)) / n
        means.append(mean)
        variances.append(var * n / (n - 1))
        w, b = bn.weight.double().view(1, -1, 1, 1), bn.bias.double().view(1, -1, 1, 1)
        expected[[j, j + 2]] = (part - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + bn.eps) * w + b
    torch.testing.assert_close(seen["y"].double(), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(bn.running_mean.double(), 0.9 * old_mean.double() + 0.1 * (means[0] + means[1]) / 2,
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var.double(),
                               0.9 * old_var.double() + 0.1 * (variances[0] + variances[1]) / 2, rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # train-mode BN output depends on the batch only: recompute the permuted keys
        k = torch.nn.functional.normalize(m.key_projector(m.key_backbone(views[1][perm])), dim=1)
    torch.testing.assert_close(m.queue[:4], k[torch.argsort(perm)])  # enqueued in the input order


def test_split_bn_is_off_for_a_batch_it_cannot_split_and_keeps_state_dict_keys():
    from encoders.pretrain.shuffle_bn import effective_splits

    assert [effective_splits(b, 8) for b in (128, 12, 6, 3, 2)] == [8, 6, 3, 1, 1]
    torch.manual_seed(0)
    plain = MoCo(MoCoConfig(queue=8, dim=4, shuffle_bn=False), "resnet18", seed=0)
    torch.manual_seed(0)
    split = MoCo(MoCoConfig(queue=8, dim=4), "resnet18", seed=0)
    assert plain.state_dict().keys() == split.state_dict().keys()
    for a, b in zip(plain.state_dict().values(), split.state_dict().values(), strict=True):
        assert torch.equal(a, b)
