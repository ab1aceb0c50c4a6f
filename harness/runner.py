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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Subset

from encoders.base import FrozenEncoder
from encoders.registry import create_encoder
from heads import HeadInputError, count_parameters, get_head
from heads.registry import HeadEntry
from tasks.datasets.base import TaskDataset
from tasks.registry import get_task
from tasks.spec import DataRequest, OptimConfig, TaskSpec
from tasks.splits import carve_problem, carve_val

from . import probes, subsets
from .cache import FeatureKey
from .common.device import resolve_device
from .common.errors import HarnessError, UsageError
from .common.progress import TrainProgress, log
from .common.taps import Tap
from .eval_options import EvalOptions
from .features import CacheStats, EncodeSettings, SharedJob, encode_shared, get_features
from .records import RECORD_VERSION, EvalRecord, read_record, slug
from .stacked import fit_grid, supports
from .train import FitResult, evaluate, fit, resolve_head_precision


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
    inputs: list[dict] = field(default_factory=list)  # which tap feeds which head input, and how (record)


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
    build: Callable[[], nn.Module] | None = None  # the head, untrained (the chosen states load into it)
    score: probes.Scorer | None = None  # kNN / logreg: (chosen, test source) -> (scores, parameters)
    fields: dict = field(default_factory=dict)  # record fields: probe, tap, tap_index, pool, subset
    notes: list[str] = field(default_factory=list)


def _variant_key(opts: EvalOptions, tap: str | None) -> dict:
    """The run-key entries of a probe, tap or label fraction; none for the paper's protocol, so the
    keys (and record files) of default runs stay as they were."""
    key: dict = {}
    if opts.probe == "knn":
        key.update(probe="knn", knn_k=list(opts.knn_k), knn_t=list(opts.knn_t))
    elif opts.probe == "logreg":
        key.update(probe="logreg", logreg_c=list(opts.logreg_c) or "clip-sweep")
    if tap not in (None, probes.DEFAULT_TAP):
        key.update(tap=tap, pool_dims=opts.pool_dims)
    spec = opts.subset
    if spec is not None:
        key["subset"] = {"kind": spec.kind, "value": spec.value}
    return key


def run_key(encoder: FrozenEncoder, task: TaskSpec, opts: EvalOptions, tap: str | None = None) -> dict:
    """Everything that defines a result: the same key means the same experiment (``tap``: the one
    probed, of those ``--tap`` asks for)."""
    source = get_task(task.head_from) if task.head_from else task
    key = {"encoder": encoder.fingerprint(), "task": task.name, "epochs": opts.epochs or source.epochs,
           "limit": opts.limit, "resolution": opts.resolution, "seed": opts.seed, "seeds": opts.seeds,
           "grid": opts.grid, "batch_size": opts.batch_size, "aug_copies": opts.aug_copies,
           "head_precision": opts.head_precision,
           "data_root": str(opts.data_root) if opts.data_root else None, "record_version": RECORD_VERSION}
    if task.head_from:
        key["head_from"] = task.head_from
    key.update(_variant_key(opts, tap))
    return key


def record_path(encoder: FrozenEncoder, task: TaskSpec, opts: EvalOptions, tap: str | None = None) -> Path:
    """Where the record of ``task`` (and ``tap``; default: the first ``--tap`` asks for) goes."""
    if tap is None and opts.tap is not None:
        tap = probes.requested_taps(encoder, opts.tap)[0]
    key = run_key(encoder, task, opts, tap)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return Path(opts.out) / f"{slug(encoder.name)}__{task.name}__{digest}.json"


def data_request(task: TaskSpec, opts: EvalOptions, split: str, train: bool, copy: int = 0) -> DataRequest:
    """What eval asks ``task``'s loader for: one split under ``opts`` (``--limit`` on the train split only),
    ``train`` for the training transform, ``copy`` the augmented copy. Benchmarks build the same datasets with it."""
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
    try:
        taps = head.taps(task, encoder.taps)
    except HeadInputError as exc:
        raise HarnessError(f"task {task.name}: encoder {encoder.name} cannot feed its {task.head} head: {exc}; "
                           f"use an encoder with such taps or another task") from None
    bs = opts.batch_size or task.batch_size
    settings = EncodeSettings(device=device, batch_size=bs, num_workers=opts.num_workers or 0,
                              precision=opts.precision, use_cache=opts.use_cache, decode=opts.decode,
                              ram_budget=int(opts.ram_budget_gb * 2**30), disk_budget=int(opts.disk_budget_gb * 2**30))
    return TaskPlan(task=task, head=head, taps=taps, epochs=opts.epochs or task.epochs, batch_size=bs,
                    copies=(opts.aug_copies or task.aug_copies) if task.train_transform.random else 1,
                    grid=task.grid if opts.grid == "full" else (task.optim,),
                    seeds=tuple(range(opts.seed, opts.seed + opts.seeds)), settings=settings, workers=opts.num_workers,
                    inputs=head.describe(task, encoder.taps))


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


def _settings_for(plan: TaskPlan, dataset) -> EncodeSettings:
    settings = plan.settings
    if plan.workers is None:
        base = dataset.dataset if isinstance(dataset, Subset) else dataset
        settings = EncodeSettings(**{**settings.__dict__, "num_workers": default_workers(base)})
    return settings


def _encode(encoder, dataset, plan: TaskPlan, key: FeatureKey, stats: CacheStats, desc: str):
    return get_features(encoder, dataset, plan.taps, key, _settings_for(plan, dataset), stats, desc=desc)


# ----------------------------------------------------------------------------------- 2. train / val

def train_val_datasets(task: TaskSpec, opts: EvalOptions, copies: int):
    """Train datasets (one per augmented copy), the val dataset, how val was made, the carve's id.

    Neither comes back empty: an empty split, or a train split too small to carve val from, is
    one line naming the task, the split and the count (``harness data check`` reports the same)."""
    def too_small(problem: str) -> HarnessError:
        limit = f"; --limit {opts.limit} leaves too few" if opts.limit else ""
        return HarnessError(f"task {task.name}: {problem}{limit}; add samples (`harness data check --task "
                            f"{task.name}` lists what is there)")

    trains = [task.dataset(task, data_request(task, opts, task.splits.train, True, k)) for k in range(copies)]
    if not len(trains[0]):
        raise too_small(f"{task.splits.train}: no samples")
    if task.splits.val is not None:
        val = task.dataset(task, data_request(task, opts, task.splits.val, False))
        if not len(val):
            raise too_small(f"{task.splits.val}: no samples")
        return trains, val, f"official '{task.splits.val}' split", None
    problem = carve_problem(task.splits.train, len(trains[0]))
    if problem:
        raise too_small(problem)
    full_eval = task.dataset(task, data_request(task, opts, task.splits.train, False))
    labels = None
    if task.output == "image" and task.is_classification:
        if not isinstance(trains[0], TaskDataset) or trains[0].class_labels() is None:
            raise HarnessError(f"task {task.name}: its loader declares no class labels to stratify the carved val "
                               f"split by (TaskDataset.class_labels)")
        labels = trains[0].class_labels()
    tr_idx, va_idx = carve_val(len(trains[0]), task.splits.val_fraction, opts.seed, labels)
    how = f"{'stratified ' if labels is not None else ''}{task.splits.val_fraction:g} of '{task.splits.train}' " \
          f"carved with seed {opts.seed}"
    if labels is not None and not set(labels[va_idx].tolist()) <= set(labels[tr_idx].tolist()):
        how += " (every class has a single sample: val's classes are not in train)"
    subsets = [Subset(ds, tr_idx.tolist()) for ds in trains]
    return subsets, Subset(full_eval, va_idx.tolist()), how, hashlib.sha256(va_idx.tobytes()).hexdigest()[:12]


def encode_train_val(encoder, plan: TaskPlan, opts: EvalOptions, stats: CacheStats, listed=None):
    """``listed``: the train/val datasets already built by ``train_val_datasets`` (else built here)."""
    task = plan.task
    trains, val_ds, val_how, carve_id = listed if listed is not None else train_val_datasets(task, opts, plan.copies)
    train_tf, eval_tf = task.train_transform.label, task.eval_transform.label
    train_src = [_encode(encoder, ds, plan, _feature_key(encoder, plan, opts, task, "train", len(ds), train_tf, k,
                                                         carve_id), stats, f"encode {task.name}/train#{k}")
                 for k, ds in enumerate(trains)]
    val_src = _encode(encoder, val_ds, plan, _feature_key(encoder, plan, opts, task, "val", len(val_ds), eval_tf,
                                                          carve=carve_id), stats, f"encode {task.name}/val")
    return train_src, val_src, (len(trains[0]), len(val_ds), val_how, carve_id)


# ------------------------------------------------------------------------------- 3. train and select

def train_and_select(encoder, plan: TaskPlan, train_src, val_src, device: torch.device,
                     taps: dict[str, Tap] | None = None, head_precision: str = "auto") -> tuple[list, str]:
    """Per seed: (seed, the chosen FitResult, every configuration's), and the precision the head
    trained in. ``taps``: the widths the head is built for (default: the encoder's; a probed tap's
    otherwise). Single-layer and fusion heads in fp32 train the whole grid (and every seed) at once
    (harness.stacked); other heads one configuration at a time."""
    task = plan.task
    taps = taps if taps is not None else encoder.taps
    per_seed = []
    precision = resolve_head_precision(head_precision, device, plan.head.build(taps, task))
    total = len(plan.seeds) * len(plan.grid) * plan.epochs

    def label(s: int, i: int) -> str:
        seed_tag = f" seed {s}" if len(plan.seeds) > 1 else ""
        return f"config {i + 1}/{len(plan.grid)} ({plan.grid[i].label}){seed_tag}"

    with TrainProgress(f"train {task.name}", total, task.metric) as bar:
        def build():
            return plan.head.build(taps, task)

        if precision == "fp32" and supports(build, plan.grid, task):
            by_seed = fit_grid(build, plan.grid, plan.seeds, train_src, val_src, task,
                               plan.epochs, device, plan.batch_size,
                               on_epoch=lambda s, i, e, loss, val: bar.epoch(label(s, i), e, plan.epochs, loss, val))
        else:
            by_seed = {}
            for s in plan.seeds:
                by_seed[s] = []
                for i, cfg in enumerate(plan.grid):
                    torch.manual_seed(s * 1000 + i)
                    head = build()

                    def hook(epoch, loss, val, lab=label(s, i)):
                        bar.epoch(lab, epoch, plan.epochs, loss, val)

                    by_seed[s].append(fit(head, train_src, val_src, task, cfg, plan.epochs, device, s,
                                          plan.batch_size, on_epoch=hook, precision=precision))
        for s in plan.seeds:
            results = by_seed[s]
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
    test = target.dataset(target, data_request(target, opts, target.splits.test, False))
    if not len(test):  # found now, not as an IndexError after training
        raise HarnessError(f"task {target.name}: {target.splits.test}: no samples; add samples (`harness data check "
                           f"--task {target.name}` lists what is there)")
    return test


def encode_test(encoder, plan: TaskPlan, target: TaskSpec, opts: EvalOptions, stats: CacheStats, test_ds=None):
    """``target``'s test split (``test_ds``: as ``list_test`` listed it), encoded once, whatever the
    number of probes scored on it."""
    if test_ds is None:
        test_ds = list_test(target, opts)
    test_src = _encode(encoder, test_ds, plan, _feature_key(encoder, plan, opts, target, "test", len(test_ds),
                                                            target.eval_transform.label), stats,
                       f"encode {target.name}/test")
    return test_ds, test_src


def test_target(encoder, plan: TaskPlan, target: TaskSpec, sel: Selection, opts: EvalOptions, stats: CacheStats,
                device: torch.device, t0: float, test=None) -> EvalRecord:
    """Score ``target``'s test split (``test``: (dataset, source) already encoded; else built and
    encoded here) with each seed's chosen head or probe; the record."""
    task = plan.task
    eval_tf = target.eval_transform.label
    test_ds, test_src = test if test is not None else encode_test(encoder, plan, target, opts, stats)
    seed_rows = []
    n_params = 0
    for s, best, _ in sel.per_seed:
        if sel.score is not None:
            scores, n_params = sel.score(best, test_src)
        else:
            head = sel.build() if sel.build is not None else plan.head.build(encoder.taps, task)
            head.load_state_dict(best.state)
            head.to(device)
            scores = evaluate(head, test_src, task, device, precision=sel.precision)
            n_params = count_parameters(head)
        seed_rows.append({"seed": s, "test": float(scores[task.metric]), "val": float(best.best_val),
                          "config": best.config.label, "epoch": best.best_epoch, "test_scores": scores})
    first_best, first_results = sel.per_seed[0][1], sel.per_seed[0][2]
    tests, vals = [r["test"] for r in seed_rows], [r["val"] for r in seed_rows]
    sample = test_ds[0]["image"]
    notes = list(opts.notes) + stats.notes + sel.notes
    if target is not task:
        notes.append(f"head trained on {task.name} train and selected on its val; tested on {target.name}")
    record = EvalRecord(
        encoder=encoder.name, task=target.name, metric=target.metric,
        test=statistics.fmean(tests), val=statistics.fmean(vals),
        config={**first_best.config.__dict__, "label": first_best.config.label, "batch_size": plan.batch_size},
        epoch=first_best.best_epoch, seed=opts.seed, head_params=n_params,
        resolution=int(sample.shape[-1]),
        timings={"encode_s": stats.encode_s, "train_s": sel.train_s, "total_s": time.perf_counter() - t0},
        cache={"hits": stats.hits, "misses": stats.misses, "rebuilt": stats.rebuilt, "on_the_fly": stats.on_the_fly,
               "waited": stats.waited},
        encoder_fingerprint=encoder.fingerprint(), encoder_info=encoder.info.__dict__,
        category=target.category, head=target.head, taps=_inputs_record(plan, sel),
        encoder_cost=_encoder_cost(encoder, tuple(int(x) for x in sample.shape[-2:])),
        output_resolution=[int(x) for x in sample.shape[-2:]] if target.output == "pixel" else None,
        epochs=plan.epochs, secondary={"test": seed_rows[0]["test_scores"]},
        n={"train": sel.n_train, "val": sel.n_val, "test": len(test_ds), "aug_copies": plan.copies},
        val_split=sel.val_how, transform={"train": task.train_transform.label, "eval": eval_tf},
        grid=[{"config": r.config.label, "best_val": r.best_val, "best_epoch": r.best_epoch,
               "history": r.history, "lrs": r.lrs} for r in first_results],
        chance=target.chance, device=str(device), notes=notes,
        train_size=task.train_size, trained_on=task.name, head_precision=sel.precision, **sel.fields,
    )
    if len(sel.per_seed) > 1:
        record.secondary.update({"seeds": seed_rows, "test_std": statistics.stdev(tests),
                                 "val_std": statistics.stdev(vals)})
    at = f" (tap {sel.fields.get('tap')})" if opts.tap is not None else ""
    log(f"test {target.name}{at}: {target.metric} {record.test:.4f}")
    return record


def _encoder_cost(encoder: FrozenEncoder, size: tuple[int, int]) -> dict | None:
    """Parameters and FLOPs per image at the run's input size (None where the model cannot be traced on the
    meta device; the result does not depend on it)."""
    try:
        return encoder.cost(size if size[0] != size[1] else size[0])
    except Exception as exc:  # a model whose ops the meta device lacks: the record says so, the run goes on
        log(f"encoder cost not counted ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})")
        return None


def _inputs_record(plan: TaskPlan, sel: Selection) -> list[dict]:
    """The record's ``taps``: which tap fed which input of the head and how it was made."""
    tap, pool = sel.fields.get("tap"), sel.fields.get("pool")
    if tap in (None, probes.DEFAULT_TAP):
        return plan.inputs
    how = (f"average-pooled to {pool['grid'][0]}x{pool['grid'][1]} ({pool['features']} features), flattened"
           if pool else "encoder tap")
    return [{"input": "embedding", "stride": None, "tap": tap, "how": how}]


def encoding_plan(encoder: FrozenEncoder, task: TaskSpec, opts: EvalOptions, device: torch.device,
                  taps: list[str | None] | tuple = (None,)) -> tuple[TaskPlan, FrozenEncoder, dict]:
    """The task's plan, the encoder that makes its features (a pooling wrapper when a spatial tap is
    probed) and each tap's feature name: what decides the cache keys of ``evaluate_group``."""
    plan = plan_task(encoder, task, opts, device)
    names = {tap: probes.feature_name(tap, encoder, opts.pool_dims) for tap in taps}
    enc = encoder
    if any(n is not None for n in names.values()):
        if any(n != tap for tap, n in names.items()):
            enc = probes.pooled_encoder(encoder, opts.pool_dims)
        plan.taps = tuple(dict.fromkeys(n if n is not None else probes.DEFAULT_TAP for n in names.values()))
    return plan, enc, names


def evaluate_group(encoder: FrozenEncoder, task: TaskSpec, targets: list[TaskSpec], opts: EvalOptions,
                   device: torch.device, taps: list[str | None] | tuple = (None,),
                   stats: CacheStats | None = None) -> list[EvalRecord]:
    """Train ``task``'s probe once per tap in ``taps`` (None: the head's own input) and test it on each
    target (``task`` itself and/or test-only tasks); records in (target, tap) order.

    Every tap is encoded in one pass, and label fractions are drawn from the encoded features."""
    t0 = time.perf_counter()
    for tap in taps:
        probes.check_applies(task, opts.probe, tap)
    plan, enc, names = encoding_plan(encoder, task, opts, device, taps)
    stats = stats if stats is not None else CacheStats()  # a shared pass's (share_decoding) when given
    listed = train_val_datasets(task, opts, plan.copies)  # every split listed (files paired) before any work
    tests = [list_test(target, opts) for target in targets]
    train_src, val_src, (_, _, val_how, carve_id) = encode_train_val(enc, plan, opts, stats, listed)
    drawn = subsets.apply(task, opts.subset, opts.seed, train_src, val_src)
    sels = []
    for tap in taps:
        name = names[tap]
        train_t = [probes.tap_view(src, name, task.frames) for src in drawn.train]
        val_t = probes.tap_view(drawn.val, name, task.frames)
        fields = {"probe": opts.probe, "subset": drawn.record,
                  **probes.tap_record(tap, name, encoder, drawn.val, opts.pool_dims)}
        if fields["tap"] == probes.DEFAULT_TAP and task.head not in ("linear", "fusion") and opts.probe == "head":
            fields["tap"] = fields["tap_index"] = None  # a dense head reads its own taps
        if opts.tap is not None:  # the training lines that follow are this tap's
            log(f"{task.name}: {opts.probe} on tap {fields['tap']} ({list(taps).index(tap) + 1}/{len(taps)})")
        t_train = time.perf_counter()
        sel = Selection([], "fp32", len(drawn.train[0]), len(drawn.val), val_how, carve_id, 0.0, fields=fields,
                        notes=list(drawn.notes))
        if opts.probe == "head":
            head_taps = encoder.taps if name is None else probes.probe_taps(val_t, task.frames)
            sel.per_seed, sel.precision = train_and_select(encoder, plan, train_t, val_t, device, head_taps,
                                                           opts.head_precision)
            sel.build = lambda head_taps=head_taps: plan.head.build(head_taps, task)
        else:
            sel.per_seed, sel.score = probes.fit_probe(opts.probe, task, train_t, val_t, device, plan.seeds,
                                                       knn_k=opts.knn_k, knn_t=opts.knn_t, logreg_c=opts.logreg_c)
            sel.notes.append(f"{opts.probe} probe on train copy 0, setting chosen on val; deterministic: "
                             f"one fit serves every seed")
        sel.train_s = time.perf_counter() - t_train
        sels.append((name, sel))
    records = []
    for target, listed_test in zip(targets, tests, strict=True):
        test_ds, test_src = encode_test(enc, plan, target, opts, stats, listed_test)
        for name, sel in sels:
            records.append(test_target(encoder, plan, target, sel, opts, stats, device, t0,
                                       (test_ds, probes.tap_view(test_src, name, task.frames))))
    return records


# ------------------------------------------------------------------------ one decode, several encoders

def _pending(encoder: FrozenEncoder, targets: list[TaskSpec], opts: EvalOptions) -> list[TaskSpec]:
    """The targets ``encoder`` has a record to make for (as ``_run_group`` decides it)."""
    taps = probes.requested_taps(encoder, opts.tap)
    return [t for t in targets
            if opts.force or any(read_record(p).get("status") != "ok" if p.exists() else True
                                 for p in (record_path(encoder, t, opts, tap) for tap in taps))]


def share_decoding(encoders: list[FrozenEncoder], task: TaskSpec, targets: list[TaskSpec], opts: EvalOptions,
                   device: torch.device) -> dict[int, CacheStats]:
    """Several encoders on one task: every split's images decoded once and fed to each encoder,
    whose features go to the cache entries its own run would write (and then reads). Per encoder
    (by ``id``), the stats of the shared passes, for its records.

    The test split is encoded here too, before any head is trained: into the cache only; no head
    or choice sees it until ``test_target``, as in a run of one encoder. Without the cache (or when
    a split is too large for it) each encoder decodes on its own, as before; so does everything
    after a failure here, which the encoder's own run then meets and records."""
    if not opts.use_cache:
        log(f"task {task.name}: --no-cache: each encoder decodes the images itself (sharing needs the cache)")
        return {}
    work = []
    for encoder in encoders:
        pending = _pending(encoder, targets, opts)
        if not pending:
            continue
        taps = probes.requested_taps(encoder, opts.tap)
        try:
            for tap in taps:
                probes.check_applies(task, opts.probe, tap)
            plan, enc, _ = encoding_plan(encoder, task, opts, device, taps)
        except HarnessError:  # its own run says what is wrong
            continue
        work.append((encoder, plan, enc, {t.name for t in pending}))
    stats = {id(e): CacheStats() for e, *_ in work}
    if len(work) < 2:
        return {}
    log(f"task {task.name}: {len(work)} encoders, each image decoded once for all of them")
    try:
        plan0 = work[0][1]
        trains, val_ds, _, carve_id = train_val_datasets(task, opts, plan0.copies)
        splits = [(ds, task, "train", task.train_transform.label, k, carve_id) for k, ds in enumerate(trains)]
        splits.append((val_ds, task, "val", task.eval_transform.label, 0, carve_id))
        splits += [(list_test(t, opts), t, "test", t.eval_transform.label, 0, None) for t in targets]
        for ds, target, split, tf, copy, carve in splits:
            jobs = [SharedJob(enc, plan.taps, _feature_key(enc, plan, opts, target, split, len(ds), tf, copy, carve),
                              stats[id(e)])
                    for e, plan, enc, pending in work if split != "test" or target.name in pending]
            if len(jobs) > 1:
                tag = f"#{copy}" if split == "train" else ""
                encode_shared(jobs, ds, _settings_for(plan0, ds), desc=f"encode {target.name}/{split}{tag} "
                              f"({len(jobs)} encoders)")
    except Exception as exc:
        if opts.debug:
            raise
        log(f"task {task.name}: shared decoding stopped ({str(exc).splitlines()[0] if str(exc) else exc!r}); "
            f"each encoder goes on by itself")
    return stats


# ------------------------------------------------------------------------------------------- driver

def _failed(encoder: FrozenEncoder, task: TaskSpec, opts: EvalOptions, error: str,
            tap: str | None = None) -> EvalRecord:
    return EvalRecord(encoder=encoder.name, task=task.name, metric=task.metric, test=None, val=None, config={},
                      epoch=None, seed=opts.seed, head_params=0, resolution=opts.resolution, timings={}, cache={},
                      status="failed", error=error, encoder_fingerprint=encoder.fingerprint(), probe=opts.probe,
                      tap=tap)


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
    encoders = []
    for name in opts.encoders or (opts.encoder,):  # several: each task's images decoded once for all of them
        try:
            encoders.append(create_encoder(name, seed=opts.encoder_seed, **loading))
        except HarnessError as exc:  # missing weights: say at once whether the tasks' data is missing too
            no_data = [t for t in opts.tasks if not _data_available(t, opts)]
            if isinstance(exc, UsageError) or not no_data:
                raise
            from tasks.datasets.base import resolve_data_root

            where = ", ".join(str(resolve_data_root(opts.data_root) / t.layout.folder) for t in no_data)
            raise HarnessError(f"{exc}; and the data of task(s) {', '.join(t.name for t in no_data)} is missing "
                               f"too: {where} not found (`harness data layout {no_data[0].name}` shows what goes "
                               f"there)") from None
    asked = {t.name for t in opts.tasks}
    out: list[dict] = []
    groups = _groups(opts.tasks)
    for gi, (source, targets) in enumerate(groups, 1):
        # An extra test set nobody asked for runs only when its data is there.
        targets = [t for t in targets if t.name in asked or _data_available(t, opts)]
        shared = share_decoding(encoders, source, targets, opts, device) if len(encoders) > 1 else {}
        for encoder in encoders:
            out.extend(_run_group(encoder, source, targets, opts, device, gi, len(groups), shared.get(id(encoder))))
    return out


def _run_group(encoder: FrozenEncoder, source: TaskSpec, targets: list[TaskSpec], opts: EvalOptions,
               device: torch.device, gi: int, n_groups: int, stats: CacheStats | None = None) -> list[dict]:
    """One encoder on one task group: its records (existing ones kept unless ``force``)."""
    taps = probes.requested_taps(encoder, opts.tap)
    out: list[dict] = []
    todo, paths = [], {}
    for target in targets:
        for tap in taps:
            path = paths[target.name, tap] = record_path(encoder, target, opts, tap)
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
            todo.append((target, tap))
    if not todo:
        return out
    # Every (target, tap) left to do comes from one training per tap and one encode.
    todo_targets = list({t.name: t for t, _ in todo}.values())
    todo_taps = list(dict.fromkeys(tap for _, tap in todo))
    pairs = [(t, tap) for t in todo_targets for tap in todo_taps]
    wanted = {(t.name, tap) for t, tap in todo}
    log(f"task {source.name} ({gi}/{n_groups}): encoder {encoder.name} on {device}")
    try:
        records = evaluate_group(encoder, source, todo_targets, opts, device, todo_taps, stats)
    except Exception as exc:
        # Every failure is a failed record (written, and returned: `eval --json` prints it), a single
        # task's included; only --debug (a traceback) and a usage mistake (exit 2) stop the run here.
        if opts.debug or (len(opts.tasks) == 1 and isinstance(exc, UsageError)):
            raise
        msg = str(exc).splitlines()[0] if str(exc) else ""
        error = msg if isinstance(exc, HarnessError) else f"{type(exc).__name__}: {msg}"  # a user's line as is
        records = [_failed(encoder, t, opts, error, tap) for t, tap in pairs]
        if n_groups > 1 or len(opts.encoders) > 1:  # a single task's failure is eval's error line: said once
            log(f"task {source.name}: FAILED: {msg}")
    for record, (target, tap) in zip(records, pairs, strict=True):
        if (target.name, tap) not in wanted:  # its record exists (the target's other taps were to do)
            continue
        record.run_key = run_key(encoder, target, opts, tap)
        try:
            record.write_to(paths[target.name, tap])
        except OSError as exc:
            if record.status == "ok":
                raise
            # a failure's record that cannot be written (a full disk) must not hide the failure itself
            record.notes.append(f"not written to {paths[target.name, tap]}: {exc.strerror or exc}")
        out.append(record.to_dict())
    return out
