"""The ``harness`` command line (typer)."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
import typer.main

from .cka_options import CKAOptions
from .common import interrupt
from .common.errors import HarnessError, UsageError
from .common.options import Parsed, command
from .common.pretrain_options import PretrainOptions
from .eval_options import EvalOptions
from .report_options import ReportOptions
from .sweep import OWN_OPTIONS, SweepOptions

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Evaluate frozen visual encoders on many end tasks.")

_state = {"debug": False}

JsonOpt = Annotated[bool, typer.Option("--json", help="stdout carries only one JSON document")]


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False) -> None:
    _state["debug"] = debug


def _emit(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def _err(msg: str) -> None:
    sys.stderr.write(msg + "\n")


DataRootOpt = Annotated[Optional[Path], typer.Option("--data-root", help="where real datasets live "
                                                     "(default: $HARNESS_DATA, else ./data)")]


@app.command()
def tasks(json_out: JsonOpt = False, data_root: DataRootOpt = None) -> None:
    """List the registered tasks (and whether each real task's data is found under the data root)."""
    from tasks.datasets.base import resolve_data_root
    from tasks.registry import all_tasks

    root = resolve_data_root(data_root)
    rows = []
    for t in all_tasks():
        row = t.summary()
        row["data"] = "built-in" if t.layout is None else ("found" if (root / t.layout.folder).is_dir() else "missing")
        row["train_size"] = t.train_size
        rows.append(row)
    if json_out:
        _emit(rows)
        return
    table = _table("name", "category", "head", "metric", "frames", "epochs", "chance", "data")
    for r in rows:
        table.add_row(r["name"], r["category"], r["head"], r["metric"], str(r["frames"]), str(r["epochs"]),
                      "-" if r["chance"] is None else f"{r['chance']:.3f}", r["data"])
    _print_table(table)
    _err(f"data root: {root} ('missing': see `harness data layout TASK`)")


def _table(*columns: str):
    """A rich table whose cells fold instead of being cut with an ellipsis."""
    from rich.table import Table

    table = Table(*columns)
    for col in table.columns:
        col.overflow = "fold"
    return table


_BREAK_AFTER = re.compile(r"(?<=[_ /@])")  # where a name or a phrase wraps: after '_', ' ', '/' or '@'
_HYPHEN = re.compile(r"(?<=-)")  # and, only inside a word still too long, after '-'


def _pieces(text: str) -> list[str]:
    """The smallest pieces a cell may wrap into."""
    return [q for p in _BREAK_AFTER.split(text) for q in _HYPHEN.split(p) if q]


def _wrap(text: str, width: int, abbreviate: bool = False) -> str:
    """``text`` in lines of at most ``width`` characters, broken only after '_', ' ', '/' or '@' (and after
    '-' in a word longer than the line). A piece still longer than the line, the last resort, is cut, or
    shortened with a '.' (``abbreviate``: a header, 'available' -> 'avail.')."""
    width = max(1, width)
    lines = []
    for line in text.split("\n"):
        current = ""
        words = [p for w in _BREAK_AFTER.split(line) if w
                 for p in ([w] if len(w.rstrip()) <= width else _HYPHEN.split(w)) if p]
        if abbreviate:
            words = [w if len(w.rstrip()) <= width else w[:width - 1] + "." for w in words]
        else:
            words = [w[i:i + width] for w in words for i in range(0, len(w.rstrip()) or 1, width)]
        for piece in words:
            if current and len(current + piece.rstrip()) > width:
                lines.append(current.rstrip())
                current = piece
            else:
                current += piece
        lines.append(current.rstrip())
    return "\n".join(lines)


def _longest_piece(text: str) -> int:
    return max((len(p.rstrip()) for p in _pieces(text)), default=0)


def _cut_widths(texts: list[list[str]], room: int) -> list[int]:
    """Widths for a table whose words cannot all fit ``room``: headers are abbreviated first, then, one
    character at a time, the column narrowed whose narrowing cuts the fewest more cells (a word in a row
    or two, never a name every row has), the widest of those. Room left over goes back to cut cells, then
    to whole headers."""
    longest = [[_longest_piece(v) for v in col[1:]] for col in texts]  # the cells, not the header
    widths = [max([2, *col]) for col in longest]  # a header keeps a letter and its '.'

    def cut(c: int, w: int) -> int:
        return sum(n > w for n in longest[c])

    while sum(widths) > room and max(widths) > 2:
        widths[min((c for c in range(len(widths)) if widths[c] > 2),
                   key=lambda c: (cut(c, widths[c] - 1), -widths[c], -c))] -= 1
    while sum(widths) < room and any(cut(c, widths[c]) for c in range(len(widths))):
        widths[max(range(len(widths)), key=lambda c: cut(c, widths[c]))] += 1
    for c in sorted(range(len(widths)), key=lambda c: _longest_piece(texts[c][0]) - widths[c]):
        widths[c] += max(0, min(_longest_piece(texts[c][0]) - widths[c], room - sum(widths)))
    return widths


def _column_widths(texts: list[list[str]], natural: list[int], least: list[int], room: int,
                   cut: bool = False) -> list[int]:
    """Column widths that fit ``room``, the table as short as they allow: from each column's narrowest
    (its longest unbreakable piece), widen the column that saves the most lines per character, to the
    next width at which it saves any, while room is left. When even the narrowest do not fit: those
    (``cut`` False), or ``_cut_widths`` (``cut``)."""
    if sum(natural) <= room:
        return list(natural)
    if sum(least) > room:
        return _cut_widths(texts, room) if cut else list(least)
    n = len(texts)
    # the lines of each cell at every width the column may take
    lines = [{w: [_wrap(v, w).count("\n") + 1 for v in texts[c]] for w in range(least[c], natural[c] + 1)}
             for c in range(n)]
    widths = list(least)

    def height(ws: list[int]) -> int:
        return sum(max(col) for col in zip(*(lines[c][ws[c]] for c in range(n)), strict=True))

    while True:
        best, best_key = None, (0.0, 0.0)
        now, left = height(widths), room - sum(widths)
        for c in range(n):
            w = next((w for w in range(widths[c] + 1, natural[c] + 1) if lines[c][w] != lines[c][widths[c]]), None)
            if w is None or w - widths[c] > left:
                continue
            trial = [*widths[:c], w, *widths[c + 1:]]
            own = sum(lines[c][widths[c]]) - sum(lines[c][w])
            key = ((now - height(trial)) / (w - widths[c]), own / (w - widths[c]))
            if key > best_key:
                best, best_key = (c, w), key
        if best is None:
            return widths
        widths[best[0]] = best[1]


def _fit(table, width: int | None):
    """The table with every cell as plain text (never read as markup: '[block3]' stays), and, when it is
    wider than ``width``, its widest columns narrowed, their cells wrapped at '_', spaces, '/' and '-' so
    that no word is split ('synth_' / 'action', never 'synt' / 'h_ac' / 'tion'); if that is not enough,
    without the padding and outer edges. Only a word no break can narrow enough is left for rich to fold.
    Rows that wrap get a rule between them, so that a row's lines read as one."""
    from rich.table import Table
    from rich.text import Text

    def plain(cell) -> str:
        return cell.plain if isinstance(cell, Text) else str(cell)

    columns = list(table.columns)
    n = len(columns)
    if not n:  # a title alone ('no encoders x tasks table: ...')
        return table
    headers = [plain(c.header) for c in columns]
    cells = [[plain(v) for v in c.cells] for c in columns]
    texts = [[h, *col] for h, col in zip(headers, cells, strict=True)]
    widths = [max(len(line) for v in col for line in v.split("\n")) for col in texts]
    least = [max(len(p.rstrip()) for v in col for p in [*_pieces(v), " "]) for col in texts]
    style: dict = {}
    if width is not None:
        fitted = _column_widths(texts, widths, least, width - 3 * n - 1)  # a space either side, rules, edges
        if sum(fitted) > width - 3 * n - 1:
            style = {"padding": (0, 0), "show_edge": False}
            fitted = _column_widths(texts, widths, least, width - (n - 1), cut=True)  # only the rules between
        widths = fitted
    wrapped = [[_wrap(v, w) for v in col] for col, w in zip(cells, widths, strict=True)]
    out = Table(title=table.title, caption=table.caption,
                show_lines=any("\n" in v for col in wrapped for v in col), **style)
    for col, head, w in zip(columns, headers, widths, strict=True):
        out.add_column(Text(_wrap(head, w, abbreviate=True)), justify=col.justify, overflow="fold")
    for row in zip(*wrapped, strict=True):
        out.add_row(*(Text(v) for v in row))
    return out


def _print_table(table) -> None:
    """Tables never cut names or numbers: in a pipe or file they print at their full width; in a terminal
    too narrow for them, names wrap after '_' and phrases at spaces (never inside a word)."""
    from rich.console import Console

    if sys.stdout.isatty():
        console = Console()
        console.print(_fit(table, console.width))
    else:
        Console(width=10_000, soft_wrap=True).print(_fit(table, None))


data_app = typer.Typer(add_completion=False, no_args_is_help=True,
                       help="Describe and verify real datasets (docs/data.md).")
app.add_typer(data_app, name="data")


@data_app.command("layout")
def data_layout(
    task: Annotated[Optional[str], typer.Argument(help="a task (default: every real task)")] = None,
    data_root: DataRootOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Where a task's dataset goes, its expected tree, download page and counts."""
    from tasks.datasets.check import layout_doc, layout_text
    from tasks.registry import all_tasks, get_task

    specs = [get_task(task)] if task else [t for t in all_tasks() if t.layout is not None]
    if json_out:
        docs = [layout_doc(t, data_root) for t in specs]
        _emit(docs[0] if task else docs)
        return
    typer.echo("\n\n".join(layout_text(t, data_root) for t in specs))


@data_app.command("check")
def data_check(
    task: Annotated[str, typer.Option("--task", "-t", help="the task whose data to verify")],
    data_root: DataRootOpt = None,
    sample: Annotated[Optional[int], typer.Option("--sample", min=1, help="check N samples per split (seeded: "
                                                  "their labels decoded, their files' sizes compared) instead "
                                                  "of all")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Verify a dataset's layout, counts, labels and what eval requires of them (each sample's files of
    one size, enough train samples to carve val from); exit 0 when the task can run, 1 otherwise."""
    from tasks.datasets.check import check_task
    from tasks.registry import get_task

    spec = get_task(task)
    if spec.layout is None:
        raise UsageError(f"task {task} is built in (synthetic): there is no dataset to check")
    doc = check_task(spec, data_root, sample)
    n_problems = doc.get("n_problems", len(doc["problems"]))
    if json_out:
        _emit(doc)
    else:
        typer.echo(f"{doc['task']}: {'OK' if doc['ok'] else 'NOT OK'} ({doc['root']})")
        for name, entry in doc["splits"].items():
            exp = f" (expected {entry['expected']:,})" if "expected" in entry else ""
            typer.echo(f"  {name}: {entry['n']:,} samples{exp}")
            if "labels" in entry:
                typer.echo(f"    labels: {json.dumps(entry['labels'])}")
        for w in doc["warnings"]:
            typer.echo(f"  warning: {w}")
        for p in doc["problems"]:
            typer.echo(f"  problem: {p}")
    if not doc["ok"]:
        if json_out:  # stdout is the document: the one human line names the first problem
            more = f" (and {n_problems - 1} more)" if n_problems > 1 else ""
            _err(f"error: task {task}: {doc['problems'][0] if doc['problems'] else 'not usable'}{more}")
        else:  # the problems are listed above, each once
            _err(f"error: task {task} cannot run: {n_problems} problem{'' if n_problems == 1 else 's'}, listed "
                 f"above; see `harness data layout {task}` for the expected layout")
        raise typer.Exit(1)


encoders_app = typer.Typer(add_completion=False, invoke_without_command=True,
                           help="List the known encoders (or fetch their weights).")
app.add_typer(encoders_app, name="encoders")
WeightsDirOpt = Annotated[Optional[Path], typer.Option(
    "--weights-dir", help="where encoder weights live (default: $HARNESS_WEIGHTS or <cache>/weights)")]


@encoders_app.callback()
def encoders(ctx: typer.Context, json_out: JsonOpt = False, weights_dir: WeightsDirOpt = None,
             show: Annotated[Optional[list[str]], typer.Option(
                 "--show", help="architecture(s) to describe instead (resnet_space:3: what K drew, its cost)")] = None,
             ) -> None:
    """List the known encoders, their parameters and GFLOPs per image at 64 and 224 px, and whether their
    weights are present."""
    if ctx.invoked_subcommand is not None:
        return
    from encoders.archs import SPACES, WIDEN_MAX, WIDEN_MIN, arch_card, parse_space, space_patterns, widened_patterns
    from encoders.registry import cost_columns, list_encoders

    if show:  # named architectures, SPACE:K included (never enumerated), or a space itself: its knobs
        cards = []
        for name in show:
            if name in SPACES:
                space = SPACES[name]
                cards.append({"name": name, "space": True, "description": space.description, "knobs": space.knobs})
                continue
            family, description, facts = arch_card(name)
            cards.append({"name": name, "family": family, "description": description, **cost_columns(name),
                          "card": facts})
        if json_out:
            _emit(cards)
            return
        for c in cards:
            if c.get("space"):
                typer.echo(f"{c['name']}:K: {c['description']}; knobs drawn uniformly from K alone:")
                for knob, spec in c["knobs"].items():
                    typer.echo(f"  {knob}: {', '.join(map(str, spec['choices']))}  [{spec['source']}]")
                continue
            drawn = c["card"].get("drawn_summary")
            typer.echo(f"{c['name']}: {c['description']}" + (f"\n  drawn: {drawn}" if drawn else "")
                       + f"\n  params {c['params'] / 1e6:.3g}M, GFLOPs {c['flops_64'] / 1e9:.3g} at 64 px, "
                       f"{c['flops_224'] / 1e9:.3g} at 224 px")
            if "drawn" in c["card"]:
                typer.echo(f"  knobs: {json.dumps(c['card']['drawn'])}")
        return
    rows = list_encoders(weights_dir)
    for r in rows:  # a sampled architecture (a checkpoint of resnet_space:K): what K drew
        try:
            sampled = parse_space(str(r["arch"])) is not None
        except HarnessError:
            sampled = False
        if sampled:
            r["drawn"] = arch_card(r["arch"])[2]["drawn_summary"]
    if json_out:
        _emit(rows)
        return

    def count(value: int | None, scale: float, unit: str = "") -> str:
        return "-" if value is None else f"{value / scale:.3g}{unit}"

    table = _table("name", "arch", "method", "data", "corrupt", "epochs", "format", "available", "params",
                   "GFLOPs@64", "GFLOPs@224")
    for r in rows:
        table.add_row(r["name"], r["arch"], r["method"], r["data"], r.get("corrupt", "-"), str(r["epochs"] or "-"),
                      r.get("format") or "-",
                      "yes" if r["available"] else "no", count(r.get("params"), 1e6, "M"),
                      count(r.get("flops_64"), 1e9), count(r.get("flops_224"), 1e9))
    _print_table(table)
    for r in rows:
        if "drawn" in r:
            _err(f"{r['name']}: {r['arch']} = {r['drawn']}")
    spaces = space_patterns()  # never enumerated: K is any integer >= 0
    example = spaces[0].replace(":K", ":0")
    _err(f"also: {', '.join(widened_patterns())} with K = {WIDEN_MIN}..{WIDEN_MAX} (Kolesnikov et al.'s widening "
         "factor; 4 = the standard width), e.g. --encoder resnet50_x8 or pretrain --arch resnetv2_50_x2; "
         f"{', '.join(spaces)} with K = 0, 1, 2, ... (architecture K of a seeded search space, Girish et al.; "
         f"the card says what K drew, e.g. {example} = {arch_card(example)[2]['drawn_summary']}); "
         "tv:NAME and timm:NAME. GFLOPs are multiply-adds per image.")


@encoders_app.command("fetch")
def encoders_fetch(
    name: Annotated[list[str], typer.Argument(help="catalog name(s) to download")],
    weights_dir: WeightsDirOpt = None,
    force: Annotated[bool, typer.Option("--force", help="download again even if the file is present")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Download catalog encoders' weights (with progress; SHA-256 checked when recorded)."""
    from encoders.catalog import CATALOG
    from encoders.weights import fetch

    from .common.errors import unknown_name

    fetchable = {n: e for n, e in CATALOG.items() if e.url}
    paths = {}
    for n in name:
        if n not in fetchable:
            raise unknown_name("catalog encoder", n, fetchable)
        paths[n] = str(fetch(fetchable[n], weights_dir, force=force))
    if json_out:
        _emit(paths)
    else:
        for n, p in paths.items():
            typer.echo(f"{n}: {p}")


def _variant_tag(r: dict) -> str:
    """' [knn, 10% of train]' for a record of another probe or label fraction; '' for the default (the tap
    has a column of its own)."""
    parts = [r["probe"]] if r.get("probe", "head") != "head" else []
    sub = r.get("subset") or {}
    if sub:
        parts.append(f"{sub['train']['n']} train ({sub['fraction']:.1%})")
    return f" [{', '.join(parts)}]" if parts else ""


def _print_results(records: list[dict]) -> None:
    """The result table: one row per encoder x task (failed tasks with their error), and per tap when a
    tap other than the embedding was probed (``--tap``)."""
    taps = any(r.get("tap") not in (None, "embedding") for r in records)
    table = _table("encoder", "task", *(["tap"] if taps else []), "metric", "test", "val", "chance",
                   "config (epoch)", "time", "cache")
    for r in records:
        tap = [r.get("tap") or "-"] if taps else []
        if r["status"] != "ok":
            table.add_row(r["encoder"], r["task"], *tap, r.get("metric", ""), "FAILED", "see below", "", "", "", "")
            continue
        std = f" ± {r['secondary']['test_std']:.4f}" if "test_std" in r.get("secondary", {}) else ""
        c = r["cache"]
        chance = f"{r['chance']:.3f}" if r.get("chance") is not None else "-"
        cache = "existing record" if r.get("skipped") else f"{c.get('hits', 0)} hit / {c.get('misses', 0)} miss"
        epoch = f" ({r['epoch']})" if r.get("epoch") is not None else ""
        table.add_row(r["encoder"], r["task"] + _variant_tag(r), *tap, r["metric"], f"{r['test']:.4f}{std}",
                      f"{r['val']:.4f}", chance, f"{r['config'].get('label', '')}{epoch}",
                      f"{r['timings'].get('total_s', 0):.1f}s", cache)
    _print_table(table)
    if any(r.get("skipped") for r in records):
        typer.echo("'existing record': a record with the same settings was found and kept; --force redoes it.")
    for r in records:  # each failure's whole line, never cut to fit a cell
        if r["status"] != "ok":
            at = f" / tap {r['tap']}" if taps and r.get("tap") else ""
            typer.echo(f"FAILED {r['encoder']} / {r['task']}{at}: {r.get('error', '')}")


@app.command("eval")
@command(EvalOptions)
def eval_cmd(parsed: Parsed[EvalOptions], json_out: JsonOpt = False) -> None:
    """Evaluate frozen encoders (one or several) on one or more tasks."""
    from .runner import run_eval

    try:
        records = run_eval(parsed.build(debug=_state["debug"]))
    except Exception as exc:
        if json_out:  # nothing ran (the encoder, an option): stdout still carries one document
            _emit(_not_run(parsed.values["encoders"], parsed.values["tasks"], exc))
        raise
    failed = [r for r in records if r["status"] != "ok"]
    if json_out:
        _emit(records[0] if len(records) == 1 else records)
    if len(records) == 1 and failed:  # a single task's failure: its one error line (its record is written)
        error, named = failed[0].get("error") or "failed", f"task {failed[0]['task']}: "
        _err(f"error: {error if error.startswith(named) else named + error}")
        raise typer.Exit(1)
    if not json_out:
        _print_results(records)
    written = sum(1 for r in records if not r.get("skipped"))
    kept = len(records) - written
    out = parsed.values["out"]
    _err(f"{written} record(s) written ({len(failed)} failed), {kept} existing kept, in {out}/; next: harness report "
         f"{out}")
    if failed:
        raise typer.Exit(1)


def _not_run(encoder: str | list[str], tasks: list[str], exc: Exception) -> dict | list[dict]:
    """What ``eval --json`` prints when it fails before any task ran: one failed entry per task asked
    (the shape of a record where it matters to a script: encoder, task, status, error)."""
    error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if not isinstance(exc, HarnessError):
        error = f"{type(exc).__name__}: {error}"
    docs = [{"encoder": e, "task": t, "status": "failed", "error": error, "test": None, "val": None}
            for e in ([encoder] if isinstance(encoder, str) else encoder) for t in tasks]
    return docs[0] if len(docs) == 1 else docs


def _eval_options(args: list[str]) -> EvalOptions:
    """Eval's options from an eval command line, parsed by eval's own parser (one definition; a wrong
    one is the same usage error eval would give)."""
    command = typer.main.get_command(app).commands["eval"]
    return Parsed(EvalOptions, command.make_context("harness eval", list(args)).params).build()


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@command(SweepOptions)
def sweep(ctx: typer.Context, parsed: Parsed[SweepOptions], json_out: JsonOpt = False) -> None:
    """Run encoders x tasks x seeds as jobs (submitit: local workers or SLURM arrays); any other
    option is an eval option, passed to every job unchanged."""
    from .sweep import run_sweep

    extra = list(ctx.args)
    own = [a for a in extra if a.split("=", 1)[0] in OWN_OPTIONS]
    if own:
        raise UsageError(f"{own[0]}: a sweep option, set once for the sweep (not an eval option to pass through)")
    opts = parsed.build(eval_args=extra)
    tasks = [arg for t in opts.tasks for arg in ("--task", t)]
    opts.eval = _eval_options(["--encoder", opts.encoders[0], *tasks, "--out", str(opts.out), *extra])
    doc = run_sweep(opts)
    if json_out:
        _emit(doc)
    else:
        _print_sweep(doc)
    if not opts.dry_run and doc["counts"]["failed"]:
        raise typer.Exit(1)


def _print_sweep(doc: dict) -> None:
    if "estimate" in doc:
        e = doc["estimate"]
        typer.echo(f"{e['jobs']} job(s): {e['to_run']} to run, {e['existing']} with a record already, "
                   f"{e['unplannable']} that cannot run")
        typer.echo(f"estimate: {e['encode_hours']:.3g} {e['kind']} hour(s) of encoding "
                   f"({e['encode_hours_without_sharing']:.3g} without shared features); {e['note']}")
        typer.echo(f"throughput ({e['how']}): " + ", ".join(f"{k} {v} img/s" for k, v in e["throughput"].items()))
        if "node" in e:
            typer.echo(e["node"]["line"])
    table = _table("encoder", "task", "seed", "status", "test", "attempts", "time", "error")
    for j in doc["jobs"]:
        score = f"{j['metric']} {j['test']:.4f}" if j.get("test") is not None else "-"
        table.add_row(j["encoder"], j["task"], str(j["seed"]), j["status"], score, str(j["attempts"]),
                      f"{j['wall_s']:.0f}s", j["error"])
    _print_table(table)
    if "counts" in doc:
        c = doc["counts"]
        typer.echo(f"{c['done']} done, {c['skipped']} skipped (record exists), {c['failed']} failed in "
                   f"{doc['wall_s']:.0f}s; logs: {doc['logs']}; next: harness report {doc['out']}")


cache_app = typer.Typer(help="Inspect and clear the feature cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@cache_app.command("ls")
def cache_ls(json_out: JsonOpt = False) -> None:
    """List cache entries (task, split, taps, size, complete)."""
    from .cache import list_entries

    fields = ("task", "split", "n", "taps", "aug_copy", "encoder_fingerprint")
    rows = [{"path": str(e.path), "bytes": e.size, "complete": e.complete,
             **({k: e.key[k] for k in fields} if e.key else {})} for e in list_entries()]
    if json_out:
        _emit(rows)
        return
    for r in rows:
        mark = "" if r["complete"] else "  (incomplete: never read; 'harness cache clear --incomplete')"
        what = f"{r.get('task', '?')}/{r.get('split', '?')} n={r.get('n', '?')} taps={','.join(r.get('taps', []))}"
        typer.echo(f"{r['bytes'] / 2**20:9.1f} MiB  {what}  {Path(r['path']).name}{mark}")


@cache_app.command("du")
def cache_du(json_out: JsonOpt = False) -> None:
    """Total size of the feature cache and of the synthetic renders."""
    from .cache import list_entries
    from .common.paths import features_dir, synthetic_dir

    feats = sum(e.size for e in list_entries())
    synth = sum(p.stat().st_size for p in synthetic_dir().glob("*.h5")) if synthetic_dir().exists() else 0
    row = {"features_bytes": feats, "synthetic_bytes": synth, "features_dir": str(features_dir()),
           "synthetic_dir": str(synthetic_dir())}
    if json_out:
        _emit(row)
    else:
        typer.echo(f"features  {feats / 2**20:10.1f} MiB  {features_dir()}")
        typer.echo(f"synthetic {synth / 2**20:10.1f} MiB  {synthetic_dir()}")


@cache_app.command("clear")
def cache_clear(
    task: Annotated[Optional[str], typer.Option("--task", help="only this task's entries")] = None,
    incomplete: Annotated[bool, typer.Option("--incomplete", help="only leftovers of killed runs")] = False,
) -> None:
    """Delete feature cache entries (all of them unless restricted)."""
    from .cache import clear

    files, size = clear(task=task, incomplete_only=incomplete)
    typer.echo(f"removed {files} file(s), {size / 2**20:.1f} MiB")


PRETRAIN_HELP = (
    "Train an encoder with a self-supervised method (torchrun for several GPUs or nodes).\n\n"
    "Where a run goes: OUT/NAME/ (NAME: --name, else METHOD_ARCH_DATA_..._sSEED) holds manifest.json (the "
    "images used), last.pt (the state a rerun resumes from) and NAME.pt, the encoder; NAME.pt is also copied to "
    "$HARNESS_WEIGHTS/user (default ~/.cache/harness/weights/user), so that `harness encoders` lists it and "
    "`harness eval --encoder NAME` takes it.\n\n"
    "The log, per epoch: loss; knn, the weighted-kNN top-1 of the backbone's features on synthetic shapes "
    "(about 0.25 is chance), before training and every --knn-every epochs; where the method logs them, z_std "
    "(spread of the normalised embedding: 0 is collapse, about 0.088 is spread for 128 dimensions), pos / neg "
    "(MoCo: mean cosine of a query with its positive key / with the queue), proto_step and codes_used (SwAV).\n\n"
    "kNN usually falls in the first epochs before it rises: a 2-epoch run that ends lower than it started is "
    "expected, not a fault. `--preset small` holds the recipes measured to learn on CPU budgets."
)


@app.command(help=PRETRAIN_HELP)
@command(PretrainOptions)
def pretrain(parsed: Parsed[PretrainOptions], json_out: JsonOpt = False) -> None:
    """Train an encoder with a self-supervised method (the help: PRETRAIN_HELP)."""
    opts = parsed.build()  # checked (harness.common.options.check) before torch is imported
    from encoders.pretrain.train import run_pretrain

    result = run_pretrain(opts)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if json_out:
        _emit(result)
    else:
        knn = result["knn"]
        knn_s = (f", kNN top-1 on synthetic shapes {knn[0]['knn']:.3f} (epoch {knn[0]['epoch']}) -> "
                 f"{knn[-1]['knn']:.3f} (epoch {knn[-1]['epoch']})" if knn else "")
        typer.echo(f"{result['method']} {result['arch']}: {result['epochs']} epochs on {result['images']} images"
                   f"{knn_s} [{result['timings']['total_s']:.1f}s] -> {result['checkpoint']}")


@app.command()
@command(CKAOptions)
def cka(parsed: Parsed[CKAOptions], json_out: JsonOpt = False) -> None:
    """Compare block representations within and across encoders with CKA."""
    opts = parsed.build()  # checked (harness.common.options.check) before torch is imported
    from .cka import dumps, format_table, run_cka

    result = run_cka(opts)
    if json_out:
        sys.stdout.write(dumps(result) + "\n")
    else:
        typer.echo(format_table(result))
        typer.echo(f"\nwrote {Path(opts.out) / 'cka.json'} and {len(result.heatmaps)} heatmap(s)")


@app.command()
@command(ReportOptions)
def report(
    parsed: Parsed[ReportOptions],
    results_dir: Annotated[Path, typer.Argument(help="folder of result records (searched recursively)")],
    out: Annotated[Optional[Path], typer.Option("--out", help="where report.json, tables and figures go "
                                                              "(default: RESULTS_DIR/report)")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Aggregate result records into tables and figures (the paper's analyses)."""
    opts = parsed.build()  # checked before pandas is imported
    from .report import build_report, status_lines, summary_table

    doc = build_report(results_dir, out, opts)
    if json_out:
        _emit(doc)
        for line in status_lines(doc):
            _err(line)
        return
    _print_table(summary_table(doc))
    for line in status_lines(doc):
        typer.echo(line)


from .study_cli import study_app  # noqa: E402 - the sub-app lives in its own module

app.add_typer(study_app, name="study")


def _click_exception_types() -> tuple[type, ...]:
    """ClickException from every click the installed typer may use (its own vendored copy, or click)."""
    types = []
    for mod in ("typer._click.exceptions", "click.exceptions"):
        try:
            module = __import__(mod, fromlist=["ClickException"])
        except ImportError:
            continue
        types.append(module.ClickException)
    return tuple(types)


INTERRUPTED = 130


def _stdout_closed(exc: BaseException | None = None) -> bool:
    """Whether stdout's reader has gone (``harness report results | head -1``): the exit came while a write
    met a broken pipe (rich and click both exit 1 then), click has marked stdout, or the pipe says so."""
    seen = exc
    while seen is not None:
        if isinstance(seen, BrokenPipeError):
            return True
        seen = seen.__context__
    if type(sys.stdout).__name__ == "PacifyFlushWrapper":  # click's mark of a closed stdout
        return True
    try:
        import select

        poll = select.poll()
        poll.register(sys.__stdout__.fileno(), select.POLLOUT)
        return any(event & select.POLLERR for _, event in poll.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


def _exit_closed_stdout() -> None:
    """A reader that stopped reading is not an error: exit 0, with the rest of stdout sent nowhere (so that
    the flush at exit does not fail again)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(0)


def _exit_interrupted() -> None:
    _err("interrupted; nothing was recorded for the task in progress (finished records are kept)")
    sys.exit(INTERRUPTED)


def main() -> None:
    """Run the CLI and turn every outcome into an exit code (docs/cli.md).

    In non-standalone mode typer hands back ``typer.Exit(n)`` and an interrupt (as 130) as the
    return value instead of raising, so the value is the exit code.
    """
    interrupt.install()
    try:
        rv = app(standalone_mode=False)
    except KeyboardInterrupt:
        _exit_interrupted()
    except HarnessError as exc:
        if _state["debug"]:
            raise
        _err(f"error: {exc}")
        sys.exit(exc.exit_code)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", None)
        code = code if code is not None else getattr(exc, "code", 0)
        if code == 1 and isinstance(exc, SystemExit) and _stdout_closed(exc):  # rich's or click's exit on EPIPE
            _exit_closed_stdout()
        sys.exit(code)
    except typer.Abort:
        _err("aborted")
        sys.exit(1)
    except BrokenPipeError as exc:
        if not _stdout_closed(None):
            raise HarnessError(f"a pipe closed: {exc}") from None
        _exit_closed_stdout()
    except Exception as exc:
        if isinstance(exc, _click_exception_types()):  # usage errors from the parser: its own message, exit 2
            exc.show(file=sys.stderr)
            sys.exit(exc.exit_code)
        if _state["debug"] or os.environ.get("HARNESS_DEBUG"):
            raise
        _err(f"error: {type(exc).__name__}: {exc} (run with --debug for a traceback)")
        sys.exit(1)
    if rv == INTERRUPTED:
        _exit_interrupted()
    sys.exit(rv if isinstance(rv, int) else 0)
