"""The evaluation protocol: encode once, train the head over a grid, select on val, test once."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Subset

from encoders.base import FrozenEncoder
from encoders.registry import create_encoder
from heads import count_parameters, get_head
from tasks.spec import DataRequest, TaskSpec

from .device import resolve_device
from .features import Features, encode
from .records import EvalRecord, read_record
from .splits import carve_val
from .train import evaluate, fit


@dataclass
class EvalOptions:
    encoder: str
    tasks: list[TaskSpec]
    out: Path = Path("results")
    epochs: int | None = None
    limit: int | None = None
    resolution: int | None = None
    seed: int = 0
    encoder_seed: int = 0
    device: str | None = None
    data_root: Path | None = None
    batch_size: int | None = None
    grid: str = "full"  # "full": the task's grid; "single": its default configuration only
    num_workers: int = 0
    force: bool = False
    debug: bool = False
    notes: list[str] = field(default_factory=list)
    fmt: str | None = None  # checkpoint format override (encoders/adapters.py); None: detected
    weights_dir: Path | None = None  # None: $HARNESS_WEIGHTS or <cache>/weights
    download: bool = False  # fetch missing catalog weights (never implicit)


def _datasets(task: TaskSpec, opts: EvalOptions) -> tuple[object, object, object, str]:
    def req(split: str, train: bool) -> DataRequest:
        return DataRequest(split=split, data_root=opts.data_root, resolution=opts.resolution,
                           limit=opts.limit if split == "train" else None, train=train)

    test = task.dataset(task, req(task.splits.test, False))
    if task.splits.val is not None:
        train = task.dataset(task, req(task.splits.train, True))
        val = task.dataset(task, req(task.splits.val, False))
        return train, val, test, f"official '{task.splits.val}' split"
    full_train = task.dataset(task, req(task.splits.train, True))
    full_eval = task.dataset(task, req(task.splits.train, False))
    labels = getattr(full_train, "labels", None) if task.output == "image" and task.is_classification else None
    tr_idx, va_idx = carve_val(len(full_train), task.splits.val_fraction, opts.seed, labels)
    how = "stratified " if labels is not None else ""
    return (Subset(full_train, tr_idx.tolist()), Subset(full_eval, va_idx.tolist()), test,
            f"{how}{task.splits.val_fraction:g} of '{task.splits.train}' carved with seed {opts.seed}")


def evaluate_task(encoder: FrozenEncoder, task: TaskSpec, opts: EvalOptions, device: torch.device) -> EvalRecord:
    t0 = time.perf_counter()
    head_entry = get_head(task.head)
    taps = head_entry.taps(task)
    train_ds, val_ds, test_ds, val_how = _datasets(task, opts)
    bs = opts.batch_size or task.batch_size

    t_enc = time.perf_counter()
    feats: dict[str, Features] = {}
    for split, ds in (("train", train_ds), ("val", val_ds), ("test", test_ds)):
        feats[split] = encode(encoder, ds, taps, device, batch_size=bs, num_workers=opts.num_workers,
                              desc=f"encode {task.name}/{split}")
    encode_s = time.perf_counter() - t_enc

    t_train = time.perf_counter()
    epochs = opts.epochs or task.epochs
    grid = task.grid if opts.grid == "full" else (task.optim,)
    results = []
    for i, cfg in enumerate(grid):
        torch.manual_seed(opts.seed * 1000 + i)
        head = head_entry.build(encoder.taps, task)
        results.append(fit(head, feats["train"], feats["val"], task, cfg, epochs, device, opts.seed, bs))
    best = max(results, key=lambda r: r.best_val)  # ties: the earlier (default-first) configuration
    head = head_entry.build(encoder.taps, task)
    head.load_state_dict(best.state)
    head.to(device)
    train_s = time.perf_counter() - t_train
    test_scores = evaluate(head, feats["test"], task, device)  # the only use of the test split
    val_scores = evaluate(head, feats["val"], task, device)

    sample = test_ds[0]["image"]
    return EvalRecord(
        encoder=encoder.name, task=task.name, metric=task.metric,
        test=float(test_scores[task.metric]), val=float(val_scores[task.metric]),
        config={**best.config.__dict__, "label": best.config.label, "batch_size": bs},
        epoch=best.best_epoch, seed=opts.seed, head_params=count_parameters(head),
        resolution=int(sample.shape[-1]), timings={"encode_s": encode_s, "train_s": train_s,
                                                   "total_s": time.perf_counter() - t0},
        cache={"hits": 0, "misses": 3},
        encoder_fingerprint=encoder.fingerprint(), encoder_info=encoder.info.__dict__,
        category=task.category, head=task.head, taps=list(taps),
        output_resolution=[int(s) for s in sample.shape[-2:]] if task.output == "pixel" else None,
        epochs=epochs, secondary={"test": test_scores, "val": val_scores},
        n={k: len(v) for k, v in feats.items()}, val_split=val_how,
        transform={"train": task.train_transform.label, "eval": task.eval_transform.label},
        grid=[{"config": r.config.label, "best_val": r.best_val, "best_epoch": r.best_epoch,
               "history": r.history, "lrs": r.lrs} for r in results],
        chance=task.chance, device=str(device), notes=list(opts.notes),
    )


def run_eval(opts: EvalOptions) -> list[dict]:
    """Evaluate one encoder on every task; skip tasks with a finished record unless forced.

    A failing task is recorded as failed and the others still run.
    """
    device = resolve_device(opts.device)
    # Loading options are passed only when set, so the plain create_encoder(name, seed) call stays as it was.
    loading = {k: v for k, v in (("fmt", opts.fmt), ("weights_dir", opts.weights_dir), ("download", opts.download))
               if v}
    encoder = create_encoder(opts.encoder, seed=opts.encoder_seed, **loading)
    out: list[dict] = []
    for task in opts.tasks:
        probe = EvalRecord(encoder=encoder.name, task=task.name, metric=task.metric, test=None, val=None,
                           config={}, epoch=None, seed=opts.seed, head_params=0, resolution=opts.resolution,
                           timings={}, cache={})
        path = probe.path(opts.out)
        if path.exists() and not opts.force:
            existing = read_record(path)
            if existing.get("status") == "ok":
                existing["skipped"] = True
                out.append(existing)
                continue
        try:
            record = evaluate_task(encoder, task, opts, device)
        except Exception as exc:
            if opts.debug or len(opts.tasks) == 1:
                raise
            record = probe
            record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"
        record.write(opts.out)
        out.append(record.to_dict())
    return out
