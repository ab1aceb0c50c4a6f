"""Benchmark: harness CKA against the public ``torch-cka`` and ``ckatorch`` packages.

Same encoders (two random-init ResNet-18s, seeds 0 and 1), same taps (conv, block1..block4,
flattened), same images (synthetic renders), same batch size. Every method runs in its own
child process so that its peak resident memory (ru_maxrss) is its own; a ``baseline`` child
that only runs the forward passes gives the floor that every method pays.

Methods:
- ``harness``: ``harness.cka.MinibatchCKA`` (unbiased minibatch CKA, float64, all 10 x 10 tap pairs).
- ``torch-cka``: ``torch_cka.CKA.compare`` (the same estimator, float32, the 5 x 5 cross pairs).
- ``ckatorch``: its ``CKA`` hooking class is tried first (it rejects 4-D conv taps); then its
  exact float64 ``cka_batch`` on all features kept in memory, reshaped to (batches, B, p): the
  same estimator, used as the float64 reference of the agreement column.
- ``ckatorch-full`` (``--full-batch``): ``ckatorch.cka_base(unbiased=True)``, the full-batch
  float64 unbiased CKA on all N images at once (slow, memory quadratic in N).

The packages are not harness dependencies; install them for the benchmark only, e.g.
    pip install torch-cka ckatorch      (ckatorch also imports seaborn, pyyaml, tqdm)
or into a private folder put on PYTHONPATH:
    pip install --target /tmp/cka-bench-pkgs --no-deps torch-cka ckatorch seaborn
A missing package is reported and skipped.

Run from the repository root:
    PYTHONPATH=. python benchmarks/cka_vs_packages.py --n 1024 --resolution 64 --batch-size 64
Measured figures: benchmarks/cka_vs_packages_results.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

TAPS = ("conv", "block1", "block2", "block3", "block4")
HOOKS = ("model.relu", "model.layer1", "model.layer2", "model.layer3", "model.layer4")  # the same taps by module


def _cpu_s() -> float:
    """User + system CPU seconds of this process: steadier than wall time on a shared machine."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def _setup(args):
    import torch

    from encoders.registry import create_encoder
    from tasks.synthetic.store import load_split

    torch.set_num_threads(args.threads)
    images = load_split("single", "test", args.n, args.resolution, fields=("image",))["image"]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    return [create_encoder("resnet18", 0), create_encoder("resnet18", 1)], x


def _child(args) -> dict:
    """Run one method in this process; return its cross-encoder 5 x 5 matrix, time and peak memory."""
    import torch

    encoders, x = _setup(args)
    n, b = len(x), args.batch_size
    batches = [x[i:i + b] for i in range(0, n - n % b, b)]
    rss_before = _peak_rss_mb()
    out: dict = {"method": args.method}
    t0, c0 = time.perf_counter(), _cpu_s()
    if args.method == "baseline":
        for images in batches:
            for enc in encoders:
                enc(images, TAPS)
    elif args.method == "harness":
        from harness.cka import MinibatchCKA, accumulate

        names = [f"{e}/{t}" for e in ("a", "b") for t in TAPS]
        acc = MinibatchCKA(names, estimator="unbiased")
        for images in batches:
            accumulate(acc, encoders, [TAPS, TAPS], images)
        m = acc.compute()[: len(TAPS), len(TAPS):]
        out["matrix"] = m.tolist()
    elif args.method == "torch-cka":
        from torch.utils.data import DataLoader, TensorDataset
        from torch_cka import CKA

        dl = DataLoader(TensorDataset(torch.cat(batches), torch.zeros(len(batches) * b)), batch_size=b)
        runner = CKA(encoders[0], encoders[1], "a", "b", list(HOOKS), list(HOOKS), device="cpu")
        runner.compare(dl)
        out["matrix"] = runner.export()["CKA"].double().tolist()
    elif args.method == "ckatorch":
        import ckatorch

        try:  # its hooking class, as documented
            from torch.utils.data import DataLoader, TensorDataset

            dl = DataLoader(TensorDataset(torch.cat(batches)), batch_size=b)
            probe = ckatorch.CKA(encoders[0], encoders[1], list(HOOKS), first_name="a", second_name="b")
            probe(dl, epochs=1, f_extract=lambda batch: {"images": batch[0]}, f_args={})
            out["class_api"] = "ran"
        except Exception as exc:  # noqa: BLE001 - reported, not hidden
            out["class_api"] = f"fails: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        t0, c0 = time.perf_counter(), _cpu_s()  # the failed attempt is not part of the timing
        feats: list[list[list[torch.Tensor]]] = [[[] for _ in TAPS] for _ in encoders]
        for images in batches:
            for e, enc in enumerate(encoders):
                taps = enc(images, TAPS)
                for i, t in enumerate(TAPS):
                    feats[e][i].append(taps[t].flatten(1))
        stacked = [[torch.stack(f) for f in per_enc] for per_enc in feats]  # (batches, B, p)
        out["matrix"] = [[float(ckatorch.cka_batch(stacked[0][i], stacked[1][j])) for j in range(len(TAPS))]
                         for i in range(len(TAPS))]
    elif args.method == "ckatorch-full":
        import ckatorch

        feats = [[[] for _ in TAPS] for _ in encoders]
        for images in batches:
            for e, enc in enumerate(encoders):
                taps = enc(images, TAPS)
                for i, t in enumerate(TAPS):
                    feats[e][i].append(taps[t].flatten(1))
        full = [[torch.cat(f) for f in per_enc] for per_enc in feats]
        out["matrix"] = [[float(ckatorch.cka_base(full[0][i], full[1][j], unbiased=True)) for j in range(len(TAPS))]
                         for i in range(len(TAPS))]
    else:
        raise SystemExit(f"unknown method {args.method}")
    out["time_s"] = time.perf_counter() - t0
    out["cpu_s"] = _cpu_s() - c0
    out["peak_rss_mb"] = _peak_rss_mb()
    out["peak_rss_setup_mb"] = rss_before
    return out


def _run_child(method: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--n", str(args.n), "--resolution", str(args.resolution),
           "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, "HARNESS_QUIET": "1"})
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        if "ModuleNotFoundError" in proc.stderr:
            return {"method": method, "skipped": f"not installed ({tail})"}
        return {"method": method, "skipped": f"failed: {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--full-batch", action="store_true", help="also run ckatorch's full-batch cka_base (slow)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.method = args.child
        print(json.dumps(_child(args)))
        return

    import numpy as np

    methods = ["baseline", "harness", "torch-cka", "ckatorch"] + (["ckatorch-full"] if args.full_batch else [])
    results = {m: _run_child(m, args) for m in methods}
    base = results["baseline"]
    ref = results.get("ckatorch", {}).get("matrix")  # float64, same estimator
    ours = results["harness"]
    print(f"N={args.n}, {args.resolution}px, batch {args.batch_size}, two ResNet-18s, taps {', '.join(TAPS)} "
          f"(flattened), {args.threads} threads; forward passes alone: {base['time_s']:.2f} s wall, "
          f"{base['cpu_s']:.2f} s CPU, peak RSS {base['peak_rss_mb']:.0f} MB")
    print(f"{'method':<14}{'wall s':>9}{'CPU s':>9}{'CPU x harness':>15}{'CPU over fwd':>14}{'peak MB':>10}"
          f"{'over fwd MB':>13}{'max |d| vs f64 ref':>20}")
    for m, r in results.items():
        if "skipped" in r:
            print(f"{m:<14} skipped: {r['skipped']}")
            continue
        diff = "-"
        if ref is not None and "matrix" in r:
            r["max_abs_diff_vs_ref"] = float(np.abs(np.array(r["matrix"]) - np.array(ref)).max())
            diff = f"{r['max_abs_diff_vs_ref']:.2e}"
        ratio = r["cpu_s"] / ours["cpu_s"] if "cpu_s" in ours else float("nan")
        print(f"{m:<14}{r['time_s']:9.2f}{r['cpu_s']:9.2f}{ratio:15.2f}{r['cpu_s'] - base['cpu_s']:14.2f}"
              f"{r['peak_rss_mb']:10.0f}"
              f"{r['peak_rss_mb'] - base['peak_rss_mb']:13.0f}{diff:>20}")
        if "class_api" in r:
            print(f"{'':<14}ckatorch.CKA class: {r['class_api']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                       indent=2))


if __name__ == "__main__":
    main()
