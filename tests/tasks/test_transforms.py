"""The joint transform: one seeded geometry per copy, applied to image(s), target and valid mask,
each target kind resampled as its meaning requires (hand-computed references)."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tasks.spec import TransformSpec
from tasks.transforms import IGNORE_INDEX, IMAGE_FILL, apply_transform, draw, masked_resize, transform_seed

ROOT = Path(__file__).resolve().parents[2]
AUG = TransformSpec(crop=(24, 24), scale=(0.5, 2.0), hflip=True)


def seed_where(spec: TransformSpec, size: tuple[int, int], want) -> int:
    """The first sample seed whose draw satisfies ``want`` (the draws are deterministic)."""
    for i in range(1000):
        s = transform_seed(0, 0, i)
        if want(draw(spec, size, s)):
            return s
    raise AssertionError("no seed found")


def test_flipped_flow_pair_negates_u_and_stays_consistent():
    # Frame 1 is frame 0 moved 3 px right: flow (u, v) = (+3, 0) wherever the pixel stays in view.
    g = torch.Generator().manual_seed(0)
    f0 = torch.rand(3, 16, 20, generator=g)
    f1 = torch.zeros_like(f0)
    f1[..., 3:] = f0[..., :-3]
    flow = torch.zeros(2, 16, 20)
    flow[0] = 3.0
    flow[1] = torch.linspace(-1, 1, 16).view(16, 1)  # a v that varies by row, unchanged by a flip
    valid = torch.ones(16, 20, dtype=torch.bool)
    valid[:, -3:] = False  # these pixels leave the view
    sample = {"image": torch.stack([f0, f1]), "target": flow, "valid": valid}
    spec = TransformSpec(hflip=True)
    flipped = apply_transform(sample, spec, "flow", seed_where(spec, (16, 20), lambda d: d.flip))
    kept = apply_transform(sample, spec, "flow", seed_where(spec, (16, 20), lambda d: not d.flip))
    assert torch.equal(kept["target"], flow) and torch.equal(kept["image"], sample["image"])
    u, v = flipped["target"]
    assert torch.equal(u, torch.full((16, 20), -3.0)) and torch.equal(v, flow[1])  # u negated, v kept
    assert torch.equal(flipped["valid"], valid.flip(-1))
    # Both frames mirrored alike, and the flipped pair moves by the flipped flow: 3 px to the left.
    g0, g1 = flipped["image"]
    assert torch.equal(g0, f0.flip(-1)) and torch.equal(g1, f1.flip(-1))
    ys, xs = torch.nonzero(flipped["valid"], as_tuple=True)
    assert torch.equal(g1[:, ys, xs + u[ys, xs].long()], g0[:, ys, xs])


def test_resized_flow_scales_its_vectors():
    flow = torch.stack([torch.full((8, 16), 4.0), torch.full((8, 16), 2.0)])
    out = apply_transform({"image": torch.rand(2, 3, 8, 16), "target": flow}, TransformSpec(resize=(16, 4)), "flow")
    assert out["image"].shape == (2, 3, 16, 4) and out["valid"].all()
    torch.testing.assert_close(out["target"][0], torch.full((16, 4), 1.0))  # u * 4 / 16
    torch.testing.assert_close(out["target"][1], torch.full((16, 4), 4.0))  # v * 16 / 8


def test_a_crop_of_a_label_map_holds_only_the_original_labels():
    g = torch.Generator().manual_seed(1)
    labels = torch.tensor([0, 10, 20])  # bilinear blending would make 5, 15, ...
    target = labels[torch.randint(0, 3, (30, 40), generator=g)]
    sample = {"image": torch.rand(3, 30, 40, generator=g), "target": target}
    seen_pad = seen_scaled = False
    for copy in range(12):
        s = transform_seed(0, copy, 0)
        d = draw(AUG, (30, 40), s)
        out = apply_transform(sample, AUG, "class_map", s)
        assert out["target"].shape == (24, 24) and out["target"].dtype == target.dtype
        assert set(out["target"].unique().tolist()) <= {0, 10, 20, IGNORE_INDEX}
        # The crop is the window of the nearest-neighbour rescaled map, padded with 255 bottom/right.
        h, w = d.scaled
        scaled = F.interpolate(target[None, None].float(), size=(h, w), mode="nearest-exact")[0, 0].long()
        canvas = torch.full((max(h, 24), max(w, 24)), IGNORE_INDEX)
        canvas[:h, :w] = scaled
        expect = canvas[d.top:d.top + 24, d.left:d.left + 24]
        assert torch.equal(out["target"], expect.flip(-1) if d.flip else expect)
        seen_pad |= h < 24 or w < 24
        seen_scaled |= (h, w) != (30, 40)
        if h < 24 or w < 24:  # the padded image is the ImageNet mean there
            pad = (out["target"] == IGNORE_INDEX)
            assert int(pad.sum()) == 24 * 24 - min(h, 24) * min(w, 24)
            img = out["image"].flip(-1) if d.flip else out["image"]
            assert torch.allclose(img[:, h:, :].mean(dim=(1, 2)) if h < 24 else img[:, :, w:].mean(dim=(1, 2)),
                                  torch.tensor(IMAGE_FILL))
    assert seen_pad and seen_scaled


def test_copy_k_is_the_same_every_time_and_differs_from_copy_k_plus_1():
    g = torch.Generator().manual_seed(2)
    sample = {"image": torch.rand(3, 30, 40, generator=g), "target": torch.randint(0, 5, (30, 40), generator=g)}
    for k in range(3):
        torch.manual_seed(100 + k)  # the global RNG plays no part
        a = apply_transform(sample, AUG, "class_map", transform_seed(0, k, 7))
        torch.manual_seed(999)
        b = apply_transform(sample, AUG, "class_map", transform_seed(0, k, 7))
        c = apply_transform(sample, AUG, "class_map", transform_seed(0, k + 1, 7))
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["target"], b["target"])
        assert not torch.equal(a["image"], c["image"])
    assert transform_seed(0, 0, 7) != transform_seed(1, 0, 7) != transform_seed(0, 0, 8)
    assert apply_transform(sample, AUG, "class_map", None) is sample  # evaluation: no random transform


DIGEST = r"""
import hashlib, sys, torch
from tasks.spec import TransformSpec
from tasks.transforms import apply_transform, transform_seed
g = torch.Generator().manual_seed(2)
sample = {"image": torch.rand(3, 30, 40, generator=g), "target": torch.randint(0, 5, (30, 40), generator=g)}
out = apply_transform(sample, TransformSpec(crop=(24, 24), scale=(0.5, 2.0), hflip=True), "class_map",
                      transform_seed(0, int(sys.argv[1]), 7))
print(hashlib.sha256(out["image"].numpy().tobytes() + out["target"].numpy().tobytes()).hexdigest())
"""


def test_copy_k_is_identical_across_processes():
    """Another interpreter (another hash salt) draws the same copy: the seed is not Python's hash()."""
    def digest(k: int, salt: str) -> str:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": salt}
        return subprocess.run([sys.executable, "-c", DIGEST, str(k)], capture_output=True, text=True, env=env,
                              check=True).stdout.strip()

    g = torch.Generator().manual_seed(2)
    sample = {"image": torch.rand(3, 30, 40, generator=g), "target": torch.randint(0, 5, (30, 40), generator=g)}
    here = apply_transform(sample, AUG, "class_map", transform_seed(0, 1, 7))
    local = hashlib.sha256(here["image"].numpy().tobytes() + here["target"].numpy().tobytes()).hexdigest()
    assert digest(1, "1") == local == digest(1, "2")


def test_depth_masked_interpolation_matches_a_hand_computation():
    depth = torch.tensor([[[1.0, 3.0], [7.0, 5.0]]])  # 7.0 sits on an invalid pixel and must not leak
    valid = torch.tensor([[True, True], [False, True]])
    # Down to 1 x 1: the mean of the valid pixels (1 + 3 + 5) / 3, where plain bilinear gives 4.
    out, ok = masked_resize(depth, valid, (1, 1))
    assert out.item() == pytest.approx(3.0) and ok.item()
    # Up to 4 x 4 (align_corners=False): output (1, 1) samples source (0.25, 0.25), bilinear weights
    # 9/16, 3/16, 3/16 (the invalid pixel), 1/16: (1 * 9 + 3 * 3 + 5 * 1) / (9 + 3 + 1) = 23 / 13.
    out, ok = masked_resize(depth, valid, (4, 4))
    assert out[0, 1, 1].item() == pytest.approx(23 / 13)
    # Output (1, 2) samples (0.25, 0.75): weights 3/16 (1), 9/16 (3), 1/16 (invalid), 3/16 (5).
    assert out[0, 1, 2].item() == pytest.approx((1 * 3 + 3 * 9 + 5 * 3) / 15)
    # Output (2, 1) samples (0.75, 0.25): its nearest source pixel is the invalid one, so it stays invalid.
    assert not ok[2, 1] and ok[1, 1] and ok[2, 2]
    assert torch.equal(ok, torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]]).bool())
    # The same rule inside apply_transform, and a crop past the edge pads depth as invalid.
    sample = {"image": torch.rand(3, 2, 2), "target": depth, "valid": valid}
    res = apply_transform(sample, TransformSpec(resize=(4, 4)), "depth")
    torch.testing.assert_close(res["target"], out)
    padded = apply_transform(res, TransformSpec(crop=(6, 5)), "depth", seed=0)
    assert padded["target"].shape == (1, 6, 5)
    assert not padded["valid"][4:].any() and not padded["valid"][:, 4:].any()
    assert torch.equal(padded["valid"][:4, :4], ok) and torch.equal(padded["target"][0, :4, :4], out[0])


def test_scale_stays_in_its_range_and_frames_share_one_geometry():
    spec = TransformSpec(scale=(0.5, 1.5), crop=(16, 16), hflip=True)
    frames = torch.rand(3, 3, 20, 20)
    scales = []
    for k in range(20):
        s = transform_seed(3, k, 0)
        d = draw(spec, (20, 20), s)
        scales.append(d.scaled[0] / 20)
        out = apply_transform({"image": frames, "target": torch.tensor(2)}, spec, "label", s)
        assert out["image"].shape == (3, 3, 16, 16) and out["target"].item() == 2
        # Each frame went through the same resize, crop and flip as a lone image would have.
        alone = apply_transform({"image": frames[1], "target": torch.tensor(2)}, spec, "label", s)
        assert torch.equal(out["image"][1], alone["image"])
    assert min(scales) >= 0.5 and max(scales) <= 1.5 and max(scales) - min(scales) > 0.5


def test_synthetic_tasks_apply_a_random_train_transform_when_one_is_declared():
    """The synthetic suite declares none (its records stay as they are); a task that does gets
    crops that differ from copy to copy, and its evaluation splits stay whole."""
    from dataclasses import replace

    from tasks import get_task
    from tasks.spec import DataRequest

    task = replace(get_task("synth_depth"), train_transform=TransformSpec(crop=(24, 24), hflip=True))
    assert not get_task("synth_depth").train_transform.random

    def build(train: bool, copy: int):
        return task.dataset(task, DataRequest("train", None, 32, 4, train, copy, 0))

    a, b, c, whole = build(True, 0), build(True, 0), build(True, 1), build(False, 0)
    assert a[0]["image"].shape == (3, 24, 24) and a[0]["valid"].shape == (24, 24)
    assert whole[0]["image"].shape == (3, 32, 32)
    assert all(torch.equal(a[i]["target"], b[i]["target"]) for i in range(4))
    assert any(not torch.equal(a[i]["image"], c[i]["image"]) for i in range(4))
    # Every crop is a window of the whole image, mirrored or not.
    for i in range(4):
        img, full = a[i]["image"], whole[i]["image"]
        windows = full.unfold(1, 24, 1).unfold(2, 24, 1).permute(1, 2, 0, 3, 4).reshape(-1, 3, 24, 24)
        assert any(torch.equal(img, w) or torch.equal(img.flip(-1), w) for w in windows)


def test_image_level_loaders_apply_a_declared_crop_and_flip(tmp_path):
    """Issue 41: a real image-level task applies every part of its TransformSpec through the same path as
    the pixelwise ones: a declared crop and flip are applied (not silently dropped), seeded per copy, and
    the label is unchanged."""
    from dataclasses import replace

    from tasks import get_task
    from tasks.spec import DataRequest

    from .datasets.fixtures_a import write_dtd

    write_dtd(tmp_path, {"train": {"banded": 2, "zigzagged": 1}, "val": {}, "test": {"banded": 1}})
    task = replace(get_task("dtd_cls"), train_transform=TransformSpec(resize=(16, 16), crop=(8, 8), hflip=True),
                   eval_transform=TransformSpec(resize=(16, 16)))

    def build(train: bool, copy: int = 0):
        return task.dataset(task, DataRequest("train", tmp_path, None, None, train, copy, 0))

    whole = build(False)
    flips = set()
    for i in range(len(whole)):
        full = whole[i]["image"]
        assert full.shape == (3, 16, 16)
        windows = full.unfold(1, 8, 1).unfold(2, 8, 1).permute(1, 2, 0, 3, 4).reshape(-1, 3, 8, 8)
        for copy in range(6):
            s = build(True, copy)[i]
            assert torch.equal(s["image"], build(True, copy)[i]["image"])  # copy k is the same every time
            assert s["image"].shape == (3, 8, 8) and torch.equal(s["target"], whole[i]["target"])
            plain = [torch.equal(s["image"], w) for w in windows]
            mirrored = [torch.equal(s["image"].flip(-1), w) for w in windows]
            assert any(plain) or any(mirrored)
            flips.add(any(mirrored) and not any(plain))
    assert flips == {True, False}  # some copies flipped, some not


def test_resolution_resizes_every_split_and_drops_crop_and_scale_keeping_flip():
    """``--resolution R`` is one rule for every loader (it used to be two): R x R, train and eval, the crop
    and random scale dropped (a 513 px crop means nothing at 32 px), the flip kept; the train split's seed
    is the run's and copy's, evaluation has none."""
    from tasks import get_task
    from tasks.spec import DataRequest
    from tasks.transforms import split_seed, split_transform

    task = get_task("cityscapes_seg")
    assert task.train_transform.crop == (513, 513) and task.train_transform.scale and task.train_transform.hflip
    train = DataRequest("train", None, 32, None, True, 3, 7)
    assert split_transform(task, train) == TransformSpec(resize=(32, 32), hflip=True)
    assert split_transform(task, DataRequest("val", None, 32, None, False)) == TransformSpec(resize=(32, 32))
    assert split_transform(task, DataRequest("train", None, None, None, True)) == task.train_transform
    assert split_seed(train, 5) == transform_seed(7, 3, 5)
    assert split_seed(DataRequest("val", None, 32, None, False), 5) is None
