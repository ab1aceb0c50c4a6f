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


def in_a_terminal(args, columns=80, env=None, cwd=None):
    """``harness ARGS`` with stdout on a pseudo-terminal ``columns`` wide: what a user sees, as text."""
    import pty

    full = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": str(columns), "NO_COLOR": "1", **(env or {})}
    full.pop("TERM", None)  # rich draws a 'dumb' terminal 80 wide whatever COLUMNS says
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "harness", *args], stdout=follower, stderr=subprocess.PIPE,
                            env=full, cwd=cwd or ROOT)
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    proc.wait(timeout=600)
    text = out.decode().replace("\r\n", "\n")
    import re

    return proc, re.sub(r"\x1b\[[0-9;]*m", "", text)  # bold headers: escape codes, not text


def table_rows(text):
    """The rows of a printed table: a row's cells, each cell's lines joined with '\\n'."""
    rows, current = [], None
    for line in text.splitlines():
        if "│" not in line or line.lstrip().startswith(("─", "━", "┏", "┡", "└", "├")):
            if current:
                rows.append(current)
            current = None
            continue
        parts = line.split("│")
        cells = [c.strip() for c in (parts[1:-1] if line.startswith("│") else parts)]
        current = [c.split("\n") for c in cells] if current is None else [
            [*old, new] for old, new in zip(current, cells, strict=True)]
    if current:
        rows.append(current)
    return [["\n".join(x for x in cell if x) for cell in row] for row in rows]


def test_a_table_at_80_columns_wraps_names_after_underscores_never_inside_a_word():
    proc, text = in_a_terminal(["tasks"], 80)
    assert proc.returncode == 0, proc.stderr
    assert max(len(line) for line in text.splitlines()) <= 80
    tasks = {t["name"]: t for t in json.loads(harness("tasks", "--json").stdout)}
    rows = {row[0].replace("\n", ""): row for row in table_rows(text)}
    assert set(rows) == set(tasks)  # every name whole once its lines are joined
    wrapped = 0
    for name, row in rows.items():
        lines = row[0].split("\n")
        assert all(line.endswith("_") for line in lines[:-1]), lines  # 'synth_' / 'action', never 'synt' / 'h_ac'
        wrapped += len(lines) > 1
        category = row[1].split("\n")
        assert " ".join(category) == tasks[name]["category"], category  # 'semantic' / 'image-level'
    assert wrapped  # the case is met: some name is wider than its column


def test_tap_all_prints_one_row_per_tap_and_logs_name_the_tap(tmp_path):
    env = {"HARNESS_CACHE": str(tmp_path / "cache"), "HARNESS_QUIET": ""}
    proc = harness("eval", "--encoder", "resnet18", "--task", "synth_count", "--tap", "all", "--limit", "48",
                   "--epochs", "1", "--grid", "single", "--resolution", "32", "--device", "cpu", "--out",
                   str(tmp_path / "out"), env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    taps = ["conv", "block1", "block2", "block3", "block4", "embedding"]
    header = next(line for line in proc.stdout.splitlines() if "encoder" in line)
    assert " tap " in header
    rows = [line for line in proc.stdout.splitlines() if line.startswith("│ resnet18")]
    assert [next(t for t in taps if f" {t} " in row) for row in rows] == taps  # one row per tap, each named
    records = {r["tap"]: r["test"] for r in (json.loads(p.read_text()) for p in (tmp_path / "out").glob("*.json"))}
    for row, tap in zip(rows, taps, strict=True):
        assert f"{records[tap]:.4f}" in row
    for tap in taps:  # every phase of the log says which tap it is about
        assert f"on tap {tap} ({taps.index(tap) + 1}/6)" in proc.stderr
        assert f"test synth_count (tap {tap}): top1 {records[tap]:.4f}" in proc.stderr


def test_a_closed_pipe_is_not_an_error(tmp_path):
    """`harness report results | head -1`: the reader leaves early; the report is still written, exit 0."""
    from tests.harness.test_report import write_dataset

    results = write_dataset(tmp_path / "results")
    full = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "harness", "report", str(results)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=full, cwd=ROOT)
    proc.stdout.close()  # before it prints anything: its first write meets a closed pipe
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert b"error" not in err and b"Traceback" not in err and b"Exception ignored" not in err
    assert (results / "report" / "report.json").exists()


def test_unknown_encoder_says_the_list_is_cut_and_where_the_rest_is(tmp_path):
    names = [r["name"] for r in json.loads(harness("encoders", "--json").stdout)]
    proc = harness("eval", "--encoder", "qqqqqqqq", "--task", "synth_count", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert len(names) > 20 and f"known (20 of {len(names)}):" in line
    assert f"(and {len(names) - 20} more; `harness encoders` lists them all)" in line
    listed = line.split("):", 1)[1].split(" (and")[0].strip().split(", ")
    assert listed == sorted(names)[:20]
