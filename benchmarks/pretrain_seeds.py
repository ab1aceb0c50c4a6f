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


def where(record: dict) -> str:
    return "GPU" if str(record.get("device", "cpu")).startswith("cuda") else "CPU"


def summarise(records: list[dict]) -> dict:
    """Per method: each run's gain on each check (GPU runs first, then CPU, by seed), their mean, sample standard
    deviation and minimum, and the mean train time per run on each kind of machine."""
    out: dict[str, dict] = {}
    for m in pl.METHODS:
        rs = sorted((r for r in records if r["method"] == m), key=lambda r: (where(r) != "GPU", r["seed"]))
        if not rs:
            continue
        per_check = {}
        for i, c in enumerate(rs[0]["checks"]):
            key = f"{c['bank']}/{c['queries']}"
            gains = [r["checks"][i]["gain_points"] for r in rs]
            per_check[key] = {"gains": gains, "mean": round(statistics.fmean(gains), 2),
                              "sd": round(statistics.stdev(gains), 2) if len(gains) > 1 else None,
                              "min": min(gains), "runs_at_bar": sum(g >= BAR for g in gains)}
        kinds = sorted({where(r) for r in rs}, key=lambda k: k != "GPU")
        out[m] = {"runs": [{"seed": r["seed"], "where": where(r), "name": r["name"]} for r in rs],
                  "epochs": rs[0]["epochs"], "steps": rs[0]["steps"],
                  "train_min_mean": {k: round(statistics.fmean(r["train_s"] for r in rs if where(r) == k) / 60, 2)
                                     for k in kinds},
                  "monitor_gains": [r["gain_points"] for r in rs], "checks": per_check}
    return out


def table(summary: dict, notes: dict[str, str]) -> str:
    """``notes``: a few words per method and kind of machine (``"swav CPU"``), or per kind (``"GPU"``), for the
    train-time column."""
    keys = sorted({k for s in summary.values() for k in s["checks"]}, key=lambda k: int(k.split("/")[0]))
    head = "| method | runs | " + " | ".join(f"gain on {k} per run (mean ± sd; worst)" for k in keys)
    rows = [head + " | runs at the 5-point bar | train time per run |",
            "|---|---|" + "---|" * len(keys) + "---|---|"]
    for m, s in summary.items():
        kinds = list(s["train_min_mean"])
        cells = []
        for k in keys:
            c = s["checks"].get(k)
            if c is None:
                cells.append("-")
                continue
            groups = []
            for kind in kinds:
                gs = [g for g, r in zip(c["gains"], s["runs"], strict=True) if r["where"] == kind]
                groups.append((f"{kind} " if len(kinds) > 1 else "") + ", ".join(f"{g:+.1f}" for g in gs))
            sd = f" ± {c['sd']:.1f}" if c["sd"] is not None else ""
            cells.append(f"{'; '.join(groups)} ({c['mean']:+.1f}{sd}; {c['min']:+.1f})")
        n = len(s["runs"])
        count = ", ".join(f"{sum(r['where'] == k for r in s['runs'])} {k}" for k in kinds)
        times = "; ".join(f"{k} {t:.1f} min" + (f" ({note})" if (note := notes.get(f"{m} {k}", notes.get(k))) else "")
                          for k, t in s["train_min_mean"].items())
        rows.append(f"| {m} | {count} | " + " | ".join(cells)
                    + f" | {s['checks'][keys[0]]['runs_at_bar']} of {n} on {keys[0]} | {times} |")
    return "\n".join(rows)


def from_run(run: Path, checks: list[tuple[int, int]], load_note: str = "") -> dict:
    """The record of a finished ``harness pretrain --preset small`` run on this machine (its CPU)."""
    import torch

    state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    settings = json.loads(state["settings"])
    rec = pl.from_run(run, 1000, 250)
    if rec["overrides"]:
        raise SystemExit(f"{run}: not the preset as shipped ({', '.join(rec['overrides'])})")
    rec.pop("diagnostics")
    rec.update({"seed": settings["seed"], "name": run.name, "device": "cpu", "load_note": load_note,
                "final_diagnostics": last_diagnostics(state["history"]), "machine": machine_info("cpu"),
                "checks": [pl.recheck(run, b, q) for b, q in checks]})
    return rec


def retire(out: Path, methods: list[str], note: str, readme: bool) -> str:
    """Drop ``methods``' runs from ``out`` (their preset's recipe changed: no current claim rests on them) and
    rewrite the summary. Returns the rows of docs/pretraining-log.md's table of retired runs, ``note`` beneath
    them, then the new summary table; the runs' full records stay in git's history of ``out``."""
    doc = json.loads(out.read_text())
    moved = [r for r in doc["runs"] if r["method"] in methods]
    if not moved:
        raise SystemExit(f"{out}: no runs of {', '.join(methods)} to retire")
    kept = [r for r in doc["runs"] if r["method"] not in methods]
    text = write(kept, out, doc.get("machine", {}), readme, doc.get("run_note"))
    return "\n".join([*(retired_row(r) for r in moved), f"retired because: {note}", "", text])


def retired_row(r: dict) -> str:
    """One line of docs/pretraining-log.md's table of retired seed runs: name, method, where, seed, epochs, the
    monitor's gain and each check's."""
    gains = " | ".join(f"{c['gain_points']:+.1f}" for c in r["checks"])
    return (f"| `{r['name']}` | {r['method']} | {where(r)} | {r['seed']} | {r['epochs']} | {r['gain_points']:+.1f} "
            f"| {gains} |")


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
    shorts: dict[str, list[str]] = {}  # one method's runs of one kind may come from several machines
    for r in records:
        short, key = r.get("machine", {}).get("short", ""), f"{r['method']} {where(r)}"
        if short and short not in shorts.setdefault(key, []):
            shorts[key].append(short)
    notes = {k: " / ".join(v) for k, v in shorts.items()}
    text = table(summary, notes)
    publish(doc, out, text, (START, END) if readme else None)
    return text


def publish(doc: dict, out: Path, text: str, markers: tuple[str, str] | None) -> None:
    """Write ``doc`` to ``out`` (a temporary file, then renamed) and, with ``markers`` (start, end), put the table
    ``text`` between them in the pretraining README, where both stand."""
    tmp = out.with_suffix(".tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, out)
    if markers and README.exists():
        start, end = markers
        doc_text = README.read_text()
        if start in doc_text and end in doc_text:
            head, rest = doc_text.split(start, 1)
            README.write_text(head + start + "\n" + text + "\n" + end + rest.split(end, 1)[1])


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str) -> dict:
    import torch

    info = {"cpus": os.cpu_count(), "processor": cpu_model(), "torch": torch.__version__, "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["short"] = f"{info['gpu']}, runs side by side"
    else:
        info["short"] = f"{os.cpu_count()}-core {info['processor']}, bf16 autocast where fast, runs side by side"
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
    ap.add_argument("--add-run", type=Path, action="append", default=[], metavar="DIR",
                    help="add a finished `harness pretrain --preset small` run of this machine to --out (repeatable)")
    ap.add_argument("--load-note", default="", help="with --add-run: what else ran on the machine meanwhile")
    ap.add_argument("--retire", metavar="METHOD", action="append", default=[],
                    help="drop METHOD's runs from --out (its preset's recipe changed), with --retire-note saying "
                         "why; prints their rows for docs/pretraining-log.md (repeatable)")
    ap.add_argument("--retire-note", default="")
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
    if args.retire:
        if not args.retire_note:
            raise SystemExit("--retire needs --retire-note: what the recipe was and why it was replaced")
        print(retire(args.out, args.retire, args.retire_note, not args.no_readme))
        return
    if args.add_run:  # CPU runs made with `harness pretrain`, beside the records already in --out
        doc = json.loads(args.out.read_text()) if args.out.exists() else {"runs": [], "machine": {}}
        added = [from_run(run, checks, args.load_note) for run in args.add_run]
        names = {(r["name"], r["device"]) for r in added}
        recs = [r for r in doc["runs"] if (r["name"], r.get("device")) not in names] + added
        print(write(recs, args.out, doc.get("machine", {}), not args.no_readme, args.run_note))
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
