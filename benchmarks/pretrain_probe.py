"""What does a pretrained backbone's pooled feature encode? (issue 17: find out why a method does not learn)

For each encoder (a ``harness pretrain`` checkpoint, or ``init`` for the seed-0 random ResNet-18 every run starts
from) the pooled features of synthetic train renders (bank) and val renders (queries), at the corpus's 64 px:

- weighted kNN (k 20, cosine, as the pretraining monitor) on the labels the renders carry: ``shape_cls`` (the
  monitor's label), ``count``, ``num_steps``; and on two image statistics no shape is needed for: the quartile
  of the image's mean brightness (``brightness``) and its dominant colour channel (``colour``);
- kNN on ``shape_cls`` with the features centred on the bank's mean (cosine kNN of non-negative pooled features
  is dominated by their common direction: ``mean_cos`` is the squared norm of the mean unit feature, 1 when all
  features point the same way);
- a linear probe on ``shape_cls`` (logistic regression on standardised features, sklearn).

    PYTHONPATH=. python benchmarks/pretrain_probe.py init runs/x/x.pt --label init --label byol
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "pretrain_probe.json"
LABELS = ("shape_cls", "count", "num_steps", "brightness", "colour")


def image_labels(images: np.ndarray, edges: np.ndarray) -> dict[str, np.ndarray]:
    """Labels from pixels alone: the bin of the mean brightness between ``edges`` and the argmax mean channel."""
    x = images.astype(np.float64) / 255
    return {"brightness": np.digitize(x.mean(axis=(1, 2, 3)), edges).astype(np.int64),
            "colour": x.mean(axis=(1, 2)).argmax(axis=1).astype(np.int64)}


def load_backbone(spec: str) -> torch.nn.Module:
    from encoders.pretrain.base import make_backbone

    if spec == "init":
        return make_backbone("resnet18", 0)[0].eval()
    ckpt = torch.load(spec, map_location="cpu", weights_only=True)
    net, _ = make_backbone(ckpt["arch"], 0)
    net.load_state_dict(ckpt["state_dict"])
    return net.eval()


def recipe(spec: str) -> dict:
    """What made a checkpoint (its metadata: method, preset, epochs, lr, run name, ...); empty for ``init``."""
    if spec == "init":
        return {}
    meta = torch.load(spec, map_location="cpu", weights_only=True).get("meta", {})
    return {"pretrain": {k: v for k, v in meta.items() if k not in ("manifest_hash", "knn")}}


@torch.no_grad()
def embed(net: torch.nn.Module, images: np.ndarray, batch: int = 250) -> torch.Tensor:
    from harness.common.taps import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out = [net((torch.from_numpy(images[i:i + batch]).permute(0, 3, 1, 2).float() / 255 - mean) / std).float()
           for i in range(0, len(images), batch)]
    return torch.cat(out)


def probe(bank: torch.Tensor, queries: torch.Tensor, tr: dict, va: dict) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from encoders.pretrain.knn import knn_accuracy

    def knn(b: torch.Tensor, q: torch.Tensor, label: str) -> float:
        return round(knn_accuracy(b, torch.from_numpy(tr[label]), q, torch.from_numpy(va[label]), k=20), 4)

    out = {f"knn_{lab}": knn(bank, queries, lab) for lab in LABELS}
    mu = bank.mean(0)
    out["knn_shape_cls_centred"] = knn(bank - mu, queries - mu, "shape_cls")
    unit = torch.nn.functional.normalize(bank, dim=1)
    out["mean_cos"] = round(float((unit.mean(0) ** 2).sum()), 4)
    scaler = StandardScaler().fit(bank.numpy())
    clf = LogisticRegression(max_iter=2000, C=0.1).fit(scaler.transform(bank.numpy()), tr["shape_cls"])
    out["linear_shape_cls"] = round(float(clf.score(scaler.transform(queries.numpy()), va["shape_cls"])), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("encoder", nargs="+", help="'init' or a harness pretrain checkpoint (.pt)")
    ap.add_argument("--label", action="append", help="a name per encoder (default: the file's stem)")
    ap.add_argument("--bank", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.label and len(args.label) != len(args.encoder):
        raise SystemExit(f"--label given {len(args.label)} times for {len(args.encoder)} encoders")
    from tasks.synthetic.store import load_split

    fields = ("image", "shape_cls", "count", "num_steps")
    tr = load_split("single", "train", args.bank, 64, fields=fields)
    va = load_split("single", "val", args.queries, 64, fields=fields)
    edges = np.quantile((tr["image"].astype(np.float64) / 255).mean(axis=(1, 2, 3)), [0.25, 0.5, 0.75])
    tr.update(image_labels(tr["image"], edges))
    va.update(image_labels(va["image"], edges))
    rows = {}
    for i, spec in enumerate(args.encoder):
        name = args.label[i] if args.label else ("init" if spec == "init" else Path(spec).stem)
        net = load_backbone(spec)
        # the checkpoint's file name and recipe, not its path: runs live outside the repository
        scores = probe(embed(net, tr["image"]), embed(net, va["image"]), tr, va)
        rows[name] = {"encoder": spec if spec == "init" else Path(spec).name, **recipe(spec), **scores}
        print(name, json.dumps(rows[name]), flush=True)
    chance = {lab: round(float(np.bincount(va[lab]).max() / len(va[lab])), 4) for lab in LABELS}
    doc = {"encoders": rows, "bank": args.bank, "queries": args.queries, "majority_class": chance,
           "se_points_at_0.5": round(100 * (0.25 / args.queries) ** 0.5, 1),
           "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
           "torch": torch.__version__, "measured": datetime.now(UTC).isoformat(timespec="seconds")}
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
