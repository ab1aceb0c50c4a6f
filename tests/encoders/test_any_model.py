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
    """timm and torchvision ResNet-18 share parameter names: same weights must give the same taps,
    the dilated last stage (timm's output_stride=16 twin, run with these weights) included."""
    enc = create_encoder("timm:resnet18", seed=1)
    ref: ResNetTaps = build_resnet("resnet18", seed=5).eval()
    enc.model.net.load_state_dict(ref.state_dict(), strict=True)
    names = ("conv", "block1", "block2", "block3", "block4", "embedding", "block4_os16")
    assert [(t.name, t.channels, t.stride, t.derived) for t in enc.taps.values()] == [
        (t.name, t.channels, t.stride, t.derived) for t in ref.taps if t.name in names]
    fingerprint = enc.fingerprint()
    x = torch.rand(2, 3, 64, 64)
    got = enc(x, names)
    with torch.no_grad():
        want = ref(normalise(x), names)
    for n in names[:-1]:
        torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-5)
    # The dilated tap is timm's own output_stride=16 geometry (its BasicBlocks dilate the first block's
    # second conv, where torchvision's keep it at 1), with the same weights.
    import timm

    twin = timm.create_model("resnet18", pretrained=False, features_only=True, output_stride=16).eval()
    twin.load_state_dict(ref.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(got["block4_os16"], twin(normalise(x))[-1], rtol=1e-4, atol=1e-5)
    assert got["block4_os16"].shape[-2:] == (4, 4)
    alone = enc(x, ("block1", "block4_os16"))  # served by the dilated twin alone
    torch.testing.assert_close(alone["block1"], got["block1"])
    torch.testing.assert_close(alone["block4_os16"], got["block4_os16"])
    # The twin holds no weights of its own: nothing added to the state dict or the fingerprint.
    assert enc.fingerprint() == fingerprint and all(not k.startswith("_dilated") for k in enc.state_dict())


def test_vit_taps_are_every_block_on_the_patch_grid():
    enc = create_encoder("timm:vit_tiny_patch16_224", seed=0)
    net = enc.model.net
    assert [(t.name, t.channels, t.stride) for t in enc.taps.values()] == [
        *((f"block{i}", 192, 16) for i in range(1, 13)), ("embedding", 192, None)]
    assert enc.info.extra["embedding"].startswith("class token") and enc.info.extra["patch_size"] == 16
    x = torch.rand(2, 3, 64, 48)
    got = enc(x, ("block3", "block12", "embedding"))
    with torch.no_grad():  # by hand: patch embed, positions, blocks; drop the class token; lay tokens on the grid
        t = net._pos_embed(net.patch_embed(normalise(x)))
        outs = []
        for blk in net.blocks:
            t = blk(t)
            outs.append(t)
        grid = lambda tok: tok[:, net.num_prefix_tokens:].transpose(1, 2).reshape(2, 192, 4, 3)  # noqa: E731
        emb = net.norm(t)[:, 0]  # the class token after the final norm
    torch.testing.assert_close(got["block3"], grid(outs[2]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got["block12"], grid(outs[11]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got["embedding"], emb, rtol=1e-4, atol=1e-5)
    assert enc(x, ("embedding",))["embedding"].shape == (2, 192)  # the embedding alone
    # A side that is not a multiple of the patch is padded to the next one: 70 px -> a 5-row grid.
    assert enc(torch.rand(1, 3, 70, 64), ("block1",))["block1"].shape == (1, 192, 5, 4)


def test_torchvision_vit_taps_equal_its_own_forward():
    """tv:vit_b_16's class-token embedding equals torchvision's forward at its native 224 px (heads
    removed), and other sizes run with resampled positions."""
    enc = create_encoder("tv:vit_b_16", seed=0)
    net = enc.model.net
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        tokens = net.encoder(torch.cat([net.class_token, net._process_input(normalise(x))], dim=1))
    torch.testing.assert_close(enc(x, ("embedding",))["embedding"], tokens[:, 0], rtol=1e-4, atol=1e-4)
    out = enc(torch.rand(2, 3, 64, 48), ("block2", "embedding"))
    assert out["block2"].shape == (2, 768, 4, 3) and out["embedding"].shape == (2, 768)


# SqueezeNet's unpadded stem and ceil-mode pools leave maps a pixel off the nominal stride (31/15/7/3 at 64).
@pytest.mark.parametrize("name, slack", [("tv:mobilenet_v3_small", 0), ("timm:convnext_atto", 0),
                                         ("tv:squeezenet1_1", 1),
                                         ("timm:swin_tiny_patch4_window7_224", 0)])  # channels-last, any size
def test_cnn_tap_shapes_match_declared_strides(name, slack):
    enc = create_encoder(name)
    out = enc(torch.rand(1, 3, 64, 64), tuple(enc.taps))
    for tap in enc.taps.values():
        if tap.stride is None:
            assert out[tap.name].shape == (1, tap.channels)
        else:
            got = out[tap.name].shape
            assert got[:2] == (1, tap.channels) and all(abs(s - 64 // tap.stride) <= slack for s in got[2:]), tap
    assert {"block1", "block3", "embedding"} <= set(enc.taps)
    a, b = create_encoder(name, seed=4), create_encoder(name, seed=4)
    assert a.fingerprint() == b.fingerprint() != create_encoder(name, seed=5).fingerprint()


def test_an_architecture_of_one_input_size_fails_in_one_line():
    from harness.common.errors import HarnessError

    enc = create_encoder("timm:cait_xxs24_224")  # a fixed position table and class-attention
    with pytest.raises(HarnessError, match=r"cannot take a 64x64 input .* --resolution"):
        enc(torch.rand(1, 3, 64, 64), ("embedding",))


def test_torchvision_taps_skip_the_classifier_and_fixed_size_pools():
    """SqueezeNet's last tap is its last Fire module (512 channels), not the 1x1 classifier conv to
    1000 class maps; VGG's stride-32 tap is its last max-pool, not the adaptive pool to 7x7."""
    squeeze = create_encoder("tv:squeezenet1_1")
    assert squeeze.model.node["block3"] == "features.12.cat" and squeeze.taps["block3"].channels == 512
    assert "block4" not in squeeze.taps
    vgg = create_encoder("tv:vgg11_bn")
    assert vgg.model.node["block4"] != "avgpool" and vgg.taps["block4"].channels == 512


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
    enc = create_encoder("timm:resnet18")
    assert rec["encoder_fingerprint"] == enc.fingerprint()
    # the card's cost at the run's input size: parameters and multiply-adds per image
    assert rec["encoder_cost"] == {**enc.cost(64), "resolution": 64} and rec["encoder_cost"]["params"] == 11_176_512
