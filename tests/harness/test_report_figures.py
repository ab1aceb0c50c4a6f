"""The figures a user gets from `harness report` and `harness cka`, through the CLI: one PNG per analysis
that ran, nothing cut at the edges, no layout warning; CKA's heatmaps and printed matrices one per encoder
pair, in the same orientation."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.harness.test_report import write_dataset
from tests.harness.test_report_variants import write_variants

ROOT = Path(__file__).resolve().parents[2]


def harness(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def blank_frame(path: Path, width: int = 3) -> bool:
    """Whether the outermost ``width`` pixels are all white: nothing drawn runs off the canvas."""
    img = pixels(path)
    frame = np.concatenate([img[:width].reshape(-1, 3), img[-width:].reshape(-1, 3), img[:, :width].reshape(-1, 3),
                            img[:, -width:].reshape(-1, 3)])
    return bool((frame >= 250).all())


@pytest.mark.parametrize("make", [write_dataset, write_variants])
def test_each_analysis_that_runs_writes_a_whole_png_without_warnings(tmp_path, make):
    results = make(tmp_path / "results")
    proc = harness("report", str(results), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr and "constrained_layout" not in proc.stderr, proc.stderr
    doc = json.loads(proc.stdout)
    ran = [name for name, a in doc["analyses"].items() if a["status"] == "ok"]
    assert "ranks" in ran
    for name in ran:
        png = results / "report" / f"{name}.png"
        assert f"{name}.png" in doc["analyses"][name]["files"] and png.exists(), name
        w, h = Image.open(png).size
        assert w >= 400 and h >= 200, (name, w, h)
        assert blank_frame(png), f"{name}.png is cut at an edge"
    if make is write_variants:  # two tasks, two encoders, the three probes
        assert "probe_comparison" in ran and Image.open(results / "report" / "group_difference.png").size[0] >= 500
    md = (results / "report" / "report.md").read_text()
    assert all(f"![{name}]({name}.png)" in md for name in ran)


def test_cka_draws_and_prints_each_pair_once_in_one_orientation(tmp_path):
    taps = ["conv", "block2", "embedding"]
    out = tmp_path / "cka"
    args = ["cka", "--encoder", "resnet18", "--encoder", "resnet34", "--limit", "16", "--resolution", "32",
            "--batch-size", "8", "--device", "cpu", "--out", str(out)]
    for tap in taps:
        args += ["--tap", tap]
    proc = harness(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "cka.json").read_text())
    pairs = [("resnet18", "resnet18"), ("resnet18", "resnet34"), ("resnet34", "resnet34")]
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"cka_{a}_vs_{b}.png" for a, b in pairs)
    assert sorted(doc["heatmaps"]) == sorted(f"{a}|{b}" for a, b in pairs)
    assert np.allclose(np.array(doc["matrices"]["resnet34|resnet18"]), np.array(doc["matrices"]["resnet18|resnet34"]).T)
    for png in out.glob("*.png"):
        assert blank_frame(png), png.name

    lines = proc.stdout.splitlines()
    titles = [i for i, line in enumerate(lines) if " (rows, deepest at the top) vs " in line]
    assert len(titles) == 3 and "resnet34 (rows" not in lines[titles[1]]  # B vs A is not printed again
    for i, (a, b) in zip(titles, pairs, strict=True):
        assert lines[i].startswith(f"{a} (rows") and f"cka_{a}_vs_{b}.png" in lines[i]
        printed = [lines[i + 1 + k].split() for k in range(len(taps))]
        assert [row[0] for row in printed] == taps[::-1]  # as the heatmap: the deepest tap on top
        matrix = np.array(doc["matrices"][f"{a}|{b}"])[::-1]
        assert np.allclose([[float(v) for v in row[1:]] for row in printed], matrix, atol=5e-4)
        assert lines[i + 1 + len(taps)].split() == taps  # the columns' names under them, as the x axis
    assert "mean_diag_vs" not in proc.stdout and "mean_offdiag" not in proc.stdout
    matched = doc["summary"]["resnet18"]["mean_diag_vs_resnet34"]
    assert any(line.split()[:3] == ["resnet18", "and", "resnet34"] and float(line.split()[3]) == pytest.approx(
        matched, abs=5e-4) for line in lines)


def test_a_heatmap_puts_the_first_tap_bottom_left(tmp_path):
    """The orientation the printout follows: row 0 (the shallowest tap) at the bottom, column 0 at the left."""
    from harness.cka import save_heatmap

    m = torch.zeros(3, 3, dtype=torch.float64)
    m[0, 0] = 1.0  # the one bright cell (magma: pale yellow)
    path = save_heatmap(m, ["conv", "block2", "embedding"], ["conv", "block2", "embedding"], "t", tmp_path / "h.png")
    img = pixels(path)
    bright = (img[..., 0] > 230) & (img[..., 1] > 200) & (img[..., 2] > 150) & (img[..., 2] < 230)
    w = img.shape[1]
    ys, xs = np.nonzero(bright[:, : int(w * 0.7)])  # the matrix, not the colour bar on the right
    assert len(ys) > 100
    assert ys.mean() > img.shape[0] / 2 and xs.mean() < w * 0.7 / 2  # the lower left
