"""What a script sees from `harness`: exit codes and stderr lines, through a real subprocess."""

import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path, **extra: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HARNESS_CACHE": str(tmp_path / "cache"), **extra}


def harness(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True,
                          env=_env(tmp_path, **env), cwd=tmp_path, timeout=600)


def test_unknown_option_is_a_usage_error_with_the_parsers_message(tmp_path):
    proc = harness(tmp_path, "eval", "--encoder", "resnet18", "--task", "synth_count", "--no-such-option", "bf16")
    assert proc.returncode == 2, proc.stderr
    assert "No such option" in proc.stderr and "--no-such-option" in proc.stderr
    assert "Traceback" not in proc.stderr and "NoSuchOption" not in proc.stderr


def test_missing_required_option_is_a_usage_error(tmp_path):
    proc = harness(tmp_path, "eval", "--task", "synth_count")
    assert proc.returncode == 2, proc.stderr
    assert "Missing option" in proc.stderr and "--encoder" in proc.stderr
    assert "MissingParameter" not in proc.stderr


def test_an_eval_with_a_failed_task_exits_1_and_prints_the_whole_error(tmp_path):
    # NYU depth's data is not under the (empty) data root, so that task fails; the synthetic one runs.
    out, empty = tmp_path / "out", tmp_path / "no-data"
    empty.mkdir()
    proc = harness(tmp_path, "eval", "--encoder", "resnet18", "--task", "synth_count", "--task", "nyu_depth",
                   "--data-root", str(empty), "--limit", "40", "--epochs", "1", "--grid", "single", "--device", "cpu",
                   "--out", str(out))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failure = next(line for line in proc.stdout.splitlines() if line.startswith("FAILED resnet18 / nyu_depth"))
    assert "dataset not found" in failure and "harness data layout nyu_depth" in failure  # the full line
    ok = [p for p in out.glob("*.json") if "synth_count" in p.name]
    assert len(ok) == 1


def _default_sigint() -> None:
    # A background shell job (and so maybe this test run) ignores SIGINT, and a child inherits that;
    # the child must get the default disposition or the test would pass for the wrong reason.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_interrupt_exits_130_with_one_line_and_no_record(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "harness", "eval", "--encoder", "resnet18", "--task",
                             "synth_depth", "--epochs", "1", "--grid", "single", "--device", "cpu", "--out",
                             str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(tmp_path), cwd=tmp_path, preexec_fn=_default_sigint)
    features = tmp_path / "cache" / "features"
    deadline = time.monotonic() + 300
    while not features.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # wait until the eval is encoding: past start-up, mid-work
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0], stderr
    assert "Traceback" not in stderr
    assert not list(out.glob("*.json")) if out.exists() else True
    assert not [p for p in features.rglob("*") if p.is_file() and p.name.endswith(".h5")]  # no entry published


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_interrupt_swallowed_by_a_weakref_callback_is_raised_at_the_next_check(monkeypatch):
    # a SIGINT that lands while the garbage collector runs a weakref callback raises there, where Python prints
    # "Exception ignored" and drops it (one CI run went on to write its record and exit 0); the handler remembers it
    from harness.common import interrupt

    monkeypatch.setattr(interrupt, "_pending", False)
    interrupt.check()  # nothing pending: no raise

    class Thing:
        pass

    thing = Thing()
    ref = weakref.ref(thing, lambda _: interrupt.handler(signal.SIGINT, None))
    del thing  # the callback runs here and its KeyboardInterrupt goes nowhere
    assert ref() is None
    with pytest.raises(KeyboardInterrupt):
        interrupt.check()
