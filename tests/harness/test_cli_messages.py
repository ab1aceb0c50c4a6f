"""What a user meets around the main commands, through real subprocesses: the modes of written files, help
texts, the sweep's summary, the pretrain log, and a failure that names every missing input at once."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ("--limit", "48", "--epochs", "1", "--grid", "single", "--resolution", "32", "--device", "cpu")


def harness(*args, cwd, umask=None, env=None):
    # the session's cache (conftest: renders made once), this test's own weights folder
    full = {**os.environ, "PYTHONPATH": str(ROOT), "HARNESS_WEIGHTS": str(Path(cwd) / "weights"), "COLUMNS": "200",
            **(env or {})}
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, env=full,
                          cwd=cwd, timeout=900, preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)


def modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_records_reports_and_cka_files_get_the_umasks_mode(tmp_path, umask, mode):
    out = tmp_path / "out"
    proc = harness("eval", "--encoder", "resnet18", "--task", "synth_count", *TINY, "--out", str(out), cwd=tmp_path,
                   umask=umask)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = out.glob("*.json")  # a short run; rewritten as the full run, so that the paper's views draw it
    rec = json.loads(path.read_text())
    rec["run_key"].update(epochs=30, limit=None, grid="full", resolution=None)
    path.write_text(json.dumps(rec))  # the file and its mode stay
    proc = harness("report", str(out), cwd=tmp_path, umask=umask)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = harness("cka", "--encoder", "resnet18", "--limit", "8", "--resolution", "32", "--batch-size", "4", "--tap",
                   "block1", "--tap", "embedding", "--device", "cpu", "--out", str(tmp_path / "cka"), cwd=tmp_path,
                   umask=umask)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = {**modes(out), **modes(tmp_path / "cka")}
    assert any(name.endswith(".json") and "/" not in name for name in written)  # the record
    assert "report/report.json" in written and "report/ranks.png" in written and "cka.json" in written
    assert {name: m for name, m in written.items() if m != mode} == {}


def test_pretrain_says_where_the_run_went_and_what_its_log_means(tmp_path):
    proc = harness("pretrain", "--method", "simclr", "--data", "synth", "--epochs", "1", "--limit", "32",
                   "--batch-size", "16", "--resolution", "32", "--device", "cpu", "--out", str(tmp_path / "runs"),
                   "--name", "tiny", cwd=tmp_path, umask=0o022)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "tiny"
    assert {"manifest.json", "last.pt", "tiny.pt"} <= set(modes(run))
    assert set(modes(run).values()) == {0o644}  # checkpoints too
    user = tmp_path / "weights" / "user" / "tiny.pt"
    assert stat.S_IMODE(user.stat().st_mode) == 0o644
    # the log names what its numbers are, once, before they come
    legend = [line for line in proc.stderr.splitlines() if line.startswith("monitors: ")]
    assert any("knn = weighted-kNN top-1" in line and "chance" in line and "fell in the first epochs" in line
               for line in legend)
    assert any("z_std = spread of the L2-normalised embedding" in line for line in legend)
    first = next(i for i, line in enumerate(proc.stderr.splitlines()) if line.startswith("epoch 1/1"))
    assert any(i < first for i, line in enumerate(proc.stderr.splitlines()) if line.startswith("monitors: z_std"))
    last = proc.stdout.strip().splitlines()[-1]
    assert "kNN top-1 on synthetic shapes" in last and "(epoch 0) ->" in last and str(run / "tiny.pt") in last

    help_text = harness("pretrain", "--help", cwd=tmp_path).stdout
    for words in ("Where a run goes", "last.pt", "harness encoders", "z_std", "pos / neg", "2-epoch run", "expected"):
        assert words in help_text, words


def test_batch_size_says_what_it_sets(tmp_path):
    text = harness("eval", "--help", cwd=tmp_path).stdout
    line = next(line for line in text.splitlines() if "--batch-size" in line)
    assert "samples per batch" in line


def test_the_sweep_summary_shows_each_jobs_score(tmp_path):
    out = tmp_path / "out"
    args = ("sweep", "--encoder", "resnet18", "--task", "synth_count", *TINY, "--out", str(out))
    first = harness(*args, cwd=tmp_path, env={"HARNESS_QUIET": "1"})
    assert first.returncode == 0, first.stderr[-3000:]
    (path,) = out.glob("*.json")
    test = json.loads(path.read_text())["test"]
    again = harness(*args, cwd=tmp_path, env={"HARNESS_QUIET": "1"})  # skipped: the record exists
    for proc, status in ((first, "done"), (again, "skipped")):
        header = next(line for line in proc.stdout.splitlines() if "encoder" in line and "status" in line)
        assert " test " in header
        row = next(line for line in proc.stdout.splitlines() if "resnet18" in line and status in line)
        assert f"top1 {test:.4f}" in row
    doc = json.loads(harness(*args, "--json", cwd=tmp_path).stdout)
    assert doc["jobs"][0]["test"] == pytest.approx(test) and doc["jobs"][0]["metric"] == "top1"


def test_missing_weights_and_missing_data_are_said_together(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = harness("eval", "--encoder", "swav_in200", "--task", "nyu_depth", "--weights-dir", str(empty), "--data-root",
                   str(empty), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 1
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert "weights for encoder 'swav_in200' not found" in line
    assert "the data of task(s) nyu_depth is missing too" in line and str(empty / "nyu") in line
