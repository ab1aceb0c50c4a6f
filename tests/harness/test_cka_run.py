"""`harness cka` over real encoders: data sampling, identical vs trained encoders, the CLI contract."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.cka import CKAOptions, off_diagonal_mean, run_cka
from harness.cka_data import balanced_indices, build_source
from harness.common.errors import HarnessError, UsageError

RES, LIMIT, BATCH = 32, 48, 24
TAPS = ["conv", "block1", "block3", "embedding"]  # at 32 px block4 is 1x1, i.e. the embedding


def test_balanced_indices_are_balanced_and_seeded():
    labels = np.array([0] * 30 + [1] * 12 + [2] * 50)
    idx, per_class = balanced_indices(labels, 30, seed=1)
    assert per_class == 10
    assert np.bincount(labels[idx]).tolist() == [10, 10, 10]
    assert len(set(idx.tolist())) == 30
    assert np.array_equal(idx, balanced_indices(labels, 30, seed=1)[0])
    assert not np.array_equal(idx, balanced_indices(labels, 30, seed=2)[0])
    short, _ = balanced_indices(labels, 45, seed=0)  # class 1 has only 12 of the 15 wanted
    assert np.bincount(labels[short]).tolist() == [15, 12, 15]
    few, per = balanced_indices(labels, 2, seed=0)  # fewer images than classes: 2 classes, 1 each
    assert per == 1 and len(few) == 2 and len(set(labels[few].tolist())) == 2


def test_synthetic_source_is_class_balanced():
    src = build_source("synthetic", limit=40, resolution=RES, seed=0)
    assert src.per_class == 10 and len(src.dataset) == 40
    img = src.dataset[0]["image"]
    assert img.shape == (3, RES, RES) and 0.0 <= float(img.min()) and float(img.max()) <= 1.0


def test_task_source_balances_the_task_labels():
    src = build_source("task:synth_shape_cls", limit=8, resolution=RES, seed=3)
    assert src.per_class == 2 and len(src.dataset) == 8
    assert src.dataset[0]["image"].shape == (3, RES, RES)
    from tasks.registry import get_task
    from tasks.spec import DataRequest

    spec = get_task("synth_shape_cls")
    ds = spec.dataset(spec, DataRequest(split="test", data_root=None, resolution=RES, limit=None, train=False))
    picked = ds.class_labels()[src.dataset.indices]
    assert np.bincount(picked, minlength=4).tolist() == [2, 2, 2, 2]


def test_folder_source_reads_class_folders(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    src = build_source(f"folder:{tmp_path}", limit=6, resolution=16, seed=0)
    assert src.per_class == 3 and len(src.dataset) == 6
    assert src.dataset[5]["image"].shape == (3, 16, 16)
    with pytest.raises(UsageError, match="did you mean"):
        build_source("synthetik", limit=4)
    with pytest.raises(HarnessError, match="expected ROOT/CLASS"):
        build_source(f"folder:{tmp_path / 'missing'}", limit=4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(HarnessError, match="no images"):
        build_source(f"folder:{tmp_path / 'empty'}", limit=4)


def _run(tmp_path, encoders, **kw) -> dict:
    opts = CKAOptions(encoders=encoders, limit=LIMIT, resolution=RES, batch_size=BATCH, out=tmp_path, taps=TAPS,
                      device="cpu", **kw)
    return run_cka(opts).to_dict()


def test_identical_encoders_give_unit_diagonal(tmp_path):
    res = _run(tmp_path, ["resnet18", "resnet18"])
    cross = np.array(res["matrices"]["resnet18|resnet18#2"])
    assert cross.shape == (len(TAPS), len(TAPS))
    assert np.allclose(np.diag(cross), 1.0, atol=1e-5)
    assert np.allclose(cross, np.array(res["matrices"]["resnet18|resnet18"]), atol=1e-9)
    assert np.allclose(cross, cross.T, atol=1e-9)
    assert res["n"] == LIMIT and res["batches"] == LIMIT // BATCH
    assert (cross[np.triu_indices(len(TAPS), 1)] < 0.999).all()  # different taps are not identical
    on_disk = json.loads((tmp_path / "cka.json").read_text())
    assert on_disk["matrices"].keys() == res["matrices"].keys()
    for path in res["heatmaps"].values():
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _briefly_trained_resnet18(path) -> None:
    """A 'pretrained' stand-in: resnet18 trained a few steps on synthetic shape classes."""
    from encoders.resnet import build_resnet
    from tasks.synthetic.store import load_split

    torch.manual_seed(0)
    net = build_resnet("resnet18", 0)
    head = torch.nn.Linear(512, 4)
    data = load_split("single", "train", 128, RES, fields=("image", "shape_cls"))
    x = torch.from_numpy(data["image"]).permute(0, 3, 1, 2).float() / 255.0
    y = torch.from_numpy(data["shape_cls"])
    opt = torch.optim.Adam([*net.parameters(), *head.parameters()], lr=1e-3)
    net.train()
    for step in range(8):
        i = torch.arange(step * 32, step * 32 + 32) % len(x)
        loss = torch.nn.functional.cross_entropy(head(net(x[i], ("embedding",))["embedding"]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(net.state_dict(), path)


def test_random_and_trained_encoders_differ(tmp_path):
    ckpt = tmp_path / "trained.pt"
    _briefly_trained_resnet18(ckpt)
    res = _run(tmp_path / "out", ["resnet18", str(ckpt)])
    rand = np.array(res["matrices"]["resnet18|resnet18"])
    trained = np.array(res["matrices"]["trained|trained"])
    cross = np.array(res["matrices"]["resnet18|trained"])
    assert np.abs(rand - trained).max() > 0.08
    assert abs(off_diagonal_mean(torch.tensor(rand)) - off_diagonal_mean(torch.tensor(trained))) > 0.02
    assert np.diag(cross).min() < 0.9  # same architecture, same init, but the later blocks moved
    assert np.allclose(cross.T, np.array(res["matrices"]["trained|resnet18"]), atol=1e-9)


def test_cli_json_contract_and_errors(tmp_path, monkeypatch, capsys):
    from harness.cli import main

    out = tmp_path / "cli"
    argv = ["harness", "cka", "--encoder", "resnet18", "--limit", "16", "--resolution", "32", "--batch-size", "8",
            "--tap", "block1", "--tap", "block3", "--out", str(out), "--device", "cpu", "--json"]
    monkeypatch.setattr(sys, "argv", argv)
    try:
        main()
    except SystemExit as exc:
        assert exc.code in (0, None)
    doc = json.loads(capsys.readouterr().out)
    for key in ("encoders", "taps", "n", "resolution", "estimator", "matrices"):
        assert key in doc
    assert doc["n"] == 16 and doc["resolution"] == 32 and doc["estimator"] == "unbiased"
    m = np.array(doc["matrices"]["resnet18|resnet18"])
    assert m.shape == (2, 2) and abs(m[0, 0] - 1) < 1e-9 and 0 < m[0, 1] < 1
    assert (out / "cka_resnet18_vs_resnet18.png").exists()

    monkeypatch.setattr(sys, "argv", ["harness", "cka", "--encoder", "resnet18", "--batch-size", "3",
                                      "--out", str(out)])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "at least 4" in err and "Traceback" not in err


def test_default_taps_are_the_encoders_own_blocks(tmp_path):
    """block4_os16 (DeepLab's dilated copy of block4) is derived: compared only when asked for."""
    doc = run_cka(CKAOptions(encoders=["resnet18"], limit=16, resolution=RES, batch_size=8, out=tmp_path,
                             device="cpu")).to_dict()
    assert doc["taps"]["resnet18"] == ["conv", "block1", "block2", "block3", "block4", "embedding"]
    asked = run_cka(CKAOptions(encoders=["resnet18"], limit=16, resolution=RES, batch_size=8, out=tmp_path / "b",
                               device="cpu", taps=["block4", "block4_os16"])).to_dict()
    assert asked["taps"]["resnet18"] == ["block4", "block4_os16"]
