"""What a user sees while work runs, always on stderr.

In a terminal: rich progress bars (encoding, training with the configuration, epoch, loss,
last val metric and ETA). Anywhere else (CI, nohup, a pipe, a cluster job): plain log lines,
one per phase and per training epoch at a bounded rate, so a log stays readable. Nothing at
all with ``HARNESS_QUIET`` set; ``HARNESS_PROGRESS`` forces bars on.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

LOG_EVERY_S = 20.0  # at most one epoch line per this many seconds when not on a terminal


def _quiet() -> bool:
    return bool(os.environ.get("HARNESS_QUIET"))


def _bars() -> bool:
    if _quiet():
        return False
    return sys.stderr.isatty() or bool(os.environ.get("HARNESS_PROGRESS"))


def log(msg: str) -> None:
    """One line on stderr (timestamped when stderr is not a terminal); nothing when quiet."""
    if _quiet():
        return
    if sys.stderr.isatty():
        sys.stderr.write(f"{msg}\n")
    else:
        sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def _fmt_s(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """A bar in a terminal; a start and an end line otherwise."""
    if _quiet():
        yield from items
        return
    if not _bars():  # one line at the end, and one a minute while a long one runs
        t0 = last = time.perf_counter()
        count = 0
        for item in items:
            yield item
            count += 1
            now = time.perf_counter()
            if now - last >= 3 * LOG_EVERY_S and total:
                last = now
                log(f"{desc}: {count}/{total}, ETA {_fmt_s((now - t0) / count * (total - count))}")
        log(f"{desc}: {count} step(s) in {_fmt_s(time.perf_counter() - t0)}")
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(desc, total=total)
        for item in items:
            yield item
            bar.advance(task)


class TrainProgress:
    """Head training over configurations x epochs (x seeds): one bar, or bounded log lines.

    ``epoch(...)`` is called after each epoch with the train loss and the val metric.
    """

    def __init__(self, desc: str, total_epochs: int, metric: str):
        self.desc, self.total, self.metric = desc, max(1, total_epochs), metric
        self.done = 0
        self.t0 = time.perf_counter()
        self.last_log = -float("inf")
        self._bar = None
        self._task = None

    def __enter__(self) -> TrainProgress:
        if _bars():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(),
                                 console=Console(stderr=True), transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.desc, total=self.total)
        else:
            log(f"{self.desc}: {self.total} epoch(s) in all")
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def epoch(self, label: str, epoch: int, epochs: int, train_loss: float, val: float) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / self.done * (self.total - self.done)
        line = (f"{self.desc} {label} epoch {epoch}/{epochs} loss {train_loss:.4g} val {self.metric} {val:.4f}")
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, description=line)
            return
        now = time.perf_counter()
        if now - self.last_log >= LOG_EVERY_S or self.done == self.total:
            self.last_log = now
            log(f"{line} ({self.done}/{self.total}, ETA {_fmt_s(eta)})")
