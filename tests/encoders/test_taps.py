"""Encoders declare their taps truthfully, stay frozen, and fold sequences."""

import pytest
import torch

from encoders import create_encoder
from encoders.resnet import build_resnet, infer_resnet_arch

WIDTHS = {"resnet18": (64, 64, 128, 256, 512), "resnet50": (64, 256, 512, 1024, 2048)}
ALL_TAPS = ("conv", "block1", "block2", "block3", "block4", "embedding")


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.parametrize("size", [64, 224])
def test_tap_shapes_match_declaration(arch, size):
    enc = create_encoder(arch)
    declared = enc.taps
    assert tuple(declared[t].channels for t in ALL_TAPS[:5]) == WIDTHS[arch]
    out = enc(torch.rand(2, 3, size, size), ALL_TAPS)
    for name in ALL_TAPS[:5]:
        tap = declared[name]
        assert out[name].shape == (2, tap.channels, size // tap.stride, size // tap.stride), name
    assert out["embedding"].shape == (2, WIDTHS[arch][-1]) and declared["embedding"].stride is None


def test_sequences_fold_and_unfold():
    enc = create_encoder("resnet18")
    x = torch.rand(2, 3, 3, 32, 32)
    seq = enc(x, ("embedding", "block2"))
    flat = enc(x.flatten(0, 1), ("embedding", "block2"))
    assert seq["embedding"].shape == (2, 3, 512) and seq["block2"].shape == (2, 3, 128, 4, 4)
    torch.testing.assert_close(seq["embedding"].flatten(0, 1), flat["embedding"])


def test_partial_depth_matches_full_run():
    enc = create_encoder("resnet18")
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(enc(x, ("block1",))["block1"], enc(x, ALL_TAPS)["block1"])


def test_unknown_tap_is_refused():
    with pytest.raises(KeyError, match="block9"):
        create_encoder("resnet18")(torch.rand(1, 3, 32, 32), ("block9",))


def test_random_init_is_seeded():
    a, b, c = create_encoder("resnet18", seed=1), create_encoder("resnet18", seed=1), create_encoder("resnet18", seed=2)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_encoder_is_frozen_even_when_asked_to_train():
    enc = create_encoder("resnet18")
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    enc.train()
    assert not enc.training and not any(m.training for m in enc.modules())
    assert not any(p.requires_grad for p in enc.parameters())
    out = enc(torch.rand(4, 3, 32, 32) * 3, ALL_TAPS)
    assert not out["embedding"].requires_grad
    for k, v in enc.state_dict().items():  # BatchNorm running statistics included
        assert torch.equal(v, before[k]), k


def test_state_dict_file_round_trip(tmp_path):
    net = build_resnet("resnet18", seed=3)
    state = net.state_dict()
    state["fc.weight"] = torch.zeros(10, 512)  # a classifier is dropped
    torch.save(state, tmp_path / "r18.pth")
    enc = create_encoder(str(tmp_path / "r18.pth"))
    assert enc.info.arch == "resnet18"
    assert enc.fingerprint() == create_encoder("resnet18", seed=3).fingerprint()
    assert infer_resnet_arch(build_resnet("resnet50").state_dict()) == "resnet50"
