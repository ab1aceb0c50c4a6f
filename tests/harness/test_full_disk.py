"""A full disk is one clear line and exit 1, never a crashed process (SIGSEGV inside HDF5).

No root needed: the eval runs in a subprocess whose file size limit (RLIMIT_FSIZE) is low, with
SIGXFSZ ignored, so writes past the limit fail with EFBIG as on a full disk.
"""

import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARGS = ("eval", "--encoder", "resnet18", "--task", "synth_count", "--limit", "100", "--epochs", "1", "--grid",
        "single", "--device", "cpu")


def run(cache: Path, out: Path, limit: int | None) -> subprocess.CompletedProcess:
    def pre():
        if limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "HARNESS_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "harness", *ARGS, "--out", str(out)], env=env, preexec_fn=pre,
                          capture_output=True, text=True, timeout=600)


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_space_is_checked_before_writing(tmp_path):
    proc = run(tmp_path / "cache", tmp_path / "out", limit=1_000_000)
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "synthetic" in errors[0] and str(tmp_path / "cache") in errors[0] and "MiB" in errors[0]
    assert "Traceback" not in proc.stderr and "RuntimeError" not in proc.stderr
    assert not leftovers(tmp_path)


def test_a_write_that_fails_anyway_is_cleaned_up_and_reported(tmp_path):
    warm = run(tmp_path / "warm", tmp_path / "out0", limit=None)  # renders (and entries) made without a limit
    assert warm.returncode == 0, warm.stderr[-2000:]
    cache = tmp_path / "cache"
    shutil.copytree(tmp_path / "warm" / "synthetic", cache / "synthetic")  # renders only: features must be written
    # The train entry holds 100 x (512 fp16 + int64 target) = 103,200 bytes of data: the space check passes,
    # and HDF5's own metadata then pushes the file past the limit mid-write.
    proc = run(cache, tmp_path / "out", limit=103_200 + 1)
    assert proc.returncode == 1, proc.stderr[-2000:]  # not -11 (SIGSEGV), not 0
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "could not write the feature cache entry for synth_count/train" in errors[0], \
        proc.stderr
    assert "File too large" in errors[0] and str(cache / "features") in errors[0]
    assert "Traceback" not in proc.stderr
    assert not leftovers(cache) and not list((cache / "features").rglob("*.h5"))
