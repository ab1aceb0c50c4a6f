"""Pretraining step throughput against a bare forward+backward of the same encoder (docs/performance.md).

ratio = (images/s of a full training step: kornia augmentation + method loss + backward + optimiser step
+ momentum/queue bookkeeping) / (images/s of ``backbone(two views).sum().backward()`` on the same views).
Target >= 0.7 on CPU. Both are timed alternately in one process, medians over the repeats.

    PYTHONPATH=. python benchmarks/pretrain_throughput.py --method mocov2 --batch 64 --resolution 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from encoders.pretrain import create_method, get_method
from encoders.pretrain.augment import MultiCropAugment
from encoders.pretrain.base import apply_overrides, make_backbone
from encoders.pretrain.train import build_optimizer, train_step
from tasks.synthetic.store import load_split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="mocov2")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--set", action="append", default=[], help="method setting KEY=VALUE")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/pretrain_throughput.json"))
    args = ap.parse_args()

    device = torch.device(args.device)
    cfg = apply_overrides(get_method(args.method).config(), dict(s.split("=", 1) for s in args.set))
    method = create_method(args.method, cfg, args.arch, 0).to(device).train()
    optimizer = build_optimizer(method, cfg.optim, 0.01)
    scaler = torch.amp.GradScaler(enabled=False)
    augment = MultiCropAugment(cfg.augment, args.resolution).to(device)
    images = torch.from_numpy(load_split("single", "train", args.batch, args.resolution, fields=("image",))["image"])
    images = images.to(device)

    bare, _ = make_backbone(args.arch, 1)
    bare = bare.to(device).train()
    all_views = augment(images)
    views = torch.cat(all_views[:2])  # the same two-view batch, already augmented

    def step() -> None:
        train_step(method, method, optimizer, scaler, augment, images, 1, nullcontext(), False)
        method.on_after_step(0.5)

    def bare_step() -> None:
        bare.zero_grad(set_to_none=True)
        bare(views).sum().backward()

    def bare_all_views() -> None:  # multi-crop reference: every view the method sees, one pass per size
        bare.zero_grad(set_to_none=True)
        sum(bare(torch.cat([v for v in all_views if v.shape[-1] == size])).sum()
            for size in sorted({v.shape[-1] for v in all_views})).backward()

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    step(), bare_step()  # warm-up
    multi = augment.num_views > 2
    t_step, t_bare, t_all = [], [], []
    for _ in range(args.repeats):
        t_step.append(timed(step))
        t_bare.append(timed(bare_step))
        if multi:
            t_all.append(timed(bare_all_views))
    s, b = statistics.median(t_step), statistics.median(t_bare)
    result = {"method": args.method, "arch": args.arch, "batch": args.batch, "resolution": args.resolution,
              "views": augment.num_views, "device": str(device), "threads": torch.get_num_threads(),
              "step_s": s, "bare_fwd_bwd_s": b, "step_images_per_s": args.batch / s,
              "bare_images_per_s": args.batch / b, "ratio": b / s, "target": 0.7}
    if multi:
        a = statistics.median(t_all)
        result.update(bare_all_views_s=a, ratio_all_views=a / s)
    print(f"{args.method} {args.arch} {args.resolution}px batch {args.batch} ({augment.num_views} views): "
          f"step {s * 1000:.0f} ms ({args.batch / s:.1f} img/s), bare fwd+bwd of 2 views {b * 1000:.0f} ms "
          f"({args.batch / b:.1f} img/s) -> ratio {b / s:.2f} (target >= 0.7)"
          + (f"; against a bare pass over all {augment.num_views} views: {result['ratio_all_views']:.2f}" if multi
             else ""))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
