"""Pretraining step speed in channels_last against the default (contiguous) memory format, per method.

ratio = (seconds of a full training step, contiguous) / (seconds of the same step, channels_last): above 1 means
channels_last is faster. Two copies of the method from the same seed, one converted, step alternately on the same
image batch (augmentation, loss, backward, optimiser, momentum / queue bookkeeping); medians over the repeats.
Decides ``harness pretrain``'s default memory format (``PretrainOptions.channels_last``).

    PYTHONPATH=. python benchmarks/pretrain_memory_format.py --method mocov2 --method simclr --threads 1
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
from encoders.pretrain.base import apply_overrides
from encoders.pretrain.presets import get_preset
from encoders.pretrain.train import build_optimizer, train_step
from tasks.synthetic.store import load_split


def measure(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    # the small preset's method settings (head BN, shuffle-BN splits, two crops for SwAV): what CPU runs use
    cfg = apply_overrides(get_method(name).config(), dict(get_preset(name, "small").settings))
    images = torch.from_numpy(load_split("single", "train", args.batch, args.resolution, fields=("image",))["image"])
    images = images.to(device)
    runs = {}
    for cl in (False, True):
        method = create_method(name, cfg, args.arch, 0).to(device).train()
        if cl:
            method = method.to(memory_format=torch.channels_last)
        augment = MultiCropAugment(cfg.augment, args.resolution).to(device)
        runs[cl] = (method, build_optimizer(method, cfg.optim, 0.01), augment)
    scaler = torch.amp.GradScaler(enabled=False)

    def step(cl: bool) -> float:
        method, opt, augment = runs[cl]
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        train_step(method, method, opt, scaler, augment, images, 1, nullcontext(), cl)
        method.on_after_step(0.5)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    step(False), step(True)  # warm-up
    times = {False: [], True: []}
    for _ in range(args.repeats):
        for cl in (False, True):
            times[cl].append(step(cl))
    c, cl = statistics.median(times[False]), statistics.median(times[True])
    print(f"{name} {args.arch} {args.resolution}px batch {args.batch}, {torch.get_num_threads()} thread(s): "
          f"contiguous {c:.2f} s, channels_last {cl:.2f} s a step -> ratio {c / cl:.2f}", flush=True)
    return {"method": name, "contiguous_s": round(c, 3), "channels_last_s": round(cl, 3), "ratio": round(c / cl, 3),
            "contiguous_all_s": [round(t, 3) for t in times[False]],
            "channels_last_all_s": [round(t, 3) for t in times[True]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", action="append", help="repeatable; default: mocov2, simclr, swav, byol")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/pretrain_memory_format.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = [measure(m, args, device) for m in args.method or ("mocov2", "simclr", "swav", "byol")]
    doc = {"device": str(device), "threads": torch.get_num_threads(), "batch": args.batch,
           "resolution": args.resolution, "arch": args.arch, "torch": torch.__version__, "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
