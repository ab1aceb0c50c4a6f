"""Every checkpoint format yields exactly the torchvision ResNet-50 backbone it was built from.

The files mimic the published ones (containers, prefixes, heads, momentum encoders, queues),
built from one random torchvision ResNet-50 state dict, the reference.
"""

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from encoders.adapters import FORMATS, detect_format, load_backbone, read_checkpoint
from encoders.checkpoint import save_harness_checkpoint
from encoders.registry import create_encoder
from harness.common.errors import HarnessError

from ..pickles import WritesMarker

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    torch.manual_seed(123)
    net = torchvision.models.resnet50(weights=None)
    for m in net.modules():  # non-trivial BatchNorm statistics, so buffers are compared too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.num_batches_tracked.fill_(4321)
    return {k: v.clone() for k, v in net.state_dict().items()}


def backbone_of(ref):
    return {k: v for k, v in ref.items() if not k.startswith("fc.")}


def prefixed(state, prefix):
    return {prefix + k: v for k, v in state.items()}


def moco(ref, v2: bool):
    bb = backbone_of(ref)
    head = ({"fc.0.weight": torch.randn(2048, 2048), "fc.0.bias": torch.randn(2048),
             "fc.2.weight": torch.randn(128, 2048), "fc.2.bias": torch.randn(128)} if v2 else
            {"fc.weight": torch.randn(128, 2048), "fc.bias": torch.randn(128)})
    q = prefixed({**bb, **head}, "module.encoder_q.")
    k = prefixed({n: v + 1 for n, v in {**bb, **head}.items()}, "module.encoder_k.")  # the momentum encoder differs
    sd = {**q, **k, "module.queue": torch.randn(128, 16), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    return {"epoch": 200, "arch": "resnet50", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}


def swav(ref, nested: bool):
    sd = prefixed({**backbone_of(ref), "projection_head.0.weight": torch.randn(2048, 2048),
                   "projection_head.0.bias": torch.randn(2048), "projection_head.1.weight": torch.randn(2048),
                   "projection_head.3.weight": torch.randn(128, 2048), "prototypes.weight": torch.randn(3000, 128)},
                  "module.")
    return {"epoch": 800, "state_dict": sd} if nested else sd


def vissl(ref):
    trunk = prefixed(backbone_of(ref), "_feature_blocks.")
    heads = {"0.clf.0.weight": torch.randn(128, 2048), "0.clf.0.bias": torch.randn(128)}
    return {"classy_state_dict": {"base_model": {"model": {"trunk": trunk, "heads": heads}, "meta": {}},
                                  "train_phase_idx": 799}, "phase_idx": 799, "iteration": 1000}


def simsiam(ref):
    proj = {f"fc.{i}.weight": torch.randn(8, 8) for i in (0, 3, 6)}
    pred = {"predictor.0.weight": torch.randn(512, 2048), "predictor.3.weight": torch.randn(2048, 512)}
    return {"epoch": 100, "state_dict": {**prefixed({**backbone_of(ref), **proj}, "module.encoder."),
                                         **prefixed(pred, "module.")}}


def virb(ref):
    return prefixed(ref, "model.")  # ViRB files keep model.fc.*


def dino_full(ref):
    """DINO's checkpoint.pth for a ResNet: batch norms make main_dino.py DDP-wrap the teacher too, so both
    carry `module.backbone.`; the DINO head sits beside the backbone; the student differs (it is not used)."""
    head = {"head.mlp.0.weight": torch.randn(64, 2048), "head.last_layer.weight_v": torch.randn(256, 64)}
    teacher = prefixed({**prefixed(backbone_of(ref), "backbone."), **head}, "module.")
    student = {k: v + 1 for k, v in teacher.items()}
    return {"student": student, "teacher": teacher, "epoch": 100, "optimizer": {"state": {}, "param_groups": []},
            "args": argparse.Namespace(arch="resnet50"), "dino_loss": {"center": torch.randn(1, 256)}}


def mocov3(ref):
    """MoCo v3's ResNet-50: the base encoder's fc is a projector MLP with batch norms; momentum encoder and
    predictor beside it."""
    proj = {"fc.0.weight": torch.randn(64, 2048), "fc.1.weight": torch.ones(64), "fc.1.running_mean": torch.zeros(64),
            "fc.1.num_batches_tracked": torch.tensor(5), "fc.3.weight": torch.randn(32, 64)}
    bb = {**backbone_of(ref), **proj}
    sd = {**prefixed(bb, "module.base_encoder."), **prefixed({k: v + 1 for k, v in bb.items()},
                                                            "module.momentum_encoder."),
          "module.predictor.0.weight": torch.randn(64, 32)}
    return {"epoch": 100, "arch": "resnet50", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []},
            "scaler": {"scale": 65536.0}}


BUILDERS = {
    "moco_v1": ("moco", lambda r: moco(r, v2=False)),
    "moco_v2": ("moco", lambda r: moco(r, v2=True)),
    "swav_flat": ("swav", lambda r: swav(r, nested=False)),
    "swav_nested": ("swav", lambda r: swav(r, nested=True)),
    "vissl_pirl": ("vissl", vissl),
    "simsiam": ("simsiam", simsiam),
    "virb": ("virb", virb),
    "torchvision": ("torchvision", lambda r: dict(r)),
    "dino_rn50_release": ("torchvision", backbone_of),  # dino_resnet50_pretrain.pth: flat, no fc
    "dino_rn50_full": ("dino", dino_full),
    "mocov3_rn50": ("mocov3", mocov3),
}


def assert_same_backbone(state, ref):
    expected = {k: v for k, v in backbone_of(ref).items() if not k.endswith("num_batches_tracked")}
    assert set(state) == set(expected)
    for k, v in expected.items():
        assert torch.equal(state[k], v), k


@pytest.mark.parametrize("case", sorted(BUILDERS))
def test_each_format_yields_the_reference_backbone(case, reference, tmp_path):
    fmt, build = BUILDERS[case]
    path = tmp_path / f"{case}.pth.tar"
    torch.save(build(reference), path)
    assert detect_format(read_checkpoint(path)).name == fmt
    backbone = load_backbone(path)
    assert backbone.format == fmt and backbone.arch == "resnet50"
    assert_same_backbone(backbone.state, reference)
    forced = load_backbone(path, fmt)  # the explicit --format gives the same
    assert_same_backbone(forced.state, reference)


@pytest.mark.parametrize(("case", "container", "prefix"), [("dino_rn50_full", "teacher", "module.backbone."),
                                                           ("mocov3_rn50", "state_dict", "module.base_encoder.")])
def test_resnet_releases_name_a_missing_or_unexpected_key_as_the_file_spells_it(case, container, prefix,
                                                                                  reference, tmp_path):
    obj = BUILDERS[case][1](reference)
    del obj[container][prefix + "layer2.1.bn1.running_var"]
    torch.save(obj, tmp_path / "missing.pth")
    missing = rf"1 backbone weights missing: {re.escape(prefix)}layer2\.1\.bn1\.running_var\."
    with pytest.raises(HarnessError, match=missing):
        load_backbone(tmp_path / "missing.pth")
    obj = BUILDERS[case][1](reference)
    obj[container][prefix + "layer4.2.extra.weight"] = torch.zeros(3)
    torch.save(obj, tmp_path / "extra.pth")
    with pytest.raises(HarnessError, match=rf"1 unexpected keys: {re.escape(prefix)}layer4\.2\.extra\.weight\."):
        load_backbone(tmp_path / "extra.pth")


def test_harness_and_safetensors_formats(reference, tmp_path):
    bb = backbone_of(reference)
    ours = save_harness_checkpoint(tmp_path / "mine.pt", "resnet50",
                                   {**bb, "projector.0.weight": torch.randn(4, 4)},
                                   {"method": "simclr", "data": "synth", "epochs": 3})
    b = load_backbone(ours)
    assert b.format == "harness" and b.meta["method"] == "simclr"
    assert_same_backbone(b.state, reference)
    st = tmp_path / "tv.safetensors"
    save_file({k: v.contiguous() for k, v in reference.items()}, str(st))
    assert_same_backbone(load_backbone(st).state, reference)


def test_same_weights_share_a_fingerprint_whatever_the_format(reference, tmp_path):
    paths = {}
    for case in ("moco_v2", "vissl_pirl", "torchvision"):
        paths[case] = tmp_path / f"{case}.pt"
        torch.save(BUILDERS[case][1](reference), paths[case])
    # a copy without the BatchNorm step counters (older files lack them) is the same weights
    paths["no_counters"] = tmp_path / "no_counters.pt"
    torch.save({k: v for k, v in reference.items() if "num_batches_tracked" not in k}, paths["no_counters"])
    fps = {case: create_encoder(str(p)).fingerprint() for case, p in paths.items()}
    assert len(set(fps.values())) == 1, fps
    other = dict(reference)
    other["layer4.2.conv3.weight"] = other["layer4.2.conv3.weight"].clone()
    other["layer4.2.conv3.weight"][0, 0, 0, 0] += 1e-3
    torch.save(other, tmp_path / "other.pt")
    assert create_encoder(str(tmp_path / "other.pt")).fingerprint() != fps["torchvision"]
    # and the loaded encoder computes what torchvision computes with the reference weights
    net = torchvision.models.resnet50(weights=None)
    net.load_state_dict(reference)
    net.fc = torch.nn.Identity()
    net.eval()
    x = torch.rand(2, 3, 64, 64)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = net((x - mean) / std)
    got = create_encoder(str(paths["moco_v2"]))(x, ("embedding",))["embedding"]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_wrong_prefix_names_missing_keys(reference, tmp_path):
    bad = moco(reference, v2=True)
    bad["state_dict"] = {k.replace("module.encoder_q.", "module.encoder_x."): v for k, v in bad["state_dict"].items()}
    path = tmp_path / "wrong_prefix.pth"
    torch.save(bad, path)
    with pytest.raises(HarnessError, match=r"missing: module\.encoder_q\.conv1\.weight"):
        load_backbone(path, "moco")
    with pytest.raises(HarnessError, match=r"missing: conv1\.weight.*No known checkpoint format"):
        load_backbone(path)  # nothing recognised: reported against torchvision's names
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "harness", "eval", "--encoder", str(path), "--task", "synth_count",
                           "--format", "moco", "--device", "cpu"], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    n_weights = sum(1 for k in backbone_of(reference) if not k.endswith("num_batches_tracked"))
    assert "module.encoder_q.conv1.weight" in lines[0] and f"{n_weights} backbone weights missing" in lines[0]


def test_shape_mismatch_and_leftover_keys_are_refused(reference, tmp_path):
    wide = dict(reference)
    wide["layer1.0.conv1.weight"] = torch.randn(32, 64, 1, 1)
    torch.save(wide, tmp_path / "wide.pt")
    with pytest.raises(HarnessError, match=r"shapes differ: layer1\.0\.conv1\.weight \(32, 64, 1, 1\)"):
        load_backbone(tmp_path / "wide.pt")
    extra = {**reference, "layer5.0.conv1.weight": torch.randn(1)}
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(HarnessError, match=r"unexpected keys: layer5\.0\.conv1\.weight"):
        load_backbone(tmp_path / "extra.pt")
    missing = {k: v for k, v in reference.items() if k != "layer3.5.bn2.running_var"}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(HarnessError, match=r"1 backbone weights missing: layer3\.5\.bn2\.running_var"):
        load_backbone(tmp_path / "missing.pt")


def test_code_running_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "payload": WritesMarker(marker)}, path)
    with pytest.raises(HarnessError, match=r"refused to load .*asks pickle for io\.open.*weights_only=True"):
        create_encoder(str(path))
    assert not marker.exists()
    torch.load(path, weights_only=False)  # proof that the file really would have run code
    assert marker.exists()


def test_unknown_format_name_is_a_usage_error(reference, tmp_path):
    torch.save(reference, tmp_path / "r.pt")
    with pytest.raises(HarnessError, match="unknown checkpoint format 'mocco'; did you mean: moco") as exc:
        load_backbone(tmp_path / "r.pt", "mocco")
    assert exc.value.exit_code == 2
    assert set(FORMATS) >= {"moco", "swav", "vissl", "simsiam", "virb", "torchvision", "harness", "dino", "mocov3",
                            "mae", "dinov2", "timm_vit", "open_clip", "open_clip_quickgelu"}
