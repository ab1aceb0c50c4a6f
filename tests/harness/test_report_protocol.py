"""`harness report` never swaps a reduced-budget run in for the default protocol, and never joins runs of
different settings on one curve: a real record of a short run (`--limit`, `--epochs`, `--grid single`) and
the same record rewritten as the full run it stands for, read through the CLI as a user runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tasks.registry import get_task

ROOT = Path(__file__).resolve().parents[2]
TASK = "synth_shape_cls"
OLD, NEW = "2026-01-01T00:00:00+00:00", "2026-01-02T00:00:00+00:00"


def harness(tmp_path, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HARNESS_CACHE": str(tmp_path / "cache"), "COLUMNS": "80"}
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)


@pytest.fixture(scope="module")
def short_record(tmp_path_factory):
    """One real record of a short run, as eval writes it."""
    tmp = tmp_path_factory.mktemp("short")
    out = tmp / "out"
    proc = harness(tmp, "eval", "--encoder", "resnet18", "--task", TASK, "--limit", "64", "--epochs", "1", "--grid",
                   "single", "--resolution", "32", "--device", "cpu", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = out.glob("*.json")
    return json.loads(path.read_text())


def variant(rec, name, score, created, n_train, *, full=False, fraction=None, encoder=None):
    """``rec`` rewritten: the full run's key (the task's epochs and grid, no limit) when ``full``, a label
    fraction's fields when ``fraction``; everything else as eval wrote it."""
    rec = json.loads(json.dumps(rec))
    rec.update(test=score, created=created, n={**rec["n"], "train": n_train})
    if encoder:
        rec["encoder"] = encoder
    if full:
        rec["run_key"].update(epochs=get_task(TASK).epochs, limit=None, grid="full", resolution=None)
        rec["epochs"] = get_task(TASK).epochs
    if fraction is not None:
        of = rec["n"]["train"] if fraction == 1 else round(n_train / fraction)
        rec["subset"] = {"kind": "fraction", "value": fraction, "seed": 0, "fraction": n_train / of,
                         "train": {"n": n_train, "of": of, "hash": "x"}}
        rec["run_key"]["subset"] = {"kind": "fraction", "value": fraction}
    return name, rec


def test_report_ranks_by_the_full_run_and_lists_the_short_one(tmp_path, short_record):
    results = tmp_path / "results"
    results.mkdir()
    records = [
        variant(short_record, "full", 0.348, OLD, 2000, full=True),  # the full run: older
        variant(short_record, "short", 0.274, NEW, 64),  # the short run: newer, and worse
        variant(short_record, "full_frac", 0.288, OLD, 199, full=True, fraction=0.1),
        variant(short_record, "short_frac", 0.254, NEW, 26, fraction=0.4),
        variant(short_record, "only_short", 0.5, NEW, 64, encoder="resnet34"),  # no full run at all
    ]
    for name, rec in records:
        (results / f"{name}.json").write_text(json.dumps(rec))
    short = "--limit 64, --epochs 1 (task: 30), --grid single, --resolution 32 (task: 64)"

    proc = harness(tmp_path, "report", str(results))
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if "resnet18" in line)
    assert "0.348" in row and "0.274" not in row  # ranked by the full run, not the newer short one
    assert "resnet34" not in proc.stdout.split("score (rank")[0]  # only short runs: not in the paper's table
    note = next(line for line in proc.stdout.splitlines() if "other run settings" in line)
    assert f"resnet18/{TASK} ({short})" in note and f"no default-protocol result for resnet34/{TASK}" in note
    assert "newest" not in note

    doc = json.loads((results / "report" / "report.json").read_text())
    assert doc["records"]["used"] == 1 and doc["records"]["other_settings"] == 3
    other = pd.DataFrame(doc["other_settings"])
    assert sorted(zip(other["encoder"], other["variant"], other["score"], strict=True)) == [
        ("resnet18", "head", 0.274), ("resnet18", "head, fraction 0.4", 0.254), ("resnet34", "head", 0.5)]
    assert set(other["settings"]) == {short}
    assert "Results of other run settings" in (results / "report" / "report.md").read_text()

    # the fraction curve: each curve joins only the results of its own settings
    curves = pd.DataFrame(doc["analyses"]["fraction_curve"]["tables"]["fractions"])
    full = curves[(curves["encoder"] == "resnet18") & (curves["settings"] == "default")]
    assert full["n_train"].tolist() == [199, 2000] and full["score"].tolist() == [0.288, 0.348]
    part = curves[(curves["encoder"] == "resnet18") & (curves["settings"] == short)]
    assert part["n_train"].tolist() == [26, 64] and part["score"].tolist() == [0.254, 0.274]


def test_only_short_runs_skip_the_papers_views_and_say_why(tmp_path, short_record):
    results = tmp_path / "results"
    results.mkdir()
    (results / "short.json").write_text(json.dumps(short_record))
    proc = harness(tmp_path, "report", str(results), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    ranks = doc["analyses"]["ranks"]
    assert ranks["status"] == "skipped" and "no results of the default protocol" in ranks["reason"]
    assert "--limit" in ranks["reason"] and "report.md" in ranks["reason"]
    assert [r["settings"] for r in doc["other_settings"]] == [
        "--limit 64, --epochs 1 (task: 30), --grid single, --resolution 32 (task: 64)"]
