"""Train a head on encoded features, select the best epoch on val, evaluate once.

The loop is task-agnostic: a head maps a dict of taps to a prediction; the task's loss and
metric (looked up by name) do the rest.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from harness.common import interrupt
from harness.common.device import cpu_has_bf16
from harness.common.options import PRECISIONS
from tasks.losses import get_loss
from tasks.metrics import make_metric
from tasks.spec import OptimConfig, TaskSpec


@dataclass
class FitResult:
    config: OptimConfig
    best_val: float
    best_epoch: int  # 1-based
    state: dict[str, torch.Tensor]
    history: list[dict[str, float]] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)  # learning rate used in each epoch


def make_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    # foreach: one kernel per parameter group step instead of one per tensor (the same arithmetic)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, foreach=True)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r} (adam, adamw, sgd)")


def make_scheduler(opt: torch.optim.Optimizer, cfg: OptimConfig, epochs: int):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, math.ceil(epochs / 3)), gamma=0.1)
    if cfg.schedule == "none":
        return None
    raise ValueError(f"unknown schedule {cfg.schedule!r} (none, cosine, step)")


SMALL_HEAD = 1_000_000  # parameters; below this, extra CPU threads cost more than they give
HEAD_PRECISIONS = PRECISIONS  # harness.common.options: the choices of --head-precision


def resolve_head_precision(precision: str, device: torch.device, head: nn.Module) -> str:
    """What head training runs in. ``auto``: small (single-layer, fusion) heads stay fp32 everywhere:
    the casts cost more than the arithmetic saves (benchmarks/dense_heads.py) and in fp32 their whole
    grid trains at once (harness.stacked). Large (dense) heads: bf16 on a GPU that has it (else fp16),
    bf16 on a CPU with native bf16."""
    if precision not in HEAD_PRECISIONS:
        raise ValueError(f"head precision {precision!r}: use {', '.join(HEAD_PRECISIONS)}")
    small = sum(p.numel() for p in head.parameters()) < SMALL_HEAD
    if precision == "auto":
        if small:
            return "fp32"
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if device.type == "cpu" and cpu_has_bf16() and not small else "fp32"
    return precision


def head_autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def cpu_threads_for(head: nn.Module, device: torch.device) -> Iterator[None]:
    """Train a small head on one CPU thread: its ops are too small to split, and the thread
    hand-offs dominate (20x slower measured with 2 threads on a busy 2-core machine)."""
    small = sum(p.numel() for p in head.parameters()) < SMALL_HEAD
    if device.type != "cpu" or not small or torch.get_num_threads() == 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def predict(head: nn.Module, x: dict[str, torch.Tensor], target: torch.Tensor, task: TaskSpec) -> torch.Tensor:
    """Pixelwise heads are told the target's size: upsampling to it (odd sizes too) is the head's job.
    Predictions are in the target's units (a head's output times the task's ``output_scale``)."""
    out = head(x, size=tuple(target.shape[-2:])) if task.output == "pixel" else head(x)
    return out.float() * task.output_scale if task.output_scale != 1.0 else out.float()


CPU_BATCH_BYTES = 2 << 30  # transient memory one batch may take on the CPU (encode or evaluate)
GPU_BATCH_SHARE = 0.5  # on an accelerator: this share of the memory free when the batch is sized


def batch_memory_budget(device: torch.device) -> int:
    """Bytes one batch's transient tensors may take: half the accelerator's free memory, or
    CPU_BATCH_BYTES on the CPU (a fixed figure, so that batches do not depend on what other
    processes hold at the moment)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * GPU_BATCH_SHARE)
    return CPU_BATCH_BYTES


def eval_sample_bytes(shapes: dict, task: TaskSpec) -> int:
    """Rough upper bound of what evaluating one sample holds at once: its taps in fp32 (the
    head casts them) twice over for the head's own activations, and its prediction at the
    target's size (num_outputs channels) eight times over: logits, the upsampling's
    intermediate, and the metric's float64 temporaries."""
    taps = sum(math.prod(s) for s in shapes["taps"].values()) * 4
    target = shapes["target"]
    pixels = math.prod(target[-2:]) if task.output == "pixel" and len(target) >= 2 else 1
    return 2 * taps + 8 * 4 * pixels * max(task.num_outputs, 1)


def eval_batch_size(shapes: dict | None, task: TaskSpec, budget: int, cap: int) -> int:
    """Samples per evaluation batch: as many as ``budget`` allows, at most ``cap``, at least 1."""
    if shapes is None:
        return cap
    return int(max(1, min(cap, budget // max(eval_sample_bytes(shapes, task), 1))))


def source_parts(source) -> list:
    """The same-size parts of a feature source (one for a split whose samples share a size)."""
    return source.parts() if hasattr(source, "parts") else [source]


@torch.no_grad()
def evaluate(head: nn.Module, source, task: TaskSpec, device: torch.device,
             batch_size: int = 256, memory_budget: int | None = None, precision: str = "fp32") -> dict[str, float]:
    """Metric over the whole split, streamed batch by batch (every sample counted), head in eval mode;
    the head may run in ``precision``, the metric always accumulates in fp32 or wider.

    Each same-size part of the split (native-resolution splits have several) is evaluated in
    batches of at most ``batch_size`` samples, fewer when its predictions at native size would
    not fit ``memory_budget`` (default: ``batch_memory_budget``). The metric accumulates over
    the whole split, each prediction at its own sample's size."""
    head.eval()
    metric = make_metric(task)
    budget = memory_budget if memory_budget is not None else batch_memory_budget(device)
    with cpu_threads_for(head, device):
        for part in source_parts(source):
            shapes = part.shapes() if hasattr(part, "shapes") else None
            for x, y, valid in part.batches(eval_batch_size(shapes, task, budget, batch_size), device):
                with head_autocast(device, precision):
                    pred = predict(head, x, y, task)
                metric.update(pred.float(), y, valid)
    return metric.compute()


EpochHook = Callable[[int, float, float], None]  # (epoch, train loss, val metric)


def fit(head: nn.Module, train: list, val, task: TaskSpec, cfg: OptimConfig, epochs: int,
        device: torch.device, seed: int, batch_size: int | None = None, on_epoch: EpochHook | None = None,
        precision: str = "fp32") -> FitResult:
    """Train ``head`` for ``epochs``; keep the weights of the epoch with the best val metric.

    ``train`` holds one feature source per augmented copy of the training set; epoch e reads
    copy e mod K, so augmentation varies across epochs without re-running the encoder.
    ``precision``: the head's forward and backward under autocast (weights, optimizer state and
    the loss stay fp32; fp16 adds loss scaling).
    """
    batch_size = batch_size or task.batch_size
    loss_fn = get_loss(task)
    head.to(device)
    if task.output == "pixel" and precision != "fp32":
        # Measured (benchmarks/dense_heads.py): channels_last weights make the bf16 U-Net step about 1.3x
        # faster on the CPU (activations follow the weights' layout); in fp32 it was a wash, so fp32 keeps its own.
        head.to(memory_format=torch.channels_last)
    opt = make_optimizer([p for p in head.parameters() if p.requires_grad], cfg)
    sched = make_scheduler(opt, cfg, epochs)
    gen = torch.Generator().manual_seed(seed)
    step = _Step(head, task, loss_fn, opt, device, precision)
    with cpu_threads_for(head, device):
        best, history, lrs = _epochs(head, train, val, task, cfg, epochs, device, batch_size, step, opt, sched, gen,
                                     on_epoch, precision)
    best.history, best.lrs = history, lrs
    return best


class _Step:
    """One optimisation step of the head, in the requested precision."""

    def __init__(self, head, task, loss_fn, opt, device, precision):
        self.head, self.task, self.loss_fn, self.opt = head, task, loss_fn, opt
        self.device, self.precision = device, precision
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def __call__(self, x, y, valid) -> torch.Tensor:
        with head_autocast(self.device, self.precision):
            pred = predict(self.head, x, y, self.task)
        loss = self.loss_fn(pred.float(), y, valid, self.task)
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.opt.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        return loss.detach()


def _epochs(head, train, val, task, cfg, epochs, device, batch_size, step, opt, sched, gen, on_epoch, precision):
    best: FitResult | None = None
    history, lrs = [], []
    for epoch in range(1, epochs + 1):
        head.train()
        lrs.append(opt.param_groups[0]["lr"])
        total, seen = 0.0, 0
        for x, y, valid in train[(epoch - 1) % len(train)].batches(batch_size, device, shuffle=True, generator=gen):
            interrupt.check()
            loss = step(x, y, valid)
            total += loss.item() * len(y)
            seen += len(y)
        if sched is not None:
            sched.step()
        scores = evaluate(head, val, task, device, precision=precision)
        history.append({"epoch": epoch, "train_loss": total / max(seen, 1), "val": scores[task.metric]})
        if on_epoch is not None:
            on_epoch(epoch, history[-1]["train_loss"], scores[task.metric])
        if best is None or scores[task.metric] > best.best_val:
            best = FitResult(cfg, scores[task.metric], epoch, copy.deepcopy(head.state_dict()))
    assert best is not None, "epochs must be >= 1"
    return best, history, lrs
