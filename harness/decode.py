"""JPEG decoding in batches on the encoding device, with a CPU fallback per file.

On a GPU machine the encoder is so fast that decoding JPEGs on the CPU becomes the cost of
every image-level task. There, the loader's workers only read each file's bytes, and the
encoding loop decodes a whole batch at once with ``torchvision.io.decode_jpeg(..., device=)``
(nvjpeg on CUDA) and resizes it on the device with ``F.interpolate`` (bilinear, antialiased,
the filter PIL uses). A file the device decoder should not be given (PNG, progressive or
arithmetic-coded JPEG, CMYK/YCCK with 4 components) is decoded by PIL in the worker, exactly as
the CPU path does, and joins the batch decoded.

The same code runs on CPU tensors (``--decode device --device cpu``): libjpeg-turbo decodes
exactly what PIL decodes, so what remains is the resize. PIL rounds to uint8 after each of its
two passes (horizontal, vertical) and at the end; the device path keeps float32 throughout. A
pixel therefore differs by at most 1/255 (measured on 500 x 375 photos to 224: max 0.97/255,
mean 0.28/255), and features by the encoder's response to that; on CUDA, nvjpeg's IDCT may add
a level or two at block edges, and fp16 autocast rounds both paths alike
(``benchmarks/gpu_check.py`` measures the pixel difference on the GPU).

Which path a split takes (``--decode auto|cpu|device``): ``auto`` decodes on the device when
it is a CUDA device that decodes a test JPEG; ``device`` forces it (on any device); ``cpu``
never. Only datasets whose samples are JPEG files decoded as ``FileClassification`` does
(resized to a fixed size) qualify; the others decode in the loader as always.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from tasks.datasets.base import FileClassification, load_image

MODES = ("auto", "cpu", "device")

# Start-of-frame markers the device decoder takes: baseline and extended sequential Huffman JPEG.
_DEVICE_SOF = (0xC0, 0xC1)
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_frame(data: bytes | memoryview) -> tuple[int, int] | None:
    """(SOF marker, components) from a JPEG's header; None when ``data`` is not a JPEG (a PNG) or
    its header cannot be read. Reads the marker segments only, never the image data."""
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            i += 2
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        if marker in _SOF:
            return (marker, data[i + 9]) if i + 9 < len(data) else None
        if marker in (0xDA, 0xD9):  # scan data or end before a frame header
            return None
        i += 2 + length
    return None


def device_decodable(data: bytes | memoryview) -> bool:
    """A sequential Huffman JPEG with 1 (grey) or 3 (YCbCr) components: what nvjpeg decodes."""
    frame = jpeg_frame(data)
    return frame is not None and frame[0] in _DEVICE_SOF and frame[1] in (1, 3)


def file_source(dataset: Dataset) -> tuple[FileClassification, list[int] | None] | None:
    """The file-backed split under ``dataset`` (and the positions a Subset picks), when each sample is
    its files decoded and resized to one size as ``FileClassification.decode`` does, with no random
    transform after it; None otherwise."""
    index = None
    while isinstance(dataset, Subset):
        picked = list(dataset.indices)
        index = picked if index is None else [picked[i] for i in index]
        dataset = dataset.dataset
    cls = type(dataset)
    if not isinstance(dataset, FileClassification) or cls.decode is not FileClassification.decode or \
            cls.__getitem__ is not FileClassification.__getitem__:
        return None
    spec = dataset.spec
    if spec.resize is None:  # native sizes: batches of one size need the loader's bucketing
        return None
    if dataset.req.train and spec.random:  # random crops and flips per sample: the loader's path
        return None
    return dataset, index


@functools.lru_cache(maxsize=8)
def device_works(device: str) -> str | None:
    """None when ``decode_jpeg`` decodes a test JPEG on ``device``; else why not (one line)."""
    from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

    try:
        probe = encode_jpeg(torch.full((3, 16, 16), 128, dtype=torch.uint8))
        out = decode_jpeg([probe], mode=ImageReadMode.RGB, device=device)[0]
        if out.shape != (3, 16, 16) or abs(int(out.float().mean()) - 128) > 2:
            return "the test JPEG came back wrong"
    except Exception as exc:  # noqa: BLE001 - no nvjpeg in this build, a driver problem: decode on the CPU
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:160]
    return None


@dataclass(frozen=True)
class DecodeChoice:
    """Where a split's images are decoded, and why (the record's note)."""

    where: str  # "cpu" (PIL in the loader) or "device"
    why: str

    @property
    def on_device(self) -> bool:
        return self.where == "device"


def choose(dataset: Dataset, device: torch.device, mode: str) -> DecodeChoice:
    if mode not in MODES:
        raise ValueError(f"decode mode {mode!r}: use one of {', '.join(MODES)}")
    if mode == "cpu":
        return DecodeChoice("cpu", "--decode cpu")
    if file_source(dataset) is None:
        return DecodeChoice("cpu", "not a split of image files resized to one size without random transforms")
    if mode == "auto" and device.type != "cuda":
        return DecodeChoice("cpu", f"auto on {device.type}: the loader's workers decode")
    broken = device_works(str(device))
    if broken is not None:
        return DecodeChoice("cpu", f"decode_jpeg does not work on {device}: {broken}")
    return DecodeChoice("device", f"--decode {mode} on {device}")


class RawFiles(Dataset):
    """What the loader's workers do on the device path: read each file's bytes; decode with PIL
    (resized, as the CPU path does) only a file the device decoder should not be given."""

    def __init__(self, dataset: Dataset):
        found = file_source(dataset)
        if found is None:
            raise ValueError("RawFiles needs a FileClassification split (or a Subset of one)")
        self.source, self.index = found
        self.size: tuple[int, int] = tuple(self.source.spec.resize)  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self.index) if self.index is not None else len(self.source)

    def __getitem__(self, i: int) -> dict:
        j = self.index[i] if self.index is not None else i
        p = self.source.paths[j]
        files = p if isinstance(p, tuple) else (p,)
        frames = [_read(f, self.size) for f in files]
        return {"frames": frames, "stacked": isinstance(p, tuple), "target": torch.tensor(int(self.source.labels[j]))}


def _read(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """The file's bytes (uint8, 1-D) when the device can decode it, else the decoded image (float, 3-D)."""
    data = np.fromfile(path, dtype=np.uint8)
    if device_decodable(memoryview(data)):
        return torch.from_numpy(data)
    return load_image(path, size)


def collate_raw(samples: list[dict]) -> dict:
    return {"frames": [s["frames"] for s in samples], "stacked": samples[0]["stacked"],
            "target": torch.stack([s["target"] for s in samples])}


def decode_batch(frames: list[list[torch.Tensor]], stacked: bool, size: tuple[int, int],
                 device: torch.device) -> tuple[torch.Tensor, int]:
    """(B, 3, H, W) float in [0, 1] on ``device`` ((B, S, 3, H, W) for stacked frames), and how many
    files were decoded on the CPU (by PIL in the workers, or here when the device refused one). Every
    JPEG of the batch goes to one ``decode_jpeg`` call; images are resized on the device, one
    ``interpolate`` per distinct native size."""
    from torchvision.io import ImageReadMode, decode_jpeg

    flat = [f for sample in frames for f in sample]
    out: list[torch.Tensor | None] = [None] * len(flat)
    jpeg = [i for i, f in enumerate(flat) if f.dim() == 1]
    for i in set(range(len(flat))) - set(jpeg):
        out[i] = flat[i].to(device, non_blocking=True)
    retried = 0
    if jpeg:
        try:
            decoded = decode_jpeg([flat[i] for i in jpeg], mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # a file the header check let through but the device refuses: one at a time
            decoded = [_decode_one(flat[i], device) for i in jpeg]
            retried = sum(d.device.type != device.type for d in decoded)
            decoded = [d.to(device) for d in decoded]
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, img in zip(jpeg, decoded, strict=True):
            by_size.setdefault(tuple(img.shape[-2:]), []).append(i)
        where = dict(zip(jpeg, range(len(jpeg)), strict=True))
        for native, idx in by_size.items():
            x = torch.stack([decoded[where[i]] for i in idx]).float().div_(255.0)
            if native != tuple(size):
                x = F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
                x = x.clamp_(0.0, 1.0)
            for i, img in zip(idx, x, strict=True):
                out[i] = img
    images = torch.stack(out)  # type: ignore[arg-type]
    if stacked:
        images = images.view(len(frames), -1, *images.shape[1:])
    return images, len(flat) - len(jpeg) + retried


def _decode_one(data: torch.Tensor, device: torch.device) -> torch.Tensor:
    """One JPEG on ``device``, else by libjpeg-turbo on the CPU (the pixels PIL decodes)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return decode_jpeg(data, mode=ImageReadMode.RGB)
