"""Loader throughput at ImageNet scale (issue 12, item 7): how fast the harness lists, decodes
and encodes an image folder, against the plainest alternatives.

Measured on a synthetic ImageNet-like release written to a temporary folder:
1. listing: ``imagenet_cls``'s train builder (``os.scandir``, no per-file stat) over a tree of
   ``--list-folders`` x ``--list-files`` empty files, beside torchvision's ``make_dataset``
   (``os.walk``) on the same tree; the 1.28M-image figure is extrapolated linearly;
2. decoding: ``--images`` JPEGs of ImageNet-like size (500 x 375, smooth content that compresses
   like a photo) read by our loader (decode + resize to 224 x 224, through a DataLoader with
   the default workers = the machine's cores, and with none) against a bare PIL loop (open,
   convert to RGB, resize) in one process;
3. encode efficiency: images/s of ``get_features``-style encoding (our loader with the default
   workers feeding the encoder) against the encoder's forward pass alone on pre-decoded tensors
   (``--encode-images`` of them); 1.0 means decoding is fully hidden behind the encoder.

The machine is shared (its load average is recorded): figures are indicative, ratios more than
absolute rates. On an oversubscribed machine torch's intra-op thread pool makes each batch's
``torch.stack`` in the main process slow (seconds for 64 images at 224 x 224), which is why the
loader without workers is also timed with one torch thread; DataLoader workers run with one
thread each, as torch sets them.

Usage:
  python benchmarks/loader_throughput.py [--images 2000] [--encode-images 256] [--encoder resnet18]
         [--list-folders 1000] [--list-files 100] [--out benchmarks/results/loader_throughput.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Subset

from encoders import create_encoder
from harness.common.atomic import write_json
from harness.features import EncodeSettings, encode_batches, loader
from harness.runner import default_workers
from tasks import get_task
from tasks.datasets.imagenet import WNIDS
from tasks.spec import DataRequest

SIZE = (375, 500)  # (H, W): a typical ImageNet photo


def write_jpegs(root: Path, n: int, classes: int = 20, seed: int = 0) -> None:
    """``n`` JPEGs in ``imagenet/train/<wnid>/<wnid>_<k>.JPEG``: low-frequency colour fields plus
    mild noise, so the files compress (and decode) like photographs, not like white noise."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        wnid = WNIDS[i % classes]
        coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((SIZE[1], SIZE[0]), Image.BICUBIC)
        arr = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, size=(*SIZE, 3))
        path = root / "imagenet" / "train" / wnid / f"{wnid}_{i}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def write_empty_tree(root: Path, folders: int, files: int) -> None:
    for wnid in WNIDS[:folders]:
        d = root / "imagenet" / "train" / wnid
        d.mkdir(parents=True)
        for k in range(files):
            (d / f"{wnid}_{k}.JPEG").touch()


def train_split(root: Path, resolution: int | None = None):
    task = get_task("imagenet_cls")
    return task.dataset(task, DataRequest(split="train", data_root=root, resolution=resolution, limit=None,
                                          train=False))


def time_listing(root: Path, repeats: int = 3) -> dict:
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    ours, tv, n = [], [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = len(train_split(root))
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        folder = root / "imagenet" / "train"
        make_dataset(str(folder), find_classes(str(folder))[1], extensions=IMG_EXTENSIONS)
        tv.append(time.perf_counter() - t0)
    best = min(ours)
    return {"files": n, "ours_s": best, "torchvision_make_dataset_s": min(tv),
            "ours_files_per_s": n / best, "ours_1281167_files_s_extrapolated": 1_281_167 * best / n}


def time_pil(paths: list[str]) -> float:
    t0 = time.perf_counter()
    for p in paths:
        with Image.open(p) as img:
            img.convert("RGB").resize((224, 224), Image.BILINEAR)
    return len(paths) / (time.perf_counter() - t0)


def time_loader(ds, workers: int, batch_size: int = 64) -> float:
    dl = loader(ds, batch_size, torch.device("cpu"), workers)
    t0 = time.perf_counter()
    n = sum(len(b["target"]) for b in dl)
    return n / (time.perf_counter() - t0)


def time_encode(encoder, ds, workers: int, batch_size: int) -> tuple[float, float]:
    """(images/s through our loader + encoder, images/s of the encoder alone on decoded tensors)."""
    taps = (encoder.taps[-1],) if isinstance(encoder.taps, (list, tuple)) else (next(iter(encoder.taps)),)
    settings = EncodeSettings(device=torch.device("cpu"), batch_size=batch_size, num_workers=workers)
    with torch.no_grad():
        for _ in encode_batches(encoder, Subset(ds, range(min(batch_size, len(ds)))), taps, settings):
            pass  # warm-up
        t0 = time.perf_counter()
        n = sum(len(t) for _, t, _ in encode_batches(encoder, ds, taps, settings))
        with_loader = n / (time.perf_counter() - t0)
        decoded = [torch.stack([ds[j]["image"] for j in range(i, min(i + batch_size, len(ds)))])
                   for i in range(0, len(ds), batch_size)]
        t0 = time.perf_counter()
        for x in decoded:
            encoder(x.contiguous(memory_format=torch.channels_last), taps)
        alone = len(ds) / (time.perf_counter() - t0)
    return with_loader, alone


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--encode-images", type=int, default=256)
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--list-folders", type=int, default=1000)
    ap.add_argument("--list-files", type=int, default=100)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/loader_throughput.json"))
    args = ap.parse_args()

    results: dict = {"machine": {"cpus": len(os.sched_getaffinity(0)), "load_avg_start": os.getloadavg(),
                                 "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                                 "torch": torch.__version__},
                     "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "list"
        write_empty_tree(root, args.list_folders, args.list_files)
        results["listing"] = time_listing(root)
        print("listing:", json.dumps(results["listing"]))

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        write_jpegs(root, args.images)
        ds = train_split(root)
        sizes = [os.path.getsize(p) for p in ds.paths]
        workers = default_workers(ds)
        results["decode"] = {
            "images": len(ds), "source_size_hw": list(SIZE), "mean_jpeg_kb": float(np.mean(sizes) / 1024),
            "write_s": time.perf_counter() - t0, "default_workers": workers,
            "pil_loop_images_per_s": time_pil(ds.paths),
            "ours_0_workers_images_per_s": time_loader(ds, 0, args.batch_size),
            "ours_default_workers_images_per_s": time_loader(ds, workers, args.batch_size),
        }
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the batch collation (torch.stack) without torch's intra-op pool
        results["decode"]["ours_0_workers_1_torch_thread_images_per_s"] = time_loader(ds, 0, args.batch_size)
        torch.set_num_threads(threads)
        d = results["decode"]
        d["ours_0_workers_vs_pil"] = d["ours_0_workers_images_per_s"] / d["pil_loop_images_per_s"]
        d["ours_default_workers_vs_pil"] = d["ours_default_workers_images_per_s"] / d["pil_loop_images_per_s"]
        print("decode:", json.dumps(d))

        encoder = create_encoder(args.encoder).eval()
        sub = Subset(ds, range(min(args.encode_images, len(ds))))
        with_loader, alone = time_encode(encoder, sub, workers, args.batch_size)
        results["encode"] = {"encoder": args.encoder, "images": len(sub), "resolution": 224, "workers": workers,
                             "with_loader_images_per_s": with_loader, "encoder_alone_images_per_s": alone,
                             "efficiency": with_loader / alone}
        print("encode:", json.dumps(results["encode"]))
    results["machine"]["load_avg_end"] = os.getloadavg()
    write_json(args.out, results)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
