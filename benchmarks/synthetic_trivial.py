"""Trivial-predictor scores of the synthetic tasks (the ``chance`` in each TaskSpec).

Majority class (image-level: the most frequent train label; pixelwise: the most frequent
train pixel class everywhere), train mean depth everywhere, zero flow. Fitted on train,
scored on the task's test split with the task's own metric.

    PYTHONPATH=. python benchmarks/synthetic_trivial.py [task ...]
"""

from __future__ import annotations

import json
import sys

import torch

from tasks.metrics import make_metric
from tasks.registry import resolve_tasks
from tasks.spec import DataRequest, TaskSpec


def _stack(ds, key: str) -> torch.Tensor | None:
    if key not in ds[0]:
        return None
    return torch.stack([ds[i][key] for i in range(len(ds))])


def trivial_score(task: TaskSpec) -> float:
    def req(split: str) -> DataRequest:
        return DataRequest(split=split, data_root=None, resolution=None, limit=None, train=False)

    train, test = task.dataset(task, req(task.splits.train)), task.dataset(task, req(task.splits.test))
    y_tr, y_te = _stack(train, "target"), _stack(test, "target")
    v_tr, v_te = _stack(train, "valid"), _stack(test, "valid")
    if task.metric in ("top1", "miou"):
        labels = y_tr[v_tr] if v_tr is not None else y_tr.flatten()
        majority = int(torch.bincount(labels.flatten(), minlength=task.num_outputs).argmax())
        shape = (len(y_te), task.num_outputs, *y_te.shape[1:])
        pred = torch.zeros(shape)
        pred[:, majority] = 1.0
    elif task.metric == "neg_l1":
        mask = v_tr.unsqueeze(1).expand_as(y_tr) if v_tr is not None else torch.ones_like(y_tr, dtype=torch.bool)
        pred = torch.full_like(y_te, float(y_tr[mask].double().mean()))
    elif task.metric == "one_minus_fl_all":
        pred = torch.zeros_like(y_te)
    else:
        raise ValueError(f"no trivial predictor for metric {task.metric}")
    metric = make_metric(task)
    metric.update(pred, y_te, v_te)
    return metric.compute()[task.metric]


if __name__ == "__main__":
    names = sys.argv[1:] or ["synth"]
    print(json.dumps({t.name: round(trivial_score(t), 4) for t in resolve_tasks(names)}, indent=1))
