"""Pretraining on any registered architecture: every method sizes its projector from the backbone's embedding,
shuffle-BN and SyncBN convert every family, and a run's checkpoint loads in eval strictly, same fingerprint."""

import copy

import pytest
import torch
from torch import nn

from encoders.archs import build_arch
from encoders.base import EncoderInfo, FrozenEncoder
from encoders.pretrain import create_method, get_method
from encoders.pretrain.base import apply_overrides, make_backbone
from encoders.pretrain.distributed import convert_sync_bn
from encoders.pretrain.shuffle_bn import _SplitMixin, convert_split_bn
from harness.common.errors import UsageError
from harness.common.taps import IMAGENET_MEAN, IMAGENET_STD

# one architecture per method, so that the five together cover BatchNorm-with-activation (timm), reversible
# units, pre-activation units, a BatchNorm-free transformer and a grouped-convolution net
CASES = {"simclr": "shufflenet_v2_x1_0", "mocov2": "efficientnet_lite0", "mocov1": "revnet50_x1",
         "swav": "vit_tiny_patch16", "byol": "resnetv2_18_x1"}
SMALL = {"mocov2": {"queue": "16", "bn_splits": "2"}, "mocov1": {"queue": "16", "bn_splits": "2"},
         "swav": {"prototypes": "10", "hidden": "32", "queue": "0"}, "byol": {"hidden": "32"}}
FAMILIES = ("resnet18_x1", "resnetv2_50_x1", "revnet50_x1", "mobilenet_v2", "shufflenet_v2_x1_0", "squeezenet1_1",
            "efficientnet_lite0", "vit_tiny_patch16")


def _first_linear(module: nn.Module) -> nn.Linear:
    return next(m for m in module.modules() if isinstance(m, nn.Linear))


@pytest.mark.parametrize("method", list(CASES))
def test_every_method_sizes_its_projector_from_the_embedding_and_steps(method):
    arch = CASES[method]
    width = {t.name: t for t in build_arch(arch).taps}["embedding"].channels
    cfg = apply_overrides(get_method(method).config(), SMALL.get(method, {}))
    m = create_method(method, cfg, arch, 0).train()
    assert _first_linear(m.projector).in_features == width
    if method.startswith("moco"):  # shuffle-BN: every BatchNorm of the backbone is split (timm's included)
        norms = [n for n in m.backbone.modules() if isinstance(n, nn.modules.batchnorm._BatchNorm)]
        assert norms and all(isinstance(n, _SplitMixin) for n in norms)
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(4, 3, 32, 32, generator=g) for _ in range(2)]
    loss, _ = m(views, 0)
    loss.backward()
    assert torch.isfinite(loss)
    first = next(p for p in m.backbone.parameters() if p.dim() == 4)  # the stem / patch-embedding convolution
    assert first.grad is not None and first.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", FAMILIES)
def test_batchnorm_conversions_keep_every_family_intact(arch):
    """Split BN (MoCo) and SyncBN (DDP on GPUs) replace every BatchNorm, activations of timm's norm-act layers
    included: in eval mode (plain statistics) the converted network computes exactly what it did."""
    model = build_arch(arch, seed=1).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        split = convert_split_bn(copy.deepcopy(model), 2).eval()
        synced = convert_sync_bn(copy.deepcopy(model)).eval()
        torch.testing.assert_close(split(x), ref)
        torch.testing.assert_close(synced(x), ref)
    kinds = {type(n).__name__ for n in split.modules() if isinstance(n, nn.modules.batchnorm._BatchNorm)}
    assert all(k.startswith("Split") for k in kinds)
    kinds = {type(n).__name__ for n in synced.modules() if isinstance(n, nn.modules.batchnorm._BatchNorm)}
    assert all(k.startswith("SyncBatchNorm") for k in kinds)
    assert split.state_dict().keys() == model.state_dict().keys() == synced.state_dict().keys()
    split.train()(torch.rand(4, 3, 32, 32))  # split statistics in training mode


def test_unknown_arch_is_a_usage_error_before_any_data_is_made(tmp_path):
    from encoders.pretrain.train import PretrainOptions, run_pretrain

    with pytest.raises(UsageError, match="--arch: unknown architecture 'resnet51'"):
        make_backbone("resnet51", 0)
    with pytest.raises(UsageError, match="widening factor"):
        make_backbone("revnet50_x32", 0)
    with pytest.raises(UsageError, match="did you mean: mobilenet_v2"):
        run_pretrain(PretrainOptions(method="simclr", arch="mobilnet_v2", out=tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()


def test_torchvision_resnet_backbones_are_unchanged():
    """The default arch keeps torchvision's weights and keys: old checkpoints and resumed runs still load."""
    from encoders.resnet import seeded_resnet

    net, width = make_backbone("resnet18", 5)
    ref = {k: v for k, v in seeded_resnet("resnet18", 5).state_dict().items() if not k.startswith("fc.")}
    assert width == 512 and net.state_dict().keys() == ref.keys()
    assert all(torch.equal(net.state_dict()[k], v) for k, v in ref.items())


def test_a_pretrained_mobilenet_loads_in_eval_with_its_fingerprint(tmp_path):
    from encoders.pretrain.train import PretrainOptions, run_pretrain
    from encoders.registry import create_encoder

    arch = "mobilenet_v2"
    result = run_pretrain(PretrainOptions(method="simclr", arch=arch, limit=8, batch_size=8, resolution=32, epochs=1,
                                          knn_every=0, device="cpu", amp=False, out=tmp_path / "runs",
                                          overrides={"dim": "16"}))
    ckpt = torch.load(result["checkpoint"], weights_only=True)
    assert ckpt["format"] == "harness-pretrain" and ckpt["arch"] == arch
    # the trained backbone, as the run left it (last.pt), in the architecture's own layout
    last = torch.load(tmp_path / "runs" / result["run_dir"].split("/")[-1] / "last.pt", weights_only=True)
    trained = {k[len("backbone."):]: v for k, v in last["method"].items() if k.startswith("backbone.")}
    counters = {k: torch.zeros_like(v) for k, v in trained.items() if k.endswith("num_batches_tracked")}
    assert counters and all(trained[k] > 0 for k in counters)  # BatchNorm steps: not weights, not in the file
    trained.update(counters)
    backbone = build_arch(arch)
    backbone.load_state_dict(trained, strict=True)
    reference = FrozenEncoder(backbone, EncoderInfo(name="x", arch=arch))

    name = result["run_dir"].split("/")[-1]
    enc = create_encoder(name)  # by its name, from the user encoders folder, strictly checked
    assert enc.info.arch == arch and enc.info.method == "SimCLR"
    assert enc.fingerprint() == reference.fingerprint() != create_encoder(arch, seed=0).fingerprint()
    x = torch.rand(2, 3, 32, 32)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    with torch.no_grad():
        torch.testing.assert_close(enc(x)["embedding"], backbone.eval()((x - mean) / std))
