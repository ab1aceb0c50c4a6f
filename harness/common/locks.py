"""One writer per cache entry across processes and hosts (a shared $HARNESS_CACHE).

Why: a sweep starts many jobs on the same encoder and task; without a lock every one of them
encodes the same split. The lock is a file beside the entry, created with O_CREAT | O_EXCL
(atomic on local filesystems and on NFS v3+), holding the owner's host and pid. The owner
touches it while it works; the others wait until the entry is published, then read it.

A lock is stale when its owner is gone: on the same host, its pid no longer runs; on another
host (where the pid cannot be checked), it has not been touched for ``stale_s``. A stale lock
is broken and the waiter takes over, so a killed job never blocks a sweep.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

STALE_S = 600.0  # a lock from another host untouched this long is abandoned
TOUCH_S = 10.0  # the owner refreshes the lock at most this often


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


class EntryLock:
    """``acquire()`` -> True when this process should write ``target``; False when another
    process published it while we waited (read it instead)."""

    def __init__(self, target: Path, stale_s: float = STALE_S, poll_s: float = 0.25):
        self.target = Path(target)
        self.path = self.target.with_name(self.target.name + ".lock")
        self.stale_s, self.poll_s = stale_s, poll_s
        self.owned = False
        self.waited_s = 0.0
        self.broke: str | None = None  # set when a stale lock was broken: whose it was
        self._touched = 0.0

    def _owner(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def _stale(self) -> bool:
        owner = self._owner()
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return False
        if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
            return not _alive(owner["pid"])
        if not owner and age < 5.0:  # just created, owner not written yet
            return False
        return age > self.stale_s

    def _try_create(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            json.dump({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}, fh)
        self.owned = True
        self._touched = time.monotonic()
        return True

    def acquire(self, on_wait: Callable[[dict], None] | None = None) -> bool:
        t0 = time.monotonic()
        told = False
        while True:
            if self.target.exists():
                self.waited_s = time.monotonic() - t0
                return False
            if self._try_create():
                self.waited_s = time.monotonic() - t0
                if self.target.exists():  # published between our check and our lock
                    self.release()
                    return False
                return True
            if self._stale():
                self.broke = json.dumps(self._owner())
                self.path.unlink(missing_ok=True)
                continue
            if on_wait is not None and not told:
                on_wait(self._owner())
                told = True
            time.sleep(self.poll_s)

    def touch(self) -> None:
        """Heartbeat for waiters on other hosts (cheap: at most every TOUCH_S)."""
        now = time.monotonic()
        if self.owned and now - self._touched >= TOUCH_S:
            self._touched = now
            try:
                os.utime(self.path)
            except FileNotFoundError:
                pass

    def release(self) -> None:
        if self.owned:
            self.path.unlink(missing_ok=True)
            self.owned = False

    def __enter__(self) -> EntryLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
