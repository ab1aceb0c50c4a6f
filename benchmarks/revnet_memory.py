"""RevNet-50's memory advantage, measured: peak memory of one training step (forward + backward) with the
reversible backward (activations inside a stage recomputed from the stage's output) and with plain autograd
through the very same units, at a stated batch and input size; ResNet-50 v2 (same widths and depth) for scale.

Two measurements per configuration, each in a fresh subprocess so that one cannot inherit the other's heap:

* ``saved_mb``: the activations autograd keeps for backward after the forward (every tensor packed by
  ``torch.autograd.graph.saved_tensors_hooks``, each storage counted once, weights and input left out) -
  exact and deterministic;
* ``peak_mb``: the step's peak memory above what was held before it (model, input and gradient buffers, after
  one warm-up step): on CUDA ``torch.cuda.max_memory_allocated``; on a CPU the process's resident-set
  high-water mark (``VmHWM``, reset just before the step through ``/proc/self/clear_refs``) minus its resident
  set before the step, glibc told to map every block of 64 KiB or more on its own
  (``MALLOC_MMAP_THRESHOLD_=65536``) so that freed activations leave the resident set.

    PYTHONPATH=. python benchmarks/revnet_memory.py --batch 32 --resolution 128
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from harness.common.atomic import atomic_path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"revnet50 reversible": ("revnet50", True), "revnet50 plain autograd": ("revnet50", False),
           "resnetv2_50 (plain autograd)": ("resnetv2_50", None)}


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS: now; VmHWM: the peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> None:
    """Start a new resident-set high-water mark (Linux >= 4.0: clear_refs 5 resets VmHWM)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the activations autograd keeps for backward after a forward (each storage once; the weights
    and the input, which exist anyway, left out)."""
    storages: dict[int, int] = {}
    held = {t.untyped_storage().data_ptr() for t in [x, *model.parameters(), *model.buffers()]}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in held:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    return sum(storages.values())


def measure_one(arch: str, reversible: bool | None, batch: int, resolution: int, device: str) -> dict:
    """Run in a child process: one configuration, one step after a model and input are in place."""
    from encoders.archs import build_arch

    torch.manual_seed(0)
    model = build_arch(arch, 0).to(device).train()
    if reversible is not None:
        model.set_reversible(reversible)
    x = torch.randn(batch, 3, resolution, resolution, device=device)

    def step() -> None:
        model(x).float().pow(2).mean().backward()

    step()  # warm-up: kernels, thread pools and the gradient buffers exist before the measured step
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        _reset_peak_rss()
        before = _status_mb("VmRSS")
    t = time.perf_counter()
    step()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20 - before
    else:
        peak = _status_mb("VmHWM") - before
    seconds = time.perf_counter() - t
    saved = _saved_bytes(model, x)  # after the step, whose peak is read above
    return {"arch": arch, "reversible": reversible, "saved_mb": round(saved / 2**20, 1), "peak_mb": round(peak, 1),
            "step_s": round(seconds, 2),
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}


def _child(args: argparse.Namespace, name: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MALLOC_MMAP_THRESHOLD_": "65536",
           "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, __file__, "--child", name, "--batch", str(args.batch), "--resolution",
           str(args.resolution), "--device", args.device, "--threads", str(args.threads)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{name}: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}")
    return json.loads(res.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "revnet_memory.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        arch, reversible = CONFIGS[args.child]
        print(json.dumps(measure_one(arch, reversible, args.batch, args.resolution, args.device)))
        return
    results = {name: _child(args, name) for name in CONFIGS}
    rev, plain = results["revnet50 reversible"], results["revnet50 plain autograd"]
    doc = {"what": "peak memory of one training step (forward + backward of the embedding's mean square)",
           "batch": args.batch, "resolution": args.resolution, "device": args.device, "threads": args.threads,
           "peak_method": ("torch.cuda.max_memory_allocated minus allocated before the step"
                           if args.device.startswith("cuda") else
                           "peak RSS (VmHWM, reset before the step) minus RSS before it, after a warm-up step, "
                           "fresh process per configuration, MALLOC_MMAP_THRESHOLD_=65536"),
           "saved_method": "bytes packed by saved_tensors_hooks during the forward (each storage once, weights and "
                           "input left out)",
           "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
           "note": "step_s is indicative only (a shared CPU); the stem (its 7x7 convolution's output, kept by the "
                   "max-pool, and the pool's int64 indices) is not reversible and is most of what the reversible "
                   "run keeps",
           "stem_mb": round(args.batch * 256 * ((args.resolution // 2) ** 2 * 4 + (args.resolution // 4) ** 2 * 8)
                            / 2**20, 1),
           "results": results,
           "reversible_over_plain": {"peak": round(rev["peak_mb"] / plain["peak_mb"], 3),
                                     "saved": round(rev["saved_mb"] / plain["saved_mb"], 3)}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
    for name, r in results.items():
        print(f"{name:30s} peak {r['peak_mb']:8.1f} MiB  saved for backward {r['saved_mb']:8.1f} MiB  "
              f"step {r['step_s']:.2f}s  ({r['params_m']}M params)")
    print(f"reversible / plain: peak x{doc['reversible_over_plain']['peak']}, saved x"
          f"{doc['reversible_over_plain']['saved']}  (batch {args.batch}, {args.resolution} px, {args.device}) "
          f"-> {args.out}")


if __name__ == "__main__":
    main()
