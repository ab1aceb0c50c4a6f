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


SHOWN = 20  # names an unknown-name message lists before it says how many more there are

# The command that lists every name of a kind, pointed to when a message cannot list them all.
LISTED_BY: dict[str, str] = {"encoder": "harness encoders", "catalog encoder": "harness encoders",
                             "task": "harness tasks"}


def unknown_name(kind: str, name: str, known: Iterable[str], hint: str = "", listed_by: str | None = None
                 ) -> UsageError:
    """'unknown KIND NAME' with the close matches, or else the known names: all of them, or the first
    ``SHOWN`` with how many more there are and the command that lists them all."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    listed_by = listed_by or LISTED_BY.get(kind)
    msg = f"unknown {kind} {name!r}"
    if close:
        msg += f"; did you mean: {', '.join(close)}?"
    elif len(known) <= SHOWN:
        msg += f"; known: {', '.join(known)}"
    else:
        where = f"; `{listed_by}` lists them all" if listed_by else ""
        msg += f"; known ({SHOWN} of {len(known)}): {', '.join(known[:SHOWN])} (and {len(known) - SHOWN} more{where})"
    if hint:
        msg += f" {hint}"
    return UsageError(msg)
