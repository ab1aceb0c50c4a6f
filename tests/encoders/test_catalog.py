"""The catalog matches the paper's Table 3, and `harness encoders` lists it plus user checkpoints."""

import json
import sys

import pytest
import torch

from encoders.catalog import CATALOG, PAPER_ENCODERS
from encoders.checkpoint import save_harness_checkpoint
from encoders.registry import create_encoder, list_encoders
from encoders.resnet import build_resnet
from harness.common.paths import user_encoders_dir

# Table 3 of Kotar et al. (method, dataset, size, epochs), one line per encoder, in the paper's order.
TABLE3 = """SwAV ImageNet 1.3M 800|SwAV ImageNet 1.3M 200|SwAV ImageNet 1.3M 100|SwAV ImageNet 1.3M 50
SwAV ImageNet-1/2 0.5M 200|SwAV ImageNet-1/2 0.5M 100|SwAV ImageNet-1/4 0.25M 200|SwAV ImageNet-1/2-Lin 0.5M 200
SwAV ImageNet-1/2-Lin 0.5M 100|SwAV ImageNet-1/4-Log 0.25M 200|SwAV Places 1.3M 200|SwAV Kinetics 1.3M 200
SwAV Taskonomy 1.3M 200|SwAV Combination 1.3M 200|MoCov2 ImageNet 1.3M 800|MoCov2 ImageNet 1.3M 200
MoCov2 ImageNet 1.3M 100|MoCov2 ImageNet 1.3M 50|MoCov2 ImageNet-1/2 0.5M 200|MoCov2 ImageNet-1/2 0.5M 100
MoCov2 ImageNet-1/4 0.25M 200|MoCov2 ImageNet-1/2-Lin 0.5M 200|MoCov2 ImageNet-1/2-Lin 0.5M 100
MoCov2 ImageNet-1/4-Log 0.25M 200|MoCov2 Places 1.3M 200|MoCov2 Kinetics 1.3M 200|MoCov2 Taskonomy 1.3M 200
MoCov2 Combination 1.3M 200|MoCov1 ImageNet 1.3M 200|PIRL ImageNet 1.3M 800"""
NOT_TRAINED_BY_AUTHORS = {"swav_in800", "swav_in200", "mocov2_in800", "mocov2_in200", "mocov1_in200", "pirl_in800"}


def test_catalog_is_table3():
    rows = [r.split() for r in TABLE3.replace("\n", "|").split("|")]
    assert len(rows) == 30 == len(PAPER_ENCODERS)
    got = [[CATALOG[n].method, CATALOG[n].data, CATALOG[n].size, str(CATALOG[n].epochs)] for n in PAPER_ENCODERS]
    assert got == rows
    assert {n for n in PAPER_ENCODERS if not CATALOG[n].trained_by_authors} == NOT_TRAINED_BY_AUTHORS
    assert {n for n in PAPER_ENCODERS if CATALOG[n].balanced is False} == {
        "swav_in_lin200", "swav_in_lin100", "swav_in_log200", "mocov2_in_lin200", "mocov2_in_lin100",
        "mocov2_in_log200"}
    for n in PAPER_ENCODERS:  # every paper encoder has a file, a format and a public https source
        e = CATALOG[n]
        assert e.filename and e.format and e.url.startswith("https://") and e.arch == "resnet50"
    assert len({CATALOG[n].filename for n in PAPER_ENCODERS}) == 30
    assert CATALOG["random"].filename is None and CATALOG["supervised_in"].format == "torchvision"


def test_encoders_json_lists_catalog_and_user_checkpoints(capsys, monkeypatch):
    from harness import cli

    user = user_encoders_dir()
    save_harness_checkpoint(user / "my_simclr.pt", "resnet18", build_resnet("resnet18", seed=3).state_dict(),
                            {"method": "simclr", "data": "synth", "epochs": 2})
    monkeypatch.setattr(sys, "argv", ["harness", "encoders", "--json"])
    try:
        cli.main()
    except SystemExit as exc:
        assert exc.code in (0, None)
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    for name in (*PAPER_ENCODERS, "supervised_in", "random", "resnet18"):
        assert {"name", "method", "data", "epochs", "available"} <= set(rows[name])
    assert rows["swav_in200"]["available"] is False and rows["random"]["available"] is True
    assert rows["my_simclr"]["method"] == "SimCLR" and rows["my_simclr"]["arch"] == "resnet18"
    enc = create_encoder("my_simclr")  # resolvable by its stem
    assert enc.info.method == "SimCLR" and enc.info.extra["format"] == "harness"
    assert enc.fingerprint() == create_encoder("resnet18", seed=3).fingerprint()


def test_random_init_names_still_work():
    a, b = create_encoder("random", seed=1), create_encoder("random", seed=1)
    assert a.info.arch == "resnet50" and a.fingerprint() == b.fingerprint()
    assert create_encoder("random", seed=2).fingerprint() != a.fingerprint()
    assert {r["name"] for r in list_encoders()} >= {"resnet18", "resnet34", "resnet50", "random"}


def test_unknown_encoder_is_a_usage_error():
    from harness.common.errors import UsageError

    with pytest.raises(UsageError, match="swav_in200"):
        create_encoder("swav_in20")
    with pytest.raises(UsageError, match="timm model"):
        create_encoder("timm:not_a_model_xyz")
    assert torch.is_grad_enabled()
