"""Task registry: declarative records, looked up by name or by suite."""

from __future__ import annotations

from harness.errors import unknown_name

from .spec import TaskSpec

TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    if spec.name in TASKS:
        raise ValueError(f"task {spec.name!r} registered twice")
    TASKS[spec.name] = spec
    return spec


def suites() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for spec in TASKS.values():
        out.setdefault(spec.suite, []).append(spec.name)
    return out


def get_task(name: str) -> TaskSpec:
    _load_builtin()
    if name not in TASKS:
        raise unknown_name("task", name, list(TASKS) + list(suites()))
    return TASKS[name]


def resolve_tasks(names: list[str]) -> list[TaskSpec]:
    """Task names and suite names (e.g. ``synth``) to task records, in order, without repeats."""
    _load_builtin()
    groups = suites()
    out: list[TaskSpec] = []
    for name in names:
        for n in groups.get(name, [name]):
            spec = get_task(n)
            if spec not in out:
                out.append(spec)
    return out


def all_tasks() -> list[TaskSpec]:
    _load_builtin()
    return list(TASKS.values())


def _load_builtin() -> None:
    # Importing the modules registers their tasks (idempotent through the import system).
    from . import synthetic  # noqa: F401
