"""Seeded search spaces (``resnet_space:K``, ``mobilenet_space:K``): K alone decides the architecture (in another
process, whatever the global RNG), draws stay in the declared ranges and cover them, declared taps match a forward
pass, every head runs on a drawn net, the card states the draw, and a pretrained one loads back strictly."""

import json
import os
import random
import subprocess
import sys
from collections import Counter
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from encoders.archs import SPACES, build_arch, drawn_arch, is_arch
from encoders.archs.space import (
    MOBILE_CHANNELS,
    MOBILE_KNOBS,
    MOBILE_STAGE_MAX,
    RESNET_KNOBS,
    RESNET_STAGE_MAX,
    make_divisible,
    mobile_last,
)
from encoders.registry import create_encoder
from harness.common.errors import HarnessError, UsageError
from heads import HEADS

ROOT = Path(__file__).resolve().parents[2]
SIZE = 64
MANY = range(400)
SMALL = {"resnet_space": (0, 3), "mobilenet_space": (0, 2)}  # the cheapest draws among the first few K


def _probe(names: list[str]) -> dict:
    """Drawn architecture and weight fingerprint of each name, built in a fresh interpreter."""
    code = ("import json, sys\nfrom encoders.registry import create_encoder\n"
            "encs = {n: create_encoder(n) for n in sys.argv[1:]}\n"
            "print(json.dumps({n: [e.info.extra['drawn'], e.fingerprint()] for n, e in encs.items()}))")
    proc = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "123"}, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_k_alone_decides_the_architecture_in_another_process_whatever_the_global_rng():
    names = ["resnet_space:3", "mobilenet_space:2"]
    other = _probe(names)
    torch.manual_seed(12345)  # a disturbed global state changes nothing
    random.seed(99)
    state = torch.random.get_rng_state()
    for name in names:
        enc = create_encoder(name)
        assert [enc.info.extra["drawn"], enc.fingerprint()] == other[name], name
    assert torch.equal(torch.random.get_rng_state(), state)  # and is left as it was
    # the seed picks the weights, K the architecture
    assert create_encoder("mobilenet_space:2", seed=1).fingerprint() != other["mobilenet_space:2"][1]
    assert create_encoder("mobilenet_space:2", seed=1).info.extra["drawn"] == other["mobilenet_space:2"][0]


@pytest.mark.parametrize("space", ["resnet_space", "mobilenet_space"])
def test_different_k_draw_different_architectures(space):
    draws = [json.dumps(drawn_arch(f"{space}:{k}"), sort_keys=True) for k in range(30)]
    assert len(set(draws)) == len(draws)
    # and different networks: two K's state dicts differ in keys or shapes
    a, b = (build_arch(f"{space}:{k}").state_dict() for k in (0, 1))
    assert {k: v.shape for k, v in a.items()} != {k: v.shape for k, v in b.items()}


def _within(counts: Counter, choices: tuple, draws: int) -> None:
    """Every choice is drawn, none outside, each near its uniform share (all but impossible to miss by 2x)."""
    assert set(counts) == set(choices), (counts, choices)
    for c in choices:
        assert draws / len(choices) / 2 < counts[c] < 2 * draws / len(choices), (c, counts)


def test_resnet_draws_stay_in_the_declared_ranges_and_cover_them():
    counts: dict[str, Counter] = {k: Counter() for k in RESNET_KNOBS}
    for k in MANY:
        a = drawn_arch(f"resnet_space:{k}")
        counts["block"][a["block"]] += 1
        counts["width"][a["width"]] += 1
        if a["block"] == "bottleneck":
            counts["groups"][a["groups"]] += 1
        else:
            assert a["groups"] == 1  # torchvision's BasicBlock has no groups
        for i, d in enumerate(a["depths"]):
            counts[f"depth{i + 1}"][d] += 1
            assert 1 <= d <= RESNET_STAGE_MAX[i]
        expansion = 4 if a["block"] == "bottleneck" else 1
        assert a["channels"] == [64 * a["width"]] + [64 * a["width"] * 2**i * expansion for i in range(4)]
    declared = SPACES["resnet_space"].knobs  # what the card and `harness encoders --show` declare
    assert declared.keys() == RESNET_KNOBS.keys()
    for name, knob in declared.items():
        _within(counts[name], tuple(knob["choices"]), sum(counts[name].values()))


def test_mobilenet_draws_stay_in_the_declared_ranges_and_cover_them():
    counts: dict[str, Counter] = {k: Counter() for k in MOBILE_KNOBS}
    for k in MANY:
        a = drawn_arch(f"mobilenet_space:{k}")
        counts["width"][a["width"]] += 1
        assert a["depths"] == [len(s) for s in a["stages"]]
        for i, stage in enumerate(a["stages"]):
            counts[f"depth{i + 1}"][len(stage)] += 1
            for kernel, expansion in stage:
                counts["kernel"][kernel] += 1
                counts["expansion"][expansion] += 1
        w = a["width"]
        assert a["channels"] == [make_divisible(16 * w)] + [make_divisible(c * w) for c in MOBILE_CHANNELS] + [
            mobile_last(w)]
    assert MOBILE_STAGE_MAX == (4, 4, 4, 4, 4, 1) and counts["depth6"] == Counter({1: len(MANY)})
    declared = SPACES["mobilenet_space"].knobs
    assert declared.keys() == MOBILE_KNOBS.keys()
    for name, knob in declared.items():
        _within(counts[name], tuple(knob["choices"]), sum(counts[name].values()))
    assert make_divisible(1280 * 1.75) == 2240 and mobile_last(0.5) == 1280


@pytest.mark.parametrize("name", [f"{s}:{k}" for s, ks in SMALL.items() for k in ks])
def test_declared_taps_match_a_forward_pass(name):
    model = build_arch(name, seed=0).eval()
    taps = model.taps
    spatial = [t for t in taps if t.spatial and not t.derived]
    assert [t.stride for t in spatial] == [2, 4, 8, 16, 32]
    assert taps[[t.name for t in taps].index("embedding")].channels == spatial[-1].channels
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        out = model(x, tuple(t.name for t in taps))
        alone = model(x)  # the pretraining call: the embedding
    for t in taps:
        if t.spatial:
            assert out[t.name].shape == (2, t.channels, SIZE // t.stride, SIZE // t.stride), t
        else:
            assert out[t.name].shape == (2, t.channels), t
    torch.testing.assert_close(alone, out["embedding"])
    # the drawn widths are the taps' widths
    drawn = drawn_arch(name)
    if name.startswith("resnet"):
        assert [t.channels for t in spatial] == drawn["channels"]
        assert out["block4_os16"].shape[2:] == (SIZE // 16, SIZE // 16)
    else:
        ch = drawn["channels"]
        assert [t.channels for t in spatial] == [ch[0], ch[1], ch[2], ch[4], ch[-1]]


@cache
def _meta_encoder(name: str):
    with torch.device("meta"):
        return create_encoder(name)


@pytest.mark.parametrize("space", list(SMALL))
@pytest.mark.parametrize("head, outputs, frames", [
    ("unet", 1, 1), ("siamese_unet", 2, 2), ("deeplabv3plus", 7, 1), ("fusion", 5, 2), ("linear", 3, 1),
])
def test_every_head_runs_on_a_drawn_net(space, head, outputs, frames):
    enc = _meta_encoder(f"{space}:1")
    with torch.device("meta"):  # shapes only: no arithmetic
        target = SimpleNamespace(num_outputs=outputs, frames=frames, name="t")
        entry = HEADS[head]
        module = entry.build(enc.taps, target).eval()
        shape = (2, frames, 3, SIZE, SIZE) if frames > 1 else (2, 3, SIZE, SIZE)
        feats = enc(torch.empty(shape), entry.taps(target, enc.taps))
        with torch.no_grad():
            out = module(feats, size=(SIZE, SIZE)) if head in ("unet", "siamese_unet", "deeplabv3plus") \
                else module(feats)
    assert tuple(out.shape) == ((2, outputs, SIZE, SIZE) if head not in ("fusion", "linear") else (2, outputs))


def test_the_card_states_the_draw_and_the_cost():
    enc = create_encoder("resnet_space:3")
    extra = enc.info.extra
    assert enc.info.arch == "resnet_space:3" and extra["family"] == "resnet_space"
    assert extra["drawn"] == drawn_arch("resnet_space:3") and extra["space_index"] == 3
    assert extra["drawn_summary"].startswith(extra["drawn"]["block"])
    assert extra["cost"]["params"] == sum(p.numel() for p in enc.parameters())
    assert set(SPACES) == {"resnet_space", "mobilenet_space"}


@pytest.mark.parametrize("bad, message", [
    ("resnet_space:x", "must be an integer >= 0"), ("resnet_space:-1", "must be an integer >= 0"),
    ("mobilenet_space:01", "without leading zeros"), ("resnet_space:", "must be an integer >= 0"),
    ("resnet_space", "is a search space"),
])
def test_a_bad_index_is_one_usage_error(bad, message):
    with pytest.raises(UsageError, match=message):
        create_encoder(bad)
    with pytest.raises(UsageError, match=message):
        is_arch(bad)
    assert not is_arch("densenet_space:1")  # not a space: an unknown architecture as any other


def test_a_pretrained_drawn_net_loads_back_strictly_and_is_listed(tmp_path, monkeypatch):
    from encoders.checkpoint import save_harness_checkpoint
    from encoders.pretrain.train import PretrainOptions, run_pretrain

    monkeypatch.setenv("HARNESS_WEIGHTS", str(tmp_path / "weights"))
    arch = "mobilenet_space:2"
    result = run_pretrain(PretrainOptions(method="simclr", arch=arch, limit=8, batch_size=8, resolution=32, epochs=1,
                                          knn_every=0, device="cpu", amp=False, out=tmp_path / "runs",
                                          overrides={"dim": "16"}))
    ckpt = torch.load(result["checkpoint"], weights_only=True)
    assert ckpt["arch"] == arch  # the name alone rebuilds the network
    name = Path(result["checkpoint"]).stem
    enc = create_encoder(name)  # from the user encoders folder, strictly checked against build_arch(arch)
    assert enc.info.arch == arch and enc.info.method == "SimCLR"
    assert enc.info.extra["drawn"] == drawn_arch(arch)  # the card of a checkpoint states the draw too
    loaded = enc.model.state_dict()  # every weight as trained (BatchNorm step counters are reset on load)
    weights = {k: v for k, v in ckpt["state_dict"].items() if not k.endswith("num_batches_tracked")}
    assert weights and loaded.keys() == ckpt["state_dict"].keys()
    assert all(torch.equal(loaded[k], v) for k, v in weights.items())
    assert enc.fingerprint() != create_encoder(arch).fingerprint()  # the trained weights, not a fresh init
    x = torch.rand(2, 3, 32, 32)
    assert enc(x)["embedding"].shape == (2, drawn_arch(arch)["channels"][-1])
    # the same weights claimed to be another K: refused, naming what differs
    wrong = tmp_path / "wrong.pt"
    save_harness_checkpoint(wrong, "mobilenet_space:3", ckpt["state_dict"], dict(ckpt["meta"]))
    with pytest.raises(HarnessError, match="does not hold a mobilenet_space:3 backbone"):
        create_encoder(str(wrong))
    # `harness encoders` (a real process) lists it with what K drew, and says the patterns exist
    proc = subprocess.run([sys.executable, "-m", "harness", "encoders"], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert f"{name}: {arch} = {enc.info.extra['drawn_summary']}" in proc.stderr
    assert "resnet_space:K, mobilenet_space:K with K = 0, 1, 2, ..." in " ".join(proc.stderr.split())
    assert "resnet_space:0 " not in proc.stdout  # the population is never enumerated


def _harness(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_harness_encoders_show_prints_the_draw_and_refuses_a_bad_index(tmp_path):
    proc = _harness(tmp_path, "encoders", "--show", "resnet_space:3", "--show", "mobilenet_space:2", "--show",
                    "mobilenet_space", "--json")
    assert proc.returncode == 0, proc.stderr
    cards = {c["name"]: c for c in json.loads(proc.stdout)}
    assert cards["mobilenet_space"]["knobs"] == SPACES["mobilenet_space"].knobs  # the space: its declared ranges
    assert cards["mobilenet_space"]["knobs"]["kernel"]["choices"] == [3, 5, 7]
    for name in ("resnet_space:3", "mobilenet_space:2"):
        assert cards[name]["card"]["drawn"] == drawn_arch(name)
        assert cards[name]["params"] == sum(p.numel() for p in build_arch(name).parameters())
    proc = _harness(tmp_path, "encoders", "--show", "mobilenet_space:07")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "error: 'mobilenet_space:07': the architecture index after 'mobilenet_space:' must be an integer >= 0 "
        "without leading zeros, e.g. mobilenet_space:0"]
