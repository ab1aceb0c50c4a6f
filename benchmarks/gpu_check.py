"""The GPU figures of docs/performance.md in one command, a few minutes on one CUDA device.

    PYTHONPATH=. python benchmarks/gpu_check.py            # writes benchmarks/results/gpu_check.json

Each section is timed side by side in this run (CUDA synchronised around every timed region, one
warm-up first, medians over the repeats):

- encode:   ``encode efficiency`` = a bare ``encoder(x)`` loop (fp16 autocast, channels_last) over
            preprocessed images / the harness encoding the same images (target >= 0.9);
- decode:   JPEGs (500 x 375, resized to 224) through the harness with ``--decode device`` (nvjpeg,
            batched) and ``--decode cpu`` (PIL in the loader's workers): images/s of decoding alone
            and of decoding + encoding, and the device path's pixel difference from PIL's (levels);
- dense:    head train steps fp32 -> bf16 autocast for the three dense heads (target >= 1.5x);
- pretrain: a MoCo v2 step against a bare forward+backward of the same backbone on the same two
            views (target >= 0.7);
- grid:     ``grid ratio`` = the stacked 4-configuration grid / one configuration, same features
            (target <= 1.3).

``harness sweep --dry-run`` reads the JSON to estimate a study's hours on one 8-GPU node. Without
CUDA the script says so and exits 0 (``--allow-cpu --tiny`` runs the same code small on the CPU:
what the tests do). A section that fails is recorded with its error; the others still run.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.common.atomic import write_json  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "gpu_check.json"
DENSE = {"unet": "nyu_depth", "siamese_unet": "kitti_flow", "deeplabv3plus": "cityscapes_seg"}  # head: a task of it


@dataclass
class Sizes:
    encoder: str = "resnet50"
    resolution: int = 224
    images: int = 1024  # preprocessed images for encode efficiency
    jpegs: int = 512
    batch: int = 128
    head_batch: int = 16
    head_res: int = 256
    head_steps: int = 10
    pretrain_arch: str = "resnet50"
    pretrain_batch: int = 64
    pretrain_steps: int = 5
    grid_n: int = 20000
    grid_dim: int = 2048
    grid_epochs: int = 3
    repeats: int = 3


TINY = Sizes(encoder="resnet18", resolution=32, images=16, jpegs=8, batch=8, head_batch=1, head_res=32, head_steps=1,
             pretrain_arch="resnet18", pretrain_batch=2, pretrain_steps=1, grid_n=128, grid_dim=32, grid_epochs=1,
             repeats=1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up, synchronised."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ------------------------------------------------------------------------------------------ encode

class Preprocessed(torch.utils.data.Dataset):
    """Images already decoded and resized, served as a task's loader serves them."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "target": torch.tensor(0)}


def encode_section(sz: Sizes, device: torch.device) -> dict:
    from encoders import create_encoder
    from harness.features import EncodeSettings, autocast_for, encode_batches, prepare

    settings = EncodeSettings(device=device, batch_size=sz.batch, precision="auto")
    encoder = prepare(create_encoder(sz.encoder).eval(), settings)
    images = torch.rand(sz.images, 3, sz.resolution, sz.resolution)
    batches = list(images.split(sz.batch))
    taps = ("embedding",)

    def bare() -> None:
        with torch.no_grad():
            for x in batches:
                x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                with autocast_for(device, settings.precision):
                    encoder(x, taps)

    def harness() -> None:
        with torch.no_grad():
            for _ in encode_batches(encoder, Preprocessed(images), taps, settings, desc="gpu_check encode"):
                pass

    t_bare, t_harness = timed(bare, device, sz.repeats), timed(harness, device, sz.repeats)
    cost = encoder.cost(sz.resolution)
    return {"encoder": sz.encoder, "resolution": sz.resolution, "images": sz.images, "batch": sz.batch,
            "precision": "fp16 autocast" if device.type == "cuda" else "fp32", "flops": cost.get("flops"),
            "bare_s": t_bare, "harness_s": t_harness, "images_per_s": sz.images / t_bare,
            "harness_images_per_s": sz.images / t_harness, "encode_efficiency": t_bare / t_harness, "target": 0.9}


# ------------------------------------------------------------------------------------------ decode

def decode_section(sz: Sizes, device: torch.device, folder: Path) -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from shared_decode import write_photos

    from encoders import create_encoder
    from harness import decode
    from harness.features import EncodeSettings, encode_batches, image_batches, prepare
    from tasks.datasets.base import FileClassification
    from tasks.registry import get_task
    from tasks.spec import DataRequest

    folder.mkdir(parents=True, exist_ok=True)
    items = write_photos(folder, sz.jpegs)
    ds = FileClassification(get_task("eurosat_cls"), DataRequest("test", None, sz.resolution, None, False), items)
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    encoder = create_encoder(sz.encoder).eval()
    out: dict = {"jpegs": sz.jpegs, "jpeg_size": [500, 375], "resolution": sz.resolution, "workers": workers,
                 "device_decoder": decode.device_works(str(device)) or "works"}
    for mode in ("device", "cpu"):
        settings = EncodeSettings(device=device, batch_size=sz.batch, num_workers=workers, decode=mode)
        prepare(encoder, settings)

        def decode_only(settings=settings, mode=mode) -> None:
            for _ in image_batches(ds, settings, desc=f"gpu_check decode {mode}"):
                pass

        def with_encoder(settings=settings, mode=mode) -> None:
            with torch.no_grad():
                for _ in encode_batches(encoder, ds, ("embedding",), settings, desc=f"gpu_check encode {mode}"):
                    pass

        t_dec, t_enc = timed(decode_only, device, sz.repeats), timed(with_encoder, device, sz.repeats)
        out[mode] = {"decode_s": t_dec, "decode_images_per_s": sz.jpegs / t_dec, "decode_encode_s": t_enc,
                     "decode_encode_images_per_s": sz.jpegs / t_enc}
    out["device_speedup"] = out["cpu"]["decode_encode_s"] / out["device"]["decode_encode_s"]
    raw = decode.RawFiles(ds)
    n = min(64, len(ds))
    batch = decode.collate_raw([raw[i] for i in range(n)])
    images, on_host = decode.decode_batch(batch["frames"], batch["stacked"], tuple(raw.size), device)
    ref = torch.stack([ds[i]["image"] for i in range(n)]).to(device)
    diff = (images.float() - ref).abs() * 255
    out["pixel_difference_levels"] = {"max": float(diff.max()), "mean": float(diff.mean()), "images": n,
                                      "decoded_by_pil": on_host, "cpu_bound": "max 1 level, mean <= 0.5"}
    return out


# ------------------------------------------------------------------------------------------- dense

def dense_section(sz: Sizes, device: torch.device) -> dict:
    from encoders.resnet import build_resnet
    from harness.train import head_autocast
    from heads import HEADS
    from tasks.registry import get_task

    HEADS.discover()
    taps = {t.name: t for t in build_resnet("resnet50").taps}
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    out: dict = {"batch": sz.head_batch, "resolution": sz.head_res, "steps": sz.head_steps,
                 "bf16": "autocast" if bf16 else "not measured: no bf16 on this device", "heads": {}}
    for name, task_name in DENSE.items():
        task = get_task(task_name)
        torch.manual_seed(0)
        row = {"task": task.name}
        for precision in ("fp32", "bf16") if bf16 or device.type == "cpu" else ("fp32",):
            head = HEADS[name].build(taps, task).to(device)
            if precision != "fp32":
                head = head.to(memory_format=torch.channels_last)
            opt = torch.optim.Adam(head.parameters(), lr=1e-4, foreach=True)
            x = {}
            for tap_name, tap in taps.items():
                if tap.stride is None:
                    continue
                s = math.ceil(sz.head_res / tap.stride)
                shape = (sz.head_batch, task.frames, tap.channels, s, s) if task.frames > 1 else \
                    (sz.head_batch, tap.channels, s, s)
                x[tap_name] = torch.randn(*shape, device=device).abs()
            y = torch.randn(sz.head_batch, task.num_outputs, sz.head_res, sz.head_res, device=device)

            def steps(head=head, opt=opt, x=x, y=y, precision=precision) -> None:
                for _ in range(sz.head_steps):
                    with head_autocast(device, precision):
                        pred = head(x, size=(sz.head_res, sz.head_res))
                    loss = (pred.float() - y).abs().mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()

            row[f"{precision}_ms"] = timed(steps, device, sz.repeats) / sz.head_steps * 1000
        if "bf16_ms" in row:
            row["bf16_speedup"] = row["fp32_ms"] / row["bf16_ms"]
        out["heads"][name] = row
    out["target"] = "bf16_speedup >= 1.5"
    return out


# ---------------------------------------------------------------------------------------- pretrain

def pretrain_section(sz: Sizes, device: torch.device) -> dict:
    from encoders.pretrain import create_method, get_method
    from encoders.pretrain.augment import MultiCropAugment
    from encoders.pretrain.base import make_backbone
    from encoders.pretrain.train import build_optimizer, train_step

    cfg = get_method("mocov2").config()
    method = create_method("mocov2", cfg, sz.pretrain_arch, 0).to(device).train()
    optimizer = build_optimizer(method, cfg.optim, 0.01)
    scaler = torch.amp.GradScaler(enabled=False)
    augment = MultiCropAugment(cfg.augment, sz.resolution).to(device)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (sz.pretrain_batch, sz.resolution, sz.resolution, 3), dtype=torch.uint8,
                           generator=g).to(device)
    bare, _ = make_backbone(sz.pretrain_arch, 1)
    bare = bare.to(device).train()
    views = torch.cat(augment(images)[:2])

    def step() -> None:
        for _ in range(sz.pretrain_steps):
            train_step(method, method, optimizer, scaler, augment, images, 1, nullcontext(), False)
            method.on_after_step(0.5)

    def bare_step() -> None:
        for _ in range(sz.pretrain_steps):
            bare.zero_grad(set_to_none=True)
            bare(views).sum().backward()

    t_step, t_bare = timed(step, device, sz.repeats), timed(bare_step, device, sz.repeats)
    return {"method": "mocov2", "arch": sz.pretrain_arch, "batch": sz.pretrain_batch, "resolution": sz.resolution,
            "precision": "fp32", "step_ms": t_step / sz.pretrain_steps * 1000,
            "bare_fwd_bwd_ms": t_bare / sz.pretrain_steps * 1000,
            "step_images_per_s": sz.pretrain_batch * sz.pretrain_steps / t_step, "ratio": t_bare / t_step,
            "target": 0.7}


# -------------------------------------------------------------------------------------------- grid

def grid_section(sz: Sizes, device: torch.device) -> dict:
    from harness.cache import MemoryFeatures
    from harness.common.taps import Tap
    from harness.stacked import fit_grid
    from heads import get_head
    from tasks.registry import get_task

    task = get_task("eurosat_cls")
    head = get_head(task.head)
    g = torch.Generator().manual_seed(0)
    classes = task.num_outputs
    centres = torch.randn(classes, sz.grid_dim, generator=g)

    def split(n: int) -> MemoryFeatures:
        y = torch.randint(0, classes, (n,), generator=g)
        x = centres[y] + 2 * torch.randn(n, sz.grid_dim, generator=g)
        return MemoryFeatures({"embedding": x.half()}, y)

    train, val = [split(sz.grid_n)], split(max(64, sz.grid_n // 10))
    taps = {"embedding": Tap("embedding", sz.grid_dim, None)}

    def build():
        return head.build(taps, task)

    def run(configs) -> None:
        fit_grid(build, configs, [0], train, val, task, sz.grid_epochs, device, task.batch_size)

    t_all = timed(lambda: run(task.grid), device, sz.repeats)
    t_one = timed(lambda: run(task.grid[:1]), device, sz.repeats)
    return {"task": task.name, "n_train": sz.grid_n, "dim": sz.grid_dim, "epochs": sz.grid_epochs,
            "configs": len(task.grid), "grid_s": t_all, "one_config_s": t_one, "grid_ratio": t_all / t_one,
            "grid_s_per_sample_epoch": t_all / (sz.grid_n * sz.grid_epochs), "target": 1.3}


SECTIONS = {"encode": encode_section, "decode": decode_section, "dense": dense_section,
            "pretrain": pretrain_section, "grid": grid_section}


def summary(doc: dict) -> list[str]:
    s = doc["sections"]
    lines = []

    def have(name: str) -> bool:
        return name in s and "error" not in s[name]

    if have("encode"):
        e = s["encode"]
        lines.append(f"encode efficiency {e['encode_efficiency']:.2f} (target >= 0.9): {e['encoder']} "
                     f"{e['resolution']}px {e['images_per_s']:.0f} img/s bare, {e['harness_images_per_s']:.0f} harness")
    if have("decode"):
        d = s["decode"]
        lines.append(f"decode: device {d['device']['decode_images_per_s']:.0f} img/s, cpu ({d['workers']} workers) "
                     f"{d['cpu']['decode_images_per_s']:.0f} img/s; with the encoder x{d['device_speedup']:.2f} "
                     f"faster on the device; pixels differ by max {d['pixel_difference_levels']['max']:.2f}, mean "
                     f"{d['pixel_difference_levels']['mean']:.3f} levels")
    if have("dense"):
        for name, row in s["dense"]["heads"].items():
            bf = f", bf16 {row['bf16_ms']:.1f} ms: x{row['bf16_speedup']:.2f} (target >= 1.5)" if "bf16_ms" in row \
                else ""
            lines.append(f"dense {name}: fp32 {row['fp32_ms']:.1f} ms/step{bf}")
    if have("pretrain"):
        p = s["pretrain"]
        lines.append(f"pretrain step / bare fwd+bwd {p['ratio']:.2f} (target >= 0.7): {p['step_images_per_s']:.0f} "
                     f"img/s")
    if have("grid"):
        lines.append(f"grid ratio {s['grid']['grid_ratio']:.2f} (target <= 1.3)")
    lines += [f"{name}: FAILED: {sec['error']}" for name, sec in s.items() if "error" in sec]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--only", action="append", choices=tuple(SECTIONS), help="run only these sections")
    ap.add_argument("--allow-cpu", action="store_true", help="run on the CPU (the tests: with --tiny)")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes: checks the code, measures nothing useful")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type != "cuda" and not args.allow_cpu or device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no GPU here (CUDA is not available): nothing measured, nothing written; run it on a CUDA "
              "machine")
        return 0
    sz = TINY if args.tiny else Sizes()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    doc: dict = {"device": name, "device_type": device.type, "gpus_on_machine": torch.cuda.device_count(),
                 "torch": torch.__version__, "tiny": args.tiny,
                 "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "sections": {}}
    work = Path(tempfile.mkdtemp(prefix="harness-gpu-check-"))
    os.environ.setdefault("HARNESS_CACHE", str(work / "cache"))
    t0 = time.perf_counter()
    try:
        for key, fn in SECTIONS.items():
            if args.only and key not in args.only:
                continue
            t = time.perf_counter()
            try:
                doc["sections"][key] = fn(sz, device, work / key) if key == "decode" else fn(sz, device)
            except Exception as exc:  # noqa: BLE001 - one section's failure must not lose the others' figures
                first = str(exc).splitlines()[0] if str(exc) else ""
                doc["sections"][key] = {"error": f"{type(exc).__name__}: {first}",
                                        "traceback": traceback.format_exc(limit=6)}
            doc["sections"][key]["wall_s"] = time.perf_counter() - t
            print(f"gpu_check: {key} done in {time.perf_counter() - t:.0f}s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    doc["wall_s"] = time.perf_counter() - t0
    write_json(args.out, doc)
    print(f"gpu_check on {name} ({doc['wall_s']:.0f}s), written to {args.out}:")
    for line in summary(doc):
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
