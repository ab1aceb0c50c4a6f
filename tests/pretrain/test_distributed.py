"""Two gloo processes, each with half the batch, give the loss and gradients of one process on the whole
batch (negatives gathered with gradient, Sinkhorn sums all-reduced, MoCo's queue filled in rank order,
MoCo's keys encoded as shards of a batch shuffled across the processes and put back in order)."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from encoders.pretrain import create_method, get_method
from encoders.pretrain.base import apply_overrides

METHODS = {"mocov2": {"queue": "16", "dim": "8"}, "swav": {"prototypes": "10", "hidden": "16", "dim": "8",
                                                           "augment.local_crops": "2"},
           "simclr": {"dim": "8"}}
BATCH = 4  # total; 2 per rank
SHUFFLE_SEED = 123


def _build(name):
    spec = get_method(name)
    method = create_method(name, apply_overrides(spec.config(), METHODS[name]), "resnet18", 0)
    for m in method.modules():  # batch statistics would differ per rank (SyncBN is GPU-only); BN eval here
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    return method


def _views(name):
    g = torch.Generator().manual_seed(7)
    views = [torch.rand(BATCH, 3, 32, 32, generator=g) for _ in range(2)]
    if name == "swav":
        views += [torch.rand(BATCH, 3, 16, 16, generator=g) for _ in range(2)]
    return views


def _step(method, views):
    loss, _ = method(views, epoch=1)
    loss.backward()
    return loss.detach(), method.backbone.conv1.weight.grad.clone()


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    results = {}
    for name in METHODS:
        method = _build(name)
        # rank-local buffers (queues, the BYOL target's momentum) are not broadcast
        ddp = torch.nn.parallel.DistributedDataParallel(method, broadcast_buffers=False)
        half = [v[rank * BATCH // 2:(rank + 1) * BATCH // 2] for v in _views(name)]
        key_inputs = []
        if name == "mocov2":  # the images the key encoder sees on this rank
            method.key_backbone.conv1.register_forward_hook(
                lambda mod, inp, out, seen=key_inputs: seen.append(inp[0].clone()))
        torch.manual_seed(SHUFFLE_SEED)  # rank 0's permutation is broadcast
        loss, _ = ddp(half, 1)
        loss.backward()
        dist.all_reduce(loss := loss.detach().clone())
        results[name] = {"loss": loss / 2, "grad": method.backbone.conv1.weight.grad.clone()}
        if name == "mocov2":
            results[name]["queue"] = method.queue.clone()
            results[name]["key_inputs"] = key_inputs[0]
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_matches_one_process_on_the_concatenated_batch(tmp_path):
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name in METHODS:
        method = _build(name)
        loss, grad = _step(method, _views(name))
        for r in ranks:
            torch.testing.assert_close(r[name]["loss"], loss, rtol=1e-5, atol=1e-6)
            # DDP averages rank gradients; with gathered negatives that is the whole-batch gradient.
            torch.testing.assert_close(r[name]["grad"], grad, rtol=1e-4, atol=1e-6)
        if name == "mocov2":
            torch.testing.assert_close(ranks[0][name]["queue"], method.queue)
            torch.testing.assert_close(ranks[1][name]["queue"], method.queue)
            torch.manual_seed(SHUFFLE_SEED)
            perm = torch.randperm(BATCH)
            keys_in = _views(name)[1]
            for r, res in enumerate(ranks):  # rank r encodes the r-th shard of the shuffled global batch
                torch.testing.assert_close(res[name]["key_inputs"], keys_in[perm[r * BATCH // 2:(r + 1) * BATCH // 2]])
