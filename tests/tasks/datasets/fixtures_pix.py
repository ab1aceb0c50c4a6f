"""Fixture writers for the pixelwise datasets, each in the release's exact file format.

``write_png16`` writes a true 16-bit PNG by hand (signature, IHDR with bit depth 16, one
zlib-compressed IDAT of filter-0 scanlines of big-endian samples, IEND; PNG spec, ISO/IEC
15948), because neither PIL (16-bit RGB) nor torchvision's ``encode_png`` (uint8 only) can.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png16(path: Path, samples: np.ndarray) -> Path:
    """(H, W) grey or (H, W, 3) RGB uint16 samples as a 16-bit PNG."""
    arr = np.asarray(samples)
    if arr.dtype != np.uint16:
        raise TypeError("write_png16 takes uint16 samples")
    h, w = arr.shape[:2]
    colour_type = {2: 0, 3: 2}[arr.ndim]  # 0 = greyscale, 2 = truecolour
    rows = arr.reshape(h, -1).astype(">u2")
    raw = b"".join(b"\x00" + rows[r].tobytes() for r in range(h))  # filter type 0 per scanline
    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))
    return path


def write_rgb(path: Path, size: tuple[int, int], seed: int = 0) -> Path:
    """A random RGB image (H, W) = size, format from the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    Image.fromarray(arr, "RGB").save(path)
    return path


def write_grey8(path: Path, values: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(values, dtype=np.uint8), "L").save(path)
    return path
