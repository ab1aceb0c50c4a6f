"""End tasks: declarative records, datasets, losses and metrics."""

from .registry import all_tasks, get_task, register_task, resolve_tasks
from .spec import DataRequest, OptimConfig, SplitSpec, TaskSpec, TransformSpec

__all__ = ["DataRequest", "OptimConfig", "SplitSpec", "TaskSpec", "TransformSpec", "all_tasks", "get_task",
           "register_task", "resolve_tasks"]
