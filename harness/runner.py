"""The evaluation protocol: encode once (cached), train the head over a grid, select on val,
test once.

The steps, in order, each a function below:
1. ``plan_task``: options and task defaults merged once into a ``TaskPlan``;
2. ``encode_train_val``: the train copies and the val split (official or carved) encoded;
3. ``train_and_select``: the head trained under each configuration (and seed), the best
   epoch of the best configuration chosen on val;
4. ``test_target``: only now is a test split built, encoded and scored, once per chosen head,
   and a record made. A test-only task (``head_from``: ImageNet v2) and a task's extra test
   sets reuse the head trained for their source task: one training, several test sets.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Subset

from encoders.base import FrozenEncoder
from encoders.registry import create_encoder
from heads import count_parameters, get_head
from heads.registry import HeadEntry
from tasks.datasets.base import TaskDataset
from tasks.registry import get_task
from tasks.spec import DataRequest, OptimConfig, TaskSpec

from .cache import FeatureKey
from .common.device import resolve_device
from .common.errors import HarnessError, UsageError
from .common.progress import TrainProgress, log
from .common.taps import DILATED_TAP
from .features import CacheStats, EncodeSettings, get_features
from .records import RECORD_VERSION, EvalRecord, read_record, slug
from .splits import carve_val
from .train import FitResult, evaluate, fit, resolve_head_precision


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
    num_workers: int | None = None  # None: the machine's cores for datasets that decode files, else 0
    precision: str = "auto"
    head_precision: str = "auto"  # head training: auto | fp32 | bf16 | fp16 (harness.train.resolve_head_precision)
    use_cache: bool = True
    ram_budget_gb: float = 8.0
    disk_budget_gb: float = 20.0
    force: bool = False
    debug: bool = False
    notes: list[str] = field(default_factory=list)
    fmt: str | None = None  # checkpoint format override (encoders/adapters.py); None: detected
    weights_dir: Path | None = None  # None: $HARNESS_WEIGHTS or <cache>/weights
    download: bool = False  # fetch missing catalog weights (never implicit)


@dataclass
class TaskPlan:
    """One task's run, with every option and task default resolved once."""

    task: TaskSpec  # the task whose head is trained and selected
    head: HeadEntry
    taps: tuple[str, ...]
    epochs: int
    batch_size: int
    copies: int  # augmented train copies encoded
    grid: tuple[OptimConfig, ...]
    seeds: tuple[int, ...]
    settings: EncodeSettings
    workers: int | None  # None: chosen per dataset (default_workers)


@dataclass
class Selection:
    """What training chose, per seed, and how val was made."""

    per_seed: list[tuple[int, FitResult, list[FitResult]]]
    precision: str  # what the head trained (and is tested) in
    n_train: int
    n_val: int
    val_how: str
    carve_id: str | None
    train_s: float


def eval_options(params: dict, debug: bool = False) -> EvalOptions:
    """``harness eval``'s parsed options (by parameter name) -> EvalOptions: one place, used by
    eval itself and by sweep, which passes eval's options through to every job."""
    from tasks.registry import resolve_tasks

    if params["grid"] not in ("full", "single"):
        raise UsageError(f"--grid {params['grid']!r}: use 'full' or 'single'")
    for opt in ("precision", "head_precision"):
        if params.get(opt, "auto") not in ("auto", "fp32", "bf16", "fp16"):
            raise UsageError(f"--{opt.replace('_', '-')} {params[opt]!r}: use auto, fp32, bf16 or fp16")
    p = dict(params)
    p.pop("json_out", None)
    p["tasks"] = resolve_tasks(p.pop("task"))
    p["num_workers"] = p.pop("workers")
    p["use_cache"] = not p.pop("no_cache")
    return EvalOptions(**p, debug=debug)


def run_key(encoder: FrozenEncoder, task: TaskSpec, opts: EvalOptions) -> dict:
    """Everything that defines a result: the same key means the same experiment."""
    source = get_task(task.head_from) if task.head_from else task
    key = {"encoder": encoder.fingerprint(), "task": task.name, "epochs": opts.epochs or source.epochs,
           "limit": opts.limit, "resolution": opts.resolution, "seed": opts.seed, "seeds": opts.seeds,
           "grid": opts.grid, "batch_size": opts.batch_size, "aug_copies": opts.aug_copies,
           "head_precision": opts.head_precision,
           "data_root": str(opts.data_root) if opts.data_root else None, "record_version": RECORD_VERSION}
    if task.head_from:
        key["head_from"] = task.head_from
    return key


def record_path(encoder: FrozenEncoder, task: TaskSpec, opts: EvalOptions) -> Path:
    digest = hashlib.sha256(json.dumps(run_key(encoder, task, opts), sort_keys=True).encode()).hexdigest()[:10]
    return Path(opts.out) / f"{slug(encoder.name)}__{task.name}__{digest}.json"


def _request(task: TaskSpec, opts: EvalOptions, split: str, train: bool, copy: int = 0) -> DataRequest:
    return DataRequest(split=split, data_root=opts.data_root, resolution=opts.resolution,
                       limit=opts.limit if split == task.splits.train else None, train=train, aug_copy=copy,
                       seed=opts.seed)


def default_workers(dataset) -> int:
    """DataLoader workers: the machine's cores when decoding files is the work, else none."""
    if isinstance(dataset, TaskDataset) and dataset.decodes_files:
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover - not on Linux
            return max(1, os.cpu_count() or 1)
    return 0


# ------------------------------------------------------------------------------------------- 1. plan

def plan_task(encoder: FrozenEncoder, task: TaskSpec, opts: EvalOptions, device: torch.device) -> TaskPlan:
    head = get_head(task.head)
    taps = tuple(head.taps(task))
    missing = [t for t in taps if t not in encoder.taps]
    if missing:
        hint = " (the dilated last stage that torchvision ResNets declare)" if DILATED_TAP in missing else ""
        raise HarnessError(f"task {task.name}: its {task.head} head reads tap(s) {missing}{hint}, which encoder "
                           f"{encoder.name} does not declare (it has {list(encoder.taps)}); use an encoder that does")
    bs = opts.batch_size or task.batch_size
    settings = EncodeSettings(device=device, batch_size=bs, num_workers=opts.num_workers or 0,
                              precision=opts.precision, use_cache=opts.use_cache,
                              ram_budget=int(opts.ram_budget_gb * 2**30), disk_budget=int(opts.disk_budget_gb * 2**30))
    return TaskPlan(task=task, head=head, taps=taps, epochs=opts.epochs or task.epochs, batch_size=bs,
                    copies=(opts.aug_copies or task.aug_copies) if task.train_transform.random else 1,
                    grid=task.grid if opts.grid == "full" else (task.optim,),
                    seeds=tuple(range(opts.seed, opts.seed + opts.seeds)), settings=settings, workers=opts.num_workers)


def _feature_key(encoder: FrozenEncoder, plan: TaskPlan, opts: EvalOptions, task: TaskSpec, split: str, n: int,
                 transform: str, copy: int = 0, carve: str | None = None) -> FeatureKey:
    payload = {"root": str(opts.data_root) if opts.data_root else None, "carve": carve,
               "limit": opts.limit if split == "train" else None}
    if split == "train" and task.train_transform.random:
        # The random crops, scales and flips of copy k are drawn from (seed, k, index): another
        # seed is another set of copies. Keys of tasks without random transforms are unchanged.
        payload["aug_seed"] = opts.seed
    data = json.dumps(payload)
    return FeatureKey(encoder.fingerprint(), task.name, split, n, transform, plan.taps, opts.resolution, copy,
                      data=data)


def _encode(encoder, dataset, plan: TaskPlan, key: FeatureKey, stats: CacheStats, desc: str):
    settings = plan.settings
    if plan.workers is None:
        base = dataset.dataset if isinstance(dataset, Subset) else dataset
        settings = EncodeSettings(**{**settings.__dict__, "num_workers": default_workers(base)})
    return get_features(encoder, dataset, plan.taps, key, settings, stats, desc=desc)


# ----------------------------------------------------------------------------------- 2. train / val

def _train_val(task: TaskSpec, opts: EvalOptions, copies: int):
    """Train datasets (one per augmented copy), the val dataset, how val was made, the carve's id."""
    trains = [task.dataset(task, _request(task, opts, task.splits.train, True, k)) for k in range(copies)]
    if task.splits.val is not None:
        val = task.dataset(task, _request(task, opts, task.splits.val, False))
        return trains, val, f"official '{task.splits.val}' split", None
    full_eval = task.dataset(task, _request(task, opts, task.splits.train, False))
    labels = None
    if task.output == "image" and task.is_classification:
        if not isinstance(trains[0], TaskDataset) or trains[0].class_labels() is None:
            raise HarnessError(f"task {task.name}: its loader declares no class labels to stratify the carved val "
                               f"split by (TaskDataset.class_labels)")
        labels = trains[0].class_labels()
    tr_idx, va_idx = carve_val(len(trains[0]), task.splits.val_fraction, opts.seed, labels)
    how = "stratified " if labels is not None else ""
    subsets = [Subset(ds, tr_idx.tolist()) for ds in trains]
    return (subsets, Subset(full_eval, va_idx.tolist()),
            f"{how}{task.splits.val_fraction:g} of '{task.splits.train}' carved with seed {opts.seed}",
            hashlib.sha256(va_idx.tobytes()).hexdigest()[:12])


def encode_train_val(encoder, plan: TaskPlan, opts: EvalOptions, stats: CacheStats, listed=None):
    """``listed``: the train/val datasets already built by ``_train_val`` (else built here)."""
    task = plan.task
    trains, val_ds, val_how, carve_id = listed if listed is not None else _train_val(task, opts, plan.copies)
    train_tf, eval_tf = task.train_transform.label, task.eval_transform.label
    train_src = [_encode(encoder, ds, plan, _feature_key(encoder, plan, opts, task, "train", len(ds), train_tf, k,
                                                         carve_id), stats, f"encode {task.name}/train#{k}")
                 for k, ds in enumerate(trains)]
    val_src = _encode(encoder, val_ds, plan, _feature_key(encoder, plan, opts, task, "val", len(val_ds), eval_tf,
                                                          carve=carve_id), stats, f"encode {task.name}/val")
    return train_src, val_src, (len(trains[0]), len(val_ds), val_how, carve_id)


# ------------------------------------------------------------------------------- 3. train and select

def train_and_select(encoder, plan: TaskPlan, train_src, val_src, device: torch.device,
                     head_precision: str = "auto") -> tuple[list, str]:
    task = plan.task
    per_seed = []
    precision = resolve_head_precision(head_precision, device, plan.head.build(encoder.taps, task))
    total = len(plan.seeds) * len(plan.grid) * plan.epochs
    with TrainProgress(f"train {task.name}", total, task.metric) as bar:
        for s in plan.seeds:
            results = []
            for i, cfg in enumerate(plan.grid):
                torch.manual_seed(s * 1000 + i)
                head = plan.head.build(encoder.taps, task)
                seed_tag = f" seed {s}" if len(plan.seeds) > 1 else ""
                label = f"config {i + 1}/{len(plan.grid)} ({cfg.label}){seed_tag}"

                def hook(epoch, loss, val, label=label):
                    bar.epoch(label, epoch, plan.epochs, loss, val)

                results.append(fit(head, train_src, val_src, task, cfg, plan.epochs, device, s, plan.batch_size,
                                   on_epoch=hook, precision=precision))
            best = max(results, key=lambda r: r.best_val)  # ties: the earlier (default-first) configuration
            per_seed.append((s, best, results))
    first = per_seed[0][1]
    log(f"train {task.name}: chose {first.config.label}, epoch {first.best_epoch}, val {task.metric} "
        f"{first.best_val:.4f} (head in {precision})")
    return per_seed, precision


# ------------------------------------------------------------------------------------------ 4. test

def list_test(target: TaskSpec, opts: EvalOptions):
    """The test split's listing (files paired, nothing decoded or encoded): made before training so
    that a missing test file fails in seconds, not after hours of training. Nothing of it is read
    until every choice has been made on val."""
    return target.dataset(target, _request(target, opts, target.splits.test, False))


def test_target(encoder, plan: TaskPlan, target: TaskSpec, sel: Selection, opts: EvalOptions, stats: CacheStats,
                device: torch.device, t0: float, test_ds=None) -> EvalRecord:
    """Encode and score ``target``'s test split with each seed's chosen head; the record."""
    task = plan.task
    eval_tf = target.eval_transform.label
    if test_ds is None:
        test_ds = list_test(target, opts)
    test_src = _encode(encoder, test_ds, plan, _feature_key(encoder, plan, opts, target, "test", len(test_ds),
                                                            eval_tf), stats, f"encode {target.name}/test")
    seed_rows = []
    for s, best, _ in sel.per_seed:
        head = plan.head.build(encoder.taps, task)
        head.load_state_dict(best.state)
        head.to(device)
        scores = evaluate(head, test_src, task, device, precision=sel.precision)
        seed_rows.append({"seed": s, "test": float(scores[task.metric]), "val": float(best.best_val),
                          "config": best.config.label, "epoch": best.best_epoch, "test_scores": scores})
    first_best, first_results = sel.per_seed[0][1], sel.per_seed[0][2]
    tests, vals = [r["test"] for r in seed_rows], [r["val"] for r in seed_rows]
    sample = test_ds[0]["image"]
    notes = list(opts.notes) + stats.notes
    if target is not task:
        notes.append(f"head trained on {task.name} train and selected on its val; tested on {target.name}")
    record = EvalRecord(
        encoder=encoder.name, task=target.name, metric=target.metric,
        test=statistics.fmean(tests), val=statistics.fmean(vals),
        config={**first_best.config.__dict__, "label": first_best.config.label, "batch_size": plan.batch_size},
        epoch=first_best.best_epoch, seed=opts.seed, head_params=count_parameters(head),
        resolution=int(sample.shape[-1]),
        timings={"encode_s": stats.encode_s, "train_s": sel.train_s, "total_s": time.perf_counter() - t0},
        cache={"hits": stats.hits, "misses": stats.misses, "rebuilt": stats.rebuilt, "on_the_fly": stats.on_the_fly,
               "waited": stats.waited},
        encoder_fingerprint=encoder.fingerprint(), encoder_info=encoder.info.__dict__,
        category=target.category, head=target.head, taps=list(plan.taps),
        output_resolution=[int(x) for x in sample.shape[-2:]] if target.output == "pixel" else None,
        epochs=plan.epochs, secondary={"test": seed_rows[0]["test_scores"]},
        n={"train": sel.n_train, "val": sel.n_val, "test": len(test_ds), "aug_copies": plan.copies},
        val_split=sel.val_how, transform={"train": task.train_transform.label, "eval": eval_tf},
        grid=[{"config": r.config.label, "best_val": r.best_val, "best_epoch": r.best_epoch,
               "history": r.history, "lrs": r.lrs} for r in first_results],
        chance=target.chance, device=str(device), notes=notes,
        train_size=task.train_size, trained_on=task.name, head_precision=sel.precision,
    )
    if len(sel.per_seed) > 1:
        record.secondary.update({"seeds": seed_rows, "test_std": statistics.stdev(tests),
                                 "val_std": statistics.stdev(vals)})
    log(f"test {target.name}: {target.metric} {record.test:.4f}")
    return record


def evaluate_group(encoder: FrozenEncoder, task: TaskSpec, targets: list[TaskSpec], opts: EvalOptions,
                   device: torch.device) -> list[EvalRecord]:
    """Train ``task``'s head once and test it on each target (``task`` itself and/or test-only tasks)."""
    t0 = time.perf_counter()
    plan = plan_task(encoder, task, opts, device)
    stats = CacheStats()
    listed = _train_val(task, opts, plan.copies)  # every split listed (files paired) before any work
    tests = [list_test(target, opts) for target in targets]
    train_src, val_src, (n_train, n_val, val_how, carve_id) = encode_train_val(encoder, plan, opts, stats, listed)
    t_train = time.perf_counter()
    per_seed, precision = train_and_select(encoder, plan, train_src, val_src, device, opts.head_precision)
    sel = Selection(per_seed, precision, n_train, n_val, val_how, carve_id, time.perf_counter() - t_train)
    return [test_target(encoder, plan, target, sel, opts, stats, device, t0, ds)
            for target, ds in zip(targets, tests, strict=True)]


# ------------------------------------------------------------------------------------------- driver

def _failed(encoder: FrozenEncoder, task: TaskSpec, opts: EvalOptions, error: str) -> EvalRecord:
    return EvalRecord(encoder=encoder.name, task=task.name, metric=task.metric, test=None, val=None, config={},
                      epoch=None, seed=opts.seed, head_params=0, resolution=opts.resolution, timings={}, cache={},
                      status="failed", error=error, encoder_fingerprint=encoder.fingerprint())


def _groups(tasks: list[TaskSpec]) -> list[tuple[TaskSpec, list[TaskSpec]]]:
    """(task whose head is trained, tasks tested with it), in the order asked. A task's extra test
    sets join it; a test-only task joins its source task."""
    groups: dict[str, tuple[TaskSpec, list[TaskSpec]]] = {}
    for t in tasks:
        source = get_task(t.head_from) if t.head_from else t
        _, targets = groups.setdefault(source.name, (source, []))
        if t not in targets:
            targets.append(t)
        if t is source:
            for extra in t.extra_tests:
                if get_task(extra) not in targets:
                    targets.append(get_task(extra))
    return list(groups.values())


def check_out_dir(out: Path) -> None:
    """Find an unwritable ``--out`` before any work, not after hours of it."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".harness-write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise HarnessError(f"--out {out}: cannot write result records there ({exc.strerror or exc}); "
                           f"choose a folder you can write to") from None


def _data_available(task: TaskSpec, opts: EvalOptions) -> bool:
    from tasks.datasets.base import resolve_data_root

    return task.layout is None or (resolve_data_root(opts.data_root) / task.layout.folder).is_dir()


def run_eval(opts: EvalOptions) -> list[dict]:
    """Evaluate one encoder on every task.

    A task whose finished record exists for the same run key is skipped (``force`` redoes it);
    a failing task is recorded as failed with its error and the others still run.
    """
    check_out_dir(opts.out)
    device = resolve_device(opts.device)
    # Loading options are passed only when set, so the plain create_encoder(name, seed) call stays as it was.
    loading = {k: v for k, v in (("fmt", opts.fmt), ("weights_dir", opts.weights_dir), ("download", opts.download))
               if v}
    encoder = create_encoder(opts.encoder, seed=opts.encoder_seed, **loading)
    asked = {t.name for t in opts.tasks}
    out: list[dict] = []
    groups = _groups(opts.tasks)
    for gi, (source, targets) in enumerate(groups, 1):
        # An extra test set nobody asked for runs only when its data is there.
        targets = [t for t in targets if t.name in asked or _data_available(t, opts)]
        todo, paths = [], {}
        for target in targets:
            path = paths[target.name] = record_path(encoder, target, opts)
            if path.exists():
                existing = read_record(path)
                if existing.get("status") == "ok":
                    if not opts.force:
                        existing["skipped"] = True
                        out.append(existing)
                        continue
                    # --force: the finished record is kept beside the new one, never lost.
                    stamp = existing.get("created", "old").replace(":", "")
                    path.replace(path.with_name(f"{path.stem}.{stamp}.json.bak"))
            todo.append(target)
        if not todo:
            continue
        log(f"task {source.name} ({gi}/{len(groups)}): encoder {encoder.name} on {device}")
        try:
            records = evaluate_group(encoder, source, todo, opts, device)
        except Exception as exc:
            if opts.debug or (len(opts.tasks) == 1 and isinstance(exc, HarnessError)):
                raise
            msg = str(exc).splitlines()[0] if str(exc) else ""
            records = [_failed(encoder, t, opts, f"{type(exc).__name__}: {msg}") for t in todo]
            log(f"task {source.name}: FAILED: {msg}")
        for record, target in zip(records, todo, strict=True):
            record.run_key = run_key(encoder, target, opts)
            record.write_to(paths[target.name])
            out.append(record.to_dict())
    return out
