"""Shared by the dataset fixture tests: the CLI through a real subprocess, images on disk, and
the end-to-end checks every real task gets (data check counts and labels, eval record)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[3]


def harness(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, env=full_env,
                          cwd=cwd or ROOT, timeout=600)


def write_image(path: Path, size: tuple[int, int] = (24, 32), seed: int = 0, mode: str = "RGB") -> Path:
    """A random image (H, W) = size in the format the suffix names (JPEG, PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, size=(*size, channels), dtype=np.uint8)
    Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, mode).save(path)
    return path


def data_check(task: str, data_root: Path, *extra: str) -> tuple[int, dict, str]:
    proc = harness("data", "check", "--task", task, "--data-root", str(data_root), "--json", *extra)
    doc = json.loads(proc.stdout) if proc.stdout.strip() else {}
    return proc.returncode, doc, proc.stderr


def check_ok(task: str, data_root: Path, *extra: str) -> dict:
    """``data check --json`` of a complete fixture: exit 0, ok, no problems; the document."""
    rc, doc, err = data_check(task, data_root, *extra)
    assert rc == 0, err[-2000:]
    assert doc["ok"] and doc["problems"] == [], doc.get("problems")
    return doc


def eval_record(task: str, data_root: Path, out: Path, *extra: str, cache: Path | None = None) -> dict:
    """`harness eval` end to end with a small random-init encoder at 32 px, one epoch, one config."""
    env = {"HARNESS_CACHE": str(cache)} if cache else None
    proc = harness("eval", "--encoder", "resnet18", "--task", task, "--data-root", str(data_root), "--out", str(out),
                   "--resolution", "32", "--epochs", "1", "--grid", "single", "--device", "cpu", "--json", *extra,
                   env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    return doc[0] if isinstance(doc, list) else doc


def eval_proc(task: str, data_root: Path, out: Path, *extra: str,
              env: dict | None = None) -> subprocess.CompletedProcess:
    """`harness eval` as a user runs it (tiny settings, see ``eval_record``), the process handed back."""
    return harness("eval", "--encoder", "resnet18", "--task", task, "--data-root", str(data_root), "--out", str(out),
                   "--resolution", "32", "--epochs", "1", "--grid", "single", "--device", "cpu", *extra, env=env)


def assert_tiny_split_runs(task: str, data_root: Path, out: Path, n_train: int) -> dict:
    """A tiny split (issue 39: a handful of samples, one per class) passes ``data check`` and evaluates:
    the carved val and what is left of train are both non-empty and together the whole train split."""
    rc, doc, err = data_check(task, data_root)
    assert rc == 0 and doc["ok"], (err[-2000:], doc.get("problems"))
    rec = eval_record(task, data_root, out)
    assert rec["status"] == "ok", rec.get("error")
    assert rec["n"]["train"] >= 1 and rec["n"]["val"] >= 1 and rec["n"]["train"] + rec["n"]["val"] == n_train
    return rec


def assert_split_too_small(task: str, data_root: Path, out: Path, split: str, n: int) -> str:
    """A train split too small to carve val from: ``data check`` says so beforehand and ``eval`` exits 1 with
    ONE line naming the task, the split and the count (the same problem), no traceback, no IndexError."""
    from tasks.splits import carve_problem

    problem = carve_problem(split, n)
    rc, doc, err = data_check(task, data_root)
    assert rc == 1 and not doc["ok"] and problem in doc["problems"], (err[-2000:], doc.get("problems"))
    proc = eval_proc(task, data_root, out)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "IndexError" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    lines = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and f"task {task}: {problem}" in lines[0], proc.stderr[-3000:]
    return lines[0]
