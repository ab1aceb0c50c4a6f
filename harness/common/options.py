"""A command's options, declared once: each is a field of the command's options dataclass, whose
metadata is its typer option (flags, help, bounds), so that the command line, the object the code
receives and its checks cannot drift apart.

- ``option(...)`` declares such a field;
- ``@command(Options)`` gives a typer command one parameter per option field; its body receives them
  as ``parsed`` (a ``Parsed``), and ``parsed.build()`` makes the options object, by field name;
- ``check(obj)``, called by the options object itself, enforces the choices of ``Literal`` fields and
  the bounds declared on each option, in one line, whether the object came from the command line or
  from Python.

How a field's type appears on the command line: a ``Literal`` as a plain string (checked by ``check``
with one line, not by click's four-line usage block); ``tuple[X, ...]`` as a repeatable option whose
values, when given, replace the default; anything else as itself, or as ``typed`` with ``parse`` to
turn what was typed into the field's value (task names into tasks).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING
from typing import Annotated, Any, Generic, Literal, Optional, TypeVar, get_args, get_origin

import typer

from .errors import UsageError

T = TypeVar("T")

# What encoding (--precision) and head training (--head-precision) run in; 'auto' is resolved per device.
_FIELDS = object()  # Cli.given's default: the command line's default is the field's

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


@dataclasses.dataclass(frozen=True)
class Cli:
    """How one field appears on the command line."""

    info: Any  # typer's OptionInfo: flags, help, bounds
    typed: Any = None  # the type typer parses, when it is not the field's own (task names for tasks)
    parse: Callable[[Any], Any] | None = None  # what was typed -> the field's value
    given: Any = _FIELDS  # the command line's default, when it is not the field's (a flag that negates; ...: required)

    @property
    def flag(self) -> str:
        """The option's first long flag (what messages name)."""
        flags = (self.info.default, *(self.info.param_decls or ()))
        return next((f for f in flags if isinstance(f, str) and f.startswith("--")), str(flags[0]))


def option(*decls: str, default: Any = MISSING, default_factory: Any = MISSING, help: str | None = None,  # noqa: A002
           typed: Any = None, parse: Callable[[Any], Any] | None = None, given: Any = _FIELDS, **bounds: Any) -> Any:
    """A dataclass field that is also a typer option: ``decls`` its flags, ``help`` its help, ``bounds``
    typer's ``min``/``max`` (also enforced by ``check``); ``typed``, ``parse`` and ``given``: see ``Cli``."""
    cli = Cli(typer.Option(*decls, help=help, **bounds), typed, parse, given)
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"cli": cli})


def cli_fields(cls: type) -> list[tuple[dataclasses.Field, Cli]]:
    """The fields of ``cls`` that are options, in declaration order."""
    return [(f, f.metadata["cli"]) for f in dataclasses.fields(cls) if "cli" in f.metadata]


def field_type(cls: type, f: dataclasses.Field) -> Any:
    """A field's annotation as a type (annotations are strings under ``from __future__ import annotations``)."""
    if not isinstance(f.type, str):
        return f.type
    # evaluated where the field was declared: a base class (ExecutorSettings) may live in another module
    owner = next((c for c in cls.__mro__ if f.name in vars(c).get("__annotations__", {})), cls)
    return eval(f.type, vars(sys.modules[owner.__module__]))  # noqa: S307 - the class's own annotation


def _without_none(tp: Any) -> tuple[Any, bool]:
    """(X, True) for ``X | None``; (tp, False) otherwise."""
    if get_origin(tp) in (typing.Union, types.UnionType):
        rest = [a for a in get_args(tp) if a is not type(None)]
        if len(rest) == 1 and len(rest) < len(get_args(tp)):
            return rest[0], True
    return tp, False


def _repeatable(tp: Any) -> Any:
    """X for ``tuple[X, ...]`` (a repeatable option); None otherwise."""
    args = get_args(tp)
    return args[0] if get_origin(tp) is tuple and len(args) == 2 and args[1] is Ellipsis else None


def _typer_type(tp: Any) -> Any:
    inner, optional = _without_none(tp)
    if get_origin(inner) is Literal:
        inner = str
    elif _repeatable(inner) is not None:
        return Optional[list[_repeatable(inner)]]  # noqa: UP045 - typer reads Optional on every Python
    return Optional[inner] if optional else inner  # noqa: UP045


def _cli_default(f: dataclasses.Field, cli: Cli, tp: Any) -> Any:
    if cli.given is not _FIELDS:
        return cli.given
    if _repeatable(_without_none(tp)[0]) is not None:
        return None  # not given: the field's default
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return inspect.Parameter.empty  # required


def parameters(cls: type) -> list[inspect.Parameter]:
    """The typer parameters of ``cls``'s options."""
    params = []
    for f, cli in cli_fields(cls):
        tp = cli.typed if cli.typed is not None else field_type(cls, f)
        typed = cli.typed if cli.typed is not None else _typer_type(tp)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=_cli_default(f, cli, tp),
                                        annotation=Annotated[typed, cli.info]))
    return params


@dataclasses.dataclass(frozen=True)
class Parsed(Generic[T]):
    """A command's options as typer parsed them (by field name), before they are made into ``cls``."""

    cls: type[T]
    values: dict[str, Any]

    def build(self, **fixed: Any) -> T:
        """The options object (checked by its own ``__post_init__``); ``fixed``: fields the command
        sets itself (not options)."""
        kwargs = {}
        for f, cli in cli_fields(self.cls):
            value = self.values[f.name]
            if cli.parse is not None:
                value = cli.parse(value)
            elif cli.typed is None and _repeatable(_without_none(field_type(self.cls, f))[0]) is not None:
                value = tuple(value) if value else _default(f)
            kwargs[f.name] = value
        return self.cls(**kwargs, **fixed)


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


def command(cls: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A typer command that takes ``cls``'s options: typer sees the command's own parameters and one per
    option field; the body receives the options as ``parsed`` (a ``Parsed``) with its own parameters."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
               for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name != "parsed"]
        opts = parameters(cls)
        clash = {p.name for p in own} & {p.name for p in opts}
        if clash:
            raise TypeError(f"{fn.__name__}: parameters {sorted(clash)} are also fields of {cls.__name__}")
        names = [p.name for p in opts]

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in names}
            return fn(parsed=Parsed(cls, values), **kwargs)

        params = [*opts, *own]
        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return wrap


def _either(choices: tuple) -> str:
    names = [str(c) for c in choices]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def check(obj: Any) -> None:
    """A usage error, in one line, for an option outside its ``Literal`` choices or its declared bounds."""
    cls = type(obj)
    for f, cli in cli_fields(cls):
        value = getattr(obj, f.name)
        if value is None:
            continue
        tp = _without_none(field_type(cls, f))[0] if cli.typed is None else None
        if get_origin(tp) is Literal and value not in get_args(tp):
            raise UsageError(f"{cli.flag} {value!r}: use {_either(get_args(tp))}")
        low, high = getattr(cli.info, "min", None), getattr(cli.info, "max", None)
        for v in value if isinstance(value, tuple) else (value,):
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            if low is not None and v < low:
                raise UsageError(f"{cli.flag} {v}: use a value >= {low}")
            if high is not None and v > high:
                raise UsageError(f"{cli.flag} {v}: use a value <= {high}")
