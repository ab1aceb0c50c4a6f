"""``harness sweep``: encoders x tasks x seeds as jobs, fanned out through submitit.

Each job is one ``harness eval --encoder E --task T --seed S`` run in its own process, with
every eval option of the sweep passed through unchanged, so a sweep writes exactly the records
eval would. The sweep decides from each job's exit status and record: 0 with an ok record is
done; 2 (a usage error) fails at once; anything else is retried up to ``retries`` times, then
reported as failed while the other jobs go on. Jobs whose record already exists are not
submitted. Jobs on the same encoder and task data share one feature cache entry: the first
encodes it, the others wait for it and read it (harness.common.locks). The pending jobs of one
task and seed run as one eval of up to ``SHARE_MAX`` encoders (``batches``), which decodes each
image once for all of them; each job is still settled by its own record.

Executors: ``local`` (the default) runs one worker per visible GPU (``--gpus-per-job`` each,
pinned with CUDA_VISIBLE_DEVICES), or ``--max-parallel`` CPU workers sharing the cores;
``slurm`` submits one job array, throttled to ``--max-parallel`` running tasks, and a new
array for the retries.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from .common.errors import HarnessError
from .common.options import check, option
from .common.progress import log
from .eval_options import EvalOptions

SHARE_MAX = 8  # encoders per eval process: one decode serves them; more would make one job hold a GPU too long

# Sweep options that eval would also accept, but that the sweep sets per job itself.
OWN_OPTIONS = ("--encoder", "-e", "--task", "-t", "--seed", "--seeds", "--out", "--json")


Executor = Literal["local", "slurm"]  # EXECUTORS below


@dataclass(kw_only=True)
class ExecutorSettings:
    """Where and how jobs run, declared once for ``harness sweep`` and ``harness study run``."""

    executor: Executor = option("--executor", default="local", help="local or slurm")
    gpus_per_job: int = option("--gpus-per-job", default=1, min=1)
    max_parallel: int | None = option("--max-parallel", default=None, min=1, help="jobs at once (local: default one "
                                      "per GPU, else 1; slurm: the array's throttle)")
    retries: int = option("--retries", default=1, min=0, help="extra attempts of a failed job")
    slurm_partition: str | None = option("--slurm-partition", default=None)
    slurm_time: int | None = option("--slurm-time", default=None, min=1, help="minutes per job")
    slurm_mem: int | None = option("--slurm-mem", default=None, min=1, help="GB per job")
    slurm_cpus: int | None = option("--slurm-cpus", default=None, min=1, help="CPUs per job")
    slurm_account: str | None = option("--slurm-account", default=None)


@dataclass(kw_only=True)
class SweepOptions(ExecutorSettings):
    """``harness sweep``'s options, each field also its command-line option (harness.common.options)."""

    encoders: list[str] = option("--encoder", "-e", help="encoders (repeatable)")
    tasks: list[str] = option("--task", "-t", help="tasks or suites (repeatable)")
    seed: int = option("--seed", default=0, help="first head-training seed")
    seeds: int = option("--seeds", default=1, min=1, help="K seeds: one job per encoder x task x seed")
    out: Path = option("--out", default=Path("results"), help="where result records go")
    dry_run: bool = option("--dry-run", default=False, help="the plan and an estimate; run nothing")
    # not options of sweep: the eval options passed to every job, as given and as parsed (None: eval's defaults)
    eval_args: list[str] = field(default_factory=list)
    eval: EvalOptions | None = None
    poll_s: float = 1.0

    def __post_init__(self) -> None:
        check(self)


@dataclass
class Job:
    encoder: str
    task: str
    seed: int
    argv: list[str]
    record: Path | None
    status: str = "pending"  # pending | skipped | done | failed
    attempts: int = 0
    error: str = ""
    wall_s: float = 0.0
    images: int = 0  # to encode (train, val, test), for the estimate

    @property
    def label(self) -> str:
        return f"{self.encoder} / {self.task} / seed {self.seed}"

    def row(self) -> dict[str, Any]:
        """The job in the summary, with its record's test score (metric, test) when it has an ok one."""
        metric, test = _record_score(self.record) if self.status in ("done", "skipped") else (None, None)
        return {"encoder": self.encoder, "task": self.task, "seed": self.seed, "status": self.status,
                "attempts": self.attempts, "error": self.error, "wall_s": round(self.wall_s, 2),
                "record": str(self.record) if self.record else None, "metric": metric, "test": test}


@dataclass
class EvalBatch:
    """Jobs of one task and seed run as one ``harness eval`` with several ``--encoder``."""

    jobs: list[Job]

    @property
    def argv(self) -> list[str]:
        first = self.jobs[0].argv
        assert first[:2] == ["eval", "--encoder"]
        encoders = [a for j in self.jobs for a in ("--encoder", j.encoder)]
        return ["eval", *encoders, *first[3:]]

    @property
    def label(self) -> str:
        j = self.jobs[0]
        return f"{'+'.join(x.encoder for x in self.jobs)} / {j.task} / seed {j.seed}"


def batches(jobs: list[Job]) -> list[EvalBatch]:
    """Jobs grouped by (task, seed), in the order first met, at most SHARE_MAX encoders each."""
    groups: dict[tuple[str, int], list[list[Job]]] = {}
    for j in jobs:
        chunks = groups.setdefault((j.task, j.seed), [[]])
        if len(chunks[-1]) >= SHARE_MAX:
            chunks.append([])
        chunks[-1].append(j)
    return [EvalBatch(chunk) for chunks in groups.values() for chunk in chunks]


# --------------------------------------------------------------------------------------------- jobs

def run_job(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """What a submitit worker runs: one ``harness eval`` in a child process (a crash there is an
    exit status here, never a lost worker). Returns the exit code and the last error line."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "harness", *argv], capture_output=True, text=True,
                          env={**os.environ, **env})
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    tail = proc.stderr.strip().splitlines()[-1:] if proc.stderr.strip() else []
    return {"rc": proc.returncode, "error": (errors or tail or [""])[-1], "wall_s": time.perf_counter() - t0}


def _record_ok(path: Path | None) -> bool:
    if path is None or not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("status") == "ok"
    except (OSError, ValueError):
        return False


def _record_score(path: Path | None) -> tuple[str | None, float | None]:
    """(metric, test score) of an ok record; (None, None) when there is none."""
    try:
        rec = json.loads(path.read_text()) if path else {}
    except (OSError, ValueError):
        return None, None
    test = rec.get("test") if rec.get("status") == "ok" else None
    return (rec.get("metric"), float(test)) if isinstance(test, (int, float)) else (None, None)


def _failed_record_error(path: Path | None) -> str:
    try:
        return str(json.loads(path.read_text()).get("error") or "") if path else ""
    except (OSError, ValueError):
        return ""


def _images(task, limit: int | None) -> int:
    """Images to encode for a task: every split once (train as often as its augmented copies,
    at most ``limit`` samples), times the frames per sample."""
    sizes = task.split_sizes()
    copies = task.aug_copies if task.train_transform.random else 1
    n = 0
    for split, count in sizes.items():
        if split == task.splits.train:
            n += min(count, limit or count) * copies
        else:
            n += count
    return n * task.frames


def plan(opts: SweepOptions) -> list[Job]:
    """One job per (encoder, task, seed), with the record path it would write."""
    from encoders.registry import create_encoder
    from tasks.registry import resolve_tasks

    from .runner import record_path

    specs = resolve_tasks(opts.tasks)
    template = opts.eval or EvalOptions(encoders=tuple(opts.encoders[:1]), tasks=specs)
    jobs: list[Job] = []
    for name in opts.encoders:
        base = replace(template, encoder=name, encoders=(name,), tasks=specs, out=opts.out)
        try:
            encoder = create_encoder(name, seed=base.encoder_seed,
                                     **{k: v for k, v in (("fmt", base.fmt), ("weights_dir", base.weights_dir))
                                        if v})
        except HarnessError as exc:
            encoder, why = None, str(exc)
        for spec in specs:
            for seed in range(opts.seed, opts.seed + opts.seeds):
                argv = ["eval", "--encoder", name, "--task", spec.name, "--seed", str(seed), "--out", str(opts.out),
                        *opts.eval_args]
                job = Job(name, spec.name, seed, argv, None, images=_images(spec, base.limit))
                if encoder is None:
                    job.status, job.error = "failed", why
                else:
                    job.record = record_path(encoder, spec, replace(base, seed=seed, seeds=1))
                    if _record_ok(job.record) and not base.force:
                        job.status = "skipped"
                jobs.append(job)
    return jobs


# --------------------------------------------------------------------------------------- estimate

def measure_throughput(encoder_name: str, resolution: int, device: str | None, batch: int = 16,
                       batches: int = 2) -> dict[str, Any]:
    """Images/s of the frozen encoder's forward at ``resolution`` on ``device``, measured now
    (one warm-up batch, then ``batches`` timed ones)."""
    import torch

    from encoders.registry import create_encoder

    from .common.device import resolve_device

    dev = resolve_device(device)
    enc = create_encoder(encoder_name).to(dev)
    x = torch.rand(batch, 3, resolution, resolution, device=dev)
    with torch.no_grad():
        enc(x, ("embedding",))
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(batches):
            enc(x, ("embedding",))
        if dev.type == "cuda":
            torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"images_per_s": batch * batches / seconds, "device": str(dev), "resolution": resolution,
            "how": f"measured now: {batches} batch(es) of {batch} random images after a warm-up, forward only"}


def _sig(x: float, digits: int = 4) -> float:
    """x to `digits` significant figures (hours of a small sweep are tiny; fixed decimals would zero them)."""
    return float(f"{x:.{digits}g}")


def estimate(jobs: list[Job], opts: SweepOptions) -> dict[str, Any]:
    """Encode hours of the jobs to run, from measured throughput per encoder x resolution."""
    from tasks.registry import get_task

    todo = [j for j in jobs if j.status == "pending"]
    measured: dict[tuple[str, int], dict] = {}
    hours = 0.0
    device, resolution = (opts.eval.device, opts.eval.resolution) if opts.eval else (None, None)
    for j in todo:
        res = resolution or get_task(j.task).default_resolution
        key = (j.encoder, res)
        if key not in measured:
            measured[key] = measure_throughput(j.encoder, res, device)
        hours += j.images / measured[key]["images_per_s"] / 3600
    # Jobs differing only in the seed share their features (one encode per encoder x task).
    shared = {(j.encoder, j.task) for j in todo}
    per_pair = {(j.encoder, j.task): j for j in todo}
    enc_hours = sum(per_pair[p].images / measured[(p[0], resolution or get_task(p[1]).default_resolution)]
                    ["images_per_s"] / 3600
                    for p in shared)
    kind = "GPU" if any(m["device"].startswith("cuda") for m in measured.values()) else "CPU"
    return {"jobs": len(jobs), "to_run": len(todo), "existing": sum(j.status == "skipped" for j in jobs),
            "unplannable": sum(j.status == "failed" for j in jobs), "encode_hours": _sig(enc_hours),
            "encode_hours_without_sharing": _sig(hours), "kind": kind,
            "throughput": {f"{e}@{r}px": round(m["images_per_s"], 1) for (e, r), m in measured.items()},
            "how": next(iter(measured.values()))["how"] if measured else "nothing to run",
            "note": "encoding only (every split once per encoder x task; the seeds of a pair share it); head "
                    "training comes on top and dominates on dense tasks"}


GPU_CHECK = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "gpu_check.json"
GPU_CHECK_ENV = "HARNESS_GPU_CHECK"  # another gpu_check.json to estimate from
NODE_GPUS = 8
DENSE_HEADS = ("unet", "siamese_unet", "deeplabv3plus")


def gpu_measurement() -> tuple[Path, dict | None]:
    """benchmarks/gpu_check.py's JSON (``$HARNESS_GPU_CHECK`` or the repository's), when it holds a
    full-size CUDA measurement; None otherwise."""
    path = Path(os.environ.get(GPU_CHECK_ENV) or GPU_CHECK)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return path, None
    ok = doc.get("device_type") == "cuda" and not doc.get("tiny") and "error" not in doc.get("sections", {}).get(
        "encode", {"error": "absent"})
    return path, doc if ok else None


def node_estimate(jobs: list[Job], opts: SweepOptions, gpus: int = NODE_GPUS) -> dict[str, Any]:
    """Hours of the jobs to run on one node of ``gpus`` GPUs, from benchmarks/gpu_check.py's measured
    throughput: per task, each group of up to SHARE_MAX encoders decodes its images once (the device
    decoder's measured rate, else the CPU's shared by the node's GPUs); each encoder's forward is the
    measured encoder's rate scaled by FLOPs per image; heads train at the measured step time (bf16 for
    the dense heads, per pixel of the task's resolution) or stacked-grid time per sample and epoch.
    Perfect packing onto the GPUs is assumed: a lower bound of the wall time."""
    from tasks.registry import get_task

    path, doc = gpu_measurement()
    if doc is None:
        return {"measured": False, "line": "no GPU measurement yet: run benchmarks/gpu_check.py on a CUDA machine "
                                           f"(it writes {path}); then the dry run gives hours on one {gpus}-GPU node"}
    sec = doc["sections"]
    enc = sec["encode"]
    dec = sec.get("decode", {})
    if "device" in dec and dec.get("device_decoder") == "works":
        decode_rate, decode_how = dec["device"]["decode_images_per_s"], "device decoding"
    elif "cpu" in dec:
        decode_rate, decode_how = dec["cpu"]["decode_images_per_s"] / gpus, f"CPU decoding shared by {gpus} GPUs"
    else:
        decode_rate, decode_how = math.inf, "decoding not measured (left out)"
    dense = sec.get("dense", {}).get("heads", {})
    grid = sec.get("grid", {})
    e = opts.eval
    todo = [j for j in jobs if j.status == "pending"]
    flops: dict[tuple[str, int], float] = {}
    seconds = {"decode": 0.0, "forward": 0.0, "heads": 0.0}
    for task_name in dict.fromkeys(j.task for j in todo):
        task = get_task(task_name)
        res = (e.resolution if e else None) or task.default_resolution
        mine = [j for j in todo if j.task == task_name]
        images = mine[0].images
        pairs = list(dict.fromkeys(j.encoder for j in mine))  # one encode per encoder x task, the seeds share it
        seconds["decode"] += images / decode_rate * math.ceil(len(pairs) / SHARE_MAX)
        for name in pairs:
            if (name, res) not in flops:
                from encoders.registry import create_encoder

                flops[name, res] = float(create_encoder(name).cost(res)["flops"])
            seconds["forward"] += images / (enc["images_per_s"] * enc["flops"] / flops[name, res])
        n_train = min(task.split_sizes().get(task.splits.train, 0), (e.limit if e else None) or 10**12)
        epochs = (e.epochs if e else None) or task.epochs
        configs = 1 if e is not None and e.grid == "single" else len(task.grid)
        if task.head in DENSE_HEADS and task.head in dense:
            row = dense[task.head]
            measured_at = sec["dense"]["resolution"]  # per sample of a batch there, scaled by pixels
            per_sample = row.get("bf16_ms", row["fp32_ms"]) / 1000 / sec["dense"]["batch"] * (res / measured_at) ** 2
            seconds["heads"] += len(mine) * n_train * epochs * configs * per_sample
        elif "grid_s_per_sample_epoch" in grid:  # the stacked grid trains every configuration at once
            seconds["heads"] += len(mine) * n_train * epochs * grid["grid_s_per_sample_epoch"]
    gpu_hours = sum(seconds.values()) / 3600
    hours = gpu_hours / gpus
    return {"measured": True, "source": str(path), "device": doc.get("device"), "created": doc.get("created"),
            "gpus": gpus, "hours": _sig(hours), "gpu_hours": {k: _sig(v / 3600) for k, v in seconds.items()},
            "decode": decode_how,
            "line": f"estimate on one {gpus}-GPU node ({doc.get('device')}, measured {doc.get('created', '?')[:10]} by "
                    f"benchmarks/gpu_check.py): {hours:.3g} hour(s) = {gpu_hours:.3g} GPU-hours "
                    f"(decode {seconds['decode'] / 3600:.3g}, encoder forwards {seconds['forward'] / 3600:.3g}, "
                    f"head training {seconds['heads'] / 3600:.3g}; {decode_how}; forwards scaled by FLOPs from "
                    f"{enc['encoder']} at {enc['resolution']} px; perfect packing assumed)"}


# --------------------------------------------------------------------------------------- executors

def _visible_gpus(opts: SweepOptions) -> list[int]:
    if opts.eval is not None and opts.eval.device == "cpu":
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [int(x) for x in env.split(",") if x.strip().isdigit()]
    try:
        import torch

        return list(range(torch.cuda.device_count()))
    except Exception:  # noqa: BLE001 - no CUDA: CPU workers
        return []


def _settle(job: Job, result: dict[str, Any] | None, exc: BaseException | None, retries: int) -> bool:
    """Record a finished attempt; True when the job should run again."""
    job.attempts += 1
    if result is not None:
        job.wall_s += result["wall_s"]
    # One eval of several encoders exits 1 when any failed: each job goes by its own record.
    if exc is None and result is not None and (result["rc"] == 0 or result.get("shared")) and _record_ok(job.record):
        job.status, job.error = "done", ""
        return False
    if exc is not None:
        job.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    else:
        job.error = _failed_record_error(job.record) or result["error"] or f"exit status {result['rc']}"
    usage = result is not None and result["rc"] == 2
    if not usage and job.attempts <= retries:
        log(f"sweep: {job.label} failed (attempt {job.attempts}), retrying: {job.error}")
        return True
    job.status = "failed"
    log(f"sweep: {job.label} FAILED: {job.error}")
    return False


def _settle_batch(batch: EvalBatch, result: dict[str, Any] | None, exc: BaseException | None,
                  retries: int) -> list[Job]:
    """Each job of a finished eval settled by its own record; the ones to run again."""
    if result is not None and len(batch.jobs) > 1:
        result = {**result, "shared": True}
    again = []
    for job in batch.jobs:
        if _settle(job, result, exc, retries):
            again.append(job)
        elif job.status == "done":
            log(f"sweep: {job.label} done ({job.wall_s:.0f}s)")
    return again


def run_local(jobs: list[Job], opts: SweepOptions, folder: Path) -> None:
    import submitit

    gpus = _visible_gpus(opts)
    if gpus:
        per = max(1, opts.gpus_per_job)
        slots = [gpus[i:i + per] for i in range(0, len(gpus) - per + 1, per)]
        if opts.max_parallel:
            slots = slots[: opts.max_parallel]
    else:
        slots = [[] for _ in range(max(1, opts.max_parallel or 1))]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // len(slots))
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=int(opts.slurm_time or 60 * 24 * 7))
    queue = batches([j for j in jobs if j.status == "pending"])
    free = list(range(len(slots)))
    running: dict[int, tuple[EvalBatch, Any]] = {}
    log(f"sweep: {sum(len(b.jobs) for b in queue)} job(s) as {len(queue)} eval(s) on {len(slots)} local worker(s)"
        + (f", {per} GPU(s) each" if gpus else f", {threads} CPU thread(s) each"))
    try:
        while queue or running:
            while queue and free:
                slot = free.pop(0)
                batch = queue.pop(0)
                env = {"OMP_NUM_THREADS": str(threads), "HARNESS_QUIET": "1"}
                if gpus:
                    env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, slots[slot]))
                running[slot] = (batch, executor.submit(run_job, batch.argv, env))
            time.sleep(opts.poll_s)
            for slot, (batch, sub) in list(running.items()):
                if not sub.done():
                    continue
                del running[slot]
                free.append(slot)
                try:
                    result, exc = sub.result(), None
                except Exception as e:  # noqa: BLE001 - the worker itself failed: an attempt like any other
                    result, exc = None, e
                queue.extend(batches(_settle_batch(batch, result, exc, opts.retries)))
    except BaseException:
        for _, sub in running.values():
            sub.cancel(check=False)
        raise


def slurm_executor(opts: SweepOptions, folder: Path, n_jobs: int):
    """A submitit SLURM executor for one array of ``n_jobs`` (throttled to ``max_parallel``)."""
    import shutil

    import submitit

    missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None]
    if missing:
        raise HarnessError(f"--executor slurm: {' and '.join(missing)} not found on PATH; run the sweep on a SLURM "
                           f"login node (or use --executor local)")
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    params: dict[str, Any] = {
        "timeout_min": int(opts.slurm_time or 60),
        "gpus_per_node": opts.gpus_per_job,
        "tasks_per_node": 1,
        "nodes": 1,
        "slurm_array_parallelism": max(1, min(n_jobs, opts.max_parallel or n_jobs)),
        "name": "harness-sweep",
    }
    if opts.slurm_partition:
        params["slurm_partition"] = opts.slurm_partition
    if opts.slurm_mem:
        params["mem_gb"] = int(opts.slurm_mem)
    if opts.slurm_cpus:
        params["cpus_per_task"] = int(opts.slurm_cpus)
    if opts.slurm_account:
        params["slurm_account"] = opts.slurm_account
    executor.update_parameters(**params)
    return executor


def run_slurm(jobs: list[Job], opts: SweepOptions, folder: Path) -> None:
    queue = batches([j for j in jobs if j.status == "pending"])
    while queue:
        executor = slurm_executor(opts, folder, len(queue))
        env = {"HARNESS_QUIET": "1"}
        subs = executor.map_array(run_job, [b.argv for b in queue], [env] * len(queue))
        log(f"sweep: submitted an array of {len(queue)} job(s) ({subs[0].job_id.split('_')[0]}), at most "
            f"{executor.parameters.get('array_parallelism', len(queue))} running")
        again = []
        try:
            pending = dict(zip(range(len(queue)), zip(queue, subs, strict=True), strict=True))
            while pending:
                time.sleep(max(opts.poll_s, 10.0))
                for i, (batch, sub) in list(pending.items()):
                    if not sub.done():
                        continue
                    del pending[i]
                    try:
                        result, exc = sub.result(), None
                    except Exception as e:  # noqa: BLE001 - a failed or cancelled array task
                        result, exc = None, e
                    again.extend(_settle_batch(batch, result, exc, opts.retries))
        except BaseException:
            for sub in subs:
                sub.cancel(check=False)
            raise
        queue = batches(again)


EXECUTORS = {"local": run_local, "slurm": run_slurm}  # the choices of Executor


def run_sweep(opts: SweepOptions) -> dict[str, Any]:
    """Plan, skip what exists, run the rest; the summary (jobs and counts)."""
    t0 = time.perf_counter()
    jobs = plan(opts)
    doc: dict[str, Any] = {"out": str(opts.out), "executor": opts.executor}
    if opts.dry_run:
        doc["estimate"] = estimate(jobs, opts)
        doc["estimate"]["node"] = node_estimate(jobs, opts)
        doc["jobs"] = [j.row() for j in jobs]
        return doc
    from .runner import check_out_dir

    check_out_dir(opts.out)
    folder = Path(opts.out) / ".sweep" / time.strftime("%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    EXECUTORS[opts.executor](jobs, opts, folder)
    doc["jobs"] = [j.row() for j in jobs]
    doc["counts"] = {s: sum(j.status == s for j in jobs) for s in ("done", "skipped", "failed")}
    doc["wall_s"] = round(time.perf_counter() - t0, 2)
    doc["logs"] = str(folder)
    return doc
