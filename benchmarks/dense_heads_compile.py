"""Does ``torch.compile`` of a U-Net head pay at the task's epochs? Measured on this machine, bf16 autocast.

For synth_depth (U-Net) and synth_flow (Siamese U-Net) on ResNet-18 taps at the tasks' 64 px and
batch 32: the compile cost (the first compiled calls, minus an eager step each: a training step at
batch 32, one at the last partial batch's size, an eval-mode forward; each is its own graph), then eager
and compiled training steps interleaved (medians). Break-even: compile cost / step time saved,
against the head steps the task takes at its default epochs (train samples / batch x epochs).

Usage: python benchmarks/dense_heads_compile.py [--steps 5] [--out benchmarks/results/dense_heads_compile.json]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path

import torch
from dense_heads import tap_features, timed_step  # benchmarks/, this script's folder

from encoders.resnet import build_resnet
from harness.common.atomic import write_json
from harness.train import head_autocast
from heads import HEADS
from tasks import get_task

TRAIN_SAMPLES = 400  # the synthetic pixel tasks' train split (tasks/synthetic/tasks.py)


def measure(task_name: str, res: int, steps: int) -> dict:
    task = get_task(task_name)
    taps = {t.name: t for t in build_resnet("resnet18").taps}
    torch.manual_seed(0)
    head = HEADS[task.head].build(taps, task).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(head.parameters(), lr=1e-4, foreach=True)
    compiled = torch.compile(head)
    device = torch.device("cpu")
    last = TRAIN_SAMPLES % task.batch_size or task.batch_size
    data = {b: (tap_features(taps, b, res, task.frames), torch.randn(b, task.num_outputs, res, res))
            for b in {task.batch_size, last}}

    def step(model, batch: int) -> float:
        x, y = data[batch]
        return timed_step(model, opt, x, y, "bf16")

    def eval_forward(model) -> float:
        x, _ = data[task.batch_size]
        t0 = time.perf_counter()
        model.eval()
        with torch.no_grad(), head_autocast(device, "bf16"):
            model(x, size=(res, res))
        return time.perf_counter() - t0

    eager_first = step(head, task.batch_size) + step(head, last) + eval_forward(head)
    compiled_first = step(compiled, task.batch_size) + step(compiled, last) + eval_forward(compiled)
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(steps):
        times["eager"].append(step(head, task.batch_size))
        times["compiled"].append(step(compiled, task.batch_size))
    eager, comp = (statistics.median(times[k]) for k in ("eager", "compiled"))
    cost = compiled_first - eager_first
    task_steps = math.ceil(TRAIN_SAMPLES / task.batch_size) * task.epochs
    saved = eager - comp
    return {"head": task.head, "epochs": task.epochs, "task_head_steps": task_steps,
            "compile_s": round(cost, 1), "eager_step_ms": round(eager * 1000, 1),
            "compiled_step_ms": round(comp * 1000, 1),
            "break_even_steps": round(cost / saved) if saved > 0 else None,
            "pays": saved > 0 and cost / saved < task_steps}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/dense_heads_compile.json"))
    args = ap.parse_args()
    out: dict = {"machine": f"{os.cpu_count()} CPU(s), torch {torch.__version__}", "resolution": args.resolution,
                 "load_average_1min": {"start": round(os.getloadavg()[0], 2)}, "tasks": {}}
    for task in ("synth_depth", "synth_flow"):
        torch._dynamo.reset()
        row = measure(task, args.resolution, args.steps)
        out["tasks"][task] = row
        print(task, row, flush=True)
    out["load_average_1min"]["end"] = round(os.getloadavg()[0], 2)
    write_json(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
