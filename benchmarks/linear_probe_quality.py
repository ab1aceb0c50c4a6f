"""Linear probe quality (docs/performance.md): on the same encoded features, does the harness's
single-layer head reach scikit-learn's L-BFGS logistic regression with a tuned C (within 1
point of test accuracy), in less time?

Both learners see the same frozen-encoder embeddings (the harness's fp16 cache entries, cast to
float32) of each image-level synthetic task, choose their hyperparameters on the val split, and
are scored once on test:
- harness: the task's grid (4 optimizer/lr configurations), best epoch and configuration on val;
- scikit-learn: LogisticRegression(lbfgs) on standardised features, C from a log grid, on val.

Times cover training and model selection only (encoding is shared and excluded).

Usage:
  python benchmarks/linear_probe_quality.py [--encoder resnet18] [--limit N]
         [--out benchmarks/results/linear_probe_quality.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from encoders import create_encoder
from harness.cache import FeatureKey
from harness.common.atomic import write_json
from harness.features import CacheStats, EncodeSettings, get_features
from harness.runner import EvalOptions, data_request, train_val_datasets
from harness.train import evaluate, fit
from heads import get_head
from tasks import get_task

TASKS = ("synth_shape_cls", "synth_count", "synth_num_steps")
C_GRID = tuple(10.0 ** e for e in range(-4, 3))


def encoded(encoder, task, opts, cache_root):
    """(train, val, test) feature sources of the head's taps, encoded once into ``cache_root``."""
    taps = tuple(get_head(task.head).taps(task, encoder.taps))
    settings = EncodeSettings(device=torch.device("cpu"), batch_size=task.batch_size, cache_root=cache_root)
    stats = CacheStats()
    trains, val_ds, _, _ = train_val_datasets(task, opts, 1)
    test_ds = task.dataset(task, data_request(task, opts, task.splits.test, False))
    out = []
    for split, ds in (("train", trains[0]), ("val", val_ds), ("test", test_ds)):
        key = FeatureKey(encoder.fingerprint(), task.name, split, len(ds), "bench", taps, None, 0,
                         data=json.dumps({"limit": opts.limit}))
        out.append(get_features(encoder, ds, taps, key, settings, stats, desc=f"encode {task.name}/{split}"))
    return taps, out


def as_numpy(src, tap):
    return src.taps[tap].float().numpy(), src.target.numpy()


def harness_probe(encoder, task, sources) -> dict:
    train, val, test = sources
    entry = get_head(task.head)
    device = torch.device("cpu")
    t0 = time.perf_counter()
    results = []
    for i, cfg in enumerate(task.grid):
        torch.manual_seed(i)
        results.append(fit(entry.build(encoder.taps, task), [train], val, task, cfg, task.epochs, device, 0))
    best = max(results, key=lambda r: r.best_val)
    seconds = time.perf_counter() - t0
    head = entry.build(encoder.taps, task)
    head.load_state_dict(best.state)
    test_score = evaluate(head, test, task, device)[task.metric]
    return {"val": best.best_val, "test": float(test_score), "config": best.config.label,
            "epoch": best.best_epoch, "seconds": seconds}


def sklearn_probe(sources, tap) -> dict:
    (xtr, ytr), (xva, yva), (xte, yte) = (as_numpy(s, tap) for s in sources)
    t0 = time.perf_counter()
    scaler = StandardScaler().fit(xtr)
    xtr_s, xva_s = scaler.transform(xtr), scaler.transform(xva)
    best = None
    for c in C_GRID:
        clf = LogisticRegression(C=c, max_iter=1000).fit(xtr_s, ytr)
        val = clf.score(xva_s, yva)
        if best is None or val > best[0]:
            best = (val, c, clf)
    seconds = time.perf_counter() - t0
    return {"val": best[0], "C": best[1], "test": float(best[2].score(scaler.transform(xte), yte)),
            "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--limit", type=int, default=None, help="at most N training samples")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/linear_probe_quality.json"))
    args = ap.parse_args()
    encoder = create_encoder(args.encoder, seed=0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in TASKS:
            task = get_task(name)
            opts = EvalOptions(encoder=args.encoder, tasks=[task], limit=args.limit, device="cpu")
            taps, sources = encoded(encoder, task, opts, Path(tmp))
            (tap,) = taps
            ours = harness_probe(encoder, task, sources)
            ref = sklearn_probe(sources, tap)
            rows.append({"task": name, "encoder": args.encoder, "n_train": len(sources[0]),
                         "harness": ours, "sklearn": ref,
                         "accuracy_gap_points": 100 * (ours["test"] - ref["test"]),
                         "time_ratio_sklearn_over_harness": ref["seconds"] / ours["seconds"]})
            print(json.dumps(rows[-1]), flush=True)
    write_json(args.out, {"targets": {"accuracy_gap_points": ">= -1", "time_ratio_sklearn_over_harness": "> 1"},
                          "threads": torch.get_num_threads(), "rows": rows})
    print(f"{'task':18s} {'harness':>8s} {'sklearn':>8s} {'gap pts':>8s} {'t ours':>7s} {'t skl':>7s}")
    for r in rows:
        print(f"{r['task']:18s} {r['harness']['test']:8.3f} {r['sklearn']['test']:8.3f} "
              f"{r['accuracy_gap_points']:8.1f} {r['harness']['seconds']:7.2f} {r['sklearn']['seconds']:7.2f}")


if __name__ == "__main__":
    main()
