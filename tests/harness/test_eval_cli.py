"""`harness eval` end to end through the CLI: the record's fields and types, errors and exit codes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from encoders import create_encoder
from harness.runner import EvalOptions, run_eval
from tasks import get_task

ROOT = Path(__file__).resolve().parents[2]


def harness(*args, env_extra=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    proc = harness("eval", "--encoder", "resnet18", "--task", "synth_count", "--limit", "120", "--epochs", "2",
                   "--device", "cpu", "--out", str(out), "--json",
                   env_extra={"HARNESS_CACHE": str(tmp_path_factory.getbasetemp() / "harness-cache")})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), out


def test_record_fields_and_types(record):
    rec, out = record
    types = {"encoder": str, "task": str, "metric": str, "test": float, "val": float, "config": dict,
             "epoch": int, "seed": int, "head_params": int, "resolution": int, "timings": dict, "cache": dict,
             "versions": dict}
    for key, typ in types.items():
        assert isinstance(rec[key], typ), (key, rec[key])
    assert rec["task"] == "synth_count" and rec["metric"] == "top1" and rec["encoder"] == "resnet18"
    assert 0.0 <= rec["test"] <= 1.0 and 1 <= rec["epoch"] <= 2
    assert rec["head_params"] == 513 * 6  # Linear(512, 6) on ResNet-18's embedding
    assert set(rec["timings"]) >= {"encode_s", "train_s", "total_s"}
    assert set(rec["cache"]) >= {"hits", "misses"}
    assert rec["versions"]["torch"] == torch.__version__
    assert rec["n"]["train"] == 120 and rec["n"]["test"] == 500  # the limit applies to train only
    assert rec["encoder_fingerprint"] == create_encoder("resnet18").fingerprint()
    assert len(rec["grid"]) == len(get_task("synth_count").grid)
    on_disk = json.loads(next(out.glob("*.json")).read_text())
    assert on_disk["test"] == rec["test"]


def test_selected_epoch_is_best_on_val(record):
    rec, _ = record
    chosen = next(g for g in rec["grid"] if g["config"] == rec["config"]["label"])
    vals = [h["val"] for h in chosen["history"]]
    assert chosen["best_val"] == max(vals) and vals[rec["epoch"] - 1] == max(vals)
    assert chosen["best_val"] == max(g["best_val"] for g in rec["grid"])


def test_encoder_unchanged_by_an_eval(tmp_path):
    enc = create_encoder("resnet18")
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    import harness.runner as runner

    opts = EvalOptions(encoder="resnet18", tasks=[get_task("synth_shape_cls")], out=tmp_path, epochs=1, limit=64,
                       device="cpu", grid="single")
    original = runner.create_encoder
    runner.create_encoder = lambda name, seed=0: enc
    try:
        (rec,) = run_eval(opts)
    finally:
        runner.create_encoder = original
    assert rec["status"] == "ok"
    for k, v in enc.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_unknown_task_exits_2_with_close_matches():
    proc = harness("eval", "--encoder", "resnet18", "--task", "synth_cont")
    assert proc.returncode == 2
    assert "synth_count" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_unknown_encoder_exits_2_with_close_matches():
    proc = harness("eval", "--encoder", "resnet181", "--task", "synth_count")
    assert proc.returncode == 2 and "resnet18" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_device_is_one_clear_line():
    proc = harness("eval", "--encoder", "resnet18", "--task", "synth_count", "--device", "tpu9")
    assert proc.returncode == 2 and "--device" in proc.stderr and "Traceback" not in proc.stderr
    if not torch.cuda.is_available():
        proc = harness("eval", "--encoder", "resnet18", "--task", "synth_count", "--device", "cuda")
        assert proc.returncode == 2 and "CUDA is not available" in proc.stderr


def test_tasks_json_shape():
    proc = harness("tasks", "--json")
    assert proc.returncode == 0
    rows = json.loads(proc.stdout)
    names = {r["name"] for r in rows}
    assert {"synth_shape_cls", "synth_count", "synth_num_steps"} <= names
    for r in rows:
        assert r["output"] in ("image", "pixel") and r["nature"] in ("semantic", "structural")
        assert isinstance(r["frames"], int) and isinstance(r["epochs"], int) and r["head"] and r["metric"]


def test_report_reads_a_real_eval_record(record, tmp_path):
    """End to end: `harness report` over eval's own output. The record is a short run (--limit, --epochs):
    listed with its test score and the settings that differ, never ranked as the task's result."""
    rec, out = record
    proc = harness("report", str(out), "--out", str(tmp_path / "rep"), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    (row,) = doc["other_settings"]
    assert row["encoder"] == rec["encoder"] and row["task"] == "synth_count"
    assert row["score"] == pytest.approx(rec["test"]) and row["settings"] == "--limit 120, --epochs 2 (task: 30)"
    assert doc["analyses"]["ranks"]["status"] == "skipped"
    assert "default protocol" in doc["analyses"]["baseline_gain"]["reason"]


def test_table_output_shows_the_record_and_that_it_was_kept(record, tmp_path_factory):
    rec, out = record
    proc = harness("eval", "--encoder", "resnet18", "--task", "synth_count", "--limit", "120", "--epochs", "2",
                   "--device", "cpu", "--out", str(out),
                   env_extra={"HARNESS_CACHE": str(tmp_path_factory.getbasetemp() / "harness-cache")})
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if "synth_count" in line)
    assert f"{rec['test']:.4f}" in row and "top1" in row and "existing record" in row
    assert "--force redoes it" in proc.stdout
