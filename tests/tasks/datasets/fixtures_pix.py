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


MAT73_HEADER = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."


def write_mat73(path: Path, images: np.ndarray, depths: np.ndarray, labels: np.ndarray, names: list[str]) -> Path:
    """A labelled-NYU-like MATLAB v7.3 file: ``images`` (N, H, W, 3) uint8, ``depths`` (N, H, W) metres,
    ``labels`` (N, H, W) class ids, written as MATLAB does: an HDF5 file behind a 512-byte user block
    that starts with the MAT header text, every array with its axes reversed (images (N, 3, W, H),
    depths and labels (N, W, H)), ``names`` a (1, K) array of object references to (len, 1) uint16
    character arrays marked MATLAB_class 'char' under ``#refs#``."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset("images", data=np.ascontiguousarray(images.transpose(0, 3, 2, 1)), dtype=np.uint8)
        f.create_dataset("depths", data=np.ascontiguousarray(depths.transpose(0, 2, 1)), dtype=np.float32)
        f.create_dataset("labels", data=np.ascontiguousarray(labels.transpose(0, 2, 1)), dtype=np.uint16)
        refs = f.create_group("#refs#")
        names_ds = f.create_dataset("names", (1, len(names)), dtype=h5py.ref_dtype)
        for k, name in enumerate(names):
            chars = refs.create_dataset(f"n{k}", data=np.array([ord(c) for c in name], np.uint16)[:, None])
            chars.attrs["MATLAB_class"] = np.bytes_("char")
            names_ds[0, k] = chars.ref
        for key in ("images", "depths"):
            f[key].attrs["MATLAB_class"] = np.bytes_({"images": "uint8", "depths": "single"}[key])
        f["labels"].attrs["MATLAB_class"] = np.bytes_("uint16")
        f["names"].attrs["MATLAB_class"] = np.bytes_("cell")
    with open(path, "r+b") as fh:
        fh.write(MAT73_HEADER.ljust(116) + b"\x00" * 8 + b"\x00\x02" + b"IM")
    return path
