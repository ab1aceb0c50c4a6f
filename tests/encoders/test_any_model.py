"""tv:NAME and timm:NAME encoders: declared taps are truthful and equal the models' own computations."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from encoders.registry import create_encoder
from encoders.resnet import ResNetTaps, build_resnet

ROOT = Path(__file__).resolve().parents[2]
NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def normalise(x):
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORM)
    return (x - mean) / std


def test_timm_resnet_taps_equal_torchvision_resnet_taps():
    """timm and torchvision ResNet-18 share parameter names: same weights must give the same taps."""
    enc = create_encoder("timm:resnet18", seed=1)
    ref: ResNetTaps = build_resnet("resnet18", seed=5).eval()
    enc.model.net.load_state_dict(ref.state_dict(), strict=True)
    names = ("conv", "block1", "block2", "block3", "block4", "embedding")
    # The standard taps agree; block4_os16 (dilated last stage, for DeepLabv3+) is declared by the
    # torchvision ResNet adapter only, so DeepLab tasks need a tv ResNet (timm models lack it).
    assert [(t.name, t.channels, t.stride) for t in enc.taps.values()] == [
        (t.name, t.channels, t.stride) for t in ref.taps if t.name in names]
    assert "block4_os16" not in enc.taps
    x = torch.rand(2, 3, 64, 64)
    got = enc(x, names)
    with torch.no_grad():
        want = ref(normalise(x), names)
    for n in names:
        torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-5)


def test_vit_block_taps_are_token_grids_of_the_quarter_depth_blocks():
    enc = create_encoder("timm:vit_tiny_patch16_224", seed=0)
    net = enc.model.net
    assert [(t.name, t.channels, t.stride) for t in enc.taps.values()] == [
        ("block1", 192, 16), ("block2", 192, 16), ("block3", 192, 16), ("block4", 192, 16), ("embedding", 192, None)]
    x = torch.rand(2, 3, 64, 48)
    got = enc(x, ("block1", "block3", "embedding"))
    with torch.no_grad():  # by hand: patch embed, positions, blocks; drop the class token; lay tokens on the grid
        t = net._pos_embed(net.patch_embed(normalise(x)))
        outs = []
        for blk in net.blocks:
            t = blk(t)
            outs.append(t)
        grid = lambda tok: tok[:, net.num_prefix_tokens:].transpose(1, 2).reshape(2, 192, 4, 3)  # noqa: E731
        emb = net.forward_head(net.norm(t), pre_logits=True)
    torch.testing.assert_close(got["block1"], grid(outs[2]), rtol=1e-4, atol=1e-5)  # depth 12: blocks 3 and 9
    torch.testing.assert_close(got["block3"], grid(outs[8]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got["embedding"], emb, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["tv:mobilenet_v3_small", "timm:convnext_atto"])
def test_cnn_tap_shapes_match_declared_strides(name):
    enc = create_encoder(name)
    out = enc(torch.rand(1, 3, 64, 64), tuple(enc.taps))
    for tap in enc.taps.values():
        if tap.stride is None:
            assert out[tap.name].shape == (1, tap.channels)
        else:
            assert out[tap.name].shape == (1, tap.channels, 64 // tap.stride, 64 // tap.stride), tap
    assert {"block1", "block4", "embedding"} <= set(enc.taps)
    a, b = create_encoder(name, seed=4), create_encoder(name, seed=4)
    assert a.fingerprint() == b.fingerprint() != create_encoder(name, seed=5).fingerprint()


def test_eval_cli_with_a_timm_model(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "harness", "eval", "--encoder", "timm:resnet18", "--task",
                           "synth_count", "--limit", "60", "--epochs", "1", "--grid", "single", "--device", "cpu",
                           "--out", str(tmp_path), "--json"], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    rec = json.loads(proc.stdout)
    assert rec["encoder"] == "timm:resnet18" and rec["task"] == "synth_count" and rec["n"]["train"] <= 60
    assert rec["encoder_info"]["extra"]["family"] == "timm" and 0.0 <= rec["test"] <= 1.0
    assert rec["encoder_fingerprint"] == create_encoder("timm:resnet18").fingerprint()
