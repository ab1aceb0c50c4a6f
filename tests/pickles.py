"""A pickle that runs code when loaded, for the tests that show an untrusted file is refused before it runs."""

from __future__ import annotations

from pathlib import Path


class WritesMarker:
    """Unpickling this creates ``marker`` (a harmless stand-in for code execution)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))
