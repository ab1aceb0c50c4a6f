"""Does each small recipe learn on every seed, or did one lucky run pass? ``harness pretrain --preset small`` per
method and seed (on a GPU when one is lent: the same recipe, many runs at once), each run's kNN gain on
synth_shape_cls rechecked at initialisation and at the end on larger banks than its monitor's, and per method the
mean, standard deviation and worst gain over the seeds.

The seed draws the initial network, the order of the batches, the augmentations and which 4,000 renders are
trained on. Runs go side by side (``--parallel``), method by method in the order given, so that a deadline
(``--deadline-s``) cuts the methods named last. Each finished run is written to ``--runs``/NAME.json at once, and
the summary to ``--out`` after every run. Running the script again skips the finished runs and resumes the others
from their last finished epoch (``harness pretrain``'s resume state); the exit status is 1 while any is missing.

    PYTHONPATH=. python benchmarks/pretrain_seeds.py --device cuda --seeds 0,1,2 --parallel 15
    PYTHONPATH=. python benchmarks/pretrain_seeds.py --summarise benchmarks/results/pretrain_seeds.json  # README table
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import pretrain_learning as pl  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "pretrain_seeds.json"
README = ROOT / "encoders" / "pretrain" / "README.md"
START, END = "<!-- pretrain_seeds:start -->", "<!-- pretrain_seeds:end -->"
BAR = 5.0  # points of kNN gain a recipe must show (issue 17)


def one(method: str, seed: int, device: str, runs: Path, checks: list[tuple[int, int]],
        epochs: int | None = None, limit: int | None = None) -> dict:
    """Train one run in this process, then recheck its initial and final backbone on each (bank, queries)."""
    import torch

    from encoders.pretrain.train import PretrainOptions, run_pretrain

    name = f"{method}_s{seed}"
    t0 = time.perf_counter()
    res = run_pretrain(PretrainOptions(method=method, preset="small", data=["synth"], out=runs, name=name,
                                       seed=seed, device=device, epochs=epochs, limit=limit))
    wall = time.perf_counter() - t0
    rec = pl.entry(method, [], res["history"], res, 1000, 250)
    rec.pop("diagnostics")
    last = last_diagnostics(res["history"])
    rec.update({"seed": seed, "name": name, "device": device, "wall_s": round(wall, 1), "final_diagnostics": last,
                "checks": [pl.recheck(runs / name, b, q, device=torch.device(device)) for b, q in checks]})
    return rec


def last_diagnostics(history: list[dict]) -> dict:
    """The last epoch's diagnostics (loss, embedding spread, ...): a collapsed run shows here."""
    last = next(h for h in reversed(history) if "loss" in h)
    return {k: v for k, v in last.items() if k not in ("knn", "seconds", "images_per_s", "epoch")}


def summarise(records: list[dict]) -> dict:
    """Per method: each seed's gain on each check, their mean, sample standard deviation and minimum."""
    out: dict[str, dict] = {}
    for m in pl.METHODS:
        rs = sorted((r for r in records if r["method"] == m), key=lambda r: r["seed"])
        if not rs:
            continue
        per_check = {}
        for i, c in enumerate(rs[0]["checks"]):
            key = f"{c['bank']}/{c['queries']}"
            gains = [r["checks"][i]["gain_points"] for r in rs]
            per_check[key] = {"gains": gains, "mean": round(statistics.fmean(gains), 2),
                              "sd": round(statistics.stdev(gains), 2) if len(gains) > 1 else None,
                              "min": min(gains), "seeds_at_bar": sum(g >= BAR for g in gains)}
        out[m] = {"seeds": [r["seed"] for r in rs], "epochs": rs[0]["epochs"], "steps": rs[0]["steps"],
                  "train_min_mean": round(statistics.fmean(r["train_s"] for r in rs) / 60, 2),
                  "monitor_gains": [r["gain_points"] for r in rs], "checks": per_check}
    return out


def table(summary: dict, device_note: str) -> str:
    keys = sorted({k for s in summary.values() for k in s["checks"]}, key=lambda k: int(k.split("/")[0]))
    head = "| method | seeds | " + " | ".join(f"gain on {k} per seed (mean ± sd; worst)" for k in keys)
    rows = [head + " | seeds at the 5-point bar | train time per run |",
            "|---|---|" + "---|" * len(keys) + "---|---|"]
    for m, s in summary.items():
        cells = []
        for k in keys:
            c = s["checks"].get(k)
            if c is None:
                cells.append("-")
                continue
            sd = f" ± {c['sd']:.1f}" if c["sd"] is not None else ""
            cells.append(f"{', '.join(f'{g:+.1f}' for g in c['gains'])} ({c['mean']:+.1f}{sd}; {c['min']:+.1f})")
        first = s["checks"][keys[0]]
        rows.append(f"| {m} | {len(s['seeds'])} | " + " | ".join(cells)
                    + f" | {first['seeds_at_bar']} of {len(s['seeds'])} on {keys[0]} | "
                      f"{s['train_min_mean']:.1f} min ({device_note}) |")
    return "\n".join(rows)


def load_records(runs: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(runs.glob("*_s*.json"))]


def write(records: list[dict], out: Path, machine: dict, readme: bool, run_note: str | None = None) -> str:
    summary = summarise(records)
    old = json.loads(out.read_text()) if out.exists() else {}
    doc = {"summary": summary, "runs": records, "machine": machine,
           "run_note": run_note or old.get("run_note", ""),
           "note": "kNN: weighted k=20 on pooled features, synthetic train renders as the bank and val renders as "
                   "queries, labels synth shape_cls; each check compares the run's initial backbone (rebuilt from "
                   "its seed) with its final one on the same bank and queries",
           "written": datetime.now(UTC).isoformat(timespec="seconds")}
    tmp = out.with_suffix(".tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, out)
    text = table(summary, machine.get("short", ""))
    if readme and README.exists():
        doc_text = README.read_text()
        if START in doc_text and END in doc_text:
            head, rest = doc_text.split(START, 1)
            README.write_text(head + START + "\n" + text + "\n" + END + rest.split(END, 1)[1])
    return text


def machine_info(device: str) -> dict:
    import torch

    info = {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__, "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["short"] = f"{info['gpu']}, runs side by side"
    else:
        info["short"] = f"{os.cpu_count()} CPU cores"
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", action="append", choices=pl.METHODS, help="repeatable, in priority order")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--parallel", type=int, default=1, help="runs at a time")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    ap.add_argument("--checks", default="4000,2000;8000,4000", metavar="BANK,QUERIES;...")
    ap.add_argument("--epochs", type=int, help="instead of the preset's (a smoke test; recorded in the note)")
    ap.add_argument("--limit", type=int, help="training images instead of the preset's 4,000 (a smoke test)")
    ap.add_argument("--deadline-s", type=float, default=None,
                    help="stop the runs still going after this many seconds (run again to resume them)")
    ap.add_argument("--runs", type=Path, default=Path("runs/pretrain_seeds"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--no-readme", action="store_true")
    ap.add_argument("--summarise", type=Path, metavar="RUNS",
                    help="only rebuild --out and the table from a runs folder or a results file")
    ap.add_argument("--run-note", help="how the runs went (kept in --out until replaced)")
    ap.add_argument("--one", nargs=2, metavar=("METHOD", "SEED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    checks = [tuple(int(x) for x in c.split(",")) for c in args.checks.split(";") if c]

    if args.one:  # a child: one run, its record to RUNS/NAME.json
        method, seed = args.one[0], int(args.one[1])
        rec = one(method, seed, args.device, args.runs, checks, args.epochs, args.limit)
        path = args.runs / f"{rec['name']}.json"
        path.with_suffix(".tmp").write_text(json.dumps(rec, indent=1) + "\n")
        os.replace(path.with_suffix(".tmp"), path)
        return
    if args.summarise:  # a runs folder, or a results file's runs
        recs = (json.loads(args.summarise.read_text())["runs"] if args.summarise.is_file()
                else load_records(args.summarise))
        print(write(recs, args.out, recs[0].get("machine", {}) if recs else {}, not args.no_readme, args.run_note))
        return

    args.runs.mkdir(parents=True, exist_ok=True)
    machine = machine_info(args.device)
    seeds = [int(s) for s in args.seeds.split(",")]
    queue = [(m, s) for m in (args.method or pl.METHODS) for s in seeds
             if not (args.runs / f"{m}_s{s}.json").exists()]
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
    running: dict[tuple[str, int], subprocess.Popen] = {}
    missing = 0  # runs that failed or were stopped: the exit status says so
    t0 = time.monotonic()
    while queue or running:
        while queue and len(running) < args.parallel:
            m, s = queue.pop(0)
            log = open(args.runs / f"{m}_s{s}.log", "w")  # noqa: SIM115 (the child's, closed with it)
            cmd = [sys.executable, __file__, "--one", m, str(s), "--device", args.device, "--runs", str(args.runs),
                   "--checks", args.checks]
            cmd += ["--epochs", str(args.epochs)] if args.epochs else []
            cmd += ["--limit", str(args.limit)] if args.limit else []
            running[(m, s)] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        time.sleep(2)
        for key, p in list(running.items()):
            if p.poll() is None:
                continue
            del running[key]
            rec_path = args.runs / f"{key[0]}_s{key[1]}.json"
            if p.returncode or not rec_path.exists():
                print(f"{key[0]} seed {key[1]}: failed (exit {p.returncode}); see {rec_path.with_suffix('.log')}",
                      flush=True)
                missing += 1
                continue
            rec = json.loads(rec_path.read_text())
            rec["machine"] = machine
            rec_path.write_text(json.dumps(rec, indent=1) + "\n")
            gains = ", ".join(f"{c['gain_points']:+.1f} ({c['bank']}/{c['queries']})" for c in rec["checks"])
            print(f"{key[0]} seed {key[1]}: {gains}; train {rec['train_s'] / 60:.1f} min "
                  f"[{time.monotonic() - t0:.0f} s]", flush=True)
            write(load_records(args.runs), args.out, machine, not args.no_readme, args.run_note)
        if args.deadline_s and time.monotonic() - t0 > args.deadline_s and running:
            for key, p in running.items():
                p.terminate()
                print(f"{key[0]} seed {key[1]}: stopped at the deadline (run again to resume it)", flush=True)
            for p in running.values():
                p.wait()
            missing += len(running) + len(queue)
            running.clear()
            queue.clear()
    recs = load_records(args.runs)
    if recs:
        print(write(recs, args.out, machine, not args.no_readme, args.run_note))
    if missing:
        sys.exit(f"{missing} run(s) failed or were stopped; the summary holds the {len(recs)} that finished")


if __name__ == "__main__":
    main()
