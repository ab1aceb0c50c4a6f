"""Do the pretext methods' small presets learn? ``harness pretrain --preset small`` per pretext method and seed, one
run at a time in this process, then each run's gain over its initial network on synth_shape_cls: weighted kNN
(``pretrain_learning.recheck``: the initial backbone rebuilt from the run's seed against the final one, 4,000-image
bank, 2,000 queries) and a linear probe (``pretrain_probe.probe``: logistic regression on standardised pooled
features, 2,000 train renders, 500 val renders). Per method: each run's gains, their mean, standard deviation and
worst, the pretext task's own accuracy at the end, and the train time (``pretrain_seeds.summarise``'s format).

Each finished run is written to ``--runs``/NAME.json and the summary to ``--out`` after every run; running the
script again skips finished runs and resumes a stopped one from its last epoch (``harness pretrain``'s resume).
The machine is shared: run it niced, in the background, and read its log.

    nohup nice -n 15 python benchmarks/pretrain_pretext.py --method rotnet --seeds 0,1,2 > rotnet.log 2>&1 &
    python benchmarks/pretrain_pretext.py --summarise          # rebuild the summary and README's table
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import pretrain_learning as pl  # noqa: E402
import pretrain_probe as pp  # noqa: E402
import pretrain_seeds as ps  # noqa: E402

METHODS = ("rotnet", "jigsaw", "relpatch", "exemplar", "splitbrain")
RESULTS = ROOT / "benchmarks" / "results" / "pretrain_pretext.json"
START, END = "<!-- pretrain_pretext:start -->", "<!-- pretrain_pretext:end -->"
KNN_CHECK = (4000, 2000)
PROBE = (2000, 500)  # pretrain_probe.py's bank and queries


def linear_probe(run: Path, bank: int, queries: int) -> dict:
    """``pretrain_probe.probe`` (linear probe and kNN on shape_cls, count, num_steps, brightness, colour) of a run's
    initial backbone (rebuilt from its seed, as ``pretrain_learning.recheck`` does) and its final one."""
    import numpy as np
    import torch

    from encoders.pretrain.base import make_backbone
    from tasks.synthetic.store import load_split

    state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    s = json.loads(state["settings"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s["seed"])
        init, _ = make_backbone(s["arch"], s["seed"])
    final, _ = make_backbone(s["arch"], s["seed"])
    final.load_state_dict({k[len("backbone."):]: v for k, v in state["method"].items() if k.startswith("backbone.")})
    fields = ("image", "shape_cls", "count", "num_steps")
    tr = load_split("single", "train", bank, s["resolution"], fields=fields)
    va = load_split("single", "val", queries, s["resolution"], fields=fields)
    edges = np.quantile((tr["image"].astype(np.float64) / 255).mean(axis=(1, 2, 3)), [0.25, 0.5, 0.75])
    tr.update(pp.image_labels(tr["image"], edges))
    va.update(pp.image_labels(va["image"], edges))
    scores = {}
    for name, net in (("init", init), ("final", final)):
        net.eval()
        scores[name] = pp.probe(pp.embed(net, tr["image"]), pp.embed(net, va["image"]), tr, va)
    return {"bank": bank, "queries": queries, **scores,
            "gain_points": round(100 * (scores["final"]["linear_shape_cls"] - scores["init"]["linear_shape_cls"]), 1),
            "se_points": round(100 * (0.25 / queries) ** 0.5, 1)}


def colour_prior(images: int = 2000, size: int = 32) -> dict:
    """What split-brain's targets hold without looking at the input (``prior_of``) over ``images`` training renders
    resized to the preset's ``size`` (its views)."""
    import torch
    import torch.nn.functional as F

    from tasks.synthetic.store import load_split

    x = torch.from_numpy(load_split("single", "train", images, 64, fields=("image",))["image"])
    x = F.interpolate(x.permute(0, 3, 1, 2).float() / 255, size=size, mode="bilinear", antialias=True,
                      align_corners=False)
    return {"images": images, "size": size, **prior_of(x)}


def prior_of(rgb) -> dict:
    """For RGB images in [0, 1] (B, 3, H, W): the entropy (nats) of split-brain's quantised ab and L targets'
    marginal distribution, and the accuracy of always naming the commonest bin. A run whose ``loss_ab`` sits at
    that entropy has learnt the colour prior and nothing that depends on the image."""
    import torch
    import torch.nn.functional as F

    from encoders.pretrain.splitbrain import SplitBrainConfig, ab_bins, lab_split, quantise_ab, quantise_l

    cfg = SplitBrainConfig()
    target = F.avg_pool2d(lab_split(rgb)[0], cfg.target_stride)
    bins = ab_bins(cfg.ab_grid)
    out = {}
    for name, labels, n in (("ab", quantise_ab(target[:, 1:], bins), len(bins)),
                            ("l", quantise_l(target[:, :1], cfg.l_bins), cfg.l_bins)):
        freq = torch.bincount(labels.flatten(), minlength=n).double()
        freq = freq[freq > 0] / freq.sum()
        out[name] = {"bins": n, "entropy_nats": round(float(-(freq * freq.log()).sum()), 3),
                     "majority_acc": round(float(freq.max()), 4)}
    return out


def one(method: str, seed: int, runs: Path, epochs: int | None = None, limit: int | None = None,
        checks: tuple[tuple[int, int], tuple[int, int]] = (KNN_CHECK, PROBE)) -> dict:
    """One run (``pretrain_seeds.one``: train, then the kNN check) and its linear probe."""
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    rec = ps.one(method, seed, "cpu", runs, [checks[0]], epochs, limit)
    rec["linear"] = linear_probe(runs / rec["name"], *checks[1])
    rec.update({"wall_s": round(time.perf_counter() - t0, 1), "machine": ps.machine_info("cpu"),
                "load_average": [round(load, 2), round(os.getloadavg()[0], 2)],
                "pretext_acc": rec["final_diagnostics"].get("acc")})
    return rec


def _stats(gains: list[float]) -> dict:
    return {"gains": gains, "mean": round(statistics.fmean(gains), 2),
            "sd": round(statistics.stdev(gains), 2) if len(gains) > 1 else None, "min": min(gains)}


def summarise(records: list[dict]) -> dict:
    """``pretrain_seeds.summarise`` over the pretext methods (kNN checks, train time), plus the linear probe's
    gains and the final pretext accuracy per method, runs in the same order."""
    saved, pl.METHODS = pl.METHODS, METHODS  # pretrain_seeds.summarise walks pretrain_learning.METHODS
    try:
        out = ps.summarise(records)
    finally:
        pl.METHODS = saved
    for m, s in out.items():
        by_name = {r["name"]: r for r in records if r["method"] == m}
        rs = [by_name[r["name"]] for r in s["runs"]]
        s["linear"] = _stats([r["linear"]["gain_points"] for r in rs])
        s["linear_init_final"] = [[r["linear"]["init"]["linear_shape_cls"], r["linear"]["final"]["linear_shape_cls"]]
                                  for r in rs]
        s["knn_init_final"] = [[c["init"], c["final"]] for r in rs for c in r["checks"][:1]]
        s["pretext_acc"] = [r.get("pretext_acc") for r in rs]
        s["note"] = rs[0]["note"]
        s["linear_on"] = [rs[0]["linear"]["bank"], rs[0]["linear"]["queries"]]
    return out


def table(summary: dict) -> str:
    def cell(c: dict) -> str:
        sd = f" ± {c['sd']:.1f}" if c["sd"] is not None else ""
        return ", ".join(f"{g:+.1f}" for g in c["gains"]) + f" ({c['mean']:+.1f}{sd}; {c['min']:+.1f})"

    first = next(iter(summary.values()), None)
    knn_on = next(iter(first["checks"])) if first else "-"
    probe_on = f"{first['linear_on'][0]}/{first['linear_on'][1]}" if first else "-"
    rows = [f"| method | `--preset small` | runs | kNN gain on {knn_on} per run (mean ± sd; worst) "
            f"| linear-probe gain on {probe_on} per run (mean ± sd; worst) | pretext accuracy at the end "
            "| train time per run |", "|---|---|---|---|---|---|---|"]
    for m, s in summary.items():
        knn = next(iter(s["checks"].values()))
        acc = ", ".join(f"{a:.2f}" for a in s["pretext_acc"] if a is not None) or "-"
        times = "; ".join(f"{k} {t:.1f} min" for k, t in s["train_min_mean"].items())
        rows.append(f"| {m} | {s['note']}; {s['steps']} steps | {len(s['runs'])} "
                    f"| {cell(knn)} | {cell(s['linear'])} | {acc} | {times} |")
    return "\n".join(rows)


def write(records: list[dict], out: Path, readme: bool, run_note: str | None = None,
          prior: dict | None = None) -> str:
    old = json.loads(out.read_text()) if out.exists() else {}
    summary = summarise(records)
    doc = {"summary": summary, "runs": records, "run_note": run_note or old.get("run_note", ""),
           "splitbrain_colour_prior": prior or old.get("splitbrain_colour_prior"),
           "note": "kNN: weighted k=20 on pooled features (pretrain_learning.recheck); linear: logistic regression "
                   "on standardised pooled features, C 0.1 (pretrain_probe.probe); labels synth shape_cls; each run's "
                   "initial backbone is rebuilt from its seed and compared with its final one on the same renders",
           "written": datetime.now(UTC).isoformat(timespec="seconds")}
    text = table(summary)
    ps.publish(doc, out, text, (START, END) if readme else None)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", action="append", choices=METHODS, help="repeatable, in order; default: all")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--runs", type=Path, default=Path("runs/pretrain_pretext"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--no-readme", action="store_true")
    ap.add_argument("--run-note", help="how the runs went (kept in --out until replaced)")
    ap.add_argument("--summarise", action="store_true", help="only rebuild --out and the table from --runs")
    ap.add_argument("--colour-prior", action="store_true",
                    help="also record split-brain's colour prior (colour_prior) in --out")
    ap.add_argument("--epochs", type=int, help="instead of the preset's (a smoke test; recorded in the note)")
    ap.add_argument("--limit", type=int, help="training images instead of the preset's 4,000 (a smoke test)")
    ap.add_argument("--checks", default="4000,2000;2000,500", metavar="KNN_BANK,QUERIES;PROBE_BANK,QUERIES",
                    help="smaller checks for a smoke test")
    args = ap.parse_args()
    checks = tuple(tuple(int(x) for x in c.split(",")) for c in args.checks.split(";"))
    args.runs.mkdir(parents=True, exist_ok=True)
    if not args.summarise:
        for m in args.method or METHODS:
            for seed in (int(s) for s in args.seeds.split(",")):
                path = args.runs / f"{m}_s{seed}.json"
                if path.exists():
                    continue
                rec = one(m, seed, args.runs, args.epochs, args.limit, checks)
                path.with_suffix(".tmp").write_text(json.dumps(rec, indent=1) + "\n")
                os.replace(path.with_suffix(".tmp"), path)
                print(f"{m} seed {seed}: kNN {rec['checks'][0]['gain_points']:+.1f}, linear "
                      f"{rec['linear']['gain_points']:+.1f}, pretext acc {rec['pretext_acc']}, train "
                      f"{rec['train_s'] / 60:.1f} min", flush=True)
                write(ps.load_records(args.runs), args.out, not args.no_readme, args.run_note)
    recs = ps.load_records(args.runs)
    prior = colour_prior() if args.colour_prior else None
    if prior:
        print(f"split-brain colour prior: {prior}")
    if recs:
        print(write(recs, args.out, not args.no_readme, args.run_note, prior))


if __name__ == "__main__":
    main()
