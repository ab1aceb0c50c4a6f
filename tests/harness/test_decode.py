"""Device decoding (harness/decode.py) on CPU tensors: the same code path a CUDA run takes, checked
against the PIL path the loaders use.

Tolerance, from where the two paths differ: libjpeg-turbo (decode_jpeg on the CPU) decodes the
same pixels as PIL, so only the resize differs. PIL rounds to uint8 after its horizontal pass,
after its vertical pass and at the end; the device path stays in float32. A pixel may therefore
differ by at most 1/255 (each rounding is at most half a level and the passes' weights sum to
one); over an image the mean difference is about a quarter of a level (0.5/255 is asserted).
Features differ by the encoder's response to that: asserted here no larger than its response to
re-quantizing the PIL image with random rounding (a uniform +-1/255 perturbation), which is the
size of difference fp16 rounding of the input would make too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset

from encoders import create_encoder
from harness import decode
from harness.features import EncodeSettings, encode_batches
from tasks.datasets.base import FileClassification
from tasks.registry import get_task
from tasks.spec import DataRequest

ROOT = Path(__file__).resolve().parents[2]
LEVEL = 1 / 255
CPU = torch.device("cpu")

# (PIL mode, suffix, save options): what the device may decode, and what must fall back to PIL.
KINDS = {
    "rgb": ("RGB", "jpg", {}),
    "grey": ("L", "jpg", {}),
    "cmyk": ("CMYK", "jpg", {}),
    "png": ("RGB", "png", {}),
    "progressive": ("RGB", "jpg", {"progressive": True}),
}
DEVICE_KINDS = {"rgb", "grey"}


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth gradient with noise: JPEG-like content with both low and high frequencies."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, w)[None, :, None] * np.linspace(0.2, 1, h)[:, None, None]
    return (ramp + rng.normal(0, 40, (h, w, 3))).clip(0, 255).astype(np.uint8)


def _files(folder: Path, kinds=tuple(KINDS), n_each: int = 1) -> list[tuple[Path, int]]:
    items = []
    for k, kind in enumerate(kinds):
        mode, suffix, options = KINDS[kind]
        for j in range(n_each):
            path = folder / f"{kind}_{j}.{suffix}"
            Image.fromarray(_photo(45 + 7 * j + k, 61 - 3 * j, 10 * k + j)).convert(mode).save(path, **options)
            items.append((path, (k + j) % 3))
    return items


def _split(items, size: int = 32, train: bool = False) -> FileClassification:
    task = get_task("eurosat_cls")  # any image-level task: its spec resizes to size x size here
    return FileClassification(task, DataRequest("test", None, size, None, train), items)


def test_the_header_says_which_files_the_device_decodes(tmp_path):
    expected = {"rgb": (0xC0, 3), "grey": (0xC0, 1), "cmyk": (0xC0, 4), "png": None, "progressive": (0xC2, 3)}
    for path, _ in _files(tmp_path):
        kind = path.stem.rsplit("_", 1)[0]
        data = path.read_bytes()
        assert decode.jpeg_frame(data) == expected[kind], kind
        assert decode.device_decodable(data) == (kind in DEVICE_KINDS), kind
    assert decode.jpeg_frame(b"\xff\xd8\xff") is None  # truncated: no frame header


def test_device_path_pixels_are_pil_within_one_level(tmp_path):
    ds = _split(_files(tmp_path, n_each=2))
    raw = decode.RawFiles(ds)
    batch = decode.collate_raw([raw[i] for i in range(len(raw))])
    images, on_host = decode.decode_batch(batch["frames"], batch["stacked"], (32, 32), CPU)
    ref = torch.stack([ds[i]["image"] for i in range(len(ds))])
    assert images.shape == ref.shape == (len(ds), 3, 32, 32)
    kinds = [p.stem.rsplit("_", 1)[0] for p in ds.paths]
    assert on_host == sum(k not in DEVICE_KINDS for k in kinds) == 6
    diff = (images - ref).abs()
    for i, kind in enumerate(kinds):
        if kind in DEVICE_KINDS:
            assert diff[i].max() <= LEVEL + 1e-6, (kind, diff[i].max() * 255)
            assert diff[i].mean() <= 0.5 * LEVEL, (kind, diff[i].mean() * 255)
            assert diff[i].max() > 0  # really resized by another implementation, not PIL again
        else:
            assert torch.equal(images[i], ref[i]), kind  # decoded by PIL in the worker: the same tensor
    assert torch.equal(batch["target"], torch.as_tensor(ds.labels))


def test_stacked_frames_and_subsets_keep_samples_in_place(tmp_path):
    files = [p for p, _ in _files(tmp_path, kinds=("rgb", "grey", "png"), n_each=2)]
    clips = [((files[0], files[1]), 0), ((files[2], files[3]), 1), ((files[4], files[5]), 2)]
    ds = _split(clips)
    picked = Subset(Subset(ds, [2, 0, 1]), [2, 0])  # positions 1 and 2 of the split
    raw = decode.RawFiles(picked)
    batch = decode.collate_raw([raw[i] for i in range(len(raw))])
    images, _ = decode.decode_batch(batch["frames"], batch["stacked"], (32, 32), CPU)
    ref = torch.stack([picked[i]["image"] for i in range(len(picked))])
    assert images.shape == ref.shape == (2, 2, 3, 32, 32)
    assert (images - ref).abs().max() <= LEVEL + 1e-6
    assert batch["target"].tolist() == [1, 2]


def test_features_differ_no_more_than_requantizing_the_input(tmp_path):
    ds = _split(_files(tmp_path, kinds=("rgb", "grey"), n_each=4))
    encoder = create_encoder("resnet18").eval()
    feats = {}
    for mode in ("cpu", "device"):
        notes: list[str] = []
        settings = EncodeSettings(device=CPU, batch_size=4, decode=mode)
        with torch.no_grad():
            feats[mode] = torch.cat([f["embedding"] for f, _, _ in
                                     encode_batches(encoder, ds, ("embedding",), settings, notes=notes, label="test")])
        assert len(notes) == 1
    assert notes[0].startswith("test: images decoded in batches on cpu")
    ref = torch.stack([ds[i]["image"] for i in range(len(ds))])
    g = torch.Generator().manual_seed(0)
    jitter = (ref + (torch.rand(ref.shape, generator=g) * 2 - 1) * LEVEL).clamp(0, 1)
    with torch.no_grad():
        requantized = encoder(jitter.contiguous(memory_format=torch.channels_last), ("embedding",))["embedding"]

    def rel(a, b):
        return ((a - b).norm(dim=1) / b.norm(dim=1)).max().item()

    assert 0 < rel(feats["device"], feats["cpu"]) <= rel(requantized, feats["cpu"])


def test_which_path_a_split_takes(tmp_path):
    items = _files(tmp_path, kinds=("rgb",))
    ds = _split(items)
    assert decode.choose(ds, CPU, "auto") == decode.DecodeChoice("cpu", "auto on cpu: the loader's workers decode")
    assert decode.choose(ds, CPU, "device").on_device
    assert not decode.choose(ds, CPU, "cpu").on_device
    flipped = FileClassification(_flip_task(), DataRequest("train", None, None, None, True), items)
    assert not decode.choose(flipped, CPU, "device").on_device  # random flips: the loader's path
    assert not decode.choose(Subset(list(range(3)), [0]), CPU, "device").on_device
    with pytest.raises(ValueError):
        decode.choose(ds, CPU, "gpu")


def _flip_task():
    from dataclasses import replace

    from tasks.spec import TransformSpec

    return replace(get_task("eurosat_cls"), train_transform=TransformSpec(resize=(32, 32), hflip=True))


def test_a_bad_decode_option_is_one_usage_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "harness", "eval", "--encoder", "resnet18", "--task", "synth_count",
                           "--decode", "gpu", "--out", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "HARNESS_CACHE": str(tmp_path / "cache")},
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: --decode 'gpu': use auto, cpu or device"], proc.stderr
    assert "Traceback" not in proc.stderr
