"""Every head family on every backbone: one small synthetic run per (encoder, head family).

For each encoder: its parameters and FLOPs per image at the run's resolution (the encoder card),
and for each of the five head families (synth_count: single layer, synth_action: fusion, synth_depth:
U-Net, synth_flow: Siamese U-Net, synth_seg: DeepLabv3+) the record's status, head parameters, which
taps fed the head, and the wall seconds of the whole task (encode, train, test). Small on purpose
(--limit 64 --epochs 1, the default configuration only): it shows that each pairing runs and what it
costs, not how well it learns.

    python benchmarks/backbone_heads.py [--encoder NAME ...] [--limit 64] [--resolution 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from encoders import create_encoder
from harness.common.atomic import write_json
from harness.runner import EvalOptions, run_eval
from tasks.registry import resolve_tasks

TASKS = ("synth_count", "synth_action", "synth_depth", "synth_flow", "synth_seg")
DEFAULT_ENCODERS = (
    # the seeds' architectures (Kolesnikov et al.; the low-resource pretext study)
    "resnet18", "resnet50", "resnet50_x2", "resnetv2_50", "resnetv2_18_x2", "revnet50", "vgg19_bn",
    "mobilenet_v2", "shufflenet_v2_x1_0", "squeezenet1_1", "efficientnet_lite0", "vit_tiny_patch16",
    "vit_small_patch16",
    # the two, and others nobody special-cased
    "timm:vit_small_patch16_224", "timm:convnext_tiny", "tv:regnet_y_400mf", "timm:swin_tiny_patch4_window7_224",
    "timm:pvt_v2_b0", "tv:vit_b_16", "timm:vit_small_patch14_dinov2",
)
OUT = Path(__file__).parent / "results" / "backbone_heads.json"


def measure(name: str, limit: int, resolution: int, out_dir: Path) -> dict:
    t0 = time.perf_counter()
    try:
        enc = create_encoder(name)
    except Exception as exc:  # an encoder that cannot be built is a row saying why
        return {"encoder": name, "error": f"{type(exc).__name__}: {exc}", "tasks": {}}
    cost = enc.cost(resolution) if hasattr(enc, "cost") else {}
    row = {"encoder": name, "build_s": round(time.perf_counter() - t0, 2),
           **{f"encoder_{k}": v for k, v in cost.items()}, "tasks": {}}
    for task in TASKS:
        opts = EvalOptions(encoder=name, tasks=resolve_tasks([task]), out=out_dir / name.replace(":", "_"),
                           limit=limit, epochs=1, grid="single", resolution=resolution, device="cpu",
                           use_cache=False)
        t1 = time.perf_counter()
        try:
            rec = run_eval(opts)[0]
        except Exception as exc:  # a benchmark reports what failed and goes on
            rec = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        row["tasks"][task] = {"status": rec.get("status"), "seconds": round(time.perf_counter() - t1, 1),
                              "head_params": rec.get("head_params"), "test": rec.get("test"),
                              "taps": [f"{t['input']}<-{t['tap']} ({t['how']})" for t in rec.get("taps") or []],
                              "error": rec.get("error")}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--encoder", action="append", help="encoders (repeatable; default: the list in this script)")
    ap.add_argument("--limit", type=int, default=64)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="harness-backbone-heads-") as tmp:
        for name in args.encoder or DEFAULT_ENCODERS:
            row = measure(name, args.limit, args.resolution, Path(tmp))
            rows.append(row)
            cells = "  ".join(f"{t.split('_', 1)[1]} {r['status'][:4]} {r['head_params'] or 0:>10,} "
                              f"{r['seconds']:5.1f}s" for t, r in row["tasks"].items())
            params, flops = row.get("encoder_params", 0), row.get("encoder_flops", 0)
            print(f"{name:34s} {params:>11,} p {flops / 1e6:8.1f} MFLOPs  {cells}", flush=True)
            # written after every encoder, so an interrupted run keeps what it measured
            write_json(args.out, {"limit": args.limit, "resolution": args.resolution, "epochs": 1, "grid": "single",
                                  "device": "cpu", "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
