"""``harness sweep``: encoders x tasks x seeds as jobs, fanned out through submitit.

Each job is one ``harness eval --encoder E --task T --seed S`` run in its own process, with
every eval option of the sweep passed through unchanged, so a sweep writes exactly the records
eval would. The sweep decides from each job's exit status and record: 0 with an ok record is
done; 2 (a usage error) fails at once; anything else is retried up to ``retries`` times, then
reported as failed while the other jobs go on. Jobs whose record already exists are not
submitted. Jobs on the same encoder and task data share one feature cache entry: the first
encodes it, the others wait for it and read it (harness.common.locks).

Executors: ``local`` (the default) runs one worker per visible GPU (``--gpus-per-job`` each,
pinned with CUDA_VISIBLE_DEVICES), or ``--max-parallel`` CPU workers sharing the cores;
``slurm`` submits one job array, throttled to ``--max-parallel`` running tasks, and a new
array for the retries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common.errors import HarnessError, UsageError
from .common.progress import log

# Sweep options that eval would also accept, but that the sweep sets per job itself.
OWN_OPTIONS = ("--encoder", "-e", "--task", "-t", "--seed", "--seeds", "--out", "--json")


@dataclass
class SweepOptions:
    encoders: list[str]
    tasks: list[str]
    eval_args: list[str]  # eval options passed through unchanged
    eval_params: dict[str, Any]  # the same, parsed by eval's own parser
    out: Path = Path("results")
    seed: int = 0
    seeds: int = 1
    executor: str = "local"
    gpus_per_job: int = 1
    max_parallel: int | None = None
    retries: int = 1
    slurm: dict[str, Any] = field(default_factory=dict)  # partition, time (min), mem (GB), account, ...
    dry_run: bool = False
    poll_s: float = 1.0


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

    from .runner import eval_options, record_path

    specs = resolve_tasks(opts.tasks)
    jobs: list[Job] = []
    for name in opts.encoders:
        params = {**opts.eval_params, "encoder": name, "task": [t.name for t in specs], "out": opts.out}
        base = eval_options(params)
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
                    from dataclasses import replace

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
    device = opts.eval_params.get("device")
    for j in todo:
        res = opts.eval_params.get("resolution") or get_task(j.task).default_resolution
        key = (j.encoder, res)
        if key not in measured:
            measured[key] = measure_throughput(j.encoder, res, device)
        hours += j.images / measured[key]["images_per_s"] / 3600
    # Jobs differing only in the seed share their features (one encode per encoder x task).
    shared = {(j.encoder, j.task) for j in todo}
    per_pair = {(j.encoder, j.task): j for j in todo}
    enc_hours = sum(per_pair[p].images / measured[(p[0], opts.eval_params.get("resolution")
                                                   or get_task(p[1]).default_resolution)]["images_per_s"] / 3600
                    for p in shared)
    kind = "GPU" if any(m["device"].startswith("cuda") for m in measured.values()) else "CPU"
    return {"jobs": len(jobs), "to_run": len(todo), "existing": sum(j.status == "skipped" for j in jobs),
            "unplannable": sum(j.status == "failed" for j in jobs), "encode_hours": _sig(enc_hours),
            "encode_hours_without_sharing": _sig(hours), "kind": kind,
            "throughput": {f"{e}@{r}px": round(m["images_per_s"], 1) for (e, r), m in measured.items()},
            "how": next(iter(measured.values()))["how"] if measured else "nothing to run",
            "note": "encoding only (every split once per encoder x task; the seeds of a pair share it); head "
                    "training comes on top and dominates on dense tasks"}


# --------------------------------------------------------------------------------------- executors

def _visible_gpus(opts: SweepOptions) -> list[int]:
    device = opts.eval_params.get("device")
    if device == "cpu":
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
    if exc is None and result is not None and result["rc"] == 0 and _record_ok(job.record):
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
    executor.update_parameters(timeout_min=int(opts.slurm.get("time") or 60 * 24 * 7))
    queue = [j for j in jobs if j.status == "pending"]
    free = list(range(len(slots)))
    running: dict[int, tuple[Job, Any]] = {}
    log(f"sweep: {len(queue)} job(s) on {len(slots)} local worker(s)"
        + (f", {per} GPU(s) each" if gpus else f", {threads} CPU thread(s) each"))
    try:
        while queue or running:
            while queue and free:
                slot = free.pop(0)
                job = queue.pop(0)
                env = {"OMP_NUM_THREADS": str(threads), "HARNESS_QUIET": "1"}
                if gpus:
                    env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, slots[slot]))
                running[slot] = (job, executor.submit(run_job, job.argv, env))
            time.sleep(opts.poll_s)
            for slot, (job, sub) in list(running.items()):
                if not sub.done():
                    continue
                del running[slot]
                free.append(slot)
                try:
                    result, exc = sub.result(), None
                except Exception as e:  # noqa: BLE001 - the worker itself failed: an attempt like any other
                    result, exc = None, e
                if _settle(job, result, exc, opts.retries):
                    queue.append(job)
                elif job.status == "done":
                    log(f"sweep: {job.label} done ({job.wall_s:.0f}s)")
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
        "timeout_min": int(opts.slurm.get("time") or 60),
        "gpus_per_node": opts.gpus_per_job,
        "tasks_per_node": 1,
        "nodes": 1,
        "slurm_array_parallelism": max(1, min(n_jobs, opts.max_parallel or n_jobs)),
        "name": "harness-sweep",
    }
    if opts.slurm.get("partition"):
        params["slurm_partition"] = opts.slurm["partition"]
    if opts.slurm.get("mem"):
        params["mem_gb"] = int(opts.slurm["mem"])
    if opts.slurm.get("cpus"):
        params["cpus_per_task"] = int(opts.slurm["cpus"])
    if opts.slurm.get("account"):
        params["slurm_account"] = opts.slurm["account"]
    executor.update_parameters(**params)
    return executor


def run_slurm(jobs: list[Job], opts: SweepOptions, folder: Path) -> None:
    queue = [j for j in jobs if j.status == "pending"]
    while queue:
        executor = slurm_executor(opts, folder, len(queue))
        env = {"HARNESS_QUIET": "1"}
        subs = executor.map_array(run_job, [j.argv for j in queue], [env] * len(queue))
        log(f"sweep: submitted an array of {len(queue)} job(s) ({subs[0].job_id.split('_')[0]}), at most "
            f"{executor.parameters.get('array_parallelism', len(queue))} running")
        again = []
        try:
            pending = dict(zip(range(len(queue)), zip(queue, subs, strict=True), strict=True))
            while pending:
                time.sleep(max(opts.poll_s, 10.0))
                for i, (job, sub) in list(pending.items()):
                    if not sub.done():
                        continue
                    del pending[i]
                    try:
                        result, exc = sub.result(), None
                    except Exception as e:  # noqa: BLE001 - a failed or cancelled array task
                        result, exc = None, e
                    if _settle(job, result, exc, opts.retries):
                        again.append(job)
        except BaseException:
            for sub in subs:
                sub.cancel(check=False)
            raise
        queue = again


EXECUTORS = {"local": run_local, "slurm": run_slurm}


def run_sweep(opts: SweepOptions) -> dict[str, Any]:
    """Plan, skip what exists, run the rest; the summary (jobs and counts)."""
    if opts.executor not in EXECUTORS:
        raise UsageError(f"--executor {opts.executor!r}: use {' or '.join(EXECUTORS)}")
    t0 = time.perf_counter()
    jobs = plan(opts)
    doc: dict[str, Any] = {"out": str(opts.out), "executor": opts.executor}
    if opts.dry_run:
        doc["estimate"] = estimate(jobs, opts)
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
