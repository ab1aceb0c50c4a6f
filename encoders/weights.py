"""Where encoder weights live, and the one place that downloads them.

Nothing here runs at import time and nothing downloads implicitly: ``harness encoders fetch``
or ``harness eval --download`` call :func:`fetch`. A download is written to a temporary name
beside its target, hashed while it streams, and renamed only when the SHA-256 (when the catalog
records one) matches, so a bad or interrupted download never leaves a file under the final name.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from harness.common.atomic import atomic_path
from harness.common.errors import HarnessError
from harness.common.paths import weights_dir
from harness.common.progress import progress

from .catalog import CatalogEntry

CHUNK = 1 << 20


def resolve_weights_dir(override: Path | None = None) -> Path:
    """``--weights-dir`` if given, else ``$HARNESS_WEIGHTS``, else ``<cache>/weights``."""
    return Path(override).expanduser() if override is not None else weights_dir()


def weight_path(entry: CatalogEntry, directory: Path | None = None) -> Path | None:
    if entry.filename is None:
        return None
    return resolve_weights_dir(directory) / entry.filename


def is_available(entry: CatalogEntry, directory: Path | None = None) -> bool:
    path = weight_path(entry, directory)
    return path is None or path.is_file()


def missing_weights_error(entry: CatalogEntry, directory: Path | None = None) -> HarnessError:
    folder = resolve_weights_dir(directory)
    return HarnessError(
        f"weights for encoder {entry.name!r} not found: expected file {entry.filename} in {folder} "
        f"(set $HARNESS_WEIGHTS or --weights-dir to look elsewhere); get it with "
        f"'harness encoders fetch {entry.name}' (or --download on eval), or download {entry.url} into that folder")


def _digest_matches(actual: str, recorded: str) -> bool:
    """A recorded digest may be a prefix (torchvision file names carry the first 8 hex digits)."""
    recorded = recorded.lower()
    return actual == recorded if len(recorded) == 64 else actual.startswith(recorded)


def _chunks(response, size: int = CHUNK) -> Iterator[bytes]:
    while True:
        block = response.read(size)
        if not block:
            return
        yield block


def download(url: str, dest: Path, sha256: str | None = None, timeout: float = 60.0) -> Path:
    """Stream ``url`` to ``dest`` with a progress bar; verify SHA-256 before publishing the file."""
    if not url.startswith(("https://", "http://")):
        raise HarnessError(f"refusing to download from {url!r}: only http(s) URLs are fetched")
    dest = Path(dest)
    try:
        response = urllib.request.urlopen(url, timeout=timeout)  # scheme checked above
    except (urllib.error.URLError, OSError) as exc:
        raise HarnessError(f"could not download {url}: {getattr(exc, 'reason', exc)}") from None
    h = hashlib.sha256()
    with response, atomic_path(dest, suffix=".part") as tmp:
        total = response.headers.get("Content-Length")
        n_chunks = -(-int(total) // CHUNK) if total and total.isdigit() else None
        try:
            with open(tmp, "wb") as fh:
                for block in progress(_chunks(response), f"download {dest.name}", total=n_chunks):
                    h.update(block)
                    fh.write(block)
        except (urllib.error.URLError, OSError) as exc:
            raise HarnessError(f"download of {url} failed: {exc}; nothing was written to {dest}") from None
        if total and total.isdigit() and tmp.stat().st_size != int(total):
            raise HarnessError(f"download of {url} stopped after {tmp.stat().st_size} of {total} bytes; "
                               f"nothing was written to {dest}")
        actual = h.hexdigest()
        if sha256 is not None and not _digest_matches(actual, sha256):
            raise HarnessError(f"SHA-256 mismatch for {url}: got {actual}, expected {sha256}; "
                               f"the partial file was deleted and nothing was written to {dest}")
    return dest


def fetch(entry: CatalogEntry, directory: Path | None = None, force: bool = False) -> Path:
    """Download a catalog encoder's weights into the weights directory (no-op if present)."""
    path = weight_path(entry, directory)
    if path is None or entry.url is None:
        raise HarnessError(f"encoder {entry.name!r} has no weights to download")
    if path.is_file() and not force:
        return path
    return download(entry.url, path, entry.sha256)
