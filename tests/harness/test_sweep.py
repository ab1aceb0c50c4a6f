"""`harness sweep` through real subprocesses (local executor) and as far as SLURM goes without a
cluster: the executor's parameters and the sbatch script it submits."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from harness.sweep import SweepOptions, run_job, slurm_executor

ROOT = Path(__file__).resolve().parents[2]
TINY = ("--limit", "48", "--epochs", "1", "--grid", "single", "--device", "cpu")


def harness(*args, env=None):
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, env=full,
                          cwd=ROOT, timeout=900)


def sweep(out, *args, cache):
    env = {"HARNESS_CACHE": str(cache), "HARNESS_QUIET": ""}
    return harness("sweep", *args, *TINY, "--out", str(out), "--json", env=env)


def test_local_sweep_runs_every_job_once_and_a_rerun_submits_nothing(tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ("--encoder", "resnet18", "--encoder", "resnet34", "--task", "synth_count", "--task", "synth_num_steps",
            "--max-parallel", "2")
    proc = sweep(out, *args, cache=cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["counts"] == {"done": 4, "skipped": 0, "failed": 0}
    records = sorted(out.glob("*.json"))
    assert len(records) == 4
    pairs = {(json.loads(p.read_text())["encoder"], json.loads(p.read_text())["task"]) for p in records}
    assert pairs == {(e, t) for e in ("resnet18", "resnet34") for t in ("synth_count", "synth_num_steps")}
    # the records are the ones eval writes: same run key, so eval itself finds them
    again = harness("eval", "--encoder", "resnet18", "--task", "synth_count", *TINY, "--out", str(out), "--json",
                    env={"HARNESS_CACHE": str(cache)})
    assert json.loads(again.stdout).get("skipped") is True
    rerun = sweep(out, *args, cache=cache)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    doc2 = json.loads(rerun.stdout)
    assert doc2["counts"] == {"done": 0, "skipped": 4, "failed": 0}
    assert all(j["attempts"] == 0 for j in doc2["jobs"])  # nothing submitted
    assert not [p for p in Path(doc2["logs"]).rglob("*") if p.is_file()]
    report = harness("report", str(out), "--out", str(tmp_path / "rep"), "--json")
    assert report.returncode == 0, report.stderr
    assert len(json.loads(report.stdout)["other_settings"]) == 4  # short runs: listed, not ranked


def test_a_failing_job_is_retried_then_reported_while_the_others_finish(tmp_path):
    out = tmp_path / "out"
    # NYU depth's data is not under the (empty) data root: every nyu_depth job fails at run time.
    empty = tmp_path / "no-data"
    empty.mkdir()
    proc = sweep(out, "--encoder", "resnet18", "--task", "synth_count", "--task", "nyu_depth", "--retries", "1",
                 "--data-root", str(empty), cache=tmp_path / "cache")
    assert proc.returncode == 1, proc.stderr[-3000:]
    jobs = {j["task"]: j for j in json.loads(proc.stdout)["jobs"]}
    assert jobs["synth_count"]["status"] == "done" and jobs["synth_count"]["attempts"] == 1
    bad = jobs["nyu_depth"]
    assert bad["status"] == "failed" and bad["attempts"] == 2 and "dataset not found" in bad["error"]
    assert "retrying" in proc.stderr


def test_dry_run_gives_the_job_count_and_an_estimate(tmp_path):
    out = tmp_path / "out"
    proc = sweep(out, "--encoder", "resnet18", "--task", "synth_count", "--task", "synth_seg", "--seeds", "3",
                 "--dry-run", cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    e = doc["estimate"]
    assert e["jobs"] == 6 and e["to_run"] == 6 and e["existing"] == 0
    assert e["throughput"]["resnet18@64px"] > 0 and "measured now" in e["how"]
    # synth_count: min(48, 2000) train + 500 val + 500 test; synth_seg: 48 + 100 + 500; seeds share the encode
    expected_h = ((48 + 1000) + (48 + 600)) / e["throughput"]["resnet18@64px"] / 3600
    assert abs(e["encode_hours"] - expected_h) / expected_h < 0.01
    assert e["encode_hours_without_sharing"] > 2.9 * e["encode_hours"]
    assert not out.exists() or not list(out.glob("*.json"))


def test_bad_passthrough_options_are_usage_errors(tmp_path):
    proc = harness("sweep", "--encoder", "resnet18", "--task", "synth_count", "--epochs", "zero", "--dry-run")
    assert proc.returncode == 2 and "--epochs" in proc.stderr
    proc = harness("sweep", "--encoder", "resnet18", "--task", "synth_count", "--no-such-thing", "--dry-run")
    assert proc.returncode == 2 and "--no-such-thing" in proc.stderr


def test_slurm_without_a_cluster_is_one_clear_line(tmp_path):
    proc = harness("sweep", "--encoder", "resnet18", "--task", "synth_count", "--executor", "slurm", *TINY,
                   "--out", str(tmp_path / "out"), env={"PATH": "/usr/bin:/bin", "HARNESS_CACHE": str(tmp_path)})
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1 and "sbatch" in errors[0], proc.stderr[-2000:]


def test_run_job_reports_exit_status_and_error_line(tmp_path):
    res = run_job(["eval", "--encoder", "nope", "--task", "synth_count"], {"HARNESS_CACHE": str(tmp_path)})
    assert res["rc"] == 2 and res["error"].startswith("error: unknown encoder 'nope'")


def test_slurm_array_parameters_and_sbatch_script(tmp_path, monkeypatch):
    # Submit for real up to sbatch: a fake sbatch on PATH keeps the script and answers with a job id
    # (and a fake srun, which submitit looks for to decide it is on a cluster).
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, body in (("sbatch", f"cp \"$1\" {tmp_path}/submitted.sh\necho 'Submitted batch job 4242'"),
                       ("srun", "exit 0")):
        fake = bindir / name
        fake.write_text(f"#!/bin/sh\n{body}\n")
        fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    opts = SweepOptions(encoders=["a"], tasks=["t"], out=tmp_path, max_parallel=3, gpus_per_job=2, executor="slurm",
                        slurm_partition="gpu", slurm_time=90, slurm_mem=64, slurm_cpus=8, slurm_account="lab")
    executor = slurm_executor(opts, tmp_path / "logs", n_jobs=10)
    params = executor._executor.parameters
    assert params["partition"] == "gpu" and params["time"] == 90 and params["mem"] == "64GB"
    assert params["gpus_per_node"] == 2 and params["cpus_per_task"] == 8 and params["account"] == "lab"
    assert params["array_parallelism"] == 3
    jobs = executor.map_array(run_job, [["eval"]] * 10, [{}] * 10)
    assert len(jobs) == 10 and jobs[0].job_id.startswith("4242")
    script = (tmp_path / "submitted.sh").read_text()
    assert "#SBATCH --array=0-9%3" in script
    assert "#SBATCH --partition=gpu" in script and "#SBATCH --time=90" in script and "#SBATCH --mem=64GB" in script
    assert "#SBATCH --gpus-per-node=2" in script and "#SBATCH --account=lab" in script
