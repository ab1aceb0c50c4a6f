"""Does each pretraining method learn? ``harness pretrain --preset small`` per method on the synthetic corpus,
with the weighted kNN accuracy on the synth_shape_cls labels (synthetic train renders as the bank, val renders
as queries) at initialisation and along the run, the per-epoch diagnostics (loss, spread of the normalised
embedding, MoCo's positive / negative similarity, SwAV's prototype movement) and the wall time.

Results merge into benchmarks/results/pretrain_learning.json (one entry per method; re-running a method
replaces its entry) and the table between the markers in encoders/pretrain/README.md is rewritten. The file holds
only the entries behind that table; a variant tried on the way (``--set``, a stopped run) is written up in
docs/pretraining-log.md, not kept there.

    PYTHONPATH=. python benchmarks/pretrain_learning.py                    # all five methods
    PYTHONPATH=. python benchmarks/pretrain_learning.py --method mocov2    # one
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import torch

from encoders.pretrain import get_method
from encoders.pretrain.base import apply_overrides, make_backbone
from encoders.pretrain.presets import get_preset
from encoders.pretrain.train import PretrainOptions, fast_mixed_precision, knn_monitor, knn_monitor_data, run_pretrain

METHODS = ("simclr", "mocov2", "mocov1", "swav", "byol")
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "pretrain_learning.json"
README = ROOT / "encoders" / "pretrain" / "README.md"
START, END = "<!-- pretrain_learning:start -->", "<!-- pretrain_learning:end -->"


def run_one(method: str, args: argparse.Namespace) -> dict:
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    res = run_pretrain(PretrainOptions(method=method, preset="small", data=["synth"], out=args.runs,
                                       knn_bank=args.knn_bank, knn_queries=args.knn_queries, seed=args.seed,
                                       device="cpu", resume=not args.fresh, lr=args.lr,
                                       overrides=dict(kv.split("=", 1) for kv in args.set)))
    wall = time.perf_counter() - t0
    return {**entry(method, args.set, res["history"], res, args.knn_bank, args.knn_queries),
            "wall_s": round(wall, 1), "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "checkpoint": res["checkpoint"]}


def entry(method: str, overrides: list[str], history: list[dict], res: dict,
          knn_bank: int, knn_queries: int) -> dict:
    """One method's record: recipe, kNN curve (initial, final, best), per-epoch diagnostics, train time."""
    curve = [{"epoch": h["epoch"], "knn": round(h["knn"], 4)} for h in history if "knn" in h]
    init, final = curve[0]["knn"], curve[-1]["knn"]
    p = get_preset(method, "small")
    extra = "".join(f", {kv}" for kv in overrides)  # a learning rate other than the preset's: table()
    extra += f", {res['epochs']} epochs" if p.epochs is not None and res["epochs"] != p.epochs else ""
    settings = {**p.settings, **dict(kv.split("=", 1) for kv in overrides)}
    return {"method": method, "preset": "small", "settings": settings, "amp": res["amp"],
            "overrides": overrides, "note": p.note + extra, "epochs": res["epochs"],
            "images": res["images"], "batch_size": res["batch_size"], "lr": res["lr"],
            "steps": res["epochs"] * (res["images"] // res["batch_size"]),
            "knn_init": init, "knn_final": final, "knn_best": max(c["knn"] for c in curve),
            "gain_points": round(100 * (final - init), 1), "knn_curve": curve,
            "train_s": round(sum(h.get("seconds", 0.0) for h in history), 1),
            "diagnostics": [{k: v for k, v in h.items() if k not in ("knn", "seconds", "images_per_s")}
                            for h in history if "loss" in h],
            "knn": {"bank": knn_bank, "queries": knn_queries, "k": 20, "labels": "synth shape_cls"},
            "measured": datetime.now(UTC).isoformat(timespec="seconds")}


def from_run(run: Path, knn_bank: int, knn_queries: int) -> dict:
    """The entry of a finished ``harness pretrain --preset small`` run, read from its resume state."""
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    s = json.loads(state["settings"]) if isinstance(state["settings"], str) else state["settings"]
    if s.get("preset") != "small":
        raise SystemExit(f"{run}: not a --preset small run (preset {s.get('preset')!r})")
    if state["epoch"] < s["epochs"]:
        raise SystemExit(f"{run}: unfinished ({state['epoch']} of {s['epochs']} epochs); resume it first")
    method, cfg = s["method"], s["config"]
    preset = get_preset(method, "small")
    # every setting the run used that differs from the preset's (warm-up, momentum, ...), as --set KEY=VALUE
    expected = _flat(asdict(apply_overrides(get_method(method).config(), dict(preset.settings))))
    overrides = [f"{k}={_fmt(v)}" for k, v in _flat(cfg).items() if _fmt(expected.get(k)) != _fmt(v)]
    images = len(json.loads((run / "manifest.json").read_text())["items"])
    # a preset run takes bf16 autocast where the machine has bf16 units: record runs on the machine they ran on
    res = {"amp": fast_mixed_precision(torch.device("cpu")), "epochs": s["epochs"], "images": images,
           "batch_size": s["batch_size"], "lr": s["lr"]}
    out = entry(method, overrides, state["history"], res, knn_bank, knn_queries)
    out["measured_by"] = f"harness pretrain --method {method} --preset small (run {run.name}, its kNN monitor)"
    return out


def recheck(run: Path, bank: int, queries: int, device: torch.device | None = None) -> dict:
    """kNN of a run's initial and final backbone on a larger bank / query set than its monitor's.

    With 250 queries one accuracy has a standard error near 3 points, so a 5-point gain read off the monitor is
    under two standard errors. The initial backbone is rebuilt from the run's seed (``make_backbone``, as
    ``create_method`` draws it); the final one is the backbone in ``last.pt``. Both see the same bank and queries.
    """
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    s = json.loads(state["settings"]) if isinstance(state["settings"], str) else state["settings"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s["seed"])
        init, _ = make_backbone(s["arch"], s["seed"])
    final, _ = make_backbone(s["arch"], s["seed"])
    final.load_state_dict({k[len("backbone."):]: v for k, v in state["method"].items() if k.startswith("backbone.")})
    data = knn_monitor_data(s["resolution"], bank, queries)
    device = device or torch.device("cpu")
    a0, a1 = (knn_monitor(net.to(device), data, device, k=20) for net in (init, final))
    se = [(a * (1 - a) / queries) ** 0.5 for a in (a0, a1)]
    return {"bank": bank, "queries": queries, "k": 20, "init": round(a0, 4), "final": round(a1, 4),
            "gain_points": round(100 * (a1 - a0), 1),
            # binomial standard error of each accuracy, and of the gain taken as independent (an upper bound:
            # the same queries make the two accuracies positively correlated)
            "se_points": [round(100 * e, 1) for e in se],
            "gain_se_points": round(100 * (se[0] ** 2 + se[1] ** 2) ** 0.5, 1)}


def _flat(cfg: dict, prefix: str = "") -> dict:
    """A nested config record as ``{"optim.lr": 0.03, ...}``; its ``epochs`` / ``batch_size`` are the run's."""
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif f"{prefix}{k}" not in ("epochs", "batch_size", "optim.lr", "optim.lr_batch"):
            out[f"{prefix}{k}"] = v
    return out


def _fmt(v) -> str:
    """A setting as --set writes it: 0.9, true, 0.2,1 (so that JSON lists and tuples, 10 and 10.0 compare equal)."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return ",".join(_fmt(x) for x in v)
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def table(results: dict) -> str:
    rows = ["| method | recipe | kNN init -> final (best) | gain "
            "| larger kNN: init -> final (gain ± SE; bank / queries) "
            "| kNN curve (epoch 0, then every knn_every) | steps | precision | train time |",
            "|---|---|---|---|---|---|---|---|---|"]
    for m in METHODS:
        r = results.get(m)
        if r is None:
            continue
        curve = ", ".join(f"{c['knn']:.3f}" for c in r["knn_curve"])
        rc = r.get("recheck")
        larger = (f"{rc['init']:.3f} -> {rc['final']:.3f} ({rc['gain_points']:+.1f} ± {rc['gain_se_points']:.1f}; "
                  f"{rc['bank']:,} / {rc['queries']:,})" if rc else "-")
        preset_lr = get_preset(m, "small").lr
        lr = f"lr {r['lr']:g}" + (f" (preset: {preset_lr:g})" if preset_lr and abs(r["lr"] - preset_lr) > 1e-12 else "")
        rows.append(f"| {m} | {r['note']}; {lr} | {r['knn_init']:.3f} -> {r['knn_final']:.3f} "
                    f"({r['knn_best']:.3f}) | {r['gain_points']:+.1f} | {larger} | {curve} | {r['steps']} | "
                    f"{'bf16 autocast' if r['amp'] else 'float32'} | "
                    f"{r['train_s'] / 60:.1f} min |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", action="append", choices=METHODS, help="repeatable; default: all")
    ap.add_argument("--runs", type=Path, default=Path("runs/pretrain_learning"))
    ap.add_argument("--knn-bank", type=int, default=2000)
    ap.add_argument("--knn-queries", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a preset setting (recorded in the entry; for trying variants)")
    ap.add_argument("--lr", type=float, default=None, help="override the preset's learning rate")
    ap.add_argument("--fresh", action="store_true", help="do not resume a run found in --runs")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--no-readme", action="store_true")
    ap.add_argument("--from-run", type=Path, action="append", default=[], metavar="DIR",
                    help="record a finished `harness pretrain --preset small` run instead of training "
                         "(its kNN monitor: --knn-bank / --knn-queries as it ran, default 1,000 / 250)")
    ap.add_argument("--recheck", default="4000,2000", metavar="BANK,QUERIES",
                    help="with --from-run: also measure the run's initial and final backbone with this larger "
                         "kNN bank and query set ('0' to skip)")
    args = ap.parse_args()

    doc = json.loads(args.out.read_text()) if args.out.exists() else {"results": {}}
    if args.from_run and args.knn_bank == 2000 and args.knn_queries == 1000:
        args.knn_bank, args.knn_queries = 1000, 250  # harness pretrain's own monitor
    jobs = [(None, run) for run in args.from_run] or [(m, None) for m in args.method or METHODS]
    for method, run in jobs:
        r = from_run(run, args.knn_bank, args.knn_queries) if run else run_one(method, args)
        if run and args.recheck != "0":
            bank, queries = (int(x) for x in args.recheck.split(","))
            r["recheck"] = recheck(run, bank, queries)
            print(f"{r['method']} recheck ({bank} / {queries}): {r['recheck']['init']:.3f} -> "
                  f"{r['recheck']['final']:.3f}, {r['recheck']['gain_points']:+.1f} ± "
                  f"{r['recheck']['gain_se_points']:.1f} points", flush=True)
        method = r["method"]
        doc["results"][method] = r
        doc["machine"] = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "processor": platform.processor() or platform.machine(), "torch": torch.__version__,
                          "note": "shared machine: other jobs ran at the same time, wall times are noisy"}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"{method}: knn {r['knn_init']:.3f} -> {r['knn_final']:.3f} ({r['gain_points']:+.1f} points), "
              f"{r['train_s'] / 60:.1f} min training" + (f", {r['wall_s'] / 60:.1f} min wall" if "wall_s" in r else ""),
              flush=True)
    text = table(doc["results"])
    print(text)
    if not args.no_readme and README.exists():
        readme = README.read_text()
        if START in readme and END in readme:
            head, rest = readme.split(START, 1)
            README.write_text(head + START + "\n" + text + "\n" + END + rest.split(END, 1)[1])


if __name__ == "__main__":
    main()
