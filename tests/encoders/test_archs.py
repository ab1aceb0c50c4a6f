"""The architecture registry (encoders/archs): declared taps match a forward pass, widening scales every width,
v2 is pre-activation, FLOPs match hand counts, RevNet's reversible backward equals autograd's, and names
(widened ones included) resolve as encoders with a card that states their cost."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from encoders.archs import arch_card, arch_cost, arch_names, build_arch, widened_patterns
from encoders.archs.resnet_v1 import WidenedResNetV1
from encoders.base import EncoderInfo, FrozenEncoder, Tap, TapModel, model_cost
from encoders.registry import create_encoder
from encoders.resnet import seeded_resnet
from harness.common.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]
SIZE = 64
# One instance per family: narrow widening factors keep the real forward passes small; the big ones run on the
# meta device (shapes only, no arithmetic).
FAMILIES = {"resnet18_x1": "cpu", "resnet50_x1": "cpu", "resnetv2_18_x1": "cpu", "resnetv2_50_x1": "cpu",
            "revnet50_x1": "cpu", "vgg19_bn": "meta", "mobilenet_v2": "cpu", "shufflenet_v2_x1_0": "cpu",
            "squeezenet1_1": "cpu", "efficientnet_lite0": "cpu", "vit_tiny_patch16": "cpu", "vit_small_patch16": "meta"}
NOMINAL = {"squeezenet1_1"}  # unpadded stem and ceil-mode pools: maps one pixel short of size / stride


def _build(name: str, device: str) -> TapModel:
    with torch.device(device):
        return build_arch(name, seed=0).eval()


def test_every_registered_architecture_has_a_family_instance_here():
    families = {arch_card(n)[0] for n in arch_names()}
    assert families == {arch_card(n)[0] for n in FAMILIES}
    assert widened_patterns() == ["resnet18_xK", "resnet50_xK", "resnetv2_18_xK", "resnetv2_50_xK", "revnet50_xK"]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_declared_taps_match_a_forward_pass(name):
    device = FAMILIES[name]
    model = _build(name, device)
    taps = model.taps
    strides = [t.stride for t in taps if t.spatial and not t.derived]
    assert strides == sorted(strides)  # shallow to deep
    if not name.startswith("vit"):  # a CNN declares one map per stride (a ViT: every block on the patch grid)
        assert len(set(strides)) == len(strides)
    assert taps[-1].name == "embedding" or any(t.derived for t in taps)
    x = torch.rand(2, 3, SIZE, SIZE, device=device)
    with torch.no_grad():
        out = model(x, tuple(t.name for t in taps))
        alone = model(x)  # the pretraining call: the embedding
    for t in taps:
        got = out[t.name]
        if not t.spatial:
            assert got.shape == (2, t.channels), t
            continue
        assert got.shape[:2] == (2, t.channels), t
        if name in NOMINAL:  # declared nominal stride: ceil(size / stride) or one less, said so on the card
            assert SIZE // t.stride - 1 <= got.shape[2] <= SIZE // t.stride and got.shape[2] == got.shape[3], t
        else:
            assert got.shape[2:] == (SIZE // t.stride, SIZE // t.stride), t
    assert alone.shape == out["embedding"].shape
    if device == "cpu":
        torch.testing.assert_close(alone, out["embedding"])
        shallow = taps[0].name  # running only as deep as asked gives the same map
        torch.testing.assert_close(model(x, (shallow,))[shallow], out[shallow])


def test_the_dilated_tap_runs_the_last_stage_at_stride_16():
    for name in ("resnetv2_50_x1", "revnet50_x1", "resnet18_x1"):
        model = _build(name, "cpu")
        tap = {t.name: t for t in model.taps}["block4_os16"]
        assert tap.derived and tap.stride == 16
        with torch.no_grad():
            out = model(torch.rand(1, 3, SIZE, SIZE), ("block4_os16", "block4"))
        assert out["block4_os16"].shape == (1, tap.channels, 4, 4) and out["block4"].shape[-1] == 2
        # the geometry is restored afterwards
        again = model(torch.rand(1, 3, SIZE, SIZE), ("block4",))["block4"]
        assert again.shape[-1] == 2


WIDTH_TAPS = ("conv", "block1", "block2", "block3", "block4", "embedding")


@pytest.mark.parametrize("base", ["resnet18", "resnet50", "resnetv2_18", "resnetv2_50", "revnet50"])
@pytest.mark.parametrize("k", [1, 2, 8, 16])
def test_widening_multiplies_every_width_by_k_over_4(base, k):
    std, wide = _build(f"{base}_x4", "meta"), _build(f"{base}_x{k}", "meta")
    w4 = {t.name: t.channels for t in std.taps}
    wk = {t.name: t.channels for t in wide.taps}
    assert {n: wk[n] * 4 for n in WIDTH_TAPS} == {n: w4[n] * k for n in WIDTH_TAPS}
    # every weight: each channel dimension scaled, the RGB input of the stem left at 3, nothing added or lost
    s4, sk = std.state_dict(), wide.state_dict()
    assert s4.keys() == sk.keys()
    for key, t4 in s4.items():
        if t4.dim() == 0:
            continue
        expect = [d * k // 4 for d in t4.shape]
        if t4.dim() == 4:
            expect[2:] = t4.shape[2:]  # kernel size
            if t4.shape[1] == 3 and key.endswith("conv1.weight") and key.count(".") == 1:
                expect[1] = 3
        assert list(sk[key].shape) == expect, key


def test_kolesnikov_widths_of_resnet50_and_the_standard_width_is_torchvision():
    for k in (1, 4, 16):
        r50 = {t.name: t.channels for t in _build(f"resnet50_x{k}", "meta").taps}
        assert r50["conv"] == 16 * k and r50["embedding"] == 512 * k  # stem 16k, pre-logits 512k (Section 3.1)
    # k = 4 is torchvision's resnet50 itself, the same weights for the same seed
    assert create_encoder("resnet50_x4", seed=3).fingerprint() == create_encoder("resnet50", seed=3).fingerprint()
    # and the widened builder at k = 4 reproduces torchvision's layout exactly
    with torch.device("meta"):
        ours = WidenedResNetV1(torchvision_bottleneck(), (3, 4, 6, 3), 4).state_dict()
        ref = {k: v for k, v in seeded_resnet("resnet50", 0).state_dict().items() if not k.startswith("fc.")}
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in ref.items()}


def torchvision_bottleneck():
    from torchvision.models.resnet import Bottleneck

    return Bottleneck


def test_v2_is_pre_activation_and_v1_is_not():
    v2, v1 = _build("resnetv2_50_x1", "cpu"), _build("resnet50_x1", "cpu")
    x = torch.rand(2, 3, SIZE, SIZE)
    unit = v2.layer2[0]
    seen = {}

    def keep(key):
        def hook(module, inp, out):
            seen[key] = inp[0].clone()

        return hook

    unit.downsample.register_forward_hook(keep("shortcut_in"))
    unit.bn1.register_forward_hook(keep("unit_in"))
    with torch.no_grad():
        out = v2(x, ("block1", "block2"))
        # the projection shortcut reads the unit's input after BN-ReLU (pre-activation), not the raw input
        torch.testing.assert_close(seen["shortcut_in"], torch.relu(unit.bn1(seen["unit_in"])))
        assert unit.bn1.num_features == seen["unit_in"].shape[1]  # the unit opens with BN on its input
        # stage outputs are sums, not rectified (v1's end in ReLU)
        assert (out["block2"] < 0).any() and (out["block1"] < 0).any()
        v1_out = v1(x, ("block1", "block2"))
        assert (v1_out["block1"] >= 0).all() and (v1_out["block2"] >= 0).all()
    assert not hasattr(v2, "bn1") and hasattr(v1, "bn1")  # v2's stem convolution is not normalised


class OneConv(TapModel):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=True)
        self.taps = (Tap("conv", 8, 2), Tap("embedding", 8, None))

    def forward(self, x, taps):
        y = self.conv(x)
        return {"conv": y, "embedding": y.mean((2, 3))}


def test_flops_of_one_convolution_by_hand():
    cost = model_cost(OneConv(), 32)
    # 16 x 16 outputs x 8 channels, each 3 x 3 x 3 multiply-adds (the bias add is not counted)
    assert cost == {"params": 8 * 27 + 8, "flops": 16 * 16 * 8 * 27, "resolution": 32}


def _hooked_macs(model: nn.Module, size: int) -> int:
    """Multiply-adds of every Conv2d / Linear in a real forward, counted from their output shapes."""
    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            total += out[0].numel() * (m.in_channels // m.groups) * kh * kw
        else:
            total += out[0].numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.rand(1, 3, size, size))
    for h in handles:
        h.remove()
    return total


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnetv2_18_x1", "revnet50_x1", "shufflenet_v2_x1_0"])
def test_flops_equal_a_count_over_the_layers(name):
    """Depthwise (grouped) convolutions included; the meta-device count equals a real forward's layer sum."""
    model = _build(name, "cpu")
    assert arch_cost(name, SIZE)["flops"] == _hooked_macs(model, SIZE)


def test_flops_of_published_models():
    r50 = arch_cost("resnet50", 224)
    # torchvision's table: ResNet-50 4.09 GFLOPs with its 2048 x 1000 classifier; the backbone alone is 2.048M less
    assert r50["flops"] + 2048 * 1000 == pytest.approx(4.09e9, abs=0.005e9)
    assert r50["params"] + 2048 * 1000 + 1000 == 25_557_032  # torchvision's parameter count
    assert arch_cost("vgg19_bn", 224)["flops"] + 4096 * 1000 == pytest.approx(19.63e9, abs=0.005e9)
    assert arch_cost("resnet18", 224)["flops"] == pytest.approx(1.81e9, abs=0.005e9)  # Table of the low-resource study


def test_vit_flops_by_hand():
    # ViT-Tiny/16 at 64 px: 16 patches + the class token, width 192, 12 blocks; per block qkv, proj and the 4x MLP
    # are 12 D^2 multiply-adds per token, attention 2 N^2 D; the patch embedding 16 x (3*16*16) x D
    n, d = 17, 192
    expect = 12 * (12 * d * d * n + 2 * n * n * d) + 16 * 768 * d
    assert arch_cost("vit_tiny_patch16", SIZE)["flops"] == expect


def test_encoder_card_and_cost():
    enc = create_encoder("mobilenet_v2", seed=1)
    cost = enc.info.extra["cost"]
    assert cost["params"] == sum(p.numel() for p in enc.model.parameters())
    assert cost["flops"] == {str(r): arch_cost("mobilenet_v2", r)["flops"] for r in (64, 224)}
    assert enc.cost(96) == {"params": cost["params"], "flops": model_cost(enc.model, 96)["flops"], "resolution": 96}
    assert create_encoder("mobilenet_v2", seed=1).fingerprint() == enc.fingerprint()
    assert create_encoder("mobilenet_v2", seed=2).fingerprint() != enc.fingerprint()
    # any FrozenEncoder has a cost, a tv:/timm: model or a file's
    r18 = FrozenEncoder(build_arch("resnet18"), EncoderInfo(name="r", arch="resnet18"))
    assert r18.cost(224) == {"params": 11_176_512, "flops": arch_cost("resnet18", 224)["flops"], "resolution": 224}
    sq = create_encoder("squeezenet1_1")
    assert "nominal" in sq.info.extra["strides"]


def test_widened_names_resolve_and_bad_factors_are_refused():
    enc = create_encoder("revnet50_x2")
    assert enc.info.arch == "revnet50_x2" and enc.info.extra["widening_factor"] == 2
    assert enc.taps["embedding"].channels == 1024
    for bad in ("resnet50_x0", "resnet50_x17", "resnetv2_50_xhalf", "revnet50_x"):
        with pytest.raises(UsageError, match="widening factor .* integer from 1 to 16"):
            build_arch(bad)
    with pytest.raises(UsageError, match="unknown architecture 'resnet51'.*resnet50_xK"):
        build_arch("resnet51")


def test_build_is_seeded_and_leaves_the_global_generator_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = build_arch("squeezenet1_1", seed=4).state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)
    b = build_arch("squeezenet1_1", seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _randomise_norms(model: nn.Module) -> None:
    """BatchNorm's initial scale 1 / shift 0 put ReLU inputs of constant (zero-padded) channels exactly at the
    kink, where a 1e-16 reconstruction error flips the derivative: move them off it, as training does."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g, dtype=m.weight.dtype) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g, dtype=m.bias.dtype) - 0.5)


def test_revnet_reversible_backward_equals_plain_autograd():
    net = build_arch("revnet50_x1", seed=0).double().train()
    _randomise_norms(net)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    weights = torch.linspace(-1, 1, 512, dtype=torch.float64)
    runs = {}
    for reversible in (True, False):
        model = copy.deepcopy(net).set_reversible(reversible)
        xi = x.clone().requires_grad_(True)
        out = model(xi)
        (out * weights).sum().backward()
        runs[reversible] = (model, xi.grad, out.detach())
    (rev, g_rev, o_rev), (plain, g_plain, o_plain) = runs[True], runs[False]
    assert torch.equal(o_rev, o_plain)
    # float64: the reconstruction of each unit's input from its output is exact to rounding, ~1e-12 relative
    torch.testing.assert_close(g_rev, g_plain, rtol=1e-8, atol=1e-10 * g_plain.abs().max().item())
    for (name, p), q in zip(rev.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-8, atol=1e-10 * q.grad.abs().max().item(), msg=name)
    # BatchNorm statistics moved once, as in the plain step (the recomputation does not count)
    for (key, a), b in zip(rev.state_dict().items(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b), key


def test_revnet_keeps_no_activations_inside_its_stages():
    def saved_bytes(model, x):
        held = {t.untyped_storage().data_ptr() for t in [x, *model.parameters(), *model.buffers()]}
        seen = {}

        def pack(t):
            s = t.untyped_storage()
            if s.data_ptr() not in held:
                seen[s.data_ptr()] = s.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x)
        return sum(seen.values())

    net = build_arch("revnet50_x1", seed=0).train()
    x = torch.randn(2, 3, 64, 64)
    rev, plain = saved_bytes(net.set_reversible(True), x), saved_bytes(net.set_reversible(False), x)
    # kept with the reversible backward, exactly: the stem (conv output = max-pool input, int64 pool indices),
    # the four stage outputs, the final BatchNorm's mean and inverse std and its ReLU's output; nothing inside a
    # stage. The plain run keeps every unit's activations besides.
    b = 2 * 4  # batch x float32
    stem = b * 64 * 32 * 32 + 2 * 8 * 64 * 16 * 16
    stages = b * (64 * 16 * 16 + 128 * 8 * 8 + 256 * 4 * 4 + 512 * 2 * 2)
    final = 2 * 4 * 512 + b * 512 * 2 * 2
    assert rev == stem + stages + final
    assert plain - rev > 5 * stages


def test_cli_states_costs_and_the_widened_pattern():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    listing = subprocess.run([sys.executable, "-m", "harness", "encoders"], capture_output=True, text=True, env=env,
                             cwd=ROOT, timeout=300)
    assert listing.returncode == 0, listing.stderr
    header = next(line for line in listing.stdout.splitlines() if " name " in line)
    assert all(f" {c} " in header for c in ("params", "GFLOPs@64", "GFLOPs@224"))
    row = next(line for line in listing.stdout.splitlines() if " mobilenet_v2 " in line)
    assert " 2.22M " in row and " 0.0244 " in row and " 0.299 " in row
    assert "resnet50_xK" in listing.stderr and "1..16" in listing.stderr and "multiply-adds" in listing.stderr
    bad = subprocess.run([sys.executable, "-m", "harness", "eval", "--encoder", "resnet50_x17", "--task",
                          "synth_count"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "widening factor" in bad.stderr and "1 to 16" in bad.stderr
