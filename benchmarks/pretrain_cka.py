"""The paper's CKA finding at small scale (issue 17, item 4): mean early-vs-late block similarity per encoder.

Runs ``harness cka`` on the given encoders (checkpoints of ``harness pretrain`` or catalog names) and reports, per
encoder, the mean linear CKA between its early taps (the first half: conv, block1, block2 for a ResNet) and its
late taps (block3, block4, embedding), plus the cross-encoder CKA of matching taps. Kotar et al. found MoCo v2
keeps stronger agreement between early and late blocks than SwAV.

    PYTHONPATH=. python benchmarks/pretrain_cka.py -e runs/pretrain/<moco>/<moco>.pt -e runs/pretrain/<swav>/<swav>.pt
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "pretrain_cka.json"


def early_late(matrix: list[list[float]]) -> float:
    """Mean of the block of the CKA matrix between the first and the second half of the taps."""
    n = len(matrix)
    half = n // 2
    cells = [matrix[i][j] for i in range(half) for j in range(half, n)]
    return sum(cells) / len(cells)


def seed_groups(rows: dict[str, dict]) -> dict[str, dict]:
    """Early-vs-late CKA pooled over the seeds of one recipe: labels that differ only in a trailing ``_s<N>``.

    Returns, per recipe with at least two seeds, the labels, their values, the mean and the sample sd, so that a
    difference between two recipes can be read against the spread between seeds of one.
    """
    groups: dict[str, list[str]] = {}
    for label in rows:
        m = re.fullmatch(r"(.+)_s\d+", label)
        if m:
            groups.setdefault(m.group(1), []).append(label)
    out = {}
    for name, labels in groups.items():
        if len(labels) < 2:
            continue
        values = [rows[lab]["early_vs_late"] for lab in labels]
        out[name] = {"labels": labels, "early_vs_late": values, "mean": round(statistics.fmean(values), 4),
                     "sd": round(statistics.stdev(values), 4)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-e", "--encoder", action="append", required=True)
    ap.add_argument("--label", action="append", help="a name per encoder for the table (default: the encoder)")
    ap.add_argument("--limit", type=int, default=1024)
    ap.add_argument("--work", type=Path, default=Path("runs/pretrain_cka"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    labels = args.label or args.encoder
    cmd = [sys.executable, "-m", "harness", "cka", "--limit", str(args.limit), "--out", str(args.work), "--json"]
    for e in args.encoder:
        cmd += ["-e", e]
    doc = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    names = doc["encoders"]
    rows = {}
    for label, name in zip(labels, names, strict=True):
        m = doc["matrices"][f"{name}|{name}"]
        rows[label] = {"encoder": name, "taps": doc["taps"][name], "early_vs_late": round(early_late(m), 4),
                       "mean_offdiag": doc["summary"][name]["mean_offdiag"], "matrix": m}
    cross = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            m = doc["matrices"].get(f"{a}|{b}")
            if m:
                diagonal = [round(m[k][k], 4) for k in range(len(m))]
                cross[f"{labels[i]}|{labels[names.index(b)]}"] = {"taps": doc["taps"][a], "diagonal": diagonal}
    out = {"data": doc["data"], "n": doc["n"], "estimator": doc["estimator"], "kernel": doc["kernel"],
           "feature_mode": doc["feature_mode"], "encoders": rows, "cross": cross, "seed_groups": seed_groups(rows)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    for label, r in rows.items():
        print(f"{label}: early-vs-late CKA {r['early_vs_late']:.3f}, mean off-diagonal {r['mean_offdiag']:.3f}")
    for name, g in out["seed_groups"].items():
        print(f"{name} over {len(g['labels'])} seeds: early-vs-late CKA {g['mean']:.3f} ± {g['sd']:.3f} (sd)")
    for pair, c in cross.items():
        print(f"{pair}: CKA of matching taps {', '.join(f'{v:.3f}' for v in c['diagonal'])}")


if __name__ == "__main__":
    main()
