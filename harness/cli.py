"""The ``harness`` command line (typer)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import HarnessError, UsageError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Evaluate frozen visual encoders on many end tasks.")

_state = {"debug": False}

JsonOpt = Annotated[bool, typer.Option("--json", help="stdout carries only one JSON document")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, cuda:N (default: best available)")]


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False) -> None:
    _state["debug"] = debug


def _emit(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def _err(msg: str) -> None:
    sys.stderr.write(msg + "\n")


@app.command()
def tasks(json_out: JsonOpt = False) -> None:
    """List the registered tasks."""
    from tasks.registry import all_tasks

    rows = [t.summary() for t in all_tasks()]
    if json_out:
        _emit(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "category", "head", "metric", "frames", "epochs", "chance")
    for r in rows:
        table.add_row(r["name"], r["category"], r["head"], r["metric"], str(r["frames"]), str(r["epochs"]),
                      "-" if r["chance"] is None else f"{r['chance']:.3f}")
    Console().print(table)


@app.command()
def encoders(json_out: JsonOpt = False) -> None:
    """List the known encoders and whether their weights are present."""
    from encoders.registry import ENCODERS

    rows = [{"name": e.name, "method": e.method, "data": e.data, "epochs": e.epochs, "arch": e.arch,
             "available": e.available(), "description": e.description} for e in ENCODERS.values()]
    if json_out:
        _emit(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "arch", "method", "data", "epochs", "available")
    for r in rows:
        table.add_row(r["name"], r["arch"], r["method"], r["data"], str(r["epochs"] or "-"),
                      "yes" if r["available"] else "no")
    Console().print(table)


@app.command("eval")
def eval_cmd(
    encoder: Annotated[str, typer.Option("--encoder", "-e", help="catalog name or checkpoint path")],
    task: Annotated[list[str], typer.Option("--task", "-t", help="task or suite name (repeatable)")],
    out: Annotated[Path, typer.Option("--out", help="where result records go")] = Path("results"),
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="override the task's epochs")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="at most N training samples")] = None,
    resolution: Annotated[Optional[int], typer.Option("--resolution", min=16, help="input size")] = None,
    seed: Annotated[int, typer.Option("--seed", help="head-training seed")] = 0,
    encoder_seed: Annotated[int, typer.Option("--encoder-seed", help="seed of a random-init encoder")] = 0,
    device: DeviceOpt = None,
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help="where real datasets live")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1)] = None,
    grid: Annotated[str, typer.Option("--grid", help="full: the task's 4-config grid; single: its default")] = "full",
    workers: Annotated[int, typer.Option("--workers", min=0, help="DataLoader workers for encoding")] = 0,
    force: Annotated[bool, typer.Option("--force", help="redo tasks that already have a record")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Evaluate one frozen encoder on one or more tasks."""
    from tasks.registry import resolve_tasks

    from .runner import EvalOptions, run_eval

    if grid not in ("full", "single"):
        raise UsageError(f"--grid {grid!r}: use 'full' or 'single'")
    specs = resolve_tasks(task)
    opts = EvalOptions(encoder=encoder, tasks=specs, out=out, epochs=epochs, limit=limit, resolution=resolution,
                       seed=seed, encoder_seed=encoder_seed, device=device, data_root=data_root,
                       batch_size=batch_size, grid=grid, num_workers=workers, force=force, debug=_state["debug"])
    records = run_eval(opts)
    if json_out:
        _emit(records[0] if len(records) == 1 else records)
    else:
        for r in records:
            if r["status"] != "ok":
                typer.echo(f"{r['task']}: FAILED ({r['error']})")
                continue
            skipped = " (existing record; --force to redo)" if r.get("skipped") else ""
            chance = f" chance {r['chance']:.3f}" if r.get("chance") is not None else ""
            typer.echo(f"{r['encoder']} / {r['task']}: test {r['metric']} {r['test']:.4f} (val {r['val']:.4f}, "
                       f"epoch {r['epoch']}, {r['config'].get('label', '')}){chance} "
                       f"[{r['timings'].get('total_s', 0):.1f}s]{skipped}")
    if any(r["status"] != "ok" for r in records):
        raise typer.Exit(1)


def _not_yet(name: str) -> None:
    raise HarnessError(f"'harness {name}' is not available yet in this version")


@app.command()
def pretrain(
    method: Annotated[str, typer.Option("--method", "-m", help="mocov2, mocov1, swav, simclr, byol")],
    data: Annotated[list[str], typer.Option("--data", help="'synth' or an image folder (repeat to combine)")],
    variant: Annotated[str, typer.Option("--variant", help="full, half, quarter, lin, log")] = "full",
    manifest: Annotated[Path | None, typer.Option("--manifest", help="reuse a saved manifest.json")] = None,
    arch: Annotated[str, typer.Option("--arch", help="torchvision ResNet")] = "resnet18",
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="default: the method's")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=2, help="global batch")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="default: published lr x batch/ref")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="at most N training images")] = None,
    resolution: Annotated[int | None, typer.Option("--resolution", min=16, help="crop size")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: DeviceOpt = None,
    out: Annotated[Path, typer.Option("--out", help="runs folder")] = Path("runs/pretrain"),
    name: Annotated[str | None, typer.Option("--name", help="run (and encoder) name")] = None,
    setting: Annotated[list[str] | None, typer.Option("--set", help="method setting KEY=VALUE, e.g. "
                                                         "queue=4096, temperature=0.2, optim.lr=0.1")] = None,
    save_every: Annotated[int, typer.Option("--save-every", min=0, help="also checkpoint every N steps")] = 0,
    knn_every: Annotated[int, typer.Option("--knn-every", min=0, help="epochs between kNN checks")] = 1,
    workers: Annotated[int, typer.Option("--workers", min=0, help="DataLoader workers")] = 0,
    amp: Annotated[bool | None, typer.Option("--amp/--no-amp", help="default: on for CUDA")] = None,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="continue from last.pt")] = True,
    json_out: JsonOpt = False,
) -> None:
    """Train an encoder with a self-supervised method (torchrun for several GPUs or nodes)."""
    from encoders.pretrain.train import PretrainOptions, run_pretrain

    overrides = {}
    for item in setting or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--set {item!r}: use KEY=VALUE")
        overrides[key.strip()] = value.strip()
    result = run_pretrain(PretrainOptions(
        method=method, data=data, variant=variant, manifest=manifest, arch=arch, epochs=epochs,
        batch_size=batch_size, lr=lr, limit=limit, resolution=resolution, seed=seed, device=device, out=out,
        name=name, overrides=overrides, save_every=save_every, knn_every=knn_every, workers=workers, amp=amp,
        resume=resume))
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if json_out:
        _emit(result)
    else:
        knn = result["knn"]
        knn_s = f", knn {knn[0]['knn']:.3f} -> {knn[-1]['knn']:.3f}" if knn else ""
        typer.echo(f"{result['method']} {result['arch']}: {result['epochs']} epochs on {result['images']} images"
                   f"{knn_s} [{result['timings']['total_s']:.1f}s] -> {result['checkpoint']}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def cka() -> None:
    """Compare block representations with CKA (not available yet)."""
    _not_yet("cka")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def report() -> None:
    """Aggregate result records into tables and figures (not available yet)."""
    _not_yet("report")


def main() -> None:
    try:
        app(standalone_mode=False)
    except HarnessError as exc:
        if _state["debug"]:
            raise
        _err(f"error: {exc}")
        sys.exit(exc.exit_code)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", None)
        sys.exit(code if code is not None else getattr(exc, "code", 0))
    except typer.Abort:
        _err("aborted")
        sys.exit(1)
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show(file=sys.stderr)
            sys.exit(exc.exit_code)
        if _state["debug"] or os.environ.get("HARNESS_DEBUG"):
            raise
        _err(f"error: {type(exc).__name__}: {exc} (run with --debug for a traceback)")
        sys.exit(1)
