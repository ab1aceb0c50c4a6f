"""Is the synthetic world learnable but not trivial? Per image-level synthetic task:

- chance: the declared trivial predictor (train-majority class on test);
- raw pixels: scikit-learn logistic regression on standardised raw pixels (C chosen on val);
- random-init ResNet-18: `harness eval` with the task's defaults (full grid, best epoch on val).

Usage: python benchmarks/synthetic_baselines.py [--out benchmarks/results/synthetic_baselines.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from harness.common.atomic import write_json
from harness.runner import EvalOptions, run_eval
from tasks import get_task
from tasks.spec import DataRequest

TASKS = ("synth_shape_cls", "synth_count", "synth_num_steps")


def arrays(task, split):
    ds = task.dataset(task, DataRequest(split=split, data_root=None, resolution=None, limit=None, train=False))
    x = ds.images.reshape(len(ds.images), -1).astype(np.float32) / 255.0
    return x, np.asarray(ds.targets)


def raw_pixel_probe(task) -> dict:
    (xtr, ytr), (xva, yva), (xte, yte) = (arrays(task, s) for s in ("train", "val", "test"))
    scaler = StandardScaler().fit(xtr)
    xtr, xva, xte = scaler.transform(xtr), scaler.transform(xva), scaler.transform(xte)
    best = None
    for c in (1e-4, 1e-3, 1e-2):
        clf = LogisticRegression(C=c, max_iter=300).fit(xtr, ytr)
        val = clf.score(xva, yva)
        if best is None or val > best[0]:
            best = (val, c, clf.score(xte, yte))
    return {"val": best[0], "C": best[1], "test": best[2]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/synthetic_baselines.json"))
    ap.add_argument("--results", type=Path, default=Path("/tmp/harness-baseline-results"))
    args = ap.parse_args()
    rows = []
    for name in TASKS:
        task = get_task(name)
        t0 = time.perf_counter()
        probe = raw_pixel_probe(task)
        t1 = time.perf_counter()
        (rec,) = run_eval(EvalOptions(encoder="resnet18", tasks=[task], out=args.results, device="cpu", force=True))
        rows.append({"task": name, "chance": task.chance, "raw_pixels_test": probe["test"], "raw_pixels_C": probe["C"],
                     "resnet18_random_test": rec["test"], "resnet18_random_val": rec["val"],
                     "resnet18_config": rec["config"]["label"], "probe_s": t1 - t0,
                     "eval_s": rec["timings"]["total_s"]})
        print(json.dumps(rows[-1]))
    write_json(args.out, rows)
    print(f"{'task':18s} {'chance':>7s} {'raw px':>7s} {'R18 rand':>8s}")
    for r in rows:
        print(f"{r['task']:18s} {r['chance']:7.3f} {r['raw_pixels_test']:7.3f} {r['resnet18_random_test']:8.3f}")


if __name__ == "__main__":
    main()
