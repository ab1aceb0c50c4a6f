"""Subset variants (paper Section 3.2), the seeded manifest, folder reading."""

import itertools
import json

import numpy as np
import pytest

from encoders.pretrain.data import (
    Manifest,
    ManifestImages,
    build_manifest,
    combine,
    epoch_batches,
    folder_manifest,
    linear_counts,
    log_counts,
    subset,
)
from harness.common.errors import HarnessError, UsageError


def _fake(num_classes=10, per_class=20):
    items = [f"0:c{c}/{i}.png" for c in range(num_classes) for i in range(per_class)]
    labels = [c for c in range(num_classes) for _ in range(per_class)]
    return Manifest([{"kind": "folder", "root": "/nowhere"}], items, labels, [f"c{c}" for c in range(num_classes)])


def test_imagenet_unbalanced_counts():
    lin = linear_counts(1000)
    assert lin[0] == 1 and lin[-1] == 1000 and sum(lin) == 500_500  # the paper's 500.5K
    log = log_counts(1000)
    assert log[0] == 1 and log[-1] == 1000
    assert all(a <= b for a, b in itertools.pairwise(log))
    # class n keeps round(exp(ln(1000) * (n-1) / 999)), computed independently here
    assert log[499] == round(1000 ** (499 / 999))


@pytest.mark.parametrize("variant,expected", [("lin", list(range(1, 11))), ("half", [10] * 10),
                                              ("quarter", [5] * 10), ("log", log_counts(10))])
def test_subset_keeps_the_variant_counts_per_class(variant, expected):
    sub = subset(_fake(), variant, seed=3)
    counts = np.bincount(sub.labels, minlength=10).tolist()
    assert counts == expected
    assert len(set(sub.items)) == len(sub.items)


def test_subsets_are_deterministic_from_the_seed_and_round_trip(tmp_path):
    a, b, c = subset(_fake(), "half", 1), subset(_fake(), "half", 1), subset(_fake(), "half", 2)
    assert a.items == b.items and a.digest() == b.digest()
    assert a.items != c.items
    a.save(tmp_path / "m.json")
    again = Manifest.load(tmp_path / "m.json")
    assert again.items == a.items and again.digest() == a.digest()
    obj = json.loads((tmp_path / "m.json").read_text())
    obj["items"][0] = "0:c9/evil.png"
    (tmp_path / "m.json").write_text(json.dumps(obj))
    with pytest.raises(HarnessError, match="sha256"):
        Manifest.load(tmp_path / "m.json")


def test_folder_manifest_reads_images_and_combination(tmp_path):
    from PIL import Image

    for root, classes in (("A", ("x", "y")), ("B", ("z",))):
        for cls in classes:
            (tmp_path / root / cls).mkdir(parents=True)
            for i in range(8):
                Image.fromarray(np.full((20, 30, 3), i * 10, np.uint8)).save(tmp_path / root / cls / f"{i}.png")
    m = folder_manifest(tmp_path / "A")
    assert len(m) == 16 and m.classes == ["x", "y"]
    img = ManifestImages(m, 16)[3]
    assert img.shape == (16, 16, 3) and int(img[0, 0, 0]) == 30
    both = build_manifest([str(tmp_path / "A"), str(tmp_path / "B")], "full", seed=0, limit=None, resolution=16)
    assert both.variant == "combination" and np.bincount(both.labels).tolist() == [2, 2, 2]
    assert ManifestImages(both, 16)[5].shape == (16, 16, 3)
    assert combine([m], 0).items == combine([m], 0).items
    with pytest.raises(HarnessError, match="ImageNet-style"):
        folder_manifest(tmp_path / "missing")
    with pytest.raises(UsageError):
        build_manifest([str(tmp_path / "A")], "third", seed=0, limit=None, resolution=16)


def test_epoch_batches_are_a_seeded_permutation():
    batches = epoch_batches(10, 3, epoch=0, seed=0)
    assert len(batches) == 3 and all(len(b) == 3 for b in batches)
    flat = [i for b in batches for i in b]
    assert len(set(flat)) == 9
    assert batches == epoch_batches(10, 3, 0, 0) and batches != epoch_batches(10, 3, 1, 0)
