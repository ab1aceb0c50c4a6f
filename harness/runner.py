"""The evaluation protocol: encode once (cached), train the head over a grid, select on val,
test once.

The test split is built and encoded only after every choice (epoch, configuration) has been
made on the validation split.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Subset

from encoders.base import FrozenEncoder
from encoders.registry import create_encoder
from encoders.resnet import DILATED_TAP
from heads import count_parameters, get_head
from tasks.spec import DataRequest, TaskSpec

from .cache import FeatureKey
from .common.device import resolve_device
from .common.errors import HarnessError
from .features import CacheStats, EncodeSettings, get_features
from .records import RECORD_VERSION, EvalRecord, read_record, slug
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
    seeds: int = 1  # head-training seeds seed, seed+1, ...: mean and std in the record
    encoder_seed: int = 0
    device: str | None = None
    data_root: Path | None = None
    batch_size: int | None = None
    grid: str = "full"  # "full": the task's grid; "single": its default configuration only
    aug_copies: int | None = None  # override the task's number of augmented train copies
    num_workers: int = 0
    precision: str = "auto"
    use_cache: bool = True
    ram_budget_gb: float = 8.0
    disk_budget_gb: float = 20.0
    force: bool = False
    debug: bool = False
    notes: list[str] = field(default_factory=list)
    fmt: str | None = None  # checkpoint format override (encoders/adapters.py); None: detected
    weights_dir: Path | None = None  # None: $HARNESS_WEIGHTS or <cache>/weights
    download: bool = False  # fetch missing catalog weights (never implicit)


def run_key(encoder: FrozenEncoder, task: TaskSpec, opts: EvalOptions) -> dict:
    """Everything that defines a result: the same key means the same experiment."""
    return {"encoder": encoder.fingerprint(), "task": task.name, "epochs": opts.epochs or task.epochs,
            "limit": opts.limit, "resolution": opts.resolution, "seed": opts.seed, "seeds": opts.seeds,
            "grid": opts.grid, "batch_size": opts.batch_size, "aug_copies": opts.aug_copies,
            "data_root": str(opts.data_root) if opts.data_root else None, "record_version": RECORD_VERSION}


def record_path(encoder: FrozenEncoder, task: TaskSpec, opts: EvalOptions) -> Path:
    digest = hashlib.sha256(json.dumps(run_key(encoder, task, opts), sort_keys=True).encode()).hexdigest()[:10]
    return Path(opts.out) / f"{slug(encoder.name)}__{task.name}__{digest}.json"


def _request(task: TaskSpec, opts: EvalOptions, split: str, train: bool, copy: int = 0) -> DataRequest:
    return DataRequest(split=split, data_root=opts.data_root, resolution=opts.resolution,
                       limit=opts.limit if split == task.splits.train else None, train=train, aug_copy=copy,
                       seed=opts.seed)


def _train_val(task: TaskSpec, opts: EvalOptions, copies: int):
    """Train datasets (one per augmented copy), the val dataset, and how val was made."""
    trains = [task.dataset(task, _request(task, opts, task.splits.train, True, k)) for k in range(copies)]
    if task.splits.val is not None:
        val = task.dataset(task, _request(task, opts, task.splits.val, False))
        return trains, val, f"official '{task.splits.val}' split", None
    full_eval = task.dataset(task, _request(task, opts, task.splits.train, False))
    labels = getattr(trains[0], "labels", None) if task.output == "image" and task.is_classification else None
    tr_idx, va_idx = carve_val(len(trains[0]), task.splits.val_fraction, opts.seed, labels)
    how = "stratified " if labels is not None else ""
    subsets = [Subset(ds, tr_idx.tolist()) for ds in trains]
    return (subsets, Subset(full_eval, va_idx.tolist()),
            f"{how}{task.splits.val_fraction:g} of '{task.splits.train}' carved with seed {opts.seed}",
            hashlib.sha256(va_idx.tobytes()).hexdigest()[:12])


def evaluate_task(encoder: FrozenEncoder, task: TaskSpec, opts: EvalOptions, device: torch.device) -> EvalRecord:
    t0 = time.perf_counter()
    head_entry = get_head(task.head)
    taps = tuple(head_entry.taps(task))
    missing = [t for t in taps if t not in encoder.taps]
    if missing:
        hint = " (the dilated last stage that torchvision ResNets declare)" if DILATED_TAP in missing else ""
        raise HarnessError(f"task {task.name}: its {task.head} head reads tap(s) {missing}{hint}, which encoder "
                           f"{encoder.name} does not declare (it has {list(encoder.taps)}); use an encoder that does")
    bs = opts.batch_size or task.batch_size
    copies = (opts.aug_copies or task.aug_copies) if task.train_transform.random else 1
    settings = EncodeSettings(device=device, batch_size=bs, num_workers=opts.num_workers, precision=opts.precision,
                              use_cache=opts.use_cache, ram_budget=int(opts.ram_budget_gb * 2**30),
                              disk_budget=int(opts.disk_budget_gb * 2**30))
    stats = CacheStats()
    trains, val_ds, val_how, carve_id = _train_val(task, opts, copies)

    def key(split: str, n: int, transform: str, copy: int = 0) -> FeatureKey:
        data = json.dumps({"root": str(opts.data_root) if opts.data_root else None, "carve": carve_id,
                           "limit": opts.limit if split == "train" else None})
        return FeatureKey(encoder.fingerprint(), task.name, split, n, transform, taps, opts.resolution, copy,
                          data=data)

    train_tf, eval_tf = task.train_transform.label, task.eval_transform.label
    train_src = [get_features(encoder, ds, taps, key("train", len(ds), train_tf, k), settings, stats,
                              desc=f"encode {task.name}/train#{k}") for k, ds in enumerate(trains)]
    val_src = get_features(encoder, val_ds, taps, key("val", len(val_ds), eval_tf), settings, stats,
                           desc=f"encode {task.name}/val")

    t_train = time.perf_counter()
    epochs = opts.epochs or task.epochs
    grid = task.grid if opts.grid == "full" else (task.optim,)
    per_seed = []
    for s in range(opts.seed, opts.seed + opts.seeds):
        results = []
        for i, cfg in enumerate(grid):
            torch.manual_seed(s * 1000 + i)
            head = head_entry.build(encoder.taps, task)
            results.append(fit(head, train_src, val_src, task, cfg, epochs, device, s, bs))
        best = max(results, key=lambda r: r.best_val)  # ties: the earlier (default-first) configuration
        per_seed.append((s, best, results))
    train_s = time.perf_counter() - t_train

    # Only now is the test split built, encoded and used, once per seed's chosen head.
    test_ds = task.dataset(task, _request(task, opts, task.splits.test, False))
    test_src = get_features(encoder, test_ds, taps, key("test", len(test_ds), eval_tf), settings, stats,
                            desc=f"encode {task.name}/test")
    seed_rows = []
    for s, best, _ in per_seed:
        head = head_entry.build(encoder.taps, task)
        head.load_state_dict(best.state)
        head.to(device)
        test_scores = evaluate(head, test_src, task, device)
        seed_rows.append({"seed": s, "test": float(test_scores[task.metric]), "val": float(best.best_val),
                          "config": best.config.label, "epoch": best.best_epoch, "test_scores": test_scores})
    first_seed, first_best, first_results = per_seed[0]
    tests = [r["test"] for r in seed_rows]
    vals = [r["val"] for r in seed_rows]
    sample = test_ds[0]["image"]
    record = EvalRecord(
        encoder=encoder.name, task=task.name, metric=task.metric,
        test=statistics.fmean(tests), val=statistics.fmean(vals),
        config={**first_best.config.__dict__, "label": first_best.config.label, "batch_size": bs},
        epoch=first_best.best_epoch, seed=opts.seed, head_params=count_parameters(head),
        resolution=int(sample.shape[-1]),
        timings={"encode_s": stats.encode_s, "train_s": train_s, "total_s": time.perf_counter() - t0},
        cache={"hits": stats.hits, "misses": stats.misses, "rebuilt": stats.rebuilt, "on_the_fly": stats.on_the_fly},
        encoder_fingerprint=encoder.fingerprint(), encoder_info=encoder.info.__dict__,
        category=task.category, head=task.head, taps=list(taps),
        output_resolution=[int(x) for x in sample.shape[-2:]] if task.output == "pixel" else None,
        epochs=epochs, secondary={"test": seed_rows[0]["test_scores"]},
        n={"train": len(trains[0]), "val": len(val_ds), "test": len(test_ds), "aug_copies": copies},
        val_split=val_how,
        transform={"train": train_tf, "eval": eval_tf},
        grid=[{"config": r.config.label, "best_val": r.best_val, "best_epoch": r.best_epoch,
               "history": r.history, "lrs": r.lrs} for r in first_results],
        chance=task.chance, device=str(device), notes=list(opts.notes) + stats.notes,
    )
    if opts.seeds > 1:
        record.secondary.update({"seeds": seed_rows, "test_std": statistics.stdev(tests),
                                 "val_std": statistics.stdev(vals)})
    return record


def _failed(encoder: FrozenEncoder, task: TaskSpec, opts: EvalOptions, error: str) -> EvalRecord:
    return EvalRecord(encoder=encoder.name, task=task.name, metric=task.metric, test=None, val=None, config={},
                      epoch=None, seed=opts.seed, head_params=0, resolution=opts.resolution, timings={}, cache={},
                      status="failed", error=error, encoder_fingerprint=encoder.fingerprint())


def run_eval(opts: EvalOptions) -> list[dict]:
    """Evaluate one encoder on every task.

    A task whose finished record exists for the same run key is skipped (``force`` redoes
    it); a failing task is recorded as failed with its error and the others still run.
    """
    device = resolve_device(opts.device)
    # Loading options are passed only when set, so the plain create_encoder(name, seed) call stays as it was.
    loading = {k: v for k, v in (("fmt", opts.fmt), ("weights_dir", opts.weights_dir), ("download", opts.download))
               if v}
    encoder = create_encoder(opts.encoder, seed=opts.encoder_seed, **loading)
    out: list[dict] = []
    for task in opts.tasks:
        path = record_path(encoder, task, opts)
        if path.exists():
            existing = read_record(path)
            if existing.get("status") == "ok":
                if not opts.force:
                    existing["skipped"] = True
                    out.append(existing)
                    continue
                # --force: the finished record is kept beside the new one, never lost.
                path.replace(path.with_name(f"{path.stem}.{existing.get('created', 'old').replace(':', '')}.json.bak"))
        try:
            record = evaluate_task(encoder, task, opts, device)
        except Exception as exc:
            if opts.debug or (len(opts.tasks) == 1 and isinstance(exc, HarnessError)):
                raise
            msg = str(exc).splitlines()[0] if str(exc) else ""
            record = _failed(encoder, task, opts, f"{type(exc).__name__}: {msg}")
        record.run_key = run_key(encoder, task, opts)
        record.write_to(path)
        out.append(record.to_dict())
    return out
