"""Ctrl-C that cannot be lost.

Python raises KeyboardInterrupt wherever the main thread is when SIGINT arrives. Inside a ``__del__`` or a
weakref callback (the garbage collector runs them at any moment) it is printed as "Exception ignored" and dropped,
and the run went on to write its record. The CLI installs ``handler``, which also remembers the interrupt, and the
long loops (encoding batches, head training steps) and the record writer call ``check``, so a dropped interrupt is
raised again at the next batch and nothing is recorded after it."""

from __future__ import annotations

import signal

_pending = False


def handler(signum, frame) -> None:
    global _pending
    _pending = True
    raise KeyboardInterrupt


def install() -> None:
    """Use ``handler`` for SIGINT where Python's default handler is in place (not where SIGINT is ignored)."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, handler)


def check() -> None:
    """Raise KeyboardInterrupt if a SIGINT arrived (also one whose first raise was swallowed)."""
    if _pending:
        raise KeyboardInterrupt
