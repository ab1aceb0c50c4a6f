"""What a user sees in a pipe or a log: full tables, bounded plain logs, where records went."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def harness(*args, env=None, cwd=None):
    full = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80", **(env or {})}
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, env=full,
                          cwd=cwd or ROOT, timeout=600)


def test_tables_in_a_pipe_never_cut_names(tmp_path):
    rows = json.loads(harness("encoders", "--json").stdout)
    table = harness("encoders").stdout
    assert "…" not in table
    for r in rows:
        line = next((x for x in table.splitlines() if f" {r['name']} " in x), None)
        assert line is not None, r["name"]
        assert f" {r['data']} " in line and f" {r['method']} " in line
    tasks = harness("tasks").stdout
    assert "…" not in tasks and "semantic pixelwise" in tasks


def test_a_log_without_a_terminal_is_readable_and_bounded(tmp_path):
    env = {"HARNESS_CACHE": str(tmp_path / "cache"), "HARNESS_QUIET": ""}
    proc = harness("eval", "--encoder", "resnet18", "--task", "synth_count", "--task", "synth_depth", "--limit", "64",
                   "--epochs", "2", "--device", "cpu", "--out", str(tmp_path / "out"), env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    assert 5 <= len(lines) <= 40, proc.stderr
    assert all(line.startswith("[") for line in lines[:-1])  # timestamped log lines, no bar residue
    text = proc.stderr
    assert "task synth_count (1/2)" in text and "task synth_depth (2/2)" in text
    assert "train synth_depth" in text and "epoch 2/2" in text  # training progress: config, epoch, loss, val
    assert "test synth_count: top1" in text
    last = lines[-1]
    assert "2 record(s) written" in last and str(tmp_path / "out") in last and "harness report" in last
