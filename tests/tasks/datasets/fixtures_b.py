"""Shared by the Pets, CLEVR, THOR, nuScenes and Kinetics fixture tests: the failure checks every
real task gets (a deleted file is a problem naming it in ``data check`` and one ``error:`` line in
``eval``) and one ``harness tasks --json`` listing per test session."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from tasks.registry import get_task
from tasks.spec import DataRequest

from .util import data_check, harness


def check_fails_naming(task: str, root: Path, needle: str) -> dict:
    """``data check`` exits 1, not ok, with a problem that contains ``needle`` (a path or a stem)."""
    rc, doc, err = data_check(task, root)
    assert rc == 1 and doc and not doc["ok"], (rc, err[-2000:])
    assert any(needle in p for p in doc["problems"]), doc["problems"]
    return doc


def eval_fails_naming(task: str, root: Path, out: Path, needle: str) -> str:
    """``eval`` exits 1 with exactly one ``error:`` line, naming ``needle``, and no traceback."""
    proc = harness("eval", "--encoder", "resnet18", "--task", task, "--data-root", str(root), "--out", str(out),
                   "--resolution", "32", "--epochs", "1", "--grid", "single", "--device", "cpu")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], proc.stderr[-3000:]
    return lines[0]


def fails_naming(task: str, root: Path, needle: str) -> dict:
    """A broken fixture fails ``data check`` and ``eval`` alike, each naming ``needle``; the check document."""
    doc = check_fails_naming(task, root, needle)
    eval_fails_naming(task, root, root / "eval-out", needle)
    return doc


@functools.lru_cache(maxsize=1)
def _tasks_json() -> str:
    proc = harness("tasks", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def listed_tasks() -> dict[str, dict]:
    """``harness tasks --json`` by task name (one subprocess per test session)."""
    return {t["name"]: t for t in json.loads(_tasks_json())}


def assert_listed(expected: dict[str, tuple[str, str, str, int, int]]) -> None:
    """Each task as Tables 1-2 give it: (category, head, metric, epochs, frames)."""
    tasks = listed_tasks()
    for name, (category, head, metric, epochs, frames) in expected.items():
        t = tasks[name]
        assert (t["category"], t["head"], t["metric"], t["epochs"], t["frames"]) == (
            category, head, metric, epochs, frames), t
        assert t["suite"] == "paper" and t["data"] != "built-in", t


def write_grey(path: Path, arr, mode: str = "L") -> Path:
    """A single-channel image (a trimap, a depth map) with exactly these values (PNG) or near them (JPEG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kw = {"quality": 100, "subsampling": 0} if path.suffix.lower() in (".jpg", ".jpeg") else {}
    Image.fromarray(arr, mode).save(path, **kw)
    return path


def size_mismatch(path: Path, size: tuple[int, int], reference: str, ref_size: tuple[int, int]) -> str:
    """The line ``data check`` and the loader give for a file of ``size`` (W, H) that must match ``reference`` (a
    file name) of ``ref_size``."""
    return (f"{path}: {size[0]} x {size[1]} (W x H), but {reference}, which it must match, is {ref_size[0]} x "
            f"{ref_size[1]}; the files do not belong together (or one was resized)")


def check_and_decode_refuse(task_name: str, root: Path, split: str, problem: str, index: Callable[[object], int]):
    """``data check`` fails with exactly ``problem``, and decoding the sample ``index(dataset)`` raises the same
    line (issue 39: check says what eval would refuse); the dataset."""
    rc, doc, _ = data_check(task_name, root)
    assert rc == 1 and doc["problems"] == [problem]
    task = get_task(task_name)
    ds = task.dataset(task, DataRequest(split, root, None, None, train=False))
    with pytest.raises(Exception, match=re.escape(problem)):
        ds.decode(index(ds))
    return ds


def deleted_is_named(task_name: str, root: Path, gone: Path, split: str, train: bool = False):
    """A deleted file: the lenient loader lists it as missing and ``eval`` fails naming it; the lenient dataset."""
    gone.unlink()
    task = get_task(task_name)
    ds = task.dataset(task, DataRequest(split, root, None, None, train=train, strict=False))
    assert any(p.startswith(str(gone)) and "missing" in p for p in ds.problems)
    eval_fails_naming(task_name, root, root / "out", str(gone))
    return ds


def deleted_fails_naming(task_name: str, root: Path, gone: Path) -> dict:
    """A deleted file fails ``data check`` and ``eval`` alike, each naming it; the check document."""
    gone.unlink()
    return fails_naming(task_name, root, str(gone))
