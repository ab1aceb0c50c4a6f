"""``--preset small``: every method runs 2 steps with it; options and --set win over the preset; a corrupted
run's checkpoint carries the corruption to `harness encoders` and to the report's encoder metadata."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from encoders.pretrain import METHODS, train
from encoders.pretrain.presets import PRESETS, get_preset
from encoders.pretrain.train import PretrainOptions, _apply_preset, fast_mixed_precision, run_pretrain
from harness.common.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]
PRETEXT = {"rotnet", "jigsaw", "relpatch", "exemplar", "splitbrain"}  # benchmarks/pretrain_pretext.py measures these
TINY = {"limit": 64, "batch_size": 32, "epochs": 1, "resolution": 32, "knn_every": 0}


def test_every_method_has_a_small_preset_that_runs_two_steps(tmp_path):
    assert set(PRESETS["small"]) == set(METHODS)
    for method in METHODS:
        res = run_pretrain(PretrainOptions(method=method, preset="small", out=tmp_path, device="cpu", **TINY))
        assert res["preset"] == "small" and res["batch_size"] == 32 and res["images"] == 64
        steps = [h for h in res["history"] if "loss" in h]
        assert len(steps) == 1 and torch.isfinite(torch.tensor(steps[0]["loss"]))
        assert 0 <= steps[0]["z_std"] <= 1  # the collapse diagnostic is logged for every method
        ckpt = torch.load(res["checkpoint"], weights_only=True)
        assert ckpt["meta"]["preset"] == "small" and ckpt["meta"]["corrupt"] == "none"


def test_small_presets_are_sgd_with_a_cosine_decay():
    # README.md's table says so for every method; MoCo v1's default schedule is a constant rate
    from encoders.pretrain import get_method
    from encoders.pretrain.base import apply_overrides

    for method in METHODS:
        cfg = apply_overrides(get_method(method).config(), dict(get_preset(method, "small").settings))
        assert cfg.optim.name == "sgd" and cfg.optim.cosine, method
        assert train._lr_at(99, 100, 0, 1.0, cfg.optim) < 0.01 < train._lr_at(50, 100, 0, 1.0, cfg.optim) < 0.99


def test_explicit_options_and_set_override_the_preset(monkeypatch):
    monkeypatch.setattr(train, "fast_mixed_precision", lambda device: True)
    p = get_preset("mocov2", "small")
    o = _apply_preset(PretrainOptions(method="mocov2", preset="small", epochs=3, overrides={"queue": "512"}))
    assert o.epochs == 3 and o.batch_size == p.batch_size and o.lr == p.lr and o.limit == p.limit
    assert o.overrides["queue"] == "512" and o.overrides["momentum"] == p.settings["momentum"]
    assert o.knn_every == p.knn_every and o.amp is True
    plain = _apply_preset(PretrainOptions(method="mocov2"))
    assert plain.epochs is None and plain.overrides == {} and plain.knn_every == 1
    with pytest.raises(UsageError, match="known presets"):
        get_preset("mocov2", "huge")


def test_preset_autocast_only_where_bf16_is_fast(monkeypatch, capsys):
    """The small presets ask for bf16 autocast; a CPU without bf16 units (AVX2 only) trains in float32 instead,
    with one stderr line, and an explicit --amp / --no-amp wins either way."""
    monkeypatch.setattr(train, "fast_mixed_precision", lambda device: False)
    assert _apply_preset(PretrainOptions(method="simclr", preset="small", device="cpu")).amp is False
    assert "float32" in capsys.readouterr().err
    assert _apply_preset(PretrainOptions(method="simclr", preset="small", device="cpu", amp=True)).amp is True
    monkeypatch.setattr(train, "fast_mixed_precision", lambda device: True)
    assert _apply_preset(PretrainOptions(method="simclr", preset="small", device="cpu")).amp is True
    assert _apply_preset(PretrainOptions(method="simclr", preset="small", device="cpu", amp=False)).amp is False
    assert capsys.readouterr().err == ""
    assert _apply_preset(PretrainOptions(method="simclr", device="cpu")).amp is None  # no preset: CUDA-only default


def test_fast_mixed_precision_follows_native_bf16(monkeypatch):
    assert fast_mixed_precision(torch.device("cuda")) is True
    for native in (False, True):
        monkeypatch.setattr(train, "cpu_has_bf16", lambda v=native: v)
        assert fast_mixed_precision(torch.device("cpu")) is native
        assert fast_mixed_precision(torch.device("cuda")) is True


def test_corrupted_run_reaches_manifest_checkpoint_encoders_and_report(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    args = [sys.executable, "-m", "harness", "pretrain", "--method", "simclr", "--preset", "small", "--data", "synth",
            "--limit", "32", "--batch-size", "16", "--epochs", "1", "--resolution", "32", "--knn-every", "0",
            "--corrupt", "jpeg:10", "--out", str(tmp_path), "--name", "jpeg_run", "--json"]
    res = subprocess.run(args, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert out["corrupt"] == "jpeg:10"
    assert json.loads((tmp_path / "jpeg_run" / "manifest.json").read_text())["corrupt"] == "jpeg:10"
    assert torch.load(out["checkpoint"], weights_only=True)["meta"]["corrupt"] == "jpeg:10"

    from encoders.registry import create_encoder, list_encoders
    from harness.report import encoder_metadata

    row = next(r for r in list_encoders() if r["name"] == "jpeg_run")
    assert row["corrupt"] == "jpeg:10"
    info = create_encoder(out["checkpoint"]).info.__dict__  # what a result record stores as encoder_info
    assert encoder_metadata("jpeg_run", json.loads(json.dumps(info, default=str)))["corruption"] == "jpeg:10"
    from dataclasses import asdict

    from encoders.catalog import CATALOG

    assert encoder_metadata("mocov2_in200", asdict(CATALOG["mocov2_in200"].info))["corruption"] == "none"

    bad = subprocess.run([*args[:-5], "--corrupt", "jpeg:0", "--out", str(tmp_path)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "--corrupt" in bad.stderr and "Traceback" not in bad.stderr


def test_preset_learns_flags_agree_with_the_measured_gains(capsys, monkeypatch):
    # a preset claims to learn only where benchmarks/results/ holds a 5-point kNN gain on average over its measured
    # runs (the table's run, on its larger recheck where there is one, and the seed study's runs on the same
    # check), and a run with one that does not says so on stderr
    results = ROOT / "benchmarks" / "results"
    measured = json.loads((results / "pretrain_learning.json").read_text())["results"]
    seeds = json.loads((results / "pretrain_seeds.json").read_text())["summary"]
    pretext = json.loads((results / "pretrain_pretext.json").read_text())["summary"]  # benchmarks/pretrain_pretext.py
    for method, preset in PRESETS["small"].items():
        if method in PRETEXT:  # a pretext task: its own seed study, on the same check; none yet is no claim
            gains = pretext[method]["checks"]["4000/2000"]["gains"] if method in pretext else []
        else:
            row = measured[method]
            gains = seeds[method]["checks"]["4000/2000"]["gains"] if method in seeds else []
            # each run counts once: the table's run may be one of the seed study's runs as well
            run = row.get("measured_by", "").partition("(run ")[2].partition(",")[0]
            if not run or run not in {r["name"] for r in seeds.get(method, {}).get("runs", [])}:
                gains = [row["recheck"]["gain_points"] if "recheck" in row else row["gain_points"], *gains]
        assert preset.learns == (bool(gains) and sum(gains) / len(gains) >= 5), (method, gains)
        _apply_preset(PretrainOptions(method=method, preset="small", device="cpu", amp=False))
        warned = f"{method}'s recipe has not been shown to learn" in capsys.readouterr().err
        assert warned == (not preset.learns), method
    # every recipe is marked today: an unmarked one (a new method's starting point) still warns
    monkeypatch.setitem(PRESETS["small"], "byol", replace(PRESETS["small"]["byol"], learns=False))
    _apply_preset(PretrainOptions(method="byol", preset="small", device="cpu", amp=False))
    assert "byol's recipe has not been shown to learn" in capsys.readouterr().err


def test_the_measured_runs_behind_each_preset_used_its_recipe():
    # a preset's learns mark rests on the runs in benchmarks/results/: each of them must have trained with the
    # preset's settings, epochs, rate, batch and images as shipped, so that changing a recipe without measuring it
    # again (or leaving a superseded recipe's runs in the table) fails here
    results = ROOT / "benchmarks" / "results"
    rows = list(json.loads((results / "pretrain_learning.json").read_text())["results"].values())
    rows += json.loads((results / "pretrain_seeds.json").read_text())["runs"]
    rows += json.loads((results / "pretrain_pretext.json").read_text())["runs"]
    seen = set()
    for row in rows:
        p = get_preset(row["method"], row["preset"])
        recipe = (row["settings"], row["epochs"], row["lr"], row["batch_size"], row["images"],
                  row.get("overrides") or [])
        assert recipe == (p.settings, p.epochs, p.lr, p.batch_size, p.limit, []), row.get("name", row["method"])
        seen.add(row["method"])
    # every contrastive recipe has its runs; a pretext recipe may have none yet, and then claims nothing
    assert seen >= set(PRESETS["small"]) - PRETEXT
    assert not any(PRESETS["small"][m].learns for m in PRETEXT - seen)
