"""Progress bars on stderr (rich), silent when stderr is not a terminal or HARNESS_QUIET is set."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def _enabled() -> bool:
    if os.environ.get("HARNESS_QUIET"):
        return False
    return sys.stderr.isatty() or bool(os.environ.get("HARNESS_PROGRESS"))


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    if not _enabled():
        yield from items
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(desc, total=total)
        for item in items:
            yield item
            bar.advance(task)
