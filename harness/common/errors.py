"""Errors meant for the user: one clear line, no traceback (unless --debug)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class HarnessError(Exception):
    """A failure at run time (exit code 1): say what failed and what to do."""

    exit_code = 1


class UsageError(HarnessError):
    """A mistake in what the user asked for (exit code 2)."""

    exit_code = 2


def unknown_name(kind: str, name: str, known: Iterable[str], hint: str = "") -> UsageError:
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    msg = f"unknown {kind} {name!r}"
    msg += f"; did you mean: {', '.join(close)}?" if close else f"; known: {', '.join(known[:20])}"
    if hint:
        msg += f" {hint}"
    return UsageError(msg)
