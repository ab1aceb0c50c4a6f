"""Studies: the papers' experiments as declared grids of pretrain and eval jobs (``harness study``).

A study is a ``Study`` declaration in ``STUDIES``: for each scale (``paper``: the paper's settings; ``small``:
what a 2-core CPU runs in minutes) it builds a ``Grid`` of pretraining runs and of the encoders x tasks they are
evaluated on, each job tagged with its axes (method, arch, widen, encoder, task) so that ``--only`` can cut the
grid and the report can lay the scores out as the paper's table.

Running a study is two rounds of the sweep machinery (``harness.sweep``: submitit executors, jobs whose record
exists skipped, failed jobs retried): first the pretraining runs, each as ``harness study pretrain-job``, which
runs ``harness pretrain`` in-process and writes the job's record (``pretrain.json``: the checkpoint, the
architecture's parameters and FLOPs, the measured train time and an energy estimate); then ``harness eval`` of
every encoder whose pretraining succeeded. An interrupted study run again resumes: finished jobs are skipped,
and a pretraining run killed mid-way continues from its ``last.pt``.

Layout of a study's folder (``--out``, default ``studies/NAME`` or ``studies/NAME_SCALE``): ``study.json`` (what
was declared and how the report lays it out), ``pretrain/RUN/`` (each run's folder and ``pretrain.json``),
``results/`` (the eval records), ``timings.json`` (each finished job's measured wall time: what ``plan`` estimates
from). ``harness report OUT`` renders the study's table (``report/study_table.py``).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .common.atomic import write_json
from .common.errors import HarnessError, UsageError, unknown_name
from .common.progress import log
from .study_options import SCALES, StudyOptions, StudyRunOptions, check_scale, parse_only
from .sweep import (
    EXECUTORS,
    Job,
    SweepOptions,
    _images,
    _record_ok,
    _settle,
    _sig,
    _visible_gpus,
    run_job,
    slurm_executor,
)
from .sweep import plan as sweep_plan

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks" / "results"
ParseEval = Callable[[list[str]], Any]  # an eval command line -> EvalOptions (eval's own parser)
STUDY_FILE = "study.json"
PRETRAIN_RECORD = "pretrain.json"


# ------------------------------------------------------------------------------------------- declarations

@dataclass(frozen=True)
class PretrainSpec:
    """One ``harness pretrain`` run of a study."""

    name: str  # run and encoder name
    method: str
    arch: str
    args: tuple[str, ...]  # pretrain options other than --method, --arch, --out and --name
    axes: dict[str, str]
    images: int | None  # training images (None: the whole folder, unknown before it is read)
    epochs: int
    resolution: int


@dataclass(frozen=True)
class EncoderSpec:
    """An encoder a study evaluates: a pretraining run of the study, or a name eval resolves (random init,
    catalog)."""

    name: str
    axes: dict[str, str]
    pretrain: str | None = None  # the PretrainSpec's name whose checkpoint this is
    arch: str | None = None  # for the estimate


@dataclass(frozen=True)
class Grid:
    pretrain: tuple[PretrainSpec, ...]
    encoders: tuple[EncoderSpec, ...]
    tasks: tuple[str, ...]
    eval_args: tuple[str, ...]  # eval options of every eval job
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class TableLayout:
    """How ``harness report`` lays a study's scores out: the paper's table."""

    rows: tuple[str, ...]  # axes whose values name a row (joined by ' / ')
    columns: tuple[str, ...]
    cell: str = "score"  # score: the embedding's; best_tap: the best tap of --tap all (named in the cell)
    cost: bool = False  # add parameters, FLOPs, train time and energy rows per column (mean over its runs)
    caption: str = ""


@dataclass(frozen=True)
class Study:
    name: str
    title: str
    paper: str
    build: Callable[[str, int | None, str | None], Grid]  # (scale, epochs override, --data) -> grid
    table: TableLayout


STUDIES: dict[str, Study] = {}


def register_study(study: Study) -> Study:
    if study.name in STUDIES:
        raise HarnessError(f"study {study.name!r} declared twice")
    STUDIES[study.name] = study
    return study


def get_study(name: str) -> Study:
    if name not in STUDIES:  # every known name, always: there are few
        raise UsageError(f"unknown study {name!r}; known: {', '.join(sorted(STUDIES))} (`harness study list` says what "
                         "each is)")
    return STUDIES[name]


# Small scale: each pretraining run is a few steps of its --preset small recipe at 32 px on synthetic renders, and
# each eval a head trained for 2 epochs on a few dozen samples. It shows the study's table end to end, not results.
SMALL_PRETRAIN = {"images": 32, "batch_size": 16, "epochs": 1, "resolution": 32}
SMALL_EVAL = ("--limit", "64", "--epochs", "2", "--grid", "single", "--resolution", "32")


def _pretrain_specs(methods: list[str], archs: list[str], scale: str, epochs: int | None, data: str | None,
                    paper_epochs: Callable[[str], int | None],
                    extra_axes: Callable[[str], dict[str, str]] | None = None,
                    paper_resolution: int = 224) -> list[PretrainSpec]:
    """methods x archs as pretraining runs at ``scale``."""
    specs = []
    for method in methods:
        for arch in archs:
            axes = {"method": method, "arch": arch, **(extra_axes(arch) if extra_axes else {})}
            if scale == "small":
                n, ep, res = SMALL_PRETRAIN["images"], epochs or SMALL_PRETRAIN["epochs"], SMALL_PRETRAIN["resolution"]
                args = ("--preset", "small", "--data", "synth", "--limit", str(n), "--batch-size",
                        str(SMALL_PRETRAIN["batch_size"]), "--resolution", str(res), "--epochs", str(ep),
                        "--knn-every", "0")
            else:
                ep = epochs or paper_epochs(method)
                n, res = None, paper_resolution
                args = ("--data", data or "DATA", "--resolution", str(res), *(("--epochs", str(ep)) if ep else ()))
            name = f"{method}_{arch.replace(':', '-')}_{ep or 'default'}ep"
            specs.append(PretrainSpec(name, method, arch, args, axes, n, ep or 0, res))
    return specs


def _published_epochs(method: str) -> int | None:
    """The method's own default (its published ImageNet schedule); None: let pretrain decide."""
    try:
        from encoders.pretrain import get_method

        return int(get_method(method).config().epochs)
    except Exception:  # noqa: BLE001 - an estimate only: pretrain itself reports a bad method
        return None


def _from_pretrain(specs: list[PretrainSpec]) -> tuple[EncoderSpec, ...]:
    return tuple(EncoderSpec(s.name, dict(s.axes), pretrain=s.name, arch=s.arch) for s in specs)


def _data_note(scale: str, data: str | None) -> tuple[str, ...]:
    if scale == "paper" and not data:
        return ("the paper pretrained on its own image data: give the folder with --data (DATA in the plan until "
                "then)",)
    return ()


# seed001: Kotar et al. -- the published encoders x the paper's tasks
def _seed001(scale: str, epochs: int | None, data: str | None) -> Grid:
    from tasks.registry import all_tasks

    if scale == "small":
        archs = ["resnet18", "mobilenet_v2", "squeezenet1_1"]
        encoders = tuple(EncoderSpec(a, {"encoder": a, "arch": a}, arch=a) for a in archs)
        tasks = tuple(t.name for t in all_tasks() if t.layout is None and "coarse" not in t.name)
        return Grid((), encoders, tasks, SMALL_EVAL, ("random-init encoders stand in for the published ones",))
    from encoders.catalog import CATALOG

    encoders = tuple(EncoderSpec(n, {"encoder": n, "arch": getattr(e, "arch", "?")}, arch=getattr(e, "arch", None))
                     for n, e in CATALOG.items())
    tasks = tuple(t.name for t in all_tasks() if t.layout is not None and "coarse" not in t.name)
    return Grid((), encoders, tasks, ())


# seed002: Kolesnikov et al. -- pretext methods x architectures x widening, linear probes on every block
SEED002_METHODS = ["rotnet", "exemplar", "relpatch", "jigsaw"]


def _widen_axes(arch: str) -> dict[str, str]:
    base, _, k = arch.rpartition("_x")
    return {"arch": base, "widen": k}


def _seed002(scale: str, epochs: int | None, data: str | None) -> Grid:
    if scale == "small":
        archs = [f"{b}_x{k}" for b in ("resnet50", "resnetv2_50") for k in (1, 2)]
        tasks, args = ("synth_shape_cls",), (*SMALL_EVAL, "--tap", "all", "--pool-dims", "512")
    else:
        archs = [f"{b}_x{k}" for b in ("resnet50", "resnetv2_50", "revnet50") for k in (4, 8, 12, 16)]
        tasks, args = ("imagenet_cls",), ("--tap", "all")
    specs = _pretrain_specs(SEED002_METHODS, archs, scale, epochs, data, lambda m: 35, _widen_axes)
    return Grid(tuple(specs), _from_pretrain(specs), tasks, args,
                ("the paper's 35 ImageNet epochs; VGG-19 (not widened in this registry) is left out",
                 *_data_note(scale, data)))


# seed004: the low-resource pretext study, Table 1 -- 5 methods x 5 light architectures, with cost
SEED004_METHODS = ["rotnet", "mocov2", "splitbrain", "simclr", "byol"]
SEED004_ARCHS = ["efficientnet_lite0", "mobilenet_v2", "resnet18", "shufflenet_v2_x1_0", "squeezenet1_1"]


def _seed004(scale: str, epochs: int | None, data: str | None) -> Grid:
    specs = _pretrain_specs(SEED004_METHODS, SEED004_ARCHS, scale, epochs, data, _published_epochs,
                            paper_resolution=96)
    if scale == "small":
        return Grid(tuple(specs), _from_pretrain(specs), ("synth_shape_cls",), SMALL_EVAL)
    return Grid(tuple(specs), _from_pretrain(specs), ("cifar100_cls",), (),
                ("the paper pretrained on STL-10's unlabelled 100,000 images (96 px) and tested on its labelled "
                 "split; STL-10 is not a registered task, so CIFAR-100 (the nearest registered small-image "
                 "classification task) stands in", *_data_note(scale, data)))


# seed000: Girish et al. -- a population of sampled ResNet- and MobileNet-like architectures, SimCLR
def _seed000(scale: str, epochs: int | None, data: str | None) -> Grid:
    per_space = 3 if scale == "small" else 58  # the paper: 116 architectures in all
    archs = [f"{s}:{k}" for s in ("resnet_space", "mobilenet_space") for k in range(per_space)]

    def axes(arch: str) -> dict[str, str]:
        return {"space": arch.partition(":")[0]}

    specs = _pretrain_specs(["simclr"], archs, scale, epochs, data, lambda m: 100, axes)
    if scale == "small":
        return Grid(tuple(specs), _from_pretrain(specs), ("synth_shape_cls", "synth_count"), SMALL_EVAL)
    return Grid(tuple(specs), _from_pretrain(specs), ("imagenet_cls", "cifar100_cls"), (),
                ("the paper's 11 downstream sets: the registered ones (ImageNet, CIFAR-100) are used",
                 *_data_note(scale, data)))


register_study(Study("seed001", "Encoders x tasks (Kotar et al.)", "Kotar et al., Contrasting contrastive "
                     "self-supervised representation learning models", _seed001,
                     TableLayout(("encoder",), ("task",), caption="test score per task")))
register_study(Study("seed002", "Pretext methods x architectures x widening, linear probes on every block",
                     "Kolesnikov et al., Revisiting self-supervised visual representation learning", _seed002,
                     TableLayout(("method", "widen"), ("arch",), cell="best_tap",
                                 caption="best tap's linear-probe score (the tap in brackets)")))
register_study(Study("seed004", "Table 1: pretext methods x light architectures, with cost",
                     "Self-supervised learning on resource-constrained networks (RotNet, MoCo v2, Split-Brain, "
                     "SimCLR, BYOL)", _seed004,
                     TableLayout(("method",), ("arch",), cost=True,
                                 caption="linear-probe accuracy; cost rows: mean over the column's runs")))
register_study(Study("seed000", "A population of sampled architectures (SSL architecture search)",
                     "Girish et al., Does one network rule them all in SSL?", _seed000,
                     TableLayout(("arch",), ("task",), caption="linear-probe score per task")))


# ------------------------------------------------------------------------------------------------ filters

def _keeps(axes: dict[str, str], only: dict[str, set[str]]) -> bool:
    return all(axes[k] in vals for k, vals in only.items() if k in axes)


def select(grid: Grid, only: dict[str, set[str]]) -> Grid:
    """The grid cut to ``only``; an axis or value the grid does not have is a usage error naming the known ones."""
    if not only:
        return grid
    values: dict[str, set[str]] = {}
    for axes in [e.axes for e in grid.encoders] + [s.axes for s in grid.pretrain]:
        for k, v in axes.items():
            values.setdefault(k, set()).add(v)
    values["task"] = set(grid.tasks)
    for key, wanted in only.items():
        if key not in values:
            raise unknown_name("--only axis", key, values)
        for v in sorted(wanted - values[key]):
            raise unknown_name(f"{key}", v, values[key])
    encoders = tuple(e for e in grid.encoders if _keeps(e.axes, only))
    kept = {e.pretrain for e in encoders}
    tasks = tuple(t for t in grid.tasks if "task" not in only or t in only["task"])
    return replace(grid, pretrain=tuple(s for s in grid.pretrain if s.name in kept), encoders=encoders, tasks=tasks)


# ----------------------------------------------------------------------------------------------- planning

def resolve(opts: StudyOptions) -> tuple[Study, Grid]:
    check_scale(opts.scale)
    study = get_study(opts.study)
    grid = study.build(opts.scale, opts.epochs, opts.data)
    if not grid.pretrain and (opts.data or opts.epochs):
        raise UsageError(f"{'--data' if opts.data else '--epochs'}: study {study.name} pretrains nothing (it "
                         "evaluates existing encoders)")
    return study, select(grid, opts.only)


def pretrain_record(folder: Path, spec: PretrainSpec) -> Path:
    return folder / "pretrain" / spec.name / PRETRAIN_RECORD


def checkpoint(folder: Path, spec: PretrainSpec) -> Path:
    return folder / "pretrain" / spec.name / f"{spec.name}.pt"


def pretrain_argv(folder: Path, spec: PretrainSpec, device: str | None) -> list[str]:
    return ["study", "pretrain-job", "--record", str(pretrain_record(folder, spec)), "--",
            "--method", spec.method, "--arch", spec.arch, *spec.args, "--out", str(folder / "pretrain"),
            "--name", spec.name, *(("--device", device) if device else ())]


def pretrain_jobs(grid: Grid, opts: StudyOptions) -> list[Job]:
    jobs = []
    for spec in grid.pretrain:
        rec = pretrain_record(opts.folder, spec)
        job = Job(spec.name, "pretrain", 0, pretrain_argv(opts.folder, spec, opts.device), rec)
        if _record_ok(rec):
            job.status = "skipped"
        elif spec.args and "DATA" in spec.args:
            job.status, job.error = "failed", "no --data folder given (the paper's pretraining images)"
        jobs.append(job)
    return jobs


def _sweep_options(opts: StudyOptions, parse_eval: ParseEval, encoders: list[str], tasks: list[str],
                   args: list[str], out: Path) -> SweepOptions:
    """The sweep's options for one round of a study: its executor settings, and eval's options as eval parses
    them (``parse_eval``: eval's own parser)."""
    full = ["--encoder", encoders[0] if encoders else "-", *(a for t in tasks for a in ("--task", t)), "--out",
            str(out), *args]
    return SweepOptions(encoders=encoders, tasks=tasks, eval_args=args, eval=parse_eval(full), out=out,
                        **opts.sweep_settings())


def eval_sweep(grid: Grid, opts: StudyOptions, parse_eval: ParseEval, ready: set[str]
               ) -> tuple[SweepOptions, list[Job], list[dict]]:
    """Eval jobs of the encoders that exist (``ready``: pretraining runs done), through ``sweep.plan``; the
    others are listed as waiting for their pretraining run."""
    args = [*grid.eval_args, *(("--device", opts.device) if opts.device else ())]
    names = {e.name: (str(checkpoint(opts.folder, _spec(grid, e.pretrain))) if e.pretrain else e.name)
             for e in grid.encoders if e.pretrain is None or e.pretrain in ready}
    sweep = _sweep_options(opts, parse_eval, list(names.values()), list(grid.tasks), args, opts.folder / "results")
    jobs = sweep_plan(sweep) if names else []  # a job's encoder stays the checkpoint path: what eval is given
    waiting = [{"encoder": e.name, "task": t, "after": e.pretrain} for e in grid.encoders
               if e.name not in names for t in grid.tasks]
    return sweep, jobs, waiting


def _label(encoder: str) -> str:
    """A study's encoder as the user knows it: a checkpoint path by its run name (as eval names it)."""
    return Path(encoder).stem if encoder.endswith(".pt") else encoder


def _spec(grid: Grid, name: str | None) -> PretrainSpec:
    return next(s for s in grid.pretrain if s.name == name)


# ----------------------------------------------------------------------------------------------- estimate

def _median(values: list[float]) -> float:
    return statistics.median(values)


def pretrain_measurements() -> dict[tuple[str, str], dict[str, Any]]:
    """(method, device) -> images/s of ResNet-18 pretraining at 64 px on synthetic renders, median over the runs
    in benchmarks/results (``pretrain_seeds.json``, ``pretrain_pretext.json``, ``pretrain_learning.json``).
    device: 'cpu' (2 cores) or the GPU's name."""
    rates: dict[tuple[str, str], list[float]] = {}
    where: dict[tuple[str, str], set[str]] = {}
    for fname in ("pretrain_seeds.json", "pretrain_pretext.json", "pretrain_learning.json"):
        try:
            doc = json.loads((BENCHMARKS / fname).read_text())
        except (OSError, ValueError):
            continue
        runs = doc.get("runs") or list((doc.get("results") or {}).values())
        for r in runs if isinstance(runs, list) else []:
            if not isinstance(r, dict) or not r.get("train_s") or not r.get("images") or not r.get("epochs"):
                continue
            if r.get("arch", "resnet18") != "resnet18":
                continue
            machine = r.get("machine") or doc.get("machine") or {}
            device = machine.get("gpu") if r.get("device", machine.get("device")) == "cuda" else "cpu"
            if not device:
                continue
            key = (r["method"], device)
            rates.setdefault(key, []).append(r["images"] * r["epochs"] / r["train_s"])
            where.setdefault(key, set()).add(f"{fname} ({machine.get('short', device)})")
    return {k: {"images_per_s": _median(v), "runs": len(v), "source": "; ".join(sorted(where[k]))}
            for k, v in rates.items()}


def eval_measurements() -> dict[str, dict[str, Any]]:
    """arch -> images/s of a frozen encoder's forward on this machine's kind of CPU, from
    benchmarks/results/eval_performance_*.json (a bare encoding loop over a synthetic task)."""
    from tasks.registry import get_task

    out = {}
    for path in sorted(BENCHMARKS.glob("eval_performance*.json")):
        try:
            doc = json.loads(path.read_text())
            images = _images(get_task(doc["task"]), doc.get("limit"))
            res = doc.get("resolution") or get_task(doc["task"]).default_resolution
            out[doc["encoder"]] = {"images_per_s": images / doc["bare_encoder_s"], "resolution": res,
                                   "device": doc.get("device", "cpu"), "source": path.name}
        except (OSError, ValueError, KeyError, HarnessError, ZeroDivisionError):
            continue
    return out


def _flops(arch: str | None, resolution: int) -> float | None:
    if not arch:
        return None
    try:
        from encoders.archs import arch_cost

        return float(arch_cost(arch, resolution)["flops"])
    except Exception:  # noqa: BLE001 - an estimate only: no FLOPs, no scaled figure
        return None


def _scaled_hours(samples: float, rate: float, flops: float | None, ref_flops: float | None,
                  same: bool) -> tuple[float | None, str]:
    if same:
        return samples / rate / 3600, "measured"
    if flops and ref_flops:
        return samples / (rate * ref_flops / flops) / 3600, "measured on resnet18, scaled by FLOPs"
    return None, "no FLOPs to scale the measurement by"


def training_hours(spec: PretrainSpec, device: str, meas: dict) -> tuple[float | None, str]:
    """Hours of the training loop alone (images x epochs at the measured throughput, scaled by FLOPs): a floor,
    not a job's cost (no process start, data rendering, monitor or checkpoints)."""
    m = meas.get((spec.method, device))
    if m is None:
        return None, f"no measurement of {spec.method} on {device}"
    if spec.images is None:
        return None, "no image count: the data folder is read when the run starts"
    same = spec.arch == "resnet18" and spec.resolution == 64
    hours, basis = _scaled_hours(spec.images * spec.epochs, m["images_per_s"], _flops(spec.arch, spec.resolution),
                                 _flops("resnet18", 64), same)
    return hours, f"{basis} ({m['source']})"


def encoding_hours(job: Job, arch: str | None, resolution: int | None, meas: dict) -> float | None:
    """Hours of encoding a job's images at the measured bare-encoder throughput: a floor of an eval job (no head
    training, no data rendering, no process start)."""
    if not meas:
        return None
    ref_arch, m = next(((a, v) for a, v in meas.items() if a == arch), next(iter(meas.items())))
    res = resolution or m["resolution"]
    hours, _ = _scaled_hours(job.images, m["images_per_s"], _flops(arch, res), _flops(ref_arch, m["resolution"]),
                             arch == ref_arch and res == m["resolution"])
    return hours


# Whole jobs, measured: what a job costs is mostly not its images at small scale (a 32-image pretraining run trains
# for a second and takes a minute: Python and torch start, the synthetic data is rendered, the checkpoint written;
# an eval renders its task, encodes it and trains a head over its epochs and grid). So the plan estimates a job
# from the measured wall time of whole jobs with the same settings (timings.json of the study's folder, and the
# measured_jobs of benchmarks/results/study_*.json), and only for settings never measured from the throughput of
# the training loop plus the measured per-job overhead.
TIMINGS_FILE = "timings.json"
OWN = "this study's finished jobs"


def _device_label(device: str | None) -> str:
    """'cpu', or the GPU's name (what the plan's columns are keyed by)."""
    if not device or not str(device).startswith("cuda"):
        return "cpu"
    try:
        import torch

        return torch.cuda.get_device_name(torch.device(device)) if torch.cuda.is_available() else "cuda"
    except Exception:  # noqa: BLE001 - a label only
        return "cuda"


def pretrain_settings(spec: PretrainSpec) -> str:
    return " ".join(spec.args)


def eval_settings(grid: Grid, task: str) -> str:
    return " ".join((task, *grid.eval_args))


def _read(path: Path | None) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path else {}
    except (OSError, ValueError):
        return {}


def record_timings(grid: Grid, folder: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The wall time of each job a study run finished (``rows``: the run's job rows), added to the folder's
    timings.json (jobs measured before are kept). An eval process serves several encoders of one task: each job's
    time is its process's wall time over the jobs it served (``share``)."""
    specs = {s.name: s for s in grid.pretrain}
    arch_of = {e.name: e.arch for e in grid.encoders}
    done = [r for r in rows if r.get("status") == "done" and r.get("wall_s")]
    share: dict[tuple[Any, ...], int] = {}
    for r in done:
        if r["kind"] == "eval":  # the jobs of one eval process were settled with its one wall time
            k = (r["task"], r["wall_s"], r.get("attempts"))
            share[k] = share.get(k, 0) + 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    new = []
    for r in done:
        rec = _read(Path(r["record"])) if r.get("record") else {}
        base = {"kind": r["kind"], "name": r["name"], "device": _device_label(rec.get("device")), "cores": cores,
                "attempts": r.get("attempts", 1), "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if r["kind"] == "pretrain" and r["name"] in specs:
            s = specs[r["name"]]
            new.append({**base, "method": s.method, "arch": s.arch, "settings": pretrain_settings(s),
                        "images": rec.get("images") or s.images, "epochs": rec.get("epochs") or s.epochs,
                        "resolution": s.resolution,
                        "job_s": round(r["wall_s"], 2), "in_process_s": rec.get("wall_s"),
                        "train_s": rec.get("train_s")})
        elif r["kind"] == "eval":
            n = share[(r["task"], r["wall_s"], r.get("attempts"))]
            new.append({**base, "arch": arch_of.get(r["encoder"]), "task": r["task"],
                        "settings": eval_settings(grid, r["task"]), "job_s": round(r["wall_s"] / n, 2), "share": n,
                        "in_process_s": (rec.get("timings") or {}).get("total_s")})
    path = folder / TIMINGS_FILE
    known = {(e["kind"], e["name"]) for e in new}
    old = [e for e in _read(path).get("measured_jobs", []) if (e.get("kind"), e.get("name")) not in known]
    write_json(path, {"kind": "harness-study-timings", "measured_jobs": old + new,
                      "how": "job_s: wall time of the job's process (harness pretrain / eval started by the sweep), "
                             "per job of a shared eval process; in_process_s and train_s as the job's record says"})
    return new


def timing_measurements(folder: Path | None) -> list[dict[str, Any]]:
    """Measured whole jobs: the study folder's own, then those kept in benchmarks/results/study_*.json."""
    out, seen = [], set()
    paths = [(folder / TIMINGS_FILE, OWN)] if folder else []
    paths += [(p, p.name) for p in sorted(BENCHMARKS.glob("study_*.json"))]
    for path, source in paths:
        for e in _read(path).get("measured_jobs", []):
            if not isinstance(e, dict) or not e.get("job_s") or not e.get("kind"):
                continue
            key = (e["kind"], e.get("name"), e.get("settings"), e.get("device"), e["job_s"])
            if key not in seen:
                seen.add(key)
                out.append({**e, "source": source})
    return out


def _from_whole_jobs(meas: list[dict], kind: str, device: str, settings: str,
                     tiers: list[tuple[str, Callable[[dict], bool]]]) -> dict[str, Any] | None:
    same = [m for m in meas if m["kind"] == kind and m.get("device") == device and m.get("settings") == settings]
    own = [m for m in same if m["source"] == OWN]  # this study's own jobs first: the same machine and conditions
    for pool, (label, keep) in [(pool, tier) for pool in (own, [m for m in same if m["source"] != OWN])
                                for tier in tiers]:
        hit = [m for m in pool if keep(m)]
        if hit:
            seconds = _median([m["job_s"] for m in hit])
            sources = ", ".join(sorted({m["source"] for m in hit}))
            return {"hours": _sig(seconds / 3600), "seconds": round(seconds, 1),
                    "basis": f"measured: median wall time of whole {kind} jobs with these settings on {device}"
                             f"{label} ({sources})", "jobs_measured": len(hit)}
    return None


def overhead_s(jobs: list[dict], device: str, pmeas: dict) -> tuple[float, int] | None:
    """(median seconds, jobs) a whole pretraining job took beyond its training loop at the throughput model:
    process start, torch import, data rendering, the first steps' warm-up, checkpoints."""
    extra = []
    for m in jobs:
        if m["kind"] != "pretrain" or m.get("device") != device or not all(
                m.get(k) for k in ("method", "arch", "images", "epochs", "resolution")):
            continue
        spec = PretrainSpec(m.get("name", ""), m["method"], m["arch"], (), {}, int(m["images"]), int(m["epochs"]),
                            int(m["resolution"]))
        train, _ = training_hours(spec, device, pmeas)
        if train is not None:
            extra.append(m["job_s"] - train * 3600)
    return (_median(extra), len(extra)) if extra else None


def estimate_pretrain(spec: PretrainSpec, device: str, pmeas: dict, jobs: list[dict]) -> dict[str, Any]:
    """A pretraining job's hours on ``device``: whole jobs measured with its settings (the same method and
    architecture first); else the training loop at the measured throughput plus the measured per-job overhead;
    else no estimate (with the training loop's hours as a floor where known)."""
    hit = _from_whole_jobs(jobs, "pretrain", device, pretrain_settings(spec), [
        (", same method and architecture", lambda m: m.get("method") == spec.method and m.get("arch") == spec.arch),
        (", same method, other architectures", lambda m: m.get("method") == spec.method),
        (", same architecture, other methods", lambda m: m.get("arch") == spec.arch),
        (", other methods and architectures", lambda m: True)])
    if hit:
        return hit
    train, how = training_hours(spec, device, pmeas)
    overhead = overhead_s(jobs, device, pmeas)
    if train is not None and overhead:
        extra, n = overhead
        return {"hours": _sig(train + extra / 3600),
                "basis": f"training loop at the measured throughput ({how}) + the measured per-job overhead "
                         f"(median {extra:.0f}s over {n} whole jobs on {device}); a kNN monitor during training is "
                         "not counted"}
    if train is not None:
        return {"hours": None, "floor_hours": _sig(train),
                "basis": f"no measurement of a whole pretraining job on {device}: only the training loop's hours are "
                         "known (floor_hours); process start, data rendering and monitoring are not"}
    return {"hours": None, "basis": how}


def estimate_eval(arch: str | None, settings: str, device: str, jobs: list[dict], floor: float | None
                  ) -> dict[str, Any]:
    """An eval job's hours: whole eval jobs measured with its settings (task, --limit, --epochs, --grid,
    --resolution), its architecture first. Encoding throughput alone leaves out what an eval mostly costs (data,
    head training over epochs and grid), so without a whole-job measurement there is no estimate, only a floor."""
    hit = _from_whole_jobs(jobs, "eval", device, settings, [
        (", same architecture", lambda m: m.get("arch") == arch), (", other architectures", lambda m: True)])
    if hit:
        return hit
    return {"hours": None, "floor_hours": None if floor is None else _sig(floor),
            "basis": f"no measurement of an eval job with these settings on {device} (encoding alone, floor_hours, "
                     "leaves out data rendering and head training)"}


# ---------------------------------------------------------------------------------------------------- plan

def plan_study(opts: StudyOptions, parse_eval: ParseEval) -> dict[str, Any]:
    """Every job of the study, whether its record exists, and the estimated hours here and on a GPU."""
    study, grid = resolve(opts)
    pjobs = pretrain_jobs(grid, opts)
    ready = {j.encoder for j in pjobs if j.status == "skipped"}
    sweep, ejobs, waiting = eval_sweep(grid, opts, parse_eval, ready)
    pmeas, emeas, jobs = pretrain_measurements(), eval_measurements(), timing_measurements(opts.folder)
    gpus = sorted({d for _, d in pmeas if d != "cpu"} | {m["device"] for m in jobs if m.get("device") != "cpu"})
    gpu = opts.gpu or (gpus[0] if gpus else None)
    if opts.gpu and not any(opts.gpu.lower() in d.lower() for d in gpus):
        gpu_note = f"no measurement on {opts.gpu} (measured GPUs: {', '.join(gpus) or 'none'})"
    else:
        gpu = next((d for d in gpus if gpu and gpu.lower() in d.lower()), gpu)
        gpu_note = ""
    none = {"hours": None, "basis": gpu_note or "no GPU measurement"}
    specs = {s.name: s for s in grid.pretrain}
    res = sweep.eval.resolution
    arch_of = {e.name: e.arch for e in grid.encoders}

    def eval_estimates(job: Job, arch: str | None) -> dict[str, Any]:
        settings = eval_settings(grid, job.task)
        return {"here": estimate_eval(arch, settings, "cpu", jobs, encoding_hours(job, arch, res, emeas)),
                "gpu": estimate_eval(arch, settings, gpu, jobs, None) if gpu and not gpu_note else none}

    rows = []
    for j in pjobs:
        s = specs[j.encoder]
        rows.append({"kind": "pretrain", "name": s.name, "axes": s.axes, "status": _plan_status(j),
                     "record": str(j.record), "error": j.error or None,
                     "here": estimate_pretrain(s, "cpu", pmeas, jobs),
                     "gpu": estimate_pretrain(s, gpu, pmeas, jobs) if gpu and not gpu_note else none})
    for j in ejobs:
        rows.append({"kind": "eval", "name": f"{_label(j.encoder)} / {j.task}", "encoder": _label(j.encoder),
                     "task": j.task, "status": _plan_status(j), "record": str(j.record) if j.record else None,
                     "error": j.error or None, **eval_estimates(j, arch_of.get(_label(j.encoder)))})
    from tasks.registry import get_task

    for w in waiting:  # its record's name needs the checkpoint; its size does not
        job = Job(w["encoder"], w["task"], 0, [], None, images=_images(get_task(w["task"]), sweep.eval.limit))
        rows.append({"kind": "eval", "name": f"{w['encoder']} / {w['task']}", "encoder": w["encoder"],
                     "task": w["task"], "status": f"after pretrain {w['after']}", "record": None, "error": None,
                     **eval_estimates(job, arch_of.get(w["encoder"]))})
    todo = [r for r in rows if r["status"] != "exists"]

    def total(where: str) -> dict[str, Any]:
        known = [r[where]["hours"] for r in todo if r[where]["hours"] is not None]
        floors = [r[where]["floor_hours"] for r in todo if r[where]["hours"] is None and r[where].get("floor_hours")]
        return {"hours": _sig(sum(known)) if known else None, "jobs_estimated": len(known),
                "jobs_without_estimate": len(todo) - len(known),
                "floor_hours_without_estimate": _sig(sum(floors)) if floors else None}

    return {"study": study.name, "title": study.title, "paper": study.paper, "scale": opts.scale,
            "scale_means": SCALES[opts.scale], "out": str(opts.folder), "notes": list(grid.notes),
            "only": {k: sorted(v) for k, v in opts.only.items()},
            "counts": {"pretrain": len(pjobs), "eval": len(ejobs) + len(waiting),
                       "exists": sum(r["status"] == "exists" for r in rows), "to_run": len(todo)},
            "estimate": {"here": {"device": "cpu (this machine)", **total("here")},
                         "gpu": {"device": gpu or "none measured", **total("gpu")}},
            "jobs": rows}


def _plan_status(job: Job) -> str:
    return {"skipped": "exists", "pending": "to run"}.get(job.status, f"cannot run: {job.error}")


# ----------------------------------------------------------------------------------------------------- run

def write_study_file(study: Study, grid: Grid, opts: StudyOptions) -> None:
    """study.json: what the report needs to lay the scores out as the paper's table (self-describing)."""
    folder = opts.folder
    doc = {"kind": "harness-study", "study": study.name, "title": study.title, "paper": study.paper,
           "scale": opts.scale, "notes": list(grid.notes), "tasks": list(grid.tasks), "eval_args": list(grid.eval_args),
           "table": {"rows": list(study.table.rows), "columns": list(study.table.columns), "cell": study.table.cell,
                     "cost": study.table.cost, "caption": study.table.caption},
           "encoders": [{"name": e.name, "axes": e.axes, "arch": e.arch,
                         "pretrain_record": (str(pretrain_record(folder, _spec(grid, e.pretrain)).relative_to(folder))
                                             if e.pretrain else None)} for e in grid.encoders],
           "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path = folder / STUDY_FILE
    if path.is_file():  # a run with --only adds to the study, never forgets what an earlier run declared
        try:
            old = json.loads(path.read_text())
            if old.get("study") == study.name:
                known = {e["name"] for e in doc["encoders"]}
                doc["encoders"] += [e for e in old.get("encoders", []) if e.get("name") not in known]
                doc["tasks"] += [t for t in old.get("tasks", []) if t not in doc["tasks"]]
        except (OSError, ValueError):
            pass
    write_json(path, doc)


def run_pretrain_round(jobs: list[Job], opts: SweepOptions, folder: Path) -> None:
    """The pretraining runs through submitit, one process each (the sweep's evals are batched per task; these
    are not): local workers (one per GPU, or ``--max-parallel`` sharing the CPU) or one SLURM array per round of
    retries. Each attempt is settled by the sweep's rule: an ok record is done, exit 2 fails at once, anything
    else is retried."""
    import submitit

    queue = [j for j in jobs if j.status == "pending"]
    while queue:
        if opts.executor == "slurm":
            executor = slurm_executor(opts, folder, len(queue))
            subs = executor.map_array(run_job, [j.argv for j in queue], [{"HARNESS_QUIET": "1"}] * len(queue))
        else:
            gpus = _visible_gpus(opts)
            width = max(1, opts.max_parallel or len(gpus) or 1)
            executor = submitit.LocalExecutor(folder=folder)
            executor.update_parameters(timeout_min=int(opts.slurm_time or 60 * 24 * 7))
            subs = []
            for i, j in enumerate(queue[:width]):  # at most `width` at once; the rest in the next pass
                env = {"HARNESS_QUIET": "1"}
                if gpus:
                    env["CUDA_VISIBLE_DEVICES"] = str(gpus[i % len(gpus)])
                subs.append(executor.submit(run_job, j.argv, env))
            queue, rest = queue[:width], queue[width:]
        again = []
        try:
            for job, sub in zip(queue, subs, strict=True):
                try:
                    result, exc = sub.result(), None
                except Exception as e:  # noqa: BLE001 - the worker itself failed: an attempt like any other
                    result, exc = None, e
                if _settle(job, result, exc, opts.retries):
                    again.append(job)
                elif job.status == "done":
                    log(f"study: pretraining {job.encoder} done ({job.wall_s:.0f}s)")
        except BaseException:
            for sub in subs:
                sub.cancel(check=False)
            raise
        queue = again + (rest if opts.executor != "slurm" else [])


def run_study(opts: StudyRunOptions, parse_eval: ParseEval) -> dict[str, Any]:
    """Pretraining runs, then evals, each round through the sweep's executor; existing records skipped."""
    t0 = time.perf_counter()
    study, grid = resolve(opts)
    folder = opts.folder
    pjobs = pretrain_jobs(grid, opts)
    unrunnable = [j for j in pjobs if j.status == "failed"]
    if unrunnable:
        raise UsageError(f"study {study.name} at scale {opts.scale}: {unrunnable[0].error}")
    folder.mkdir(parents=True, exist_ok=True)
    write_study_file(study, grid, opts)
    logs = folder / ".study" / time.strftime("%Y%m%d-%H%M%S")
    logs.mkdir(parents=True, exist_ok=True)
    # the pretraining round: the same executor settings (eval's --device says whether GPUs are used)
    base = _sweep_options(opts, parse_eval, [], list(grid.tasks),
                          ["--device", opts.device] if opts.device else [], folder)
    ejobs: list[Job] = []

    def rows_now() -> list[dict[str, Any]]:
        return ([{**j.row(), "kind": "pretrain", "name": j.encoder} for j in pjobs]
                + [{**j.row(), "kind": "eval", "name": f"{_label(j.encoder)} / {j.task}", "encoder": _label(j.encoder)}
                   for j in ejobs])

    try:
        if any(j.status == "pending" for j in pjobs):
            log(f"study {study.name}: {sum(j.status == 'pending' for j in pjobs)} pretraining run(s) to do, "
                f"{sum(j.status == 'skipped' for j in pjobs)} done already")
            run_pretrain_round(pjobs, base, logs / "pretrain")
        ready = {j.encoder for j in pjobs if j.status in ("done", "skipped")}
        sweep, ejobs, waiting = eval_sweep(grid, opts, parse_eval, ready)
        if any(j.status == "pending" for j in ejobs):
            log(f"study {study.name}: {sum(j.status == 'pending' for j in ejobs)} eval job(s) to do, "
                f"{sum(j.status == 'skipped' for j in ejobs)} with a record already")
            EXECUTORS[opts.executor](ejobs, sweep, logs / "eval")
    finally:  # what each finished job took, interrupted or not: the plan's estimates come from these
        record_timings(grid, folder, rows_now())
    rows = rows_now()
    rows += [{"kind": "eval", "name": f"{w['encoder']} / {w['task']}", "encoder": w["encoder"], "task": w["task"],
              "status": "not run", "error": f"its pretraining run {w['after']} failed", "attempts": 0, "wall_s": 0.0}
             for w in waiting]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "skipped", "failed", "not run")}
    return {"study": study.name, "scale": opts.scale, "out": str(folder), "jobs": rows, "counts": counts,
            "wall_s": round(time.perf_counter() - t0, 2), "logs": str(logs)}


# ------------------------------------------------------------------------------- one pretraining job's record

# Declared board power (TDP, W) per device kind, for the energy estimate when codecarbon is not installed: the
# vendors' published figures (SXM parts where there are two).
DEVICE_POWER_W: dict[str, float] = {"H200": 700.0, "H100": 700.0, "A100": 400.0, "V100": 300.0, "P100": 250.0,
                                    "L40S": 350.0, "L4": 72.0, "A10": 150.0, "T4": 70.0}
# A CPU's share of its package: an ASSUMPTION (server CPUs' TDP over their cores is about 5-15 W), not a measurement.
CPU_W_PER_CORE = 10.0
# kg CO2-equivalent per kWh: an ASSUMED world-average grid intensity (about 475 g/kWh, IEA 2019)
GRID_KG_PER_KWH = 0.475


def declared_power(device: str) -> tuple[float | None, str]:
    """(watts, how) for a device ('cpu' or 'cuda[:N]')."""
    if device.startswith("cuda"):
        import torch

        name = torch.cuda.get_device_name(torch.device(device))
        watts = next((w for k, w in DEVICE_POWER_W.items() if k in name), None)
        if watts is None:
            return None, f"no declared power for {name} (DEVICE_POWER_W in harness/study.py)"
        return watts, f"{name}'s declared TDP, {watts:g} W, for the whole run"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return CPU_W_PER_CORE * cores, (f"an assumed {CPU_W_PER_CORE:g} W per CPU core x {cores} core(s) = "
                                    f"{CPU_W_PER_CORE * cores:g} W (not measured)")


def energy_estimate(seconds: float, device: str, tracked: dict[str, Any] | None) -> dict[str, Any]:
    """codecarbon's measurement when it ran; otherwise time x the device's declared power, said so."""
    if tracked is not None:
        return {**tracked, "how": "codecarbon (measured by its tracker during the run)"}
    watts, how = declared_power(device)
    if watts is None:
        return {"kwh": None, "kg_co2": None, "how": how}
    kwh = watts * seconds / 3.6e6
    return {"kwh": kwh, "kg_co2": kwh * GRID_KG_PER_KWH, "watts": watts,
            "how": f"estimate: measured train time x {how}; CO2 at an assumed {GRID_KG_PER_KWH} kg/kWh "
                   "(codecarbon not installed)"}


def _codecarbon():
    """A started codecarbon tracker, or None when codecarbon is not importable (or will not start)."""
    try:
        from codecarbon import EmissionsTracker
    except ImportError:
        return None
    try:
        tracker = EmissionsTracker(save_to_file=False, log_level="error")
        tracker.start()
        return tracker
    except Exception:  # noqa: BLE001 - codecarbon failing to start falls back to the declared power
        return None


def _stop(tracker) -> dict[str, Any] | None:
    if tracker is None:
        return None
    try:
        kg = tracker.stop()
        data = getattr(tracker, "final_emissions_data", None)
        kwh = getattr(data, "energy_consumed", None)
        return {"kwh": float(kwh) if kwh is not None else None, "kg_co2": float(kg) if kg is not None else None}
    except Exception:  # noqa: BLE001 - as above
        return None


def run_pretrain_job(record: Path, options) -> dict[str, Any]:
    """One pretraining run of a study (``options``: PretrainOptions), timed, its cost and energy in ``record``.
    A failure writes a failed record (the sweep retries it; pretrain resumes from last.pt)."""
    from encoders.archs import arch_cost
    from encoders.pretrain.train import run_pretrain

    from .common.device import resolve_device

    device = str(resolve_device(options.device))
    tracker = _codecarbon()
    t0 = time.perf_counter()
    try:
        result = run_pretrain(options)
    except BaseException as exc:
        _stop(tracker)
        write_json(record, {"status": "failed", "error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                            "method": options.method, "arch": options.arch})
        raise
    seconds = time.perf_counter() - t0
    tracked = _stop(tracker)
    resolution = int(options.resolution or (64 if list(options.data) == ["synth"] else 224))
    cost = arch_cost(options.arch, resolution)
    train_s = sum(h.get("seconds", 0.0) for h in result["history"])
    doc = {"status": "ok", "kind": "harness-study-pretrain", "name": Path(result["checkpoint"]).stem,
           "method": result["method"], "arch": result["arch"], "checkpoint": result["checkpoint"],
           "epochs": result["epochs"], "images": result["images"], "batch_size": result["batch_size"],
           "data": result["data"], "device": device, "params": cost["params"], "flops": cost["flops"],
           "flops_resolution": resolution, "train_s": round(train_s, 2),
           "wall_s": round(seconds, 2), "energy": energy_estimate(seconds, device, tracked),
           "knn": result["knn"], "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json(record, doc)
    return doc


__all__ = ["SCALES", "STUDIES", "Grid", "PretrainSpec", "Study", "StudyOptions", "StudyRunOptions", "TableLayout",
           "check_scale", "get_study", "parse_only", "plan_study", "register_study", "run_pretrain_job", "run_study"]
