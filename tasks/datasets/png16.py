"""16-bit PNG decoding that keeps all 16 bits.

PIL opens a 16-bit RGB PNG (KITTI's ``flow_occ``) as 8-bit RGB without a word, dropping the
low byte: a flow vector read that way is wrong by up to 4 px. ``torchvision.io.decode_png``
with ``ImageReadMode.UNCHANGED`` returns the samples as uint16 (torchvision >= 0.21), grey or
RGB alike, so both KITTI flow and Taskonomy depth are read through it here. A file that is an
8-bit PNG where 16 bits are expected is refused with a line naming it: dividing 8-bit values by
the 16-bit scales would give silently wrong metres or pixels.

torchvision 0.29 marks its image codecs deprecated in favour of torchcodec (not installed
here); when they go, this one function is what moves.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_png

from harness.common.errors import HarnessError


def read_png16(path: Path | str, channels: int | None = None) -> np.ndarray:
    """The samples of a 16-bit PNG as uint16, (H, W) for grey or (H, W, C) for colour.

    ``channels``: the number of channels the format defines (1 for a depth map, 3 for a KITTI
    flow map); a file with another count is refused."""
    path = Path(path)
    try:
        data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its image codecs for torchcodec
            warnings.simplefilter("ignore", DeprecationWarning)
            img = decode_png(data, ImageReadMode.UNCHANGED)
    except FileNotFoundError:
        raise HarnessError(f"{path}: file not found") from None
    except (RuntimeError, ValueError) as exc:
        raise HarnessError(f"{path}: not a readable PNG ({str(exc).splitlines()[0]})") from None
    if img.dtype != torch.uint16:
        raise HarnessError(f"{path}: an {8 * img.element_size()}-bit PNG where the release has 16-bit samples "
                           f"(re-saved by an image editor?); use the file as released")
    if channels is not None and img.shape[0] != channels:
        raise HarnessError(f"{path}: {img.shape[0]} channel(s), expected {channels}")
    arr = img.numpy()
    return arr[0] if arr.shape[0] == 1 else np.ascontiguousarray(arr.transpose(1, 2, 0))
