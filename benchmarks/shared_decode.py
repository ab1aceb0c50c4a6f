"""One decode for several encoders, measured side by side in one run (docs/performance.md).

    shared decode = wall time of N encoders on one split in one shared pass (harness.features.encode_shared)
                    / (one bare decoding pass + the N encoders' bare forwards)      target <= 1.1
    separate      = the same N encoders as N separate encodes (each decodes again), over the same reference

The split is a folder of ImageNet-size JPEGs (500 x 375, written once into a temporary folder) read as a
FileClassification resized to ``--resolution``; every encode writes a fresh cache entry (a new cache root
per round). The reference parts are timed alone: the bare decoding pass is the harness's own loader over
the split with no encoder, the forwards are ``encoder(x)`` over the decoded batches held in memory.
Rounds alternate the three; medians are reported, and, since the machine may be shared, each round's own
ratios (its shared pass over its reference parts) with the load average it ran under: their median is the
figure least moved by load that comes and goes between rounds. CPU seconds (this process and its loader
workers) are recorded beside the wall times: other users' load stretches wall time, not CPU time.

    PYTHONPATH=. python benchmarks/shared_decode.py --encoder resnet18 --encoder squeezenet1_1 \\
        --encoder mobilenet_v2 --images 768 --resolution 112
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from encoders import create_encoder
from harness.cache import FeatureKey
from harness.common.atomic import write_json
from harness.features import (
    CacheStats,
    EncodeSettings,
    SharedJob,
    autocast_for,
    encode_shared,
    get_features,
    image_batches,
    prepare,
)
from tasks.datasets.base import FileClassification
from tasks.registry import get_task
from tasks.spec import DataRequest

TARGET = 1.1


def cpu_now() -> float:
    """CPU seconds of this process and its finished children (the loader's workers, joined at the pass's end)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def write_photos(folder: Path, n: int, size=(375, 500)) -> list[tuple[Path, int]]:
    """``n`` JPEG photos-like images (smooth gradients plus noise, quality 90) of ``size`` (H, W)."""
    rng = np.random.default_rng(0)
    h, w = size
    ramp = np.linspace(0, 1, w)[None, :, None] * np.linspace(0.3, 1, h)[:, None, None]
    items = []
    for i in range(n):
        img = (ramp * rng.uniform(100, 255, 3) + rng.normal(0, 20, (h, w, 3))).clip(0, 255).astype(np.uint8)
        path = folder / f"img_{i:05d}.jpg"
        Image.fromarray(img).save(path, quality=90)
        items.append((path, i % 10))
    return items


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", action="append", default=None, help="repeatable (default: three small ones)")
    ap.add_argument("--images", type=int, default=768)
    ap.add_argument("--resolution", type=int, default=112)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--decode", default="auto", choices=("auto", "cpu", "device"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/shared_decode.json"))
    args = ap.parse_args()
    names = args.encoder or ["resnet18", "squeezenet1_1", "mobilenet_v2"]
    device = torch.device(args.device)
    work = Path(tempfile.mkdtemp(prefix="harness-shared-decode-"))
    try:
        (work / "photos").mkdir()
        items = write_photos(work / "photos", args.images)
        task = get_task("eurosat_cls")  # an image-level task: its spec resizes to --resolution here
        ds = FileClassification(task, DataRequest("test", None, args.resolution, None, False), items)
        encoders = [prepare(create_encoder(n).eval(), EncodeSettings(device=device)) for n in names]
        taps = ("embedding",)
        settings = EncodeSettings(device=device, batch_size=args.batch, num_workers=args.workers, decode=args.decode)
        counter = iter(range(10**6))

        def key(enc) -> FeatureKey:
            return FeatureKey(enc.fingerprint(), "bench", "test", len(ds), "eval", taps, args.resolution)

        def fresh() -> EncodeSettings:
            return EncodeSettings(**{**settings.__dict__, "cache_root": work / f"cache{next(counter)}"})

        def sync() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize()

        def shared() -> float:
            s = fresh()
            jobs = [SharedJob(e, taps, key(e), CacheStats()) for e in encoders]
            t0 = time.perf_counter()
            assert encode_shared(jobs, ds, s, desc="shared") == len(encoders)
            sync()
            return time.perf_counter() - t0

        def separate() -> float:
            s = fresh()
            t0 = time.perf_counter()
            for e in encoders:
                stats = CacheStats()
                get_features(e, ds, taps, key(e), s, stats, desc=f"separate {e.name}")
                assert stats.misses == 1
            sync()
            return time.perf_counter() - t0

        decoded: list[torch.Tensor] = []

        def decode_pass() -> float:
            decoded.clear()
            t0 = time.perf_counter()
            for batch, _ in image_batches(ds, settings, desc="decode only"):
                decoded.append(batch["image"])
            sync()
            return time.perf_counter() - t0

        def forwards() -> list[float]:
            out = []
            with torch.no_grad():
                for e in encoders:
                    t0 = time.perf_counter()
                    for x in decoded:
                        with autocast_for(device, settings.precision):
                            e(x, taps)
                    sync()
                    out.append(time.perf_counter() - t0)
            return out

        decode_pass()
        forwards()  # warm-up: the files in the page cache, kernels chosen
        t_shared, t_sep, t_dec, t_fwd, load = [], [], [], [], []
        cpu: dict[str, list[float]] = {"shared": [], "separate": [], "decode_pass": [], "forwards": []}
        for _ in range(args.rounds):
            load.append(os.getloadavg()[0])
            for name, run, out in (("shared", shared, t_shared), ("separate", separate, t_sep),
                                   ("decode_pass", decode_pass, t_dec), ("forwards", forwards, t_fwd)):
                c0 = cpu_now()
                out.append(run())
                cpu[name].append(cpu_now() - c0)
            round_ref = t_dec[-1] + sum(t_fwd[-1])
            print(f"  round {len(load)}: load {load[-1]:.1f}, shared {t_shared[-1] / round_ref:.2f}, "
                  f"separate {t_sep[-1] / round_ref:.2f} x its reference {round_ref:.1f}s", flush=True)
        refs = [d + sum(f) for d, f in zip(t_dec, t_fwd, strict=True)]
        paired = [a / r for a, r in zip(t_shared, refs, strict=True)]
        paired_sep = [a / r for a, r in zip(t_sep, refs, strict=True)]
        cpu_ratio = [a / (d + f) for a, d, f in zip(cpu["shared"], cpu["decode_pass"], cpu["forwards"], strict=True)]
        s, p, d = statistics.median(t_shared), statistics.median(t_sep), statistics.median(t_dec)
        f = [statistics.median(r[i] for r in t_fwd) for i in range(len(encoders))]
        ref = d + sum(f)
        result = {
            "encoders": names, "images": args.images, "jpeg_size": [500, 375], "resolution": args.resolution,
            "batch": args.batch, "workers": args.workers, "device": str(device), "decode": args.decode,
            "threads": torch.get_num_threads(), "rounds": args.rounds,
            "shared_s": s, "separate_s": p, "decode_pass_s": d, "forward_s": dict(zip(names, f, strict=True)),
            "reference_s": ref, "shared_ratio": s / ref, "separate_ratio": p / ref, "sharing_speedup": p / s,
            "shared_ratio_per_round": paired, "separate_ratio_per_round": paired_sep,
            "shared_ratio_median_of_rounds": statistics.median(paired),
            "separate_ratio_median_of_rounds": statistics.median(paired_sep),
            "shared_cpu_ratio_per_round": cpu_ratio, "cpu_seconds": cpu,
            "load_average_1min": load, "cores": os.cpu_count(),
            "target": f"shared_ratio <= {TARGET}",
            "seconds": {"shared": t_shared, "separate": t_sep, "decode_pass": t_dec, "forwards": t_fwd},
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_json(args.out, result)
    n = len(names)
    print(f"{n} encoders ({', '.join(names)}) on {args.images} JPEGs 500x375 -> {args.resolution}px, {device}, "
          f"{args.workers} worker(s), decode {args.decode}:")
    print(f"  one decoding pass {d:.2f}s + {n} forwards {sum(f):.2f}s = reference {ref:.2f}s")
    print(f"  shared pass        {s:.2f}s  ratio {s / ref:.2f}  (target <= {TARGET}: "
          f"{'met' if s / ref <= TARGET else 'NOT met'})")
    print(f"  {n} separate runs  {p:.2f}s  ratio {p / ref:.2f}  (sharing saves x{p / s:.2f})")
    print(f"  median of the rounds' own ratios: shared {statistics.median(paired):.2f}, separate "
          f"{statistics.median(paired_sep):.2f} (load average {min(load):.1f}-{max(load):.1f}, "
          f"{os.cpu_count()} cores)")
    print(f"  CPU seconds, shared pass over the reference parts': {statistics.median(cpu_ratio):.2f}")


if __name__ == "__main__":
    main()
