"""Writing big files on a disk that may fill up: check first, and fail with one line.

Why the guarded file: when HDF5's own file driver meets a failed write (a full disk, a file
size limit), the library keeps the dirty state, every later close fails again, and the
process dies with SIGSEGV at exit. So HDF5 files are written through a Python file object
that HDF5 cannot see fail: the first write error is remembered, later writes are dropped
(the file is garbage from then on and is deleted), and the caller raises one clear error
after closing. HDF5's state stays consistent and the process exits normally.
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
from contextlib import contextmanager
from pathlib import Path

from .errors import HarnessError

MARGIN = 1 << 20  # bytes kept free beyond an estimate (metadata, chunk padding)


def _fmt(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def ensure_space(folder: Path, needed: int, what: str, hint: str = "free some space or point $HARNESS_CACHE "
                 "at a larger disk") -> None:
    """Raise one line if ``folder`` cannot take a file of ``needed`` bytes (free space, or the
    process's file size limit)."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed + MARGIN > free:
        raise HarnessError(f"not enough space in {folder} for {what}: needs {_fmt(needed)}, {_fmt(free)} free; "
                           f"{hint}")
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY and needed > soft:
        raise HarnessError(f"cannot write {what} in {folder}: needs {_fmt(needed)}, but this process may write "
                           f"files of at most {_fmt(soft)} (ulimit -f); raise the limit")


class GuardedFile:
    """A binary file for ``h5py.File(fileobj)`` that never lets HDF5 see a write fail."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._f = open(self.path, "w+b")  # noqa: SIM115 - closed by close()
        self.error: OSError | None = None

    def write(self, data) -> int:
        n = len(memoryview(data).cast("B"))
        if self.error is None:
            try:
                self._f.write(data)
            except OSError as exc:
                self.error = exc
        return n

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        if self.error is not None and size is not None and size > len(data):
            data += bytes(size - len(data))  # what was dropped reads as zeros; the file is discarded anyway
        return data

    def readinto(self, buf) -> int:
        data = self.read(len(memoryview(buf).cast("B")))
        memoryview(buf).cast("B")[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def truncate(self, size: int | None = None) -> int:
        if self.error is None:
            try:
                return self._f.truncate(size)
            except OSError as exc:
                self.error = exc
        return size if size is not None else self._f.tell()

    def flush(self) -> None:
        if self.error is None:
            try:
                self._f.flush()
            except OSError as exc:
                self.error = exc

    def fsync(self) -> None:
        self.flush()
        if self.error is None:
            try:
                os.fsync(self._f.fileno())
            except OSError as exc:
                self.error = exc

    def close(self) -> None:
        try:
            self._f.close()
        except OSError as exc:
            if self.error is None:
                self.error = exc

    def check(self, what: str) -> None:
        """Raise one line if any write failed (call after HDF5 has closed the file)."""
        if self.error is not None:
            reason = os.strerror(self.error.errno) if self.error.errno else str(self.error)
            hint = ("free some space or point $HARNESS_CACHE at a larger disk"
                    if self.error.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) else "check the disk")
            raise HarnessError(f"could not write {what} to {self.path.parent}: {reason}; {hint}")


@contextmanager
def write_h5(path: Path, what: str):
    """An HDF5 file opened for writing at ``path`` through a GuardedFile; after the block, one
    clear HarnessError if any write failed (the caller removes the file, e.g. atomic_path)."""
    import h5py

    guard = GuardedFile(path)
    try:
        fh = h5py.File(guard, "w")
        try:
            yield fh
        finally:
            fh.close()
        guard.fsync()
    finally:
        guard.close()
    guard.check(what)
