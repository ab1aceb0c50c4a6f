"""``harness study``: list, plan and run the declared studies (``harness/study.py``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from .common.options import Parsed, command
from .eval_options import EvalOptions
from .study_options import StudyOptions, StudyPlanOptions, StudyRunOptions

study_app = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="The papers' studies as declared grids of pretrain and eval jobs: list, plan, run.")

JsonOpt = Annotated[bool, typer.Option("--json", help="stdout carries only one JSON document")]
NameArg = Annotated[str, typer.Argument(help="the study (harness study list)")]


def _emit(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def _parser(ctx: typer.Context, command: str) -> Callable[[list[str]], dict]:
    """Options of another harness command parsed by that command's own parser (one definition; a wrong one
    is the usage error the command itself would give). Reached through the root command, not imported."""
    root = ctx.find_root().command

    def parse(args: list[str]) -> dict:
        return dict(root.commands[command].make_context(f"harness {command}", list(args)).params)

    return parse


def _eval_parser(ctx: typer.Context) -> Callable[[list[str]], EvalOptions]:
    """An eval command line -> EvalOptions, by eval's own parser."""
    parse = _parser(ctx, "eval")
    return lambda args: Parsed(EvalOptions, parse(args)).build()


def _table(*columns: str):
    from rich.table import Table

    table = Table(*columns)
    for col in table.columns:
        col.overflow = "fold"
    return table


def _print(table) -> None:
    from rich.console import Console

    Console(width=None if sys.stdout.isatty() else 10_000, soft_wrap=not sys.stdout.isatty()).print(table)


def _hours(e: dict) -> str:
    return "-" if e["hours"] is None else f"{e['hours']:.3g}"


@study_app.command("list")
def study_list(json_out: JsonOpt = False) -> None:
    """The declared studies: what each reproduces and its jobs at each scale."""
    from .study import SCALES, STUDIES

    rows = []
    for s in STUDIES.values():
        sizes = {}
        for scale in SCALES:
            grid = s.build(scale, None, None)
            sizes[scale] = {"pretrain": len(grid.pretrain), "eval": len(grid.encoders) * len(grid.tasks)}
        rows.append({"name": s.name, "title": s.title, "paper": s.paper, "jobs": sizes,
                     "table": {"rows": list(s.table.rows), "columns": list(s.table.columns)}})
    if json_out:
        _emit(rows)
        return
    table = _table("name", "study", *(f"jobs ({scale})" for scale in SCALES))
    for r in rows:
        table.add_row(r["name"], f"{r['title']}\n{r['paper']}",
                      *(f"{r['jobs'][s]['pretrain']} pretrain, {r['jobs'][s]['eval']} eval" for s in SCALES))
    _print(table)
    sys.stderr.write("scales: " + "; ".join(f"{k}: {v}" for k, v in SCALES.items()) + "\n")


@study_app.command("plan")
@command(StudyPlanOptions)
def study_plan(ctx: typer.Context, parsed: Parsed[StudyPlanOptions], name: NameArg, json_out: JsonOpt = False) -> None:
    """Every job of a study, whether its record exists, and the estimated hours here and on a GPU (from the
    throughput measured in benchmarks/results; 'no measurement' where there is none)."""
    _show_plan(ctx, parsed.build(study=name), json_out)


def _show_plan(ctx: typer.Context, opts: StudyOptions, json_out: bool) -> None:
    from .study import plan_study

    doc = plan_study(opts, _eval_parser(ctx))
    if json_out:
        _emit(doc)
        return
    c, e = doc["counts"], doc["estimate"]
    typer.echo(f"{doc['study']} ({doc['scale']} scale): {doc['title']}; {c['pretrain']} pretrain and {c['eval']} "
               f"eval job(s), {c['exists']} with a record already, {c['to_run']} to run; folder {doc['out']}")
    table = _table("kind", "job", "status", "hours here", f"hours on {e['gpu']['device']}")
    for j in doc["jobs"]:
        table.add_row(j["kind"], j["name"], j["status"], _hours(j["here"]), _hours(j["gpu"]))
    _print(table)
    for where in ("here", "gpu"):
        t = e[where]
        total = "no measurement" if t["hours"] is None else f"{t['hours']:.3g} h"
        floor = t.get("floor_hours_without_estimate")
        typer.echo(f"estimate on {t['device']}: {total} for {t['jobs_estimated']} job(s); "
                   f"{t['jobs_without_estimate']} without one"
                   + (f" (their measured parts alone: at least {floor:.3g} h)" if floor else ""))
    bases = sorted({j[w]["basis"] for j in doc["jobs"] for w in ("here", "gpu")})
    for b in bases:
        typer.echo(f"  basis: {b}")
    for n in doc["notes"]:
        typer.echo(f"note: {n}")


@study_app.command("run")
@command(StudyRunOptions)
def study_run(ctx: typer.Context, parsed: Parsed[StudyRunOptions], name: NameArg, json_out: JsonOpt = False) -> None:
    """Run a study: its pretraining runs, then its evals, through the sweep's executors (records that exist are
    skipped, failed jobs retried; run it again after an interruption and it resumes). Then: harness report OUT."""
    opts = parsed.build(study=name)
    if opts.dry_run:
        _show_plan(ctx, opts, json_out)
        return
    from .study import run_study

    doc = run_study(opts, _eval_parser(ctx))
    if json_out:
        _emit(doc)
    else:
        table = _table("kind", "job", "status", "attempts", "time", "error")
        for j in doc["jobs"]:
            table.add_row(j["kind"], j["name"], j["status"], str(j.get("attempts", 0)), f"{j.get('wall_s', 0):.0f}s",
                          j.get("error") or "")
        _print(table)
    c = doc["counts"]
    sys.stderr.write(f"study {doc['study']}: {c['done']} done, {c['skipped']} skipped (record exists), {c['failed']} "
                     f"failed, {c['not run']} not run, in {doc['wall_s']:.0f}s; logs: {doc['logs']}; next: harness "
                     f"report {doc['out']}\n")
    if c["failed"] or c["not run"]:
        raise typer.Exit(1)


@study_app.command("pretrain-job", hidden=True, context_settings={"allow_extra_args": True,
                                                                   "ignore_unknown_options": True})
def study_pretrain_job(
    ctx: typer.Context,
    record: Annotated[Path, typer.Option("--record", help="where the job's record goes")],
) -> None:
    """One pretraining run of a study (what ``study run`` submits): ``harness pretrain`` with its options after
    ``--``, timed, with its record (cost, train time, energy) written for the sweep to find."""
    from .common.pretrain_options import PretrainOptions
    from .study import run_pretrain_job

    options = Parsed(PretrainOptions, _parser(ctx, "pretrain")(list(ctx.args))).build()
    doc = run_pretrain_job(record, options)
    typer.echo(f"{doc['name']}: {doc['train_s']:.1f}s of training -> {doc['checkpoint']}")
