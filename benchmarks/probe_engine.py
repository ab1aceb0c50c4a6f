"""The stacked probe engine (harness/stacked.py) against the per-configuration loop it replaced.

1. Grid ratio: head training only, on features encoded once (ResNet-18 at 64 px by default):
   - ``sep1``: one configuration trained by ``harness.train.fit`` (what one configuration cost);
   - ``sep4``: the 4-configuration grid, one ``fit`` each (the old runner);
   - ``stk1`` / ``stk4``: one configuration / the whole grid through ``fit_grid``.
   grid ratio = stk4 / sep1 (target <= 1.3). Timed in interleaved rounds (the median is kept), for the
   single-layer head (synth_count) and the fusion head (synth_egomotion, fewer epochs).
2. Eval overhead (benchmarks/eval_performance.py's definition): a first ``harness eval`` (fresh feature
   cache, default grid) / one bare encoder pass over train + val + test (target <= 1.3), measured
   "before" (the per-configuration loop: the stacked engine switched off) and "after", alternating, the
   bare pass re-measured beside each eval.

The machine may be shared: the load average is written with the figures.

Usage:
  python benchmarks/probe_engine.py [--encoder resnet18] [--resolution 64] [--rounds 3]
         [--out benchmarks/results/probe_engine.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_performance import bare_pass, preprocessed_batches, scratch_root  # noqa: E402

import harness.runner as runner  # noqa: E402
from encoders import create_encoder  # noqa: E402
from harness.common.atomic import write_json  # noqa: E402
from harness.common.paths import synthetic_dir  # noqa: E402
from harness.features import CacheStats, EncodeSettings  # noqa: E402
from harness.runner import EvalOptions, run_eval  # noqa: E402
from harness.stacked import fit_grid  # noqa: E402
from harness.train import fit  # noqa: E402
from heads import get_head  # noqa: E402
from tasks import get_task  # noqa: E402


def fresh_cache() -> Path:
    """A new, empty feature cache sharing the synthetic renders already made (they are a one-off)."""
    renders = synthetic_dir()
    fresh = Path(tempfile.mkdtemp(prefix="harness-probe-bench-"))
    if renders.is_dir():
        (fresh / "synthetic").symlink_to(renders.resolve(), target_is_directory=True)
    os.environ["HARNESS_CACHE"] = str(fresh)
    return fresh


def encoded(task_name: str, encoder_name: str, resolution: int | None, device: torch.device):
    """The task's train and val features, encoded once (in memory), and its plan."""
    task = get_task(task_name)
    encoder = create_encoder(encoder_name)
    opts = EvalOptions(encoder=encoder_name, tasks=[task], resolution=resolution, device=str(device))
    plan = runner.plan_task(encoder, task, opts, device)
    train, val, _ = runner.encode_train_val(encoder, plan, opts, CacheStats())
    return encoder, plan, train, val


def time_grid(task_name: str, encoder_name: str, resolution: int | None, device: torch.device, epochs: int | None,
              rounds: int) -> dict:
    encoder, plan, train, val = encoded(task_name, encoder_name, resolution, device)
    task, grid, epochs = plan.task, plan.grid, epochs or plan.epochs

    def build():
        return plan.head.build(encoder.taps, task)

    def sep(configs):
        for i, cfg in enumerate(configs):
            torch.manual_seed(i)
            fit(build(), train, val, task, cfg, epochs, device, 0, plan.batch_size)

    runs = {"sep1": lambda: sep(grid[:1]), "sep4": lambda: sep(grid),
            "stk1": lambda: fit_grid(build, grid[:1], [0], train, val, task, epochs, device, plan.batch_size),
            "stk4": lambda: fit_grid(build, grid, [0], train, val, task, epochs, device, plan.batch_size)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"task": task.name, "head": task.head, "epochs": epochs, "configs": len(grid), "n_train": len(train[0]),
            "n_val": len(val), "seconds": times, "median_s": med, "grid_ratio": med["stk4"] / med["sep1"],
            "grid_ratio_stacked_1": med["stk4"] / med["stk1"], "grid_speedup_vs_loop": med["sep4"] / med["stk4"]}


def eval_overhead(task_name: str, encoder_name: str, resolution: int | None, device: torch.device,
                  rounds: int) -> dict:
    task = get_task(task_name)
    out_dir = Path(tempfile.mkdtemp(prefix="harness-probe-bench-out-"))
    base = dict(encoder=encoder_name, tasks=[task], out=out_dir, resolution=resolution, device=str(device))
    batches = preprocessed_batches(task, EvalOptions(**base), task.batch_size)  # renders made here, untimed
    encoder = create_encoder(encoder_name)
    taps = tuple(get_head(task.head).taps(task, encoder.taps))
    settings = EncodeSettings(device=device)
    bare_pass(encoder, batches[:2], taps, device, settings)  # warm-up
    real_supports = runner.supports
    rows: dict[str, list[dict]] = {"before": [], "after": []}
    for _ in range(rounds):
        for mode in ("before", "after"):
            runner.supports = real_supports if mode == "after" else (lambda *a, **k: False)
            try:
                fresh_cache()
                bare = bare_pass(encoder, batches, taps, device, settings)
                (rec,) = run_eval(EvalOptions(**base, force=True))
            finally:
                runner.supports = real_supports
            if rec["cache"]["misses"] == 0:
                raise SystemExit("the first eval found its features cached; the overhead would be meaningless")
            t = rec["timings"]
            rows[mode].append({"bare_encoder_s": bare, "total_s": t["total_s"], "encode_s": t["encode_s"],
                               "train_s": t["train_s"], "eval_overhead": t["total_s"] / bare,
                               "test": rec["test"], "config": rec["config"]["label"], "epoch": rec["epoch"]})
    summary = {mode: {"eval_overhead": statistics.median(r["eval_overhead"] for r in rs),
                      "train_s": statistics.median(r["train_s"] for r in rs),
                      "total_s": statistics.median(r["total_s"] for r in rs),
                      "bare_encoder_s": statistics.median(r["bare_encoder_s"] for r in rs)}
               for mode, rs in rows.items()}
    return {"task": task.name, "rounds": rows, "median": summary}


def main() -> None:
    scratch_root("harness-probe-bench-")
    ap = argparse.ArgumentParser()
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--task", default="synth_count")
    ap.add_argument("--fusion-task", default="synth_egomotion")
    ap.add_argument("--fusion-epochs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/probe_engine.json"))
    args = ap.parse_args()
    device = torch.device(args.device)
    os.environ.setdefault("HARNESS_QUIET", "1")
    results: dict = {"encoder": args.encoder, "resolution": args.resolution, "device": str(device),
                     "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "load_before": os.getloadavg(),
                     "note": "a shared machine: other processes ran beside these timings (load averages recorded)",
                     "targets": {"grid_ratio": "<= 1.3", "eval_overhead": "<= 1.3"}}
    fresh_cache()
    results["linear"] = time_grid(args.task, args.encoder, args.resolution, device, None, args.rounds)
    print(json.dumps(results["linear"]["median_s"]), f"grid ratio {results['linear']['grid_ratio']:.2f}")
    results["fusion"] = time_grid(args.fusion_task, args.encoder, args.resolution, device, args.fusion_epochs,
                                  max(1, args.rounds - 1))
    print(json.dumps(results["fusion"]["median_s"]), f"grid ratio {results['fusion']['grid_ratio']:.2f}")
    results["eval"] = eval_overhead(args.task, args.encoder, args.resolution, device, args.rounds)
    results["load_after"] = os.getloadavg()
    results["grid_ratio"] = results["linear"]["grid_ratio"]
    results["eval_overhead_before"] = results["eval"]["median"]["before"]["eval_overhead"]
    results["eval_overhead_after"] = results["eval"]["median"]["after"]["eval_overhead"]
    write_json(args.out, results)
    for k in ("grid_ratio", "eval_overhead_before", "eval_overhead_after"):
        print(f"{k:22s} {results[k]:6.2f}")
    print(f"fusion grid ratio      {results['fusion']['grid_ratio']:6.2f} (stacked 4 / loop 1; "
          f"loop 4 / stacked 4 = {results['fusion']['grid_speedup_vs_loop']:.2f})")


if __name__ == "__main__":
    main()
