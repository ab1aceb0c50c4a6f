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
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from encoders.checkpoint import save_harness_checkpoint
from harness.common.atomic import atomic_path
from harness.common.device import resolve_device
from harness.common.errors import HarnessError, UsageError
from harness.common.paths import user_encoders_dir
from harness.common.progress import progress

from . import create_method, get_method
from .augment import IMAGENET_MEAN, IMAGENET_STD, MultiCropAugment
from .base import Method, MethodConfig, OptimDefaults, apply_overrides
from .corrupt import parse_corruption
from .data import SYNTH, Manifest, ManifestImages, build_manifest, epoch_batches
from .distributed import World, init_from_env, maybe_sync_bn
from .knn import knn_accuracy
from .lars import LARS
from .presets import get_preset

KILL_ENV = "HARNESS_PRETRAIN_KILL_AT_STEP"  # test hook: SIGKILL ourselves right after this global step


@dataclass
class PretrainOptions:
    method: str
    data: list[str] = field(default_factory=lambda: [SYNTH])
    preset: str | None = None  # presets.py: a bundle of the settings below; explicit ones win
    corrupt: str | None = None  # corrupt.py: jpeg:Q, downsample:F, saltpepper:P, blur:S
    variant: str = "full"
    manifest: Path | None = None
    arch: str = "resnet18"
    epochs: int | None = None  # None: the method's published epochs
    batch_size: int | None = None  # global; None: the method's published batch
    lr: float | None = None  # None: published lr scaled linearly to the batch
    limit: int | None = None
    resolution: int | None = None  # None: 64 for synth, 224 for folders
    seed: int = 0
    device: str | None = None
    out: Path = Path("runs/pretrain")
    name: str | None = None
    overrides: dict[str, str] = field(default_factory=dict)
    save_every: int = 0  # also save last.pt every N steps (0: at epoch ends only)
    knn_every: int | None = None  # epochs between kNN checks (0: never; None: the preset's, else 1)
    knn_bank: int = 1000
    knn_queries: int = 250
    knn_k: int = 20
    workers: int = 0
    amp: bool | None = None  # None: on for CUDA
    channels_last: bool | None = None  # None: on for CUDA
    resume: bool = True


def _lr_at(step: int, total: int, warmup: int, base: float, opt: OptimDefaults) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    if not opt.cosine:
        return base
    t = (step - warmup) / max(1, total - warmup)
    final = base * opt.final_lr_frac
    return final + (base - final) * 0.5 * (1 + math.cos(math.pi * t))


def _optimizer(method: Method, opt: OptimDefaults, lr: float) -> torch.optim.Optimizer:
    params = [p for p in method.parameters() if p.requires_grad]
    if opt.name == "lars":
        return LARS(params, lr=lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    if opt.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=opt.momentum, weight_decay=opt.weight_decay, foreach=True)
    raise UsageError(f"optim.name {opt.name!r}: use sgd or lars")


def _knn_data(resolution: int, bank: int, queries: int) -> dict[str, torch.Tensor]:
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
    scaler.step(optimizer)
    scaler.update()
    return loss.item(), {k: float(v) for k, v in logs.items()}


def _run_name(o: PretrainOptions, manifest: Manifest, epochs: int) -> str:
    corruption = parse_corruption(manifest.corrupt)
    tag = f"_{corruption.tag}" if corruption else ""
    return o.name or f"{o.method}_{o.arch}_{manifest.describe()}{tag}_{len(manifest)}img_{epochs}ep_s{o.seed}"


def _apply_preset(o: PretrainOptions) -> PretrainOptions:
    """Fill what the user left unset from the preset; ``--set`` settings win over the preset's."""
    if not o.preset:
        return replace(o, knn_every=1 if o.knn_every is None else o.knn_every)
    p = get_preset(o.method, o.preset)

    def pick(mine, theirs):
        return theirs if mine is None else mine

    return replace(o, epochs=pick(o.epochs, p.epochs), batch_size=pick(o.batch_size, p.batch_size),
                   lr=pick(o.lr, p.lr), limit=pick(o.limit, p.limit), amp=pick(o.amp, p.amp),
                   knn_every=pick(o.knn_every, pick(p.knn_every, 1)), overrides={**p.settings, **o.overrides})


def _log(world: World, msg: str) -> None:
    if world.is_main:
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()


def run_pretrain(o: PretrainOptions) -> dict:
    t0 = time.perf_counter()
    o = _apply_preset(o)
    device = resolve_device(o.device)
    world = init_from_env(device)
    spec = get_method(o.method)
    cfg: MethodConfig = apply_overrides(spec.config(), o.overrides)
    epochs = o.epochs or cfg.epochs
    global_batch = o.batch_size or cfg.batch_size
    if global_batch % world.size:
        raise UsageError(f"--batch-size {global_batch} does not split over {world.size} processes")
    local_batch = global_batch // world.size
    resolution = o.resolution or (64 if o.data == [SYNTH] else 224)

    # ---- data: a manifest (built from the seed, or reused from a file) ----
    if o.manifest:
        manifest = Manifest.load(o.manifest)
        wanted = parse_corruption(o.corrupt)
        if wanted and manifest.corrupt and str(wanted) != manifest.corrupt:
            raise UsageError(f"--corrupt {wanted}: the manifest {o.manifest} was corrupted with {manifest.corrupt}")
        if wanted and not manifest.corrupt:
            manifest.corrupt, manifest.seed = str(wanted), o.seed
    else:
        manifest = build_manifest(o.data, o.variant, o.seed, o.limit, resolution, corrupt=o.corrupt)
    steps_per_epoch = len(manifest) // global_batch
    if steps_per_epoch == 0:
        raise UsageError(f"{len(manifest)} images give no full batch of {global_batch}; lower --batch-size")
    load_size = resolution if manifest.sources[0]["kind"] == SYNTH else round(resolution * 8 / 7)  # 256 for 224
    dataset = ManifestImages(manifest, load_size)
    run_dir = Path(o.out) / _run_name(o, manifest, epochs)
    if world.is_main:
        manifest.save(run_dir / "manifest.json")

    # ---- model, optimiser, schedule ----
    method = create_method(o.method, cfg, o.arch, o.seed).to(device)
    use_cuda = device.type == "cuda"
    channels_last = use_cuda if o.channels_last is None else o.channels_last
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    method = maybe_sync_bn(method, device)
    base_lr = o.lr if o.lr is not None else cfg.optim.lr * global_batch / cfg.optim.lr_batch
    optimizer = _optimizer(method, cfg.optim, base_lr)
    amp = use_cuda if o.amp is None else o.amp
    amp_dtype = torch.bfloat16 if (not use_cuda or torch.cuda.is_bf16_supported()) else torch.float16
    scaler = torch.amp.GradScaler(enabled=amp and amp_dtype == torch.float16)
    total_steps = epochs * steps_per_epoch
    # Published warmups (10 of 800 epochs) would swallow a short run whole: cap them at a tenth of it.
    warmup = int(min(cfg.optim.warmup_epochs * steps_per_epoch, 0.1 * total_steps))
    augment = MultiCropAugment(cfg.augment, resolution).to(device)
    model = method
    if world.size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            method, device_ids=[torch.cuda.current_device()] if use_cuda else None, broadcast_buffers=False)

    settings = {"method": o.method, "preset": o.preset, "corrupt": manifest.corrupt, "arch": o.arch,
                "epochs": epochs, "batch_size": global_batch, "lr": base_lr,
                "resolution": resolution, "seed": o.seed, "manifest_sha256": manifest.digest(),
                "world_size": world.size, "config": asdict(cfg)}
    settings_json = json.dumps(settings, sort_keys=True, default=str)

    # ---- resume ----
    epoch, step_in_epoch, history, losses = 0, 0, [], []  # losses: this epoch's steps so far
    step_logs: list[dict[str, float]] = []  # the method's diagnostics, this epoch's steps so far
    last = run_dir / "last.pt"
    if last.exists() and o.resume:
        state = torch.load(last, map_location="cpu", weights_only=True)
        if state.get("settings") != settings_json:
            raise UsageError(f"{run_dir} holds a run with other settings; pass --name NEW or --no-resume")
        method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        epoch, step_in_epoch, history = state["epoch"], state["step_in_epoch"], state["history"]
        losses, step_logs = list(state["losses"]), list(state.get("step_logs", []))
        _log(world, f"resuming {run_dir.name} at epoch {epoch} step {step_in_epoch}")

    def save_state() -> None:
        if not world.is_main:
            return
        state = {"method": method.state_dict(), "optimizer": optimizer.state_dict(),
                 "scaler": scaler.state_dict() if scaler.is_enabled() else {}, "epoch": epoch,
                 "step_in_epoch": step_in_epoch, "history": history, "losses": losses, "step_logs": step_logs,
                 "settings": settings_json}
        with atomic_path(last) as tmp:
            torch.save(state, tmp)

    knn_data = _knn_data(resolution, o.knn_bank, o.knn_queries) if o.knn_every and world.is_main else None
    if knn_data is not None and not history:
        acc = knn_monitor(method.backbone, knn_data, device, o.knn_k)
        history.append({"epoch": 0, "knn": acc})
        _log(world, f"epoch 0 (init): knn {acc:.4f}")

    # ---- train ----
    kill_at = int(os.environ.get(KILL_ENV, "-1"))
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp else nullcontext()
    method.train()
    while epoch < epochs:
        batches = epoch_batches(len(manifest), global_batch, epoch, o.seed)[step_in_epoch:]
        local = [b[world.rank * local_batch:(world.rank + 1) * local_batch] for b in batches]
        loader = DataLoader(dataset, batch_sampler=local, num_workers=o.workers, pin_memory=use_cuda)
        t_epoch, steps_done = time.perf_counter(), 0
        for images in progress(loader, desc=f"{o.method} epoch {epoch + 1}/{epochs}", total=len(local)):
            global_step = epoch * steps_per_epoch + step_in_epoch
            torch.manual_seed((o.seed * 1_000_003 + global_step) * 131 + world.rank)
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(global_step, total_steps, warmup, base_lr, cfg.optim)
            loss, logs = train_step(model, method, optimizer, scaler, augment,
                                    images.to(device, non_blocking=True), epoch, autocast, channels_last)
            if not math.isfinite(loss):
                raise HarnessError(f"loss became {loss} at step {global_step}; lower --lr")
            method.on_after_step((global_step + 1) / total_steps)
            losses.append(loss)
            step_logs.append(logs)
            steps_done += 1
            step_in_epoch += 1
            if step_in_epoch == steps_per_epoch:
                epoch, step_in_epoch = epoch + 1, 0
            if o.save_every and (global_step + 1) % o.save_every == 0 and step_in_epoch:
                save_state()
            if global_step == kill_at and step_in_epoch:  # mid-epoch only: epoch ends save below
                save_state()
                os.kill(os.getpid(), signal.SIGKILL)
        entry = {"epoch": epoch, "loss": sum(losses) / max(1, len(losses)),
                 "seconds": round(time.perf_counter() - t_epoch, 2),
                 "images_per_s": round(steps_done * global_batch / max(1e-9, time.perf_counter() - t_epoch), 1)}
        for key in sorted({k for lg in step_logs for k in lg}):
            values = [lg[key] for lg in step_logs if key in lg]
            entry[key] = round(sum(values) / len(values), 6)
        if knn_data is not None and (epoch % o.knn_every == 0 or epoch == epochs):
            entry["knn"] = knn_monitor(method.backbone, knn_data, device, o.knn_k)
        history.append(entry)
        losses, step_logs = [], []
        diag = "".join(f", {k} {entry[k]:.4g}" for k in ("z_std", "pos", "neg", "proto_step", "codes_used")
                       if k in entry)
        _log(world, f"epoch {epoch}/{epochs}: loss {entry['loss']:.4f}"
                    + (f", knn {entry['knn']:.4f}" if "knn" in entry else "") + diag + f" [{entry['seconds']:.1f}s]")
        save_state()

    # ---- output: a harness checkpoint the eval and cka commands accept ----
    name = run_dir.name
    ckpt = run_dir / f"{name}.pt"
    knn_final = next((h["knn"] for h in reversed(history) if "knn" in h), None)
    if world.is_main:
        meta = {"method": o.method, "arch": o.arch, "data": manifest.describe(), "manifest_hash": manifest.digest(),
                "epochs": epochs, "images": len(manifest), "resolution": resolution, "batch_size": global_batch,
                "lr": base_lr, "seed": o.seed, "knn": knn_final, "name": name, "preset": o.preset,
                "corrupt": manifest.corrupt or "none"}
        save_harness_checkpoint(ckpt, o.arch, method.backbone.state_dict(), meta)
        user = user_encoders_dir() / f"{name}.pt"
        with atomic_path(user) as tmp:
            shutil.copyfile(ckpt, tmp)
    if world.size > 1:
        torch.distributed.barrier()
    return {"checkpoint": str(ckpt), "method": o.method, "preset": o.preset, "corrupt": manifest.corrupt or "none",
            "arch": o.arch, "epochs": epochs, "images": len(manifest), "batch_size": global_batch, "lr": base_lr,
            "data": manifest.describe(), "manifest_hash": manifest.digest(), "run_dir": str(run_dir),
            "world_size": world.size, "knn": [h for h in history if "knn" in h], "history": history,
            "timings": {"total_s": round(time.perf_counter() - t0, 2)}}
