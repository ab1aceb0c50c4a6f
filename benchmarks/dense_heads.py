"""Dense head training at the hardware's speed (issue: bf16 heads), measured side by side.

1. Head step time, fp32 vs bf16 autocast, for the U-Net, Siamese U-Net and DeepLabv3+ on
   ResNet-50 taps (random features of the right shapes; forward + backward + Adam step). The U-Nets
   run bf16 twice: as shipped (their small-map 3x3 and all 1x1 convolutions as GEMMs, heads/unet.py)
   and with every layer a oneDNN convolution (``before``: the code before that change). The
   variants' steps are interleaved round by round and each keeps its median, so a machine shared
   with other work slows all of them alike; the load average is recorded.
2. The test metric on synth_depth and synth_seg with the same seeds in fp32 and in bf16, next to
   the seed-to-seed spread in fp32 (does bf16 change results more than a seed does?).
3. The dense overhead: `harness eval` wall time (fresh cache, --grid single) / a bare loop doing
   the same work with nothing else: one encoder pass over train, val and test, the same number
   of head steps, val passes and the test pass; bf16 also ``before`` (convolutions only, in both).

   The renders are made once (they are the synthetic suite's data, not part of an evaluation), and the
   overhead is measured at the task's default epochs and at --long-epochs.

Usage: python benchmarks/dense_heads.py [--resolution 128] [--batch 16] [--steps 6] [--long-epochs 15]
       [--out benchmarks/results/dense_heads.json]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import tempfile
import time
import types
from pathlib import Path

import torch
from eval_performance import scratch_root  # benchmarks/, this script's folder
from torch import nn

from encoders import create_encoder
from encoders.resnet import build_resnet
from harness.common.atomic import write_json
from harness.common.device import cpu_has_bf16
from harness.common.paths import synthetic_dir
from harness.features import loader
from harness.runner import EvalOptions, data_request, run_eval
from harness.train import head_autocast, make_optimizer, predict
from heads import HEADS
from heads.unet import Conv1x1, Conv3x3
from tasks import get_task
from tasks.losses import get_loss


class Target:
    def __init__(self, name, outputs, frames, output="pixel", loss="l1"):
        self.name, self.num_outputs, self.frames, self.output, self.loss = name, outputs, frames, output, loss


def tap_features(taps: dict, batch: int, res: int, frames: int) -> dict[str, torch.Tensor]:
    """Random non-negative maps of the shapes ``taps`` (an encoder's declared taps) give at ``res``: what a head
    reads, without running the encoder."""
    out = {}
    for name, tap in taps.items():
        if tap.stride is None:
            continue
        s = math.ceil(res / tap.stride)
        shape = (batch, frames, tap.channels, s, s) if frames > 1 else (batch, tap.channels, s, s)
        out[name] = torch.randn(*shape).abs()
    return out


def timed_step(head: nn.Module, opt: torch.optim.Optimizer, x: dict, y: torch.Tensor, precision: str) -> float:
    """Seconds of one training step (forward under ``precision``'s autocast, L1 loss, backward, optimiser step)."""
    head.train()
    t0 = time.perf_counter()
    with head_autocast(torch.device("cpu"), precision):
        pred = head(x, size=tuple(y.shape[-2:]))
    loss = (pred.float() - y).abs().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def as_convolutions(head: nn.Module) -> nn.Module:
    """The head with every U-Net layer run as a oneDNN convolution (the code before the GEMM forms)."""
    for m in head.modules():
        if isinstance(m, Conv3x3 | Conv1x1):
            m.forward = types.MethodType(nn.Conv2d.forward, m)
    return head


@contextlib.contextmanager
def convolutions_only():
    """Every U-Net built inside runs its layers as oneDNN convolutions (for whole evaluations)."""
    saved = Conv3x3.forward, Conv1x1.forward
    Conv3x3.forward = Conv1x1.forward = nn.Conv2d.forward
    try:
        yield
    finally:
        Conv3x3.forward, Conv1x1.forward = saved


def head_steps_ms(name: str, outputs: int, frames: int, variants: tuple[str, ...], batch: int, res: int,
                  steps: int) -> dict[str, float]:
    """Median step time of each variant ("fp32", "bf16", "bf16_before"), their steps interleaved."""
    taps = {t.name: t for t in build_resnet("resnet50").taps}
    x = tap_features(taps, batch, res, frames)
    y = torch.randn(batch, outputs, res, res)
    runs = {}
    for v in variants:
        torch.manual_seed(0)
        head = HEADS[name].build(taps, Target(name, outputs, frames))
        if v.endswith("before"):
            head = as_convolutions(head)
        precision = v.split("_")[0]
        if precision != "fp32":  # as harness.train.fit does for pixel heads under autocast
            head = head.to(memory_format=torch.channels_last)
        runs[v] = (head, torch.optim.Adam(head.parameters(), lr=1e-4, foreach=True), precision)

    def step(v: str) -> float:
        head, opt, precision = runs[v]
        return timed_step(head, opt, x, y, precision)

    for v in variants:
        step(v)  # warm-up (oneDNN picks its kernels)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(steps):
        for v in variants:
            times[v].append(step(v))
    return {v: statistics.median(t) * 1000 for v, t in times.items()}


def eval_record(task: str, precision: str, seed: int, out: Path, **kw) -> dict:
    (rec,) = run_eval(EvalOptions(encoder="resnet18", tasks=[get_task(task)], out=out, device="cpu", seed=seed,
                                  head_precision=precision, grid="single", force=True, **kw))
    return rec


def bare_dense(task_name: str, rec: dict, precision: str) -> float:
    """The same work as the eval behind ``rec``, as a bare loop (no cache, no selection bookkeeping)."""
    task = get_task(task_name)
    device = torch.device("cpu")
    opts = EvalOptions(encoder="resnet18", tasks=[task], device="cpu")
    encoder = create_encoder("resnet18")
    head_entry = HEADS[task.head]
    taps = tuple(head_entry.taps(task, encoder.taps))
    bs = task.batch_size
    splits = {}
    t0 = time.perf_counter()
    with torch.no_grad():  # one encoder pass over every split, features kept in memory
        for name, split in (("train", task.splits.train), ("val", task.splits.val), ("test", task.splits.test)):
            batches = []
            for b in loader(task.dataset(task, data_request(task, opts, split, name == "train")), bs, device):
                batches.append((encoder(b["image"], taps), b["target"], b.get("valid")))
            splits[name] = batches
    torch.manual_seed(0)
    head = head_entry.build(encoder.taps, task)
    if precision != "fp32":
        head = head.to(memory_format=torch.channels_last)
    opt = make_optimizer(head.parameters(), task.optim)
    loss_fn = get_loss(task)
    for _ in range(rec["epochs"]):
        head.train()
        for x, y, valid in splits["train"]:
            with head_autocast(device, precision):
                pred = predict(head, x, y, task)
            loss = loss_fn(pred.float(), y, valid, task)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        head.eval()
        with torch.no_grad(), head_autocast(device, precision):
            for x, y, _ in splits["val"]:
                predict(head, x, y, task)
    with torch.no_grad(), head_autocast(device, precision):
        for x, y, _ in splits["test"]:
            predict(head, x, y, task)
    return time.perf_counter() - t0




def main() -> None:
    scratch_root("harness-dense-")
    ap = argparse.ArgumentParser()
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--long-epochs", type=int, default=15,
                    help="the overhead is also measured at this many epochs (the paper's dense tasks train 25-250)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/dense_heads.json"))
    args = ap.parse_args()
    renders = synthetic_dir()
    fresh = Path(tempfile.mkdtemp(prefix="harness-dense-"))
    if renders.is_dir():
        (fresh / "synthetic").symlink_to(renders.resolve(), target_is_directory=True)
    os.environ["HARNESS_CACHE"] = str(fresh)
    out: dict = {"machine": f"{os.cpu_count()} CPU(s), native bf16: {cpu_has_bf16()}, torch {torch.__version__}",
                 "resolution": args.resolution, "batch": args.batch, "steps": {}}

    out["load_average_1min"] = {"start": round(os.getloadavg()[0], 2)}
    for name, outputs, frames in (("unet", 1, 1), ("siamese_unet", 2, 2), ("deeplabv3plus", 19, 1)):
        variants = ("fp32", "bf16", "bf16_before") if name != "deeplabv3plus" else ("fp32", "bf16")
        ms = head_steps_ms(name, outputs, frames, variants, args.batch, args.resolution, args.steps)
        row = {f"{v}_ms": round(t, 1) for v, t in ms.items()} | {"speedup": round(ms["fp32"] / ms["bf16"], 2)}
        if "bf16_before" in ms:
            row |= {"speedup_before": round(ms["fp32"] / ms["bf16_before"], 2),
                    "bf16_gain": round(ms["bf16_before"] / ms["bf16"], 2)}
        out["steps"][name] = row
        print(f"{name:14s} step " + "  ".join(f"{v} {t:8.1f} ms" for v, t in ms.items())
              + f"  fp32/bf16 x{ms['fp32'] / ms['bf16']:.2f}", flush=True)
    out["load_average_1min"]["after_steps"] = round(os.getloadavg()[0], 2)

    results = Path(tempfile.mkdtemp(prefix="harness-dense-results-"))
    out["metrics"] = {}
    for task in ("synth_depth", "synth_seg"):
        rows = {p: [eval_record(task, p, s, results)["test"] for s in (0, 1)] for p in ("fp32", "bf16")}
        spread = abs(rows["fp32"][0] - rows["fp32"][1])
        diffs = [abs(a - b) for a, b in zip(rows["fp32"], rows["bf16"], strict=True)]
        out["metrics"][task] = {"fp32": rows["fp32"], "bf16": rows["bf16"], "seed_spread_fp32": spread,
                                "mean_abs_diff_bf16_vs_fp32": statistics.fmean(diffs),
                                "within_seed_spread": statistics.fmean(diffs) <= spread}
        print(f"{task}: fp32 {rows['fp32']} bf16 {rows['bf16']} (seed spread {spread:.4f})", flush=True)

    if not renders.is_dir():  # rendered by the evaluations above: every cold cache below links to them
        renders = fresh / "synthetic"
    out["overhead"] = {}
    for task, epochs in (("synth_depth", None), ("synth_depth", args.long_epochs)):
        for precision, before in (("fp32", False), ("bf16", True), ("bf16", False)):
            os.environ["HARNESS_CACHE"] = tempfile.mkdtemp(prefix="harness-dense-")  # a cold feature cache
            if renders.is_dir():
                (Path(os.environ["HARNESS_CACHE"]) / "synthetic").symlink_to(renders.resolve(),
                                                                             target_is_directory=True)
            with convolutions_only() if before else contextlib.nullcontext():
                t0 = time.perf_counter()
                rec = eval_record(task, precision, 0, results, epochs=epochs)
                wall = time.perf_counter() - t0
                bare = bare_dense(task, rec, precision)
            key = f"{task}_{rec['epochs']}ep_{precision}" + ("_before" if before else "")
            out["overhead"][key] = {"epochs": rec["epochs"], "eval_s": round(wall, 2), "bare_s": round(bare, 2),
                                    "overhead": round(wall / bare, 3)}
            print(f"{key}: eval {wall:.1f} s, bare {bare:.1f} s, overhead {wall / bare:.3f}", flush=True)
    out["load_average_1min"]["end"] = round(os.getloadavg()[0], 2)
    write_json(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
