"""One small registry for every kind of named thing (tasks, heads, losses, metrics, encoders,
checkpoint formats, pretraining methods).

Why one helper: a name is checked when it is registered (well-formed, not taken) and when it
is looked up (an unknown name is a usage error listing the close matches, never a bare
KeyError), and builtins are found by importing every module of a package instead of a
hand-kept import list that a new module can be forgotten from.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import HarnessError, unknown_name

T = TypeVar("T")

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class RegistrationError(HarnessError):
    """A programming mistake in a registration (bad or duplicate name, unknown reference)."""


class Registry(Generic[T]):
    """Name -> object for one kind. ``discover``: a package whose modules register the builtins
    when imported; they are imported (all of them, once) before the first lookup."""

    def __init__(self, kind: str, discover: str | None = None, hint: str = "",
                 check: Callable[[str, T], None] | None = None):
        self.kind, self.hint, self._check = kind, hint, check
        self._discover = discover
        self._items: dict[str, T] = {}
        self._discovered = discover is None
        self._discovering = False

    def register(self, name: str, obj: T) -> T:
        if not isinstance(name, str) or not NAME.match(name):
            raise RegistrationError(f"{self.kind} name {name!r} is not valid (letters, digits, _ . + -)")
        if name in self._items:
            raise RegistrationError(f"{self.kind} {name!r} registered twice")
        if self._check is not None:
            self._check(name, obj)
        self._items[name] = obj
        return obj

    def decorator(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            self.register(name, obj)
            return obj

        return deco

    def discover(self) -> None:
        """Import every module of the builtin package once (their import registers them)."""
        if self._discovered or self._discovering:
            return
        self._discovering = True
        try:
            for module in iter_modules(self._discover):
                importlib.import_module(module)
            self._discovered = True
        finally:
            self._discovering = False

    def __getitem__(self, name: str) -> T:
        self.discover()
        if name not in self._items:
            raise unknown_name(self.kind, name, self._items, hint=self.hint)
        return self._items[name]

    def get(self, name: str, default: T | None = None) -> T | None:
        self.discover()
        return self._items.get(name, default)

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        self.discover()
        return iter(list(self._items))

    def __len__(self) -> int:
        self.discover()
        return len(self._items)

    def names(self) -> list[str]:
        return list(self)

    def values(self) -> list[T]:
        self.discover()
        return list(self._items.values())

    def items(self) -> list[tuple[str, T]]:
        self.discover()
        return list(self._items.items())


def iter_modules(package: str) -> list[str]:
    """Every module below ``package`` (sorted, private ``_``-modules and test modules left out)."""
    pkg = importlib.import_module(package)
    names = []
    for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}."):
        leaf = info.name.rsplit(".", 1)[-1]
        if leaf.startswith("_") or leaf.startswith("test"):
            continue
        names.append(info.name)
    return sorted(names)
