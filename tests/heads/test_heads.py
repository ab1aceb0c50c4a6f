"""Head parameter counts against the ResNet-50 figures of docs/heads-and-taps.md, output shapes, the frozen OS16 tap."""

from __future__ import annotations

from functools import cache
from types import SimpleNamespace

import pytest
import torch
import torchvision

from encoders.base import EncoderInfo, FrozenEncoder
from encoders.resnet import DILATED_TAP, build_resnet
from heads import HEADS, count_parameters


def _task(num_outputs: int, frames: int = 1) -> SimpleNamespace:
    return SimpleNamespace(num_outputs=num_outputs, frames=frames, name="t")


@pytest.fixture(scope="module")
def r50_taps():
    return _encoder("resnet50", "meta").taps


@pytest.mark.parametrize("head, outputs, frames, expected", [
    ("unet", 1, 1, 99_689_988),
    ("siamese_unet", 1, 2, 110_843_204),
    ("fusion", 5, 2, 2_100_229),
    ("fusion", 400, 6, 6_497_168),
    ("linear", 1000, 1, 2_049_000),
    ("linear", 7, 1, 2049 * 7),
])
def test_parameter_counts_match_spec_for_resnet50(r50_taps, head, outputs, frames, expected):
    assert count_parameters(HEADS[head].build(r50_taps, _task(outputs, frames))) == expected


def test_widths_follow_the_encoder_taps():
    r18 = {t.name: t for t in build_resnet("resnet18").taps}
    unet = HEADS["unet"].build(r18, _task(1))
    # up(512, 256): Conv2d(512, 4*256, 3) + bias, the first decoder block for ResNet-18.
    assert count_parameters(unet.decoder.ups[0]) == 512 * 1024 * 9 + 1024
    siamese = HEADS["siamese_unet"].build(r18, _task(2))
    assert siamese.fuse["block4"].in_channels == 1024 and siamese.fuse["block4"].out_channels == 512


@cache
def _encoder(arch: str, device: str) -> FrozenEncoder:
    """Built once per session: random init of a ResNet-50 costs seconds."""
    if device == "meta":
        with torch.device("meta"):
            return FrozenEncoder(build_resnet(arch), EncoderInfo(name=arch, arch=arch))
    return FrozenEncoder(build_resnet(arch), EncoderInfo(name=arch, arch=arch))


# Meta tensors carry shapes without computing: ResNet-50 at 375x1242 costs nothing.
@pytest.mark.parametrize("arch, size, device", [
    ("resnet18", (64, 64), "cpu"), ("resnet18", (224, 224), "meta"), ("resnet18", (375, 1242), "meta"),
    ("resnet18", (61, 97), "cpu"),
    ("resnet50", (64, 64), "meta"), ("resnet50", (224, 224), "meta"), ("resnet50", (375, 1242), "meta"),
])
@pytest.mark.parametrize("head, outputs, frames", [
    ("unet", 1, 1), ("siamese_unet", 2, 2), ("deeplabv3plus", 7, 1), ("fusion", 5, 2), ("linear", 3, 1),
])
def test_output_shapes(arch, size, device, head, outputs, frames):
    enc = _encoder(arch, device)
    entry = HEADS[head]
    taps = entry.taps(_task(outputs, frames), enc.taps)
    with torch.device(device):
        module = entry.build(enc.taps, _task(outputs, frames)).eval()
    shape = (2, frames, 3, *size) if frames > 1 else (2, 3, *size)
    feats = enc(torch.rand(shape, device=device) if device == "cpu" else torch.empty(shape, device=device), taps)
    if head in ("unet", "siamese_unet", "deeplabv3plus"):
        with torch.no_grad():
            out = module(feats, size=size)
        assert tuple(out.shape) == (2, outputs, *size)
    else:
        with torch.no_grad():
            out = module(feats)
        assert tuple(out.shape) == (2, outputs)


def test_dilated_tap_matches_torchvision_dilation_with_the_same_weights():
    enc = _encoder("resnet50", "cpu")
    with torch.device("meta"):
        ref = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=[False, False, True]).eval()
    ref = ref.to_empty(device="cpu")
    missing, unexpected = ref.load_state_dict(enc.model.state_dict(), strict=False)  # every backbone tensor
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
    x = torch.rand(1, 3, 48, 80)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    out = enc(x, ("block4", DILATED_TAP))
    with torch.no_grad():
        norm = (x - enc.mean) / enc.std
        expected = torch.nn.Sequential(*list(ref.children())[:-2])(norm)
    assert enc.taps[DILATED_TAP].stride == 16
    assert out[DILATED_TAP].shape[-2:] == (3, 5) and out["block4"].shape[-2:] == (2, 3)
    torch.testing.assert_close(out[DILATED_TAP], expected, rtol=1e-4, atol=1e-4)
    # Frozen: same weights, no gradient, eval mode, and the strided geometry restored afterwards.
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())
    assert not any(p.requires_grad for p in enc.parameters()) and not enc.training
    assert enc.model.layer4[0].conv2.stride == (2, 2) and enc.model.layer4[1].conv2.dilation == (1, 1)
    torch.testing.assert_close(enc(x, ("block4",))["block4"], out["block4"])


def test_heads_train_and_deeplab_accepts_a_batch_of_one():
    enc = _encoder("resnet18", "cpu")
    for name, outputs, frames in (("deeplabv3plus", 3, 1), ("siamese_unet", 2, 2)):
        entry = HEADS[name]
        head = entry.build(enc.taps, _task(outputs, frames)).train()
        shape = (1, frames, 3, 32, 32) if frames > 1 else (1, 3, 32, 32)
        out = head(enc(torch.rand(shape), entry.taps(_task(outputs, frames), enc.taps)), size=(32, 32))
        out.sum().backward()
        assert all(p.grad is not None for p in head.parameters())


def test_fusion_rejects_the_wrong_number_of_frames():
    head = HEADS["fusion"].build({t.name: t for t in build_resnet("resnet18").taps}, _task(5, 2))
    with pytest.raises(ValueError, match="expects"):
        head({"embedding": torch.zeros(4, 6, 512)})


def test_linear_head_standardises_with_train_statistics_and_takes_a_batch_of_one():
    """Parameter-free BatchNorm before Linear: in training, batch statistics (float64 reference);
    at evaluation, the running train statistics; a training batch of one uses the running ones."""
    from heads.linear import LinearHead

    torch.manual_seed(0)
    head = LinearHead(6, 3)
    scales = torch.tensor([1e-3, 1e-1, 1.0, 10.0, 100.0, 1e3])
    x = torch.randn(64, 6) * scales + 5.0
    head.train()
    got = head({"embedding": x})
    xd = x.double()
    z = (xd - xd.mean(0)) / torch.sqrt(xd.var(0, unbiased=False) + head.norm.eps)
    want = z @ head.fc.weight.double().T + head.fc.bias.double()
    # float32 batch statistics: the mean of values near 5 is good to about 1e-6 (a few ulp), which is about 1e-3
    # in the units of the column whose std is 1e-3; the summation order (thread count) moves it within that
    torch.testing.assert_close(got.double(), want, rtol=1e-3, atol=2e-3)
    assert [n for n, _ in head.named_parameters()] == ["fc.weight", "fc.bias"]
    mean_before = head.norm.running_mean.clone()
    one = head({"embedding": x[:1]})  # no error, and running statistics untouched
    torch.testing.assert_close(head.norm.running_mean, mean_before)
    rm, rv = head.norm.running_mean.double(), head.norm.running_var.double()
    z1 = (xd[:1] - rm) / torch.sqrt(rv + head.norm.eps)
    torch.testing.assert_close(one.double(), z1 @ head.fc.weight.double().T + head.fc.bias.double(),
                               rtol=1e-4, atol=1e-4)
    head.eval()
    torch.testing.assert_close(head({"embedding": x[:5]}).double(), (((xd[:5] - rm) / torch.sqrt(rv + head.norm.eps))
                               @ head.fc.weight.double().T + head.fc.bias.double()), rtol=1e-4, atol=1e-4)
