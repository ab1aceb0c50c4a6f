"""benchmarks/gpu_check.py as a user runs it (no GPU here: it says so and exits 0; the same code, tiny, on
the CPU), and the sweep dry run's node estimate from its JSON, against a hand computation."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from encoders import create_encoder
from tasks.registry import get_task

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _run(tmp_path: Path, *args: str, env: dict | None = None, module: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "harness", *args] if module else [sys.executable, str(SCRIPT), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "HARNESS_CACHE": str(tmp_path / "cache"),
                               "CUDA_VISIBLE_DEVICES": "", **(env or {})})


def test_without_a_gpu_it_says_so_and_exits_0(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = _run(tmp_path, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("gpu_check: no GPU here (CUDA is not available)"), proc.stdout
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_every_section_runs_on_the_cpu_small(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = _run(tmp_path, "--allow-cpu", "--tiny", "--device", "cpu", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    sections = doc["sections"]
    assert set(sections) == {"encode", "decode", "dense", "pretrain", "grid"}
    assert not [k for k, v in sections.items() if "error" in v], {k: v.get("traceback") for k, v in sections.items()}
    assert doc["device_type"] == "cpu" and doc["tiny"] is True
    enc = sections["encode"]
    assert math.isclose(enc["encode_efficiency"], enc["bare_s"] / enc["harness_s"])
    dec = sections["decode"]
    assert dec["device_decoder"] == "works"  # decode_jpeg on CPU tensors
    assert dec["pixel_difference_levels"]["max"] <= 1.0 + 1e-3  # the tolerance of tests/harness/test_decode.py
    assert set(sections["dense"]["heads"]) == {"unet", "siamese_unet", "deeplabv3plus"}
    assert sections["pretrain"]["ratio"] > 0 and sections["grid"]["grid_ratio"] > 0
    assert "encode efficiency" in proc.stdout and "grid ratio" in proc.stdout


def _measurement(path: Path) -> dict:
    doc = {"device": "Test GPU", "device_type": "cuda", "tiny": False, "created": "2026-01-02T00:00:00+00:00",
           "sections": {
               "encode": {"encoder": "resnet50", "resolution": 224, "images_per_s": 1000.0, "flops": 4.0e9},
               "decode": {"device_decoder": "works", "device": {"decode_images_per_s": 2000.0},
                          "cpu": {"decode_images_per_s": 800.0}},
               "dense": {"batch": 16, "resolution": 256, "heads": {"unet": {"fp32_ms": 40.0, "bf16_ms": 20.0}}},
               "grid": {"grid_s_per_sample_epoch": 1e-5}}}
    path.write_text(json.dumps(doc))
    return doc


def test_sweep_dry_run_estimates_node_hours_from_the_measurement(tmp_path):
    measured = tmp_path / "gpu_check.json"
    doc = _measurement(measured)
    args = ("sweep", "--encoder", "resnet18", "--encoder", "squeezenet1_1", "--task", "synth_count", "--task",
            "synth_depth", "--seeds", "2",
            "--dry-run", "--json", "--device", "cpu", "--out", str(tmp_path / "out"))
    proc = _run(tmp_path, *args, env={"HARNESS_GPU_CHECK": str(measured)}, module=True)
    assert proc.returncode == 0, proc.stderr
    node = json.loads(proc.stdout)["estimate"]["node"]
    # By hand, per task: every split once per encoder (the seeds share features), decoded once for both
    # encoders; forwards at the measured 1000 img/s scaled by FLOPs; for each of the 2 x 2 jobs, the stacked
    # grid's time per sample and epoch (linear head), or the U-Net's bf16 step per sample of its batch of 16,
    # scaled from 256 px to the task's pixels, for every configuration of the grid.
    seconds = 0.0
    for name in ("synth_count", "synth_depth"):
        task = get_task(name)
        sizes = task.split_sizes()
        copies = task.aug_copies if task.train_transform.random else 1
        images = sum(n * (copies if split == task.splits.train else 1) for split, n in sizes.items()) * task.frames
        res = task.default_resolution
        seconds += images / 2000.0 + sum(images / (1000.0 * 4.0e9 / create_encoder(n).cost(res)["flops"])
                                         for n in ("resnet18", "squeezenet1_1"))
        n_train = sizes[task.splits.train]
        if task.head == "unet":
            seconds += 4 * n_train * task.epochs * len(task.grid) * 0.020 / 16 * (res / 256) ** 2
        else:
            assert task.head == "linear"
            seconds += 4 * n_train * task.epochs * 1e-5
    assert node["measured"] is True and node["device"] == doc["device"]
    assert math.isclose(node["hours"], seconds / 3600 / 8, rel_tol=1e-3)
    assert node["line"].startswith("estimate on one 8-GPU node (Test GPU, measured 2026-01-02")
    text = _run(tmp_path, *[a for a in args if a != "--json"], env={"HARNESS_GPU_CHECK": str(measured)}, module=True)
    assert node["line"] in text.stdout

    missing = _run(tmp_path, *args, env={"HARNESS_GPU_CHECK": str(tmp_path / "absent.json")}, module=True)
    node = json.loads(missing.stdout)["estimate"]["node"]
    assert node["measured"] is False and node["line"].startswith("no GPU measurement yet: run benchmarks/gpu_check.py")
