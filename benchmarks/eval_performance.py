"""The four ratios of docs/performance.md for `harness eval`, measured side by side in one run.

- encode efficiency = bare ``encoder(x)`` loop over the same preprocessed images / harness encode time (>= 0.9)
- eval overhead     = total first-eval time / one bare encoder pass over train+val+test (<= 1.3, default grid)
- cache speedup     = first eval time / the same eval again with features cached (>= 10)
- dense speedup     = reference protocol (encoder re-run on every batch of every epoch, val each epoch)
                      / ours, same task, head, epochs (>= 3 at 10 epochs)

Usage:
  python benchmarks/eval_performance.py [--encoder resnet18] [--resolution 64] [--task synth_count]
         [--dense-task synth_depth] [--dense-epochs 10] [--limit N] [--out benchmarks/results/eval_performance.json]

Synthetic renders are generated before timing starts (they are a one-off per machine).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from encoders import create_encoder
from harness.common.atomic import write_json
from harness.common.errors import UsageError
from harness.common.paths import synthetic_dir
from harness.features import EncodeSettings, autocast_for, loader, prepare
from harness.runner import EvalOptions, data_request, run_eval
from harness.train import predict
from heads import get_head
from tasks import get_task
from tasks.losses import get_loss
from tasks.metrics import make_metric


def preprocessed_batches(task, opts, batch_size):
    """The images of train (limited), val and test, preloaded: what a bare loop would consume."""
    out = []
    for split, train in ((task.splits.train, True), (task.splits.val, False), (task.splits.test, False)):
        ds = task.dataset(task, data_request(task, opts, split, train))
        for b in loader(ds, batch_size, torch.device("cpu")):
            out.append(b["image"])
    return out


def bare_pass(encoder, batches, taps, device, settings) -> float:
    prepare(encoder, settings)
    t0 = time.perf_counter()
    with torch.no_grad():
        for x in batches:
            x = x.to(device)
            if settings.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast_for(device, settings.precision):
                encoder(x, taps)
    return time.perf_counter() - t0


def reference_dense(task, opts, epochs, device) -> float:
    """The reference implementation's protocol: the encoder runs on every batch of every epoch."""
    encoder = create_encoder(opts.encoder)
    head_entry = get_head(task.head)
    taps = tuple(head_entry.taps(task, encoder.taps))
    head = head_entry.build(encoder.taps, task).to(device)
    loss_fn = get_loss(task)
    opt = torch.optim.Adam(head.parameters(), lr=task.optim.lr)
    bs = opts.batch_size or task.batch_size
    train = task.dataset(task, data_request(task, opts, task.splits.train, True))
    val = task.dataset(task, data_request(task, opts, task.splits.val, False))
    test = task.dataset(task, data_request(task, opts, task.splits.test, False))
    t0 = time.perf_counter()
    for _ in range(epochs):
        head.train()
        for b in loader(train, bs, device):
            with torch.no_grad():
                feats = encoder(b["image"].to(device), taps)
            target = b["target"].to(device)
            valid = b.get("valid")
            valid = valid.to(device) if valid is not None else None
            loss = loss_fn(predict(head, feats, target, task), target, valid, task)
            opt.zero_grad()
            loss.backward()
            opt.step()
        for split in (val, test):  # the reference evaluated (and selected) on test every epoch
            head.eval()
            metric = make_metric(task)
            with torch.no_grad():
                for b in loader(split, bs, device):
                    target = b["target"].to(device)
                    valid = b.get("valid")
                    metric.update(predict(head, encoder(b["image"].to(device), taps), target, task), target,
                                  valid.to(device) if valid is not None else None)
            metric.compute()
    return time.perf_counter() - t0


def scratch_root(prefix: str) -> Path:
    """One temporary folder that every later ``tempfile`` folder of this script goes under, removed when the script
    exits: each cold cache it makes holds hundreds of MB."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    tempfile.tempdir = str(root)
    atexit.register(shutil.rmtree, root, True)
    return root


def main() -> None:
    scratch_root("harness-bench-")
    ap = argparse.ArgumentParser()
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--task", default="synth_count")
    ap.add_argument("--dense-task", default="synth_depth")
    ap.add_argument("--dense-epochs", type=int, default=10)
    ap.add_argument("--resolution", type=int, default=None)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--dense-limit", type=int, default=500)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/eval_performance.json"))
    args = ap.parse_args()
    device = torch.device(args.device)
    # A fresh feature cache (the first eval must encode), sharing the synthetic renders already made.
    renders = synthetic_dir()
    fresh = Path(tempfile.mkdtemp(prefix="harness-bench-"))
    if renders.is_dir():
        (fresh / "synthetic").symlink_to(renders.resolve(), target_is_directory=True)
    os.environ["HARNESS_CACHE"] = str(fresh)
    results: dict = {"encoder": args.encoder, "task": args.task, "resolution": args.resolution,
                     "device": str(device), "threads": torch.get_num_threads()}

    task = get_task(args.task)
    out_dir = Path(tempfile.mkdtemp(prefix="harness-bench-out-"))
    opts = EvalOptions(encoder=args.encoder, tasks=[task], out=out_dir, resolution=args.resolution, limit=args.limit,
                       device=args.device)
    batches = preprocessed_batches(task, opts, task.batch_size)  # renders generated (and cached) here, untimed
    encoder = create_encoder(args.encoder)
    taps = tuple(get_head(task.head).taps(task, encoder.taps))
    settings = EncodeSettings(device=device)
    bare_pass(encoder, batches[:2], taps, device, settings)  # warm-up
    bare = bare_pass(encoder, batches, taps, device, settings)

    (first,) = run_eval(opts)
    if first["cache"]["misses"] == 0:
        raise SystemExit("the first eval found its features cached; the cache speedup would be meaningless")
    opts.force = True
    (second,) = run_eval(opts)
    results.update({
        "bare_encoder_s": bare, "first_eval_s": first["timings"]["total_s"],
        "first_encode_s": first["timings"]["encode_s"], "first_train_s": first["timings"]["train_s"],
        "second_eval_s": second["timings"]["total_s"], "second_cache": second["cache"],
        "encode_efficiency": bare / first["timings"]["encode_s"],
        "eval_overhead": first["timings"]["total_s"] / bare,
        "cache_speedup": first["timings"]["total_s"] / second["timings"]["total_s"],
        "targets": {"encode_efficiency": ">= 0.9", "eval_overhead": "<= 1.3", "cache_speedup": ">= 10",
                    "dense_speedup": ">= 3 at 10 epochs"},
    })

    try:
        dense = get_task(args.dense_task)
    except UsageError:
        dense = None
        print(f"dense task {args.dense_task!r} is not registered; dense speedup skipped")
    if dense is not None:
        dopts = EvalOptions(encoder=args.encoder, tasks=[dense], out=out_dir, resolution=args.resolution,
                            limit=args.dense_limit, device=args.device, epochs=args.dense_epochs, grid="single")
        preprocessed_batches(dense, dopts, dense.batch_size)  # renders, untimed
        ref = reference_dense(dense, dopts, args.dense_epochs, device)
        (ours,) = run_eval(dopts)
        results.update({"dense_task": dense.name, "dense_epochs": args.dense_epochs, "dense_limit": args.dense_limit,
                        "dense_reference_s": ref, "dense_ours_s": ours["timings"]["total_s"],
                        "dense_speedup": ref / ours["timings"]["total_s"]})

    write_json(args.out, results)
    print(json.dumps(results, indent=2))
    for k in ("encode_efficiency", "eval_overhead", "cache_speedup", "dense_speedup"):
        if k in results:
            print(f"{k:18s} {results[k]:8.2f}   target {results['targets'][k]}")


if __name__ == "__main__":
    main()
