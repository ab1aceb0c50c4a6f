"""What a user sees from `harness data check` and `harness eval` when the data is wrong or small (issue 39,
items 4 and 5), through a real subprocess: each problem printed once, the task named once, and `--json`
printing exactly one document on stdout whatever fails. The tiny-split cases (item 1) and the size and
label-value checks (items 2 and 3) are with each dataset's tests in tests/tasks/datasets/."""

from __future__ import annotations

import json
from pathlib import Path

from ..tasks.datasets.fixtures_a import write_caltech
from ..tasks.datasets.util import harness


def errors(stderr: str) -> list[str]:
    return [x for x in stderr.splitlines() if x.startswith("error:")]


def broken_caltech(root: Path) -> Path:
    """Caltech with release-wide problems (a stray file, a gap in a class's numbering), which the loader
    finds again for each split it lists, and a class too small for the paper's split."""
    base = write_caltech(root, {"Faces": 31, "yin_yang": 31, "Leopards": 31})
    (base / "Faces" / "image_0005.jpg").unlink()
    (base / "yin_yang" / "notes.jpg").write_bytes(b"")
    return base


def test_check_lists_each_problem_once_and_counts_them_once(tmp_path):
    base = broken_caltech(tmp_path)
    proc = harness("data", "check", "--task", "caltech_cls", "--data-root", str(tmp_path), "--json")
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    problems = doc["problems"]
    assert len(problems) == len(set(problems)) == doc["n_problems"] == 3, problems
    assert sorted(p.split(": ")[0] for p in problems) == sorted(
        [str(base / "Faces" / "image_0005.jpg"), str(base / "Faces"), str(base / "yin_yang" / "notes.jpg")])
    # the one human line (stdout is the document) names the first problem and counts the others right
    assert errors(proc.stderr) == [f"error: task caltech_cls: {problems[0]} (and 2 more)"]


def test_check_without_json_prints_each_problem_once(tmp_path):
    broken_caltech(tmp_path)
    doc = json.loads(harness("data", "check", "--task", "caltech_cls", "--data-root", str(tmp_path), "--json").stdout)
    proc = harness("data", "check", "--task", "caltech_cls", "--data-root", str(tmp_path))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    everything = proc.stdout + proc.stderr
    for p in doc["problems"]:
        assert everything.count(p) == 1, (p, everything)
        assert f"  problem: {p}" in proc.stdout.splitlines()
    assert errors(proc.stderr) == ["error: task caltech_cls cannot run: 3 problems, listed above; see `harness data "
                                   "layout caltech_cls` for the expected layout"]


def test_a_missing_dataset_names_the_task_once(tmp_path):
    folder = tmp_path / "nyu"
    proc = harness("data", "check", "--task", "nyu_depth", "--data-root", str(tmp_path), "--json")
    assert proc.returncode == 1
    (problem,) = json.loads(proc.stdout)["problems"]
    assert problem.startswith(f"dataset not found: {folder} does not exist") and "harness data layout" in problem
    assert errors(proc.stderr) == [f"error: task nyu_depth: {problem}"]
    plain = harness("data", "check", "--task", "nyu_depth", "--data-root", str(tmp_path))
    assert plain.returncode == 1 and "task nyu_depth: task nyu_depth" not in plain.stdout + plain.stderr
    assert (plain.stdout + plain.stderr).count(problem) == 1


def test_eval_json_prints_one_document_when_a_single_task_fails_early(tmp_path):
    """Issue 39: a single task failing with a one-line error (here: no dataset) printed nothing on stdout and
    wrote no record. Now stdout is one JSON document, the failed record, which is also written."""
    out = tmp_path / "out"
    proc = harness("eval", "--encoder", "resnet18", "--task", "nyu_depth", "--data-root", str(tmp_path), "--out",
                   str(out), "--device", "cpu", "--json")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    rec = json.loads(proc.stdout)  # exactly one document: json.loads refuses trailing text
    assert isinstance(rec, dict) and rec["task"] == "nyu_depth" and rec["status"] == "failed"
    assert rec["error"].startswith(f"task nyu_depth: dataset not found: {tmp_path / 'nyu'} does not exist")
    assert errors(proc.stderr) == [f"error: {rec['error']}"]
    (written,) = out.glob("*.json")
    assert json.loads(written.read_text())["error"] == rec["error"]
    # without --json: the one error line, no table of one failed row, and the problem said once
    plain = harness("eval", "--encoder", "resnet18", "--task", "nyu_depth", "--data-root", str(tmp_path), "--out",
                    str(out), "--device", "cpu")
    assert plain.returncode == 1 and plain.stdout == ""
    assert errors(plain.stderr) == [f"error: {rec['error']}"] and plain.stderr.count("dataset not found") == 1


def test_eval_json_prints_one_document_when_nothing_could_run(tmp_path):
    proc = harness("eval", "--encoder", "resnet181", "--task", "synth_count", "--out", str(tmp_path), "--json")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["status"] == "failed" and doc["task"] == "synth_count" and doc["encoder"] == "resnet181"
    assert errors(proc.stderr) == [f"error: {doc['error']}"] and "resnet18" in doc["error"]
    several = harness("eval", "--encoder", "resnet181", "--task", "synth_count", "--task", "synth_depth", "--out",
                      str(tmp_path), "--json")
    assert several.returncode == 2
    assert [(d["task"], d["status"]) for d in json.loads(several.stdout)] == [("synth_count", "failed"),
                                                                              ("synth_depth", "failed")]
