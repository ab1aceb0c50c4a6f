"""Pretraining-data corruptions (Cole et al.): each one's effect on a known image, computed by hand; seeding;
the manifest and the images a corrupted run reads."""

import hashlib
import json
import math

import numpy as np
import pytest
from PIL import Image

from encoders.pretrain.corrupt import corrupt_images, image_rng, parse_corruption
from encoders.pretrain.data import ManifestImages, build_manifest, folder_manifest
from harness.common.errors import UsageError


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()
    return 10 * math.log10(255 ** 2 / mse)


def _test_image(size=64) -> np.ndarray:
    """Grey (so that JPEG's chroma subsampling plays no part): a smooth gradient plus sharp-edged squares."""
    y, x = np.mgrid[0:size, 0:size]
    grey = (x + y) * 200 / (2 * size - 2)
    grey[(x // 8 + y // 8) % 2 == 0] += 50
    return np.repeat(grey[..., None], 3, -1).round().astype(np.uint8)


def test_jpeg_quality_lowers_psnr():
    img = _test_image()
    rng = image_rng(0, 0)
    psnr = {q: _psnr(img, parse_corruption(f"jpeg:{q}").apply(img, rng)) for q in (95, 50, 10)}
    assert psnr[95] > psnr[50] > psnr[10]
    assert psnr[95] > 50 and psnr[10] < 40  # quality 10 (the paper's) leaves visible artefacts
    out = parse_corruption("jpeg:10").apply(img, rng)
    assert out.shape == img.shape and out.dtype == np.uint8


def test_downsampling_drops_high_frequencies_and_keeps_low_ones():
    size = 64
    x = np.arange(size)
    low = 40 * np.cos(2 * np.pi * 2 * x / size)  # 2 cycles across the image
    high = 40 * (-1.0) ** x  # the highest frequency a 64 px row can hold
    row = 128 + low + high
    img = np.repeat(np.repeat(row[None, :, None], size, 0), 3, 2).round().astype(np.uint8)
    out = parse_corruption("downsample:2").apply(img, image_rng(0, 0)).astype(np.float64)

    def amplitude(im, k):  # |DFT| at horizontal frequency k of the mean row, as a cosine amplitude
        spec = np.fft.rfft(im[:, :, 0].mean(0) - im[:, :, 0].mean())
        return abs(spec[k]) * (1 if k == size // 2 else 2) / size

    assert amplitude(img.astype(np.float64), 32) == pytest.approx(40, abs=0.6)
    assert amplitude(out, 32) < 2  # box-averaging pairs cancels (-1)^x exactly; upsampling adds next to none
    assert amplitude(out, 2) == pytest.approx(40 * math.cos(math.pi * 2 / size), abs=2.5)  # low band kept
    assert out.shape == img.shape


def test_salt_and_pepper_touches_the_stated_fraction_of_values():
    img = np.full((64, 64, 3), 128, np.uint8)
    sp = parse_corruption("saltpepper:0.1")
    out = sp.apply(img, image_rng(3, 7))
    changed = out != 128
    n = img.size
    assert abs(changed.mean() - 0.1) < 4 * math.sqrt(0.1 * 0.9 / n)  # binomial, 4 standard deviations
    assert set(np.unique(out[changed]).tolist()) == {0, 255}
    assert abs((out[changed] == 255).mean() - 0.5) < 4 * math.sqrt(0.25 / changed.sum())
    # per channel, independently: some pixels are hit in one channel only
    hits_per_pixel = changed.sum(-1)
    assert (hits_per_pixel == 1).sum() > (hits_per_pixel == 3).sum() > 0
    assert np.array_equal(out, sp.apply(img, image_rng(3, 7)))  # seeded per (seed, image)
    assert not np.array_equal(out, sp.apply(img, image_rng(3, 8)))
    assert np.array_equal(parse_corruption("saltpepper:0").apply(img, image_rng(0, 0)), img)


def test_blur_of_an_impulse_is_the_gaussian_kernel():
    img = np.zeros((21, 21, 3), np.uint8)
    img[10, 10] = 255
    out = parse_corruption("blur:1").apply(img, image_rng(0, 0)).astype(np.float64)
    w = [math.exp(-d * d / 2) for d in range(-3, 4)]  # radius ceil(3 * sigma) = 3
    w = [v / sum(w) for v in w]
    for dy in range(-3, 4):
        for dx in range(-3, 4):
            assert out[10 + dy, 10 + dx, 0] == round(255 * w[dy + 3] * w[dx + 3])
    assert out[10, 14, 0] == 0 and out[0, 0, 1] == 0
    flat = np.full((8, 8, 3), 77, np.uint8)
    assert np.array_equal(parse_corruption("blur:2").apply(flat, image_rng(0, 0)), flat)  # reflected borders


@pytest.mark.parametrize("spec", ["jpeg:0", "jpeg:10.5", "downsample:1", "saltpepper:2", "blur:0", "blur",
                                  "noise:1", "jpeg:high"])
def test_bad_corruptions_are_one_line_usage_errors(spec):
    with pytest.raises(UsageError) as err:
        parse_corruption(spec)
    assert "\n" not in str(err.value) and "--corrupt" in str(err.value)


def test_parse_and_names():
    c = parse_corruption("JPEG:10")
    assert str(c) == "jpeg:10" and c.tag == "jpeg10"
    assert parse_corruption(None) is None and parse_corruption("none") is None
    assert str(parse_corruption("salt-pepper:0.01")) == "saltpepper:0.01"


def test_corrupted_manifest_and_images(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(np.full((16, 16, 3), 100 + i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    clean = build_manifest([str(tmp_path)], "full", seed=5, limit=None, resolution=16)
    bad = build_manifest([str(tmp_path)], "full", seed=5, limit=None, resolution=16, corrupt="saltpepper:0.2")
    # a clean manifest hashes as before corruptions existed; a corrupted one differs
    body = json.dumps({"sources": clean.sources, "items": clean.items, "labels": clean.labels}, sort_keys=True)
    assert clean.digest() == hashlib.sha256(body.encode()).hexdigest() == folder_manifest(tmp_path).digest()
    assert bad.corrupt == "saltpepper:0.2" and bad.digest() != clean.digest()
    images = ManifestImages(bad, 16)
    clean_images = ManifestImages(clean, 16)
    for i in range(len(bad)):
        expected = parse_corruption("saltpepper:0.2").apply(clean_images[i].numpy(), image_rng(5, i))
        assert np.array_equal(images[i].numpy(), expected)
    stack = np.stack([clean_images[i].numpy() for i in range(len(clean))])
    assert np.array_equal(corrupt_images(stack, parse_corruption("saltpepper:0.2"), 5),
                          np.stack([images[i].numpy() for i in range(len(bad))]))
    bad.save(tmp_path / "m.json")
    assert type(bad).load(tmp_path / "m.json").corrupt == "saltpepper:0.2"
