"""Task registry: declarative records, looked up by name or by suite.

Every module of the ``tasks`` package is imported before the first lookup, so a new dataset
module registers its tasks by existing. A task's head, loss and metric names are checked when
it registers: a typo fails at import with one line, not with a KeyError mid-run.
"""

from __future__ import annotations

from harness.common.errors import unknown_name
from harness.common.registry import RegistrationError, Registry
from heads.registry import HEADS

from .losses import LOSSES
from .metrics import METRICS
from .spec import TaskSpec


def _check(name: str, spec: TaskSpec) -> None:
    for kind, value, known in (("head", spec.head, HEADS), ("loss", spec.loss, LOSSES),
                               ("metric", spec.metric, METRICS)):
        if value not in known:
            raise RegistrationError(f"task {name!r} names an unknown {kind} {value!r} (known: {', '.join(known)})")
    if name != spec.name:
        raise RegistrationError(f"task registered as {name!r} but its record says {spec.name!r}")


TASKS: Registry[TaskSpec] = Registry("task", discover="tasks", check=_check)


def register_task(spec: TaskSpec) -> TaskSpec:
    return TASKS.register(spec.name, spec)


# One name for the synthetic suite everywhere (eval, cka, pretrain); the long form is an alias.
SUITE_ALIASES = {"synthetic": "synth"}


def suite_alias(name: str) -> str:
    return SUITE_ALIASES.get(name, name)


def suites() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for spec in TASKS.values():
        out.setdefault(spec.suite, []).append(spec.name)
    return out


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise unknown_name("task", name, TASKS.names() + list(suites()))
    return TASKS[name]


def resolve_tasks(names: list[str]) -> list[TaskSpec]:
    """Task names and suite names (e.g. ``synth``) to task records, in order, without repeats."""
    groups = suites()
    out: list[TaskSpec] = []
    for name in names:
        name = suite_alias(name)
        for n in groups.get(name, [name]):
            spec = get_task(n)
            if spec not in out:
                out.append(spec)
    return out


def all_tasks() -> list[TaskSpec]:
    return TASKS.values()
