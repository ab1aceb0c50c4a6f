"""benchmarks/pretrain_probe.py: labels from pixels, the probe's measures on features whose answer is known, and
the loading of a pretraining checkpoint's backbone."""

import numpy as np
import pytest
import torch

from encoders.pretrain.base import make_backbone


@pytest.fixture
def bench(load_benchmark):
    return load_benchmark("pretrain_probe")


def test_image_labels_by_hand(bench):
    imgs = np.zeros((3, 2, 2, 3), np.uint8)
    imgs[0, ..., 0] = 200  # red, mean 200/3/255 = 0.261
    imgs[1, ..., 2] = 90  # blue, mean 0.118
    imgs[2] = 255  # white, mean 1.0; ties between channels go to the first
    imgs[2, 0, 0, 1] = 0  # one green pixel off: red and blue tie at 1.0
    got = bench.image_labels(imgs, np.array([0.2, 0.5, 0.9]))
    assert got["brightness"].tolist() == [1, 0, 3]
    assert got["colour"].tolist() == [0, 2, 0]


def test_probe_on_features_with_known_answers(bench):
    rng = np.random.default_rng(0)
    n, m = 200, 80
    labels = {lab: rng.integers(0, 4, size=k) for lab, k in (("tr", n), ("va", m))}
    tr = {lab: labels["tr"] for lab in bench.LABELS}
    va = {lab: labels["va"] for lab in bench.LABELS}
    tr["count"] = rng.integers(0, 4, size=n)  # noise for one label: kNN near chance
    va["count"] = rng.integers(0, 4, size=m)
    # one-hot of the label plus a large shared offset: cosine kNN still separates (offset is common),
    # every unit vector nearly the same (mean_cos near 1), the linear probe exact
    def feats(y):
        return torch.from_numpy(np.eye(4)[y] + 5.0).float()
    out = bench.probe(feats(labels["tr"]), feats(labels["va"]), tr, va)
    assert out["knn_shape_cls"] == 1.0 and out["knn_shape_cls_centred"] == 1.0
    assert out["linear_shape_cls"] == 1.0
    assert out["knn_count"] < 0.5
    unit = torch.nn.functional.normalize(feats(labels["tr"]).double(), dim=1)
    assert out["mean_cos"] == pytest.approx(float((unit.mean(0) ** 2).sum()), abs=1e-4)
    assert out["mean_cos"] > 0.95


def test_load_backbone_reads_a_pretrain_checkpoint(tmp_path, bench):
    net, _ = make_backbone("resnet18", 0)
    with torch.no_grad():
        net.conv1.weight.mul_(2)
    path = tmp_path / "enc.pt"
    torch.save({"format": "harness-pretrain", "arch": "resnet18", "state_dict": net.state_dict()}, path)
    got = bench.load_backbone(str(path))
    assert torch.equal(got.conv1.weight, net.conv1.weight) and not got.training
    init = bench.load_backbone("init")
    assert torch.allclose(init.conv1.weight * 2, net.conv1.weight)
