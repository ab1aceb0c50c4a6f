"""The pretraining loop, top to bottom: data -> augment -> method loss -> step -> checkpoint -> kNN.

Launch: ``harness pretrain ...`` on one device; ``torchrun --nproc_per_node=G -m harness pretrain ...``
for G GPUs (or CPU processes with gloo); add ``--nnodes N --node_rank R --rdzv_endpoint HOST:PORT``
for several nodes. ``--batch-size`` is the global batch, split evenly over the ranks.

Restart safety: ``last.pt`` in the run folder holds the method state (weights, queues, target
networks), the optimiser, the position (epoch, step) and the history. Batches come from a seeded
per-epoch permutation and each step reseeds torch's RNG from (seed, step, rank), so a run resumed
after a kill draws the same batches and the same augmentations as one that never stopped.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from encoders.checkpoint import save_harness_checkpoint
from harness.common.atomic import atomic_path
from harness.common.device import cpu_has_bf16, resolve_device
from harness.common.errors import HarnessError, UsageError
from harness.common.paths import user_encoders_dir
from harness.common.pretrain_options import PretrainOptions  # declared with its command-line options
from harness.common.progress import progress
from harness.common.taps import IMAGENET_MEAN, IMAGENET_STD

from . import create_method, get_method
from .augment import MultiCropAugment
from .base import Method, MethodConfig, OptimDefaults, apply_overrides, check_arch
from .corrupt import parse_corruption
from .data import SYNTH, Manifest, ManifestImages, build_manifest, epoch_batches
from .distributed import World, init_from_env, maybe_sync_bn
from .knn import knn_accuracy
from .lars import LARS
from .presets import get_preset


def _lr_at(step: int, total: int, warmup: int, base: float, opt: OptimDefaults) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    if not opt.cosine:
        return base
    t = (step - warmup) / max(1, total - warmup)
    final = base * opt.final_lr_frac
    return final + (base - final) * 0.5 * (1 + math.cos(math.pi * t))


def build_optimizer(method: Method, opt: OptimDefaults, lr: float) -> torch.optim.Optimizer:
    params = method.param_groups()
    if opt.name == "lars":
        return LARS(params, lr=lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    if opt.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=opt.momentum, weight_decay=opt.weight_decay, foreach=True)
    raise UsageError(f"optim.name {opt.name!r}: use sgd or lars")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The scheduled rate into every group, times the group's ``lr_mult`` (``Method.param_groups``)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


def knn_monitor_data(resolution: int, bank: int, queries: int) -> dict[str, torch.Tensor]:
    """What ``knn_monitor`` reads: ``bank`` synthetic train renders and ``queries`` val renders with their shape
    labels (public: the pretraining benchmarks recheck runs on larger banks with it)."""
    from tasks.synthetic import corpus

    tr = corpus(bank, resolution)
    va = corpus(queries, resolution, split="val")
    return {"bank": torch.from_numpy(tr["image"]), "bank_y": torch.from_numpy(tr["shape_cls"]),
            "query": torch.from_numpy(va["image"]), "query_y": torch.from_numpy(va["shape_cls"])}


@torch.no_grad()
def knn_monitor(backbone: torch.nn.Module, data: dict[str, torch.Tensor], device: torch.device, k: int,
                batch: int = 256) -> float:
    """Weighted kNN accuracy of the backbone's pooled features: synthetic train (bank) -> val (queries)."""
    was_training = backbone.training
    backbone.eval()
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def embed(images: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, len(images), batch):
            x = images[i:i + batch].to(device).permute(0, 3, 1, 2).float().div(255)
            out.append(backbone((x - mean) / std).float())
        return torch.cat(out)

    acc = knn_accuracy(embed(data["bank"]), data["bank_y"].to(device), embed(data["query"]),
                       data["query_y"].to(device), k=k)
    backbone.train(was_training)
    return acc


def train_step(model: torch.nn.Module, method: Method, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               augment: MultiCropAugment, images: torch.Tensor, epoch: int, autocast, channels_last: bool
               ) -> tuple[float, dict[str, float]]:
    """One optimisation step on a uint8 batch: augment, loss, backward, hooks, step. Returns the loss and the
    method's diagnostics (embedding spread, positive / negative similarity, prototype movement)."""
    views = augment(images)
    if channels_last:
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    with autocast:
        loss, logs = model(views, epoch)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    method.on_after_backward(epoch)
    out = {k: float(v) for k, v in logs.items()}
    if not scaler.is_enabled():  # the fp16 scaler skips such steps itself
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        finite = bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()) if grads else True
        out["skipped_step"] = float(not finite)
        if not finite:
            # CPU bf16 convolution backward now and then returns NaN weight gradients from finite inputs
            # (torch 2.14, oneDNN; seen in SwAV at 32 px): drop that step, as a loss scaler would.
            optimizer.zero_grad(set_to_none=True)
            return loss.item(), out
    scaler.step(optimizer)
    scaler.update()
    return loss.item(), out


def _run_name(o: PretrainOptions, manifest: Manifest, epochs: int) -> str:
    corruption = parse_corruption(manifest.corrupt)
    tag = f"_{corruption.tag}" if corruption else ""
    return o.name or f"{o.method}_{o.arch}_{manifest.describe()}{tag}_{len(manifest)}img_{epochs}ep_s{o.seed}"


def fast_mixed_precision(device: torch.device) -> bool:
    """Whether autocast speeds training up on ``device``: CUDA, or a CPU with native bf16 (AMX, AVX512-BF16).

    Without it bf16 is emulated: on an AVX2-only AMD EPYC a ResNet-18 forward+backward of 128 images at 64 px
    took 84 s under bf16 autocast against 3.0 s in float32 (with AMX: about 5x faster than float32).
    """
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())


def _apply_preset(o: PretrainOptions) -> PretrainOptions:
    """Fill what the user left unset from the preset; ``--set`` settings win over the preset's."""
    if not o.preset:
        return replace(o, knn_every=1 if o.knn_every is None else o.knn_every)
    p = get_preset(o.method, o.preset)
    if not p.learns and os.environ.get("RANK", "0") == "0":
        sys.stderr.write(f"--preset {o.preset}: {o.method}'s recipe has not been shown to learn on synth (no 5-point "
                         "kNN gain on average over its runs, encoders/pretrain/README.md); it is a starting point, "
                         "not a measured recipe\n")

    def pick(mine, theirs):
        return theirs if mine is None else mine

    amp = o.amp
    if amp is None and p.amp:
        # The preset's bf16 autocast only where it is fast; --amp forces it, --no-amp turns it off.
        amp = fast_mixed_precision(resolve_device(o.device))
        if not amp and os.environ.get("RANK", "0") == "0":
            sys.stderr.write(f"--preset {o.preset}: this CPU has no bfloat16 units (AMX / AVX512-BF16), where "
                             "bf16 autocast is many times slower than float32; training in float32 (--amp forces it)\n")
    return replace(o, epochs=pick(o.epochs, p.epochs), batch_size=pick(o.batch_size, p.batch_size),
                   lr=pick(o.lr, p.lr), limit=pick(o.limit, p.limit), amp=amp,
                   knn_every=pick(o.knn_every, pick(p.knn_every, 1)), overrides={**p.settings, **o.overrides})


MAX_SKIPPED_IN_ROW = 5


def _log(world: World, msg: str) -> None:
    if world.is_main:
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()


# What each number of an epoch's log line means, said once per run (``harness pretrain --help`` and the
# README's Pretraining section say the same).
MONITORS = {
    "knn": "weighted-kNN top-1 of the backbone's pooled features, synthetic shapes (a labelled train bank, val "
           "queries; about 0.25 is chance); in the measured runs it fell in the first epochs before it rose, so a "
           "run of a few epochs usually ends lower than it started",
    "z_std": "spread of the L2-normalised embedding per dimension (0: collapsed to one point; about 1/sqrt(d), "
             "0.088 for 128 dimensions: spread over the sphere)",
    "pos": "mean cosine of a query with its positive key", "neg": "mean cosine of a query with the queue's keys",
    "proto_step": "how far the prototypes moved this step", "codes_used": "share of the prototypes the codes use",
}


def _explain(world: World, keys: Iterable[str]) -> None:
    """One line naming what the monitors in ``keys`` measure."""
    said = [f"{k} = {MONITORS[k]}" for k in MONITORS if k in set(keys)]
    if said:
        _log(world, "monitors: " + "; ".join(said))


@dataclass
class Run:
    """Everything one pretraining run is made of, assembled by ``_setup``."""

    o: PretrainOptions
    world: World
    device: torch.device
    cfg: MethodConfig
    epochs: int
    global_batch: int
    local_batch: int
    resolution: int
    manifest: Manifest
    dataset: ManifestImages
    run_dir: Path
    method: Method
    model: torch.nn.Module  # the method, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    augment: MultiCropAugment
    autocast: object
    channels_last: bool
    base_lr: float
    steps_per_epoch: int
    total_steps: int
    warmup: int
    settings_json: str
    # position and what was measured so far (saved in last.pt)
    epoch: int = 0
    step_in_epoch: int = 0
    skipped_in_row: int = 0  # steps dropped for non-finite gradients, in a row
    history: list[dict] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # this epoch's steps so far
    step_logs: list[dict[str, float]] = field(default_factory=list)  # the method's diagnostics, likewise

    @property
    def last(self) -> Path:
        return self.run_dir / "last.pt"


def _manifest(o: PretrainOptions, resolution: int) -> Manifest:
    """Built from the seed, or reused from a file (a corruption asked for must match it)."""
    if not o.manifest:
        return build_manifest(o.data, o.variant, o.seed, o.limit, resolution, corrupt=o.corrupt)
    manifest = Manifest.load(o.manifest)
    wanted = parse_corruption(o.corrupt)
    if wanted and manifest.corrupt and str(wanted) != manifest.corrupt:
        raise UsageError(f"--corrupt {wanted}: the manifest {o.manifest} was corrupted with {manifest.corrupt}")
    if wanted and not manifest.corrupt:
        manifest.corrupt, manifest.seed = str(wanted), o.seed
    return manifest


def _setup(o: PretrainOptions) -> Run:
    """Data, model, optimiser, schedule and the settings a resumed run must share."""
    check_arch(o.arch)
    device = resolve_device(o.device)
    world = init_from_env(device)
    cfg: MethodConfig = apply_overrides(get_method(o.method).config(), o.overrides)
    epochs = o.epochs or cfg.epochs
    global_batch = o.batch_size or cfg.batch_size
    if global_batch % world.size:
        raise UsageError(f"--batch-size {global_batch} does not split over {world.size} processes")
    resolution = o.resolution or (64 if o.data == [SYNTH] else 224)

    manifest = _manifest(o, resolution)
    steps_per_epoch = len(manifest) // global_batch
    if steps_per_epoch == 0:
        raise UsageError(f"{len(manifest)} images give no full batch of {global_batch}; lower --batch-size")
    load_size = resolution if manifest.sources[0]["kind"] == SYNTH else round(resolution * 8 / 7)  # 256 for 224
    run_dir = Path(o.out) / _run_name(o, manifest, epochs)
    if world.is_main:
        manifest.save(run_dir / "manifest.json")

    method = create_method(o.method, cfg, o.arch, o.seed).to(device)
    use_cuda = device.type == "cuda"
    amp = use_cuda if o.amp is None else o.amp
    # channels_last: on CUDA, and on a float32 CPU run (benchmarks/pretrain_memory_format.py, ResNet-18, 64 px, batch
    # 128, AVX2: steps 1.08x SimCLR, 1.09x SwAV, 1.16x BYOL and 0.97x MoCo v2 as fast with two threads; 1.17x SimCLR,
    # 1.11x MoCo v2 with one). MoCo's split BatchNorm copies out of channels_last. CPU bf16 autocast: unmeasured.
    channels_last = (use_cuda or not amp) if o.channels_last is None else o.channels_last
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    method = maybe_sync_bn(method, device)
    base_lr = o.lr if o.lr is not None else cfg.optim.lr * global_batch / cfg.optim.lr_batch
    amp_dtype = torch.bfloat16 if (not use_cuda or torch.cuda.is_bf16_supported()) else torch.float16
    total_steps = epochs * steps_per_epoch
    model = method
    if world.size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            method, device_ids=[torch.cuda.current_device()] if use_cuda else None, broadcast_buffers=False)
    settings = {"method": o.method, "preset": o.preset, "corrupt": manifest.corrupt, "arch": o.arch,
                "epochs": epochs, "batch_size": global_batch, "lr": base_lr,
                "resolution": resolution, "seed": o.seed, "manifest_sha256": manifest.digest(),
                "world_size": world.size, "config": asdict(cfg)}
    return Run(
        o=o, world=world, device=device, cfg=cfg, epochs=epochs, global_batch=global_batch,
        local_batch=global_batch // world.size, resolution=resolution, manifest=manifest,
        dataset=ManifestImages(manifest, load_size), run_dir=run_dir, method=method, model=model,
        optimizer=build_optimizer(method, cfg.optim, base_lr),
        scaler=torch.amp.GradScaler(enabled=amp and amp_dtype == torch.float16),
        augment=MultiCropAugment(cfg.augment, resolution).to(device),
        autocast=torch.autocast(device.type, dtype=amp_dtype) if amp else nullcontext(),
        channels_last=channels_last, base_lr=base_lr, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
        # Published warmups (10 of 800 epochs) would swallow a short run whole: cap them at a tenth of it.
        warmup=int(min(cfg.optim.warmup_epochs * steps_per_epoch, 0.1 * total_steps)),
        settings_json=json.dumps(settings, sort_keys=True, default=str))


def _resume(r: Run) -> None:
    if not (r.last.exists() and r.o.resume):
        return
    state = torch.load(r.last, map_location="cpu", weights_only=True)
    if state.get("settings") != r.settings_json:
        raise UsageError(f"{r.run_dir} holds a run with other settings; pass --name NEW or --no-resume")
    r.method.load_state_dict(state["method"])
    r.optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        r.scaler.load_state_dict(state["scaler"])
    r.epoch, r.step_in_epoch, r.history = state["epoch"], state["step_in_epoch"], state["history"]
    r.losses, r.step_logs = list(state["losses"]), list(state.get("step_logs", []))
    _log(r.world, f"resuming {r.run_dir.name} at epoch {r.epoch} step {r.step_in_epoch}")


def _save_state(r: Run) -> None:
    """last.pt, atomically: what a resumed run needs to continue exactly."""
    if not r.world.is_main:
        return
    state = {"method": r.method.state_dict(), "optimizer": r.optimizer.state_dict(),
             "scaler": r.scaler.state_dict() if r.scaler.is_enabled() else {}, "epoch": r.epoch,
             "step_in_epoch": r.step_in_epoch, "history": r.history, "losses": r.losses, "step_logs": r.step_logs,
             "settings": r.settings_json}
    with atomic_path(r.last) as tmp:
        torch.save(state, tmp)


def _train_epoch(r: Run) -> None:
    """The rest of the current epoch, step by step (each step reseeded from seed, step and rank)."""
    o, world = r.o, r.world
    batches = epoch_batches(len(r.manifest), r.global_batch, r.epoch, o.seed)[r.step_in_epoch:]
    local = [b[world.rank * r.local_batch:(world.rank + 1) * r.local_batch] for b in batches]
    loader = DataLoader(r.dataset, batch_sampler=local, num_workers=o.workers, pin_memory=r.device.type == "cuda")
    for images in progress(loader, desc=f"{o.method} epoch {r.epoch + 1}/{r.epochs}", total=len(local)):
        global_step = r.epoch * r.steps_per_epoch + r.step_in_epoch
        torch.manual_seed((o.seed * 1_000_003 + global_step) * 131 + world.rank)
        set_lr(r.optimizer, _lr_at(global_step, r.total_steps, r.warmup, r.base_lr, r.cfg.optim))
        loss, logs = train_step(r.model, r.method, r.optimizer, r.scaler, r.augment,
                                images.to(r.device, non_blocking=True), r.epoch, r.autocast, r.channels_last)
        if not math.isfinite(loss):
            raise HarnessError(f"loss became {loss} at step {global_step}; lower --lr")
        r.skipped_in_row = r.skipped_in_row + 1 if logs.get("skipped_step") else 0
        if r.skipped_in_row:
            _log(world, f"step {global_step}: gradients not finite; step skipped")
        if r.skipped_in_row >= MAX_SKIPPED_IN_ROW:
            raise HarnessError(f"gradients were not finite in {r.skipped_in_row} steps in a row (last: step "
                               f"{global_step}); lower --lr or run without --amp")
        r.method.on_after_step((global_step + 1) / r.total_steps)
        r.losses.append(loss)
        r.step_logs.append(logs)
        r.step_in_epoch += 1
        if r.step_in_epoch == r.steps_per_epoch:
            r.epoch, r.step_in_epoch = r.epoch + 1, 0
        if o.save_every and (global_step + 1) % o.save_every == 0 and r.step_in_epoch:
            _save_state(r)  # mid-epoch; the epoch's end saves below


def _end_epoch(r: Run, t_epoch: float, steps_done: int, knn_data) -> None:
    """The epoch's history entry (mean loss, diagnostics, kNN when due), logged and saved."""
    seconds = time.perf_counter() - t_epoch
    entry = {"epoch": r.epoch, "loss": sum(r.losses) / max(1, len(r.losses)), "seconds": round(seconds, 2),
             "images_per_s": round(steps_done * r.global_batch / max(1e-9, seconds), 1)}
    for key in sorted({k for lg in r.step_logs for k in lg}):
        values = [lg[key] for lg in r.step_logs if key in lg]
        entry[key] = round(sum(values) / len(values), 6)
    if knn_data is not None and (r.epoch % r.o.knn_every == 0 or r.epoch == r.epochs):
        entry["knn"] = knn_monitor(r.method.backbone, knn_data, r.device, r.o.knn_k)
    r.history.append(entry)
    r.losses, r.step_logs = [], []
    diag = "".join(f", {k} {entry[k]:.4g}" for k in ("z_std", "pos", "neg", "proto_step", "codes_used")
                   if k in entry)
    if not any("loss" in h for h in r.history[:-1]):  # the run's first epoch line
        _explain(r.world, [k for k in MONITORS if k != "knn" and k in entry])
    _log(r.world, f"epoch {r.epoch}/{r.epochs}: loss {entry['loss']:.4f}"
                  + (f", knn {entry['knn']:.4f}" if "knn" in entry else "") + diag + f" [{entry['seconds']:.1f}s]")
    _save_state(r)


def _write_encoder(r: Run) -> Path:
    """A harness checkpoint the eval and cka commands accept, also listed by ``harness encoders``."""
    o, name = r.o, r.run_dir.name
    ckpt = r.run_dir / f"{name}.pt"
    if r.world.is_main:
        knn_final = next((h["knn"] for h in reversed(r.history) if "knn" in h), None)
        meta = {"method": o.method, "arch": o.arch, "data": r.manifest.describe(),
                "manifest_hash": r.manifest.digest(), "epochs": r.epochs, "images": len(r.manifest),
                "resolution": r.resolution, "batch_size": r.global_batch, "lr": r.base_lr, "seed": o.seed,
                "knn": knn_final, "name": name, "preset": o.preset, "corrupt": r.manifest.corrupt or "none"}
        save_harness_checkpoint(ckpt, o.arch, r.method.backbone.state_dict(), meta)
        with atomic_path(user_encoders_dir() / f"{name}.pt") as tmp:
            shutil.copyfile(ckpt, tmp)
    if r.world.size > 1:
        torch.distributed.barrier()
    return ckpt


def run_pretrain(o: PretrainOptions) -> dict:
    t0 = time.perf_counter()
    r = _setup(_apply_preset(o))
    _resume(r)
    knn_data = (knn_monitor_data(r.resolution, o.knn_bank, o.knn_queries) if r.o.knn_every and r.world.is_main
                else None)
    if knn_data is not None and not r.history:
        acc = knn_monitor(r.method.backbone, knn_data, r.device, o.knn_k)
        r.history.append({"epoch": 0, "knn": acc})
        _explain(r.world, ["knn"])
        _log(r.world, f"epoch 0 (init): knn {acc:.4f}")
    r.method.train()
    while r.epoch < r.epochs:
        t_epoch, start = time.perf_counter(), r.epoch * r.steps_per_epoch + r.step_in_epoch
        _train_epoch(r)
        _end_epoch(r, t_epoch, r.epoch * r.steps_per_epoch + r.step_in_epoch - start, knn_data)
    ckpt = _write_encoder(r)
    m = r.manifest
    return {"checkpoint": str(ckpt), "method": r.o.method, "preset": r.o.preset, "corrupt": m.corrupt or "none",
            "arch": r.o.arch, "epochs": r.epochs, "images": len(m), "batch_size": r.global_batch, "lr": r.base_lr,
            "data": m.describe(), "manifest_hash": m.digest(), "run_dir": str(r.run_dir),
            "world_size": r.world.size, "amp": not isinstance(r.autocast, nullcontext),
            "knn": [h for h in r.history if "knn" in h], "history": r.history,
            "timings": {"total_s": round(time.perf_counter() - t0, 2)}}
