"""benchmarks/pretrain_seeds.py: per-method statistics over seeds, and the runner a user sees through a subprocess
(records per run, a summary that agrees with them, a deadline that stops runs with exit status 1 and a rerun that
finishes them)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "pretrain_seeds.py"


@pytest.fixture
def bench(load_benchmark):
    return load_benchmark("pretrain_seeds")


def _record(method, seed, gains, device="cuda"):
    banks = ((4000, 2000), (8000, 4000))
    checks = [{"bank": b, "queries": q, "gain_points": g} for (b, q), g in zip(banks, gains, strict=True)]
    return {"method": method, "seed": seed, "name": f"{method}_s{seed}", "device": device, "epochs": 10,
            "steps": 310, "train_s": 60.0 * (seed + 1), "gain_points": gains[0] - 1, "checks": checks}


def test_summary_statistics_match_numpy(bench):
    gains = {"swav": [(11.8, 13.2), (10.7, 14.1), (4.9, 7.4)], "byol": [(3.7, 2.6), (2.9, 2.2), (3.5, -0.1)]}
    recs = [_record(m, s, g) for m, gs in gains.items() for s, g in enumerate(gs)]
    recs.append(_record("swav", 1, (6.2, 5.5), device="cpu"))  # a CPU run of a seed the GPU ran too
    summary = bench.summarise(recs[::-1])  # order of the records does not matter
    assert list(summary) == ["swav", "byol"]  # the table's method order
    gains["swav"].append((6.2, 5.5))  # GPU runs first, then CPU
    for m, gs in gains.items():
        for i, key in enumerate(("4000/2000", "8000/4000")):
            g = np.array([x[i] for x in gs], dtype=np.float64)
            c = summary[m]["checks"][key]
            assert c["gains"] == list(g)
            assert c["mean"] == pytest.approx(g.mean(), abs=0.005)
            assert c["sd"] == pytest.approx(g.std(ddof=1), abs=0.005)
            assert c["min"] == g.min() and c["runs_at_bar"] == int((g >= 5).sum())
    assert summary["byol"]["train_min_mean"] == {"GPU": pytest.approx(2.0)}  # 1, 2 and 3 minutes
    assert summary["swav"]["train_min_mean"] == {"GPU": pytest.approx(2.0), "CPU": pytest.approx(2.0)}
    assert [r["where"] for r in summary["swav"]["runs"]] == ["GPU"] * 3 + ["CPU"]
    assert summary["swav"]["checks"]["4000/2000"]["runs_at_bar"] == 3
    table = bench.table(summary, {"GPU": "test gpu"})
    assert "| swav | 3 GPU, 1 CPU | GPU +11.8, +10.7, +4.9; CPU +6.2 (+8.4 ± 3.4; +4.9)" in table
    assert "| byol | 3 GPU | +3.7, +2.9, +3.5 (+3.4 ± 0.4; +2.9)" in table
    assert "| 0 of 3 on 4000/2000 | GPU 2.0 min (test gpu) |" in table
    # a note for one method's CPU runs stays on that method's row
    table = bench.table(summary, {"GPU": "test gpu", "swav CPU": "2-core test cpu"})
    assert "| GPU 2.0 min (test gpu); CPU 2.0 min (2-core test cpu) |" in table.splitlines()[2]
    assert "test cpu" not in table.splitlines()[3]


def _run(tmp_path, *extra, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(SCRIPT), "--method", "simclr", "--seeds", "0,1", "--epochs", "1", "--limit", "128",
           "--checks", "1000,250", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "seeds.json"),
           "--no-readme", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def test_runs_record_each_seed_and_a_deadline_stops_runs_that_a_rerun_finishes(tmp_path):
    stopped = _run(tmp_path, "--parallel", "2", "--deadline-s", "0.5")
    assert stopped.returncode == 1, stopped.stderr
    assert stopped.stdout.count("stopped at the deadline") == 2
    assert "2 run(s) failed or were stopped" in stopped.stderr
    assert not (tmp_path / "seeds.json").exists()

    done = _run(tmp_path, "--parallel", "2")
    assert done.returncode == 0, done.stderr + done.stdout
    doc = json.loads((tmp_path / "seeds.json").read_text())
    runs = {r["seed"]: r for r in doc["runs"]}
    assert set(runs) == {0, 1}
    for r in runs.values():
        # the check uses the monitor's bank and queries (1,000 / 250): it reproduces the monitor's first and last
        (c,) = r["checks"]
        assert c["init"] == pytest.approx(r["knn_curve"][0]["knn"], abs=1e-4)
        assert c["final"] == pytest.approx(r["knn_curve"][-1]["knn"], abs=1e-4)
        assert r["epochs"] == 1 and [h["epoch"] for h in r["knn_curve"]] == [0, 1]
    assert runs[0]["knn_curve"][0] != runs[1]["knn_curve"][0]  # the seed draws another initial network
    s = doc["summary"]["simclr"]["checks"]["1000/250"]
    assert s["gains"] == [runs[0]["checks"][0]["gain_points"], runs[1]["checks"][0]["gain_points"]]

    again = _run(tmp_path)  # finished runs are not trained again
    assert again.returncode == 0 and "seed 0:" not in again.stdout

    # a run recorded from its folder (--add-run, as for `harness pretrain` runs) replaces the record of that run,
    # with the same checks
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    added = subprocess.run([sys.executable, str(SCRIPT), "--add-run", str(tmp_path / "runs" / "simclr_s1"),
                            "--checks", "1000,250", "--out", str(tmp_path / "seeds.json"), "--no-readme",
                            "--load-note", "test"], env=env, capture_output=True, text=True, timeout=300)
    assert added.returncode == 0, added.stderr
    doc2 = json.loads((tmp_path / "seeds.json").read_text())
    assert len(doc2["runs"]) == 2
    rec = next(r for r in doc2["runs"] if r["seed"] == 1)
    assert rec["load_note"] == "test" and rec["checks"] == runs[1]["checks"]
    assert doc2["summary"]["simclr"]["checks"]["1000/250"]["gains"] == s["gains"]


def test_retire_drops_a_changed_recipes_runs_and_prints_their_rows_for_the_log(tmp_path):
    out = tmp_path / "seeds.json"
    recs = [_record("mocov2", s, g) for s, g in enumerate([(5.6, 6.5), (1.9, 4.0)])] + [_record("swav", 0, (9.0, 8.0))]
    out.write_text(json.dumps({"runs": recs, "machine": {}, "run_note": "kept"}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    base = [sys.executable, str(SCRIPT), "--out", str(out), "--no-readme", "--retire", "mocov2"]
    refused = subprocess.run(base, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "--retire-note" in refused.stderr
    assert json.loads(out.read_text())["runs"] == recs  # nothing moved
    done = subprocess.run(base + ["--retire-note", "150-epoch recipe"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    assert list(doc["summary"]) == ["swav"] and [r["name"] for r in doc["runs"]] == ["swav_s0"]
    assert "superseded" not in doc and doc["run_note"] == "kept"  # no current claim rests on the retired runs
    # what they measured, as rows of docs/pretraining-log.md's table (name, method, where, seed, epochs, monitor
    # gain, each check's gain), and why they were retired
    lines = done.stdout.splitlines()
    assert lines[:3] == ["| `mocov2_s0` | mocov2 | GPU | 0 | 10 | +4.6 | +5.6 | +6.5 |",
                         "| `mocov2_s1` | mocov2 | GPU | 1 | 10 | +0.9 | +1.9 | +4.0 |",
                         "retired because: 150-epoch recipe"]
