"""Pretraining-data corruptions (Cole et al. 2022, "When does contrastive visual representation learning
work?", Section 4.3 and Appendix C.5): ``--corrupt KIND:VALUE``.

As in the paper, a corruption is applied once to every pretraining image, before any augmentation
(an offline preprocessing step: a random corruption is realised once per image, seeded by the run
seed and the image's place in the manifest); evaluation always sees clean images.

* ``jpeg:Q``        JPEG compression at quality Q (PIL, as the paper; it uses Q = 10).
* ``downsample:F``  down by F, then up by F to the same size: same framing, 1/F the resolution (the paper
                    uses 2 and 4). Down with PIL's box filter (area average), up bilinear; the paper used
                    PIL's default (nearest) for both, which aliases instead of dropping high frequencies.
* ``saltpepper:P``  every pixel in every channel independently, with probability P, set to 0 or 255 with
                    equal odds (the paper uses P = 0.01).
* ``blur:S``        Gaussian blur with standard deviation S pixels (kernel radius ceil(3 S), reflected
                    borders); not in the paper, a low-pass counterpart of ``downsample``.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np

from harness.common.errors import UsageError

KINDS = {"jpeg": "quality 1-100", "downsample": "factor > 1", "saltpepper": "probability 0-1",
         "blur": "sigma in pixels > 0"}


@dataclass(frozen=True)
class Corruption:
    kind: str
    value: float

    def __str__(self) -> str:
        return f"{self.kind}:{self.value:g}"

    @property
    def tag(self) -> str:
        """For file and run names: jpeg10, saltpepper0.01."""
        return f"{self.kind}{self.value:g}"

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One uint8 (H, W, 3) image -> its corrupted uint8 copy."""
        if self.kind == "jpeg":
            return jpeg(image, int(self.value))
        if self.kind == "downsample":
            return downsample(image, self.value)
        if self.kind == "saltpepper":
            return salt_pepper(image, self.value, rng)
        return gaussian_blur(image, self.value)


def parse_corruption(spec: str | None) -> Corruption | None:
    """``'jpeg:10'`` -> Corruption; None or 'none' -> None; anything else is a one-line UsageError."""
    if spec is None or spec.strip().lower() in ("", "none"):
        return None
    kind, sep, raw = spec.strip().partition(":")
    kind = kind.lower().replace("_", "").replace("-", "")
    known = ", ".join(f"{k}:{v}" for k, v in KINDS.items())
    if kind not in KINDS or not sep:
        raise UsageError(f"--corrupt {spec!r}: use KIND:VALUE, one of {known}")
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"--corrupt {spec!r}: {raw!r} is not a number ({kind}: {KINDS[kind]})") from None
    ok = {"jpeg": value == int(value) and 1 <= value <= 100, "downsample": value > 1,
          "saltpepper": 0 <= value <= 1, "blur": value > 0}[kind]
    if not ok or not math.isfinite(value):
        raise UsageError(f"--corrupt {spec!r}: {kind} takes a {KINDS[kind]}")
    return Corruption(kind, value)


def image_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, 0xC0221, index])


def corrupt_images(images: np.ndarray, corruption: Corruption | None, seed: int,
                   indices: np.ndarray | None = None) -> np.ndarray:
    """A corrupted copy of a uint8 (N, H, W, 3) stack; image i draws from ``image_rng(seed, indices[i])``."""
    if corruption is None:
        return images
    indices = np.arange(len(images)) if indices is None else indices
    return np.stack([corruption.apply(im, image_rng(seed, int(i))) for im, i in zip(images, indices, strict=True)])


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def downsample(image: np.ndarray, factor: float) -> np.ndarray:
    from PIL import Image

    h, w = image.shape[:2]
    im = Image.fromarray(image)
    small = im.resize((max(1, round(w / factor)), max(1, round(h / factor))), Image.BOX)
    return np.asarray(small.resize((w, h), Image.BILINEAR), dtype=np.uint8).copy()


def salt_pepper(image: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    hit = rng.random(image.shape) < p
    salt = rng.random(image.shape) < 0.5
    out = image.copy()
    out[hit & salt] = 255
    out[hit & ~salt] = 0
    return out


def gaussian_kernel(sigma: float) -> np.ndarray:
    r = max(1, math.ceil(3 * sigma))
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-x ** 2 / (2 * sigma ** 2))
    return k / k.sum()


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian filter in float64, borders reflected (a kernel wider than the image is clipped)."""
    k = gaussian_kernel(sigma)
    r = len(k) // 2
    out = image.astype(np.float64)
    for axis in (0, 1):
        n = out.shape[axis]
        pad = [(0, 0)] * 3
        pad[axis] = (min(r, n - 1), min(r, n - 1))
        padded = np.pad(out, pad, mode="reflect")
        if pad[axis][0] < r:  # tiny image: pad the rest with edge values
            extra = [(0, 0)] * 3
            extra[axis] = (r - pad[axis][0], r - pad[axis][0])
            padded = np.pad(padded, extra, mode="edge")
        out = sum(k[j] * np.take(padded, range(j, j + n), axis=axis) for j in range(len(k)))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
