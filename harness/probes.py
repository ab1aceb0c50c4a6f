"""Probes beyond the task's own head, all from the same cached features.

- **Any layer** (``--tap block3``, ``--tap all``): a linear probe (the task's single-layer or
  fusion head) on any tap the encoder declares. Spatial taps are pooled as Kolesnikov et al.
  did ("Revisiting Self-Supervised Visual Representation Learning", 2019, and their released
  evaluation): adaptive average pooling to the g x g grid whose
  C * g^2 is nearest ``POOL_DIMS`` = 9000 features (a map already smaller is kept as is); the
  grid is recorded. ``--tap all`` encodes every block in one pass and gives one record per tap.
- **kNN** (``--probe knn``): the weighted k-nearest-neighbour classifier of Wu et al. (2018), as
  DINO and MoCo monitor with it: cosine similarity on L2-normalised embeddings, the k nearest
  train samples vote with weight exp(similarity / T); k = 20 and T = 0.07 by default, a list of
  either is a grid chosen on val.
- **Logistic regression** (``--probe logreg``): scikit-learn's L-BFGS logistic regression on the
  standardised embedding, the linear-probe protocol of the CLIP paper: C chosen on val by its
  parametric binary search over 1e-6..1e6 (7 points two decades apart, then halving the step
  around the best until 8 steps per decade), unless ``--logreg-c`` gives the values. The chosen
  model (fitted on train) is tested; CLIP_benchmark refits on train + val, this harness never
  trains on val.

kNN and logistic regression are deterministic: one fit serves every head seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from encoders.base import FrozenEncoder, TapModel
from tasks.metrics import make_metric
from tasks.spec import TaskSpec

from .cache import MemoryFeatures
from .common.errors import HarnessError, UsageError
from .common.taps import Tap

TAP_ALL = "all"
DEFAULT_TAP = "embedding"  # what the single-layer and fusion heads read
POOL_DIMS = 9000  # Kolesnikov et al.: spatial taps pooled to about 9000 features
KNN_K = 20
KNN_T = 0.07
CLIP_START = (-6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0)  # log10 C, the CLIP paper's first sweep
CLIP_STEP = 0.125  # ... refined to 8 steps per decade
LOGREG_MAX_ITER = 1000


# ------------------------------------------------------------------------------------- taps

def pooled_name(tap: str, dims: int) -> str:
    """The cache name of a spatial tap pooled to about ``dims`` features."""
    return f"{tap}@avg{dims}"


def pool_grid(channels: int, height: int, width: int, dims: int) -> tuple[int, int]:
    """The g x g grid whose C * g^2 is nearest ``dims`` (the smaller on a tie, at least 1), capped by the
    map's own size; a map of at most ``dims`` features keeps its size."""
    if channels * height * width <= dims:
        return height, width
    target = math.sqrt(dims / channels)
    lo, hi = max(1, math.floor(target)), max(1, math.ceil(target))
    g = lo if abs(dims - channels * lo * lo) <= abs(dims - channels * hi * hi) else hi
    return min(g, height), min(g, width)


class PooledTaps(TapModel):
    """An encoder's tap model that also serves each spatial tap adaptively average-pooled."""

    def __init__(self, inner: TapModel, dims: int):
        super().__init__()
        self.inner, self.dims = inner, dims
        self.sources = {pooled_name(t.name, dims): t.name for t in inner.taps if t.spatial and not t.derived}
        self.taps = tuple(inner.taps) + tuple(Tap(p, next(t.channels for t in inner.taps if t.name == s), None,
                                                  derived=True) for p, s in self.sources.items())

    def forward(self, x: torch.Tensor, taps: tuple[str, ...]) -> dict[str, torch.Tensor]:
        base = tuple(dict.fromkeys(self.sources.get(t, t) for t in taps))
        out = self.inner(x, base)
        result = {}
        for t in taps:
            if t not in self.sources:
                result[t] = out[t]
                continue
            feat = out[self.sources[t]]
            grid = pool_grid(feat.shape[1], feat.shape[2], feat.shape[3], self.dims)
            result[t] = feat if grid == tuple(feat.shape[2:]) else F.adaptive_avg_pool2d(feat, grid)
        return result


def pooled_encoder(encoder: FrozenEncoder, dims: int) -> FrozenEncoder:
    """``encoder`` serving pooled taps too; the same weights, fingerprint and card (records and cache
    keys name the pooled taps, so they never mix with the raw ones)."""
    mean = tuple(encoder.mean.flatten().tolist())
    std = tuple(encoder.std.flatten().tolist())
    wrapped = FrozenEncoder(PooledTaps(encoder.model, dims), encoder.info, mean=mean, std=std)
    wrapped._fingerprint = encoder.fingerprint()
    return wrapped


def requested_taps(encoder: FrozenEncoder, tap: str | None) -> list[str | None]:
    """The taps one run probes: [None] (the head's own input) without ``--tap``; one declared tap; or
    every block the encoder declares (``all``), in its order."""
    if tap is None:
        return [None]
    own = [t.name for t in encoder.model.taps if not t.derived]
    if tap == TAP_ALL:
        return own
    if tap not in own:
        raise UsageError(f"--tap {tap}: encoder {encoder.name} declares {', '.join(own)} (or use --tap all)")
    return [tap]


def check_applies(task: TaskSpec, probe: str, tap: str | None) -> None:
    """--probe knn/logreg and --tap need one class per sample and a head that reads the embedding."""
    if probe != "head" and (task.output != "image" or not task.is_classification):
        raise HarnessError(f"task {task.name}: --probe {probe} applies to image-level classification tasks "
                           f"(this one is {task.output}-level with loss {task.loss}); run it with --probe head")
    if tap is not None and probe == "head" and task.head not in ("linear", "fusion"):
        raise HarnessError(f"task {task.name}: --tap probes the linear or fusion head on a pooled tap; this task's "
                           f"{task.head} head reads its own taps (drop --tap)")


def feature_name(tap: str | None, encoder: FrozenEncoder, dims: int) -> str | None:
    """The name a probed tap has in the encoded features (None: the head's own taps)."""
    if tap is None or tap == DEFAULT_TAP:
        return None if tap is None else DEFAULT_TAP
    spatial = encoder.taps[tap].spatial
    return pooled_name(tap, dims) if spatial else tap


def _flatten(x: torch.Tensor, frames: int) -> torch.Tensor:
    return x.flatten(2) if frames > 1 else x.flatten(1)


class _TapView:
    """A feature source serving one tap as the flat ``embedding`` the probes read."""

    def __init__(self, source, name: str, frames: int):
        self.source, self.name, self.frames = source, name, frames

    def __len__(self) -> int:
        return len(self.source)

    def batches(self, batch_size: int, device: torch.device, shuffle: bool = False,
                generator: torch.Generator | None = None):
        for x, y, valid in self.source.batches(batch_size, device, shuffle=shuffle, generator=generator):
            yield {"embedding": _flatten(x[self.name], self.frames)}, y, valid


def tap_view(source, name: str | None, frames: int):
    """``source`` with tap ``name`` served as the (flat) embedding; ``source`` itself when None."""
    if name is None:
        return source
    if isinstance(source, MemoryFeatures):
        return MemoryFeatures({"embedding": _flatten(source.taps[name], frames)}, source.target, source.valid)
    return _TapView(source, name, frames)


def feature_shape(source, name: str) -> tuple[int, ...]:
    """Per-sample shape of tap ``name`` in a feature source (memory, cache entry, or one batch)."""
    if isinstance(source, MemoryFeatures):
        return tuple(source.taps[name].shape[1:])
    path = getattr(source, "path", None)
    if path is not None:
        import h5py

        with h5py.File(path, "r") as fh:
            return tuple(fh["taps"][name].shape[1:])
    x, _, _ = next(iter(source.batches(1, torch.device("cpu"))))
    return tuple(x[name].shape[1:])


def probe_taps(source, frames: int) -> dict[str, Tap]:
    """The width a head reads from a tap view (one frame's flat features), as a tap declaration."""
    shape = feature_shape(source, "embedding")
    return {"embedding": Tap("embedding", int(np.prod(shape[1:] if frames > 1 else shape)), None)}


def tap_record(tap: str | None, name: str | None, encoder: FrozenEncoder, source, dims: int) -> dict[str, Any]:
    """Record fields of the probed tap: its name, depth (position among the encoder's blocks) and,
    for a pooled spatial tap, the pooling (mode, target dims, grid, features)."""
    own = [t.name for t in encoder.model.taps if not t.derived]
    tap = tap or DEFAULT_TAP
    out: dict[str, Any] = {"tap": tap, "tap_index": own.index(tap) if tap in own else None, "pool": None}
    if name is not None and name != tap:
        shape = feature_shape(source, name)
        out["pool"] = {"mode": "adaptive_avg", "dims": dims, "grid": [int(shape[-2]), int(shape[-1])],
                       "features": int(np.prod(shape[-3:]))}
    return out


# ------------------------------------------------------------------------------- probe results

@dataclass(frozen=True)
class KnnConfig:
    k: int
    temperature: float

    @property
    def label(self) -> str:
        return f"knn_k{self.k}_t{self.temperature:g}"


@dataclass(frozen=True)
class LogregConfig:
    C: float  # noqa: N815 - scikit-learn's name

    @property
    def label(self) -> str:
        return f"logreg_C{self.C:.4g}"


@dataclass
class ProbeResult:
    """One kNN / logistic-regression setting scored on val: the fields of ``train.FitResult`` a record reads."""

    config: KnnConfig | LogregConfig
    best_val: float
    best_epoch: int | None = None  # no epochs
    state: Any = None
    history: list[dict[str, float]] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)


Scorer = Callable[[ProbeResult, Any], tuple[dict[str, float], int]]  # (chosen, test source) -> (scores, parameters)


def _gather(source, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's flat embeddings (N, F) in float32 and targets, in dataset order."""
    if isinstance(source, MemoryFeatures):
        x, y = source.taps["embedding"], source.target
    else:
        xs, ys = [], []
        for xb, yb, _ in source.batches(4096, torch.device("cpu")):
            xs.append(xb["embedding"])
            ys.append(yb)
        x, y = torch.cat(xs), torch.cat(ys)
    return x.reshape(len(x), -1).to(device, torch.float32), y.to(device)


def _score(task: TaskSpec, logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    metric = make_metric(task)
    metric.update(logits, y, None)
    return metric.compute()


# ----------------------------------------------------------------------------------------- kNN

@torch.no_grad()
def knn_votes(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
              configs: Sequence[KnnConfig], chunk_elems: int = 1 << 26) -> list[torch.Tensor]:
    """Per config, (Q, num_classes) votes: the k most cosine-similar bank rows vote for their class
    with weight exp(similarity / T). ``bank`` and ``queries`` are L2-normalised here."""
    bank = F.normalize(bank, dim=1)
    queries = F.normalize(queries, dim=1)
    kmax = min(max(c.k for c in configs), len(bank))
    rows = max(1, min(4096, chunk_elems // max(len(bank), 1)))
    out: list[list[torch.Tensor]] = [[] for _ in configs]
    for q in queries.split(rows):
        sims, idx = (q @ bank.T).topk(kmax, dim=1)  # sorted, most similar first
        labels = bank_labels[idx]
        for i, c in enumerate(configs):
            k = min(c.k, kmax)
            weights = (sims[:, :k] / c.temperature).exp()
            votes = torch.zeros(len(q), num_classes, device=q.device, dtype=weights.dtype)
            out[i].append(votes.scatter_add_(1, labels[:, :k], weights))
    return [torch.cat(v) if v else torch.zeros(0, num_classes) for v in out]


def knn_probe(task: TaskSpec, train, val, device: torch.device, ks: Sequence[int],
              temperatures: Sequence[float]) -> tuple[ProbeResult, list[ProbeResult], Scorer]:
    """Every (k, T) scored on val (train -> val); the best (the first on a tie) and its scorer."""
    bank, bank_y = _gather(train, device)
    xv, yv = _gather(val, device)
    configs = [KnnConfig(int(k), float(t)) for k in ks for t in temperatures]
    results = [ProbeResult(c, float(_score(task, v, yv)[task.metric]))
               for c, v in zip(configs, knn_votes(bank, bank_y, xv, task.num_outputs, configs), strict=True)]
    best = max(results, key=lambda r: r.best_val)

    def score(chosen: ProbeResult, test) -> tuple[dict[str, float], int]:
        xt, yt = _gather(test, device)
        (votes,) = knn_votes(bank, bank_y, xt, task.num_outputs, [chosen.config])
        return _score(task, votes, yt), 0

    return best, results, score


# --------------------------------------------------------------------------- logistic regression

def _probabilities(clf, x: np.ndarray, num_classes: int) -> torch.Tensor:
    """(N, num_classes) class probabilities; classes the train subset lacked get 0."""
    out = np.zeros((len(x), num_classes))
    out[:, clf.classes_] = clf.predict_proba(x)
    return torch.from_numpy(out)


def fit_logreg(x: np.ndarray, y: np.ndarray, c: float):
    """scikit-learn's L-BFGS multinomial logistic regression at inverse regularisation ``c``."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, max_iter=LOGREG_MAX_ITER, solver="lbfgs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return clf.fit(x, y)


def clip_sweep(evaluate: Callable[[float], float], start: Sequence[float] = CLIP_START,
               step: float = CLIP_STEP) -> dict[float, float]:
    """The CLIP paper's parametric binary search for C: ``evaluate`` at 10**e for the start exponents,
    then at best +- half the spacing, halving until ``step``; {C: val} of every point tried."""
    tried: dict[float, float] = {}

    def at(e: float) -> None:
        if e not in tried:
            tried[e] = evaluate(10.0 ** e)

    for e in start:
        at(e)
    lo, hi = min(start), max(start)
    spacing = (hi - lo) / max(len(start) - 1, 1)
    while spacing > step:
        spacing /= 2
        best = max(sorted(tried), key=lambda e: tried[e])  # ties: the smaller C
        for e in (best - spacing, best + spacing):
            if lo <= e <= hi:
                at(e)
    return {10.0 ** e: v for e, v in sorted(tried.items())}


def logreg_probe(task: TaskSpec, train, val, device: torch.device,
                 cs: Sequence[float] | None) -> tuple[ProbeResult, list[ProbeResult], Scorer]:
    """C swept on val (``cs`` or the CLIP search) on standardised features; the best fit and its scorer."""
    from sklearn.preprocessing import StandardScaler

    cpu = torch.device("cpu")
    xt, yt = (a.numpy() for a in _gather(train, cpu))
    xv, yv = _gather(val, cpu)
    scaler = StandardScaler().fit(xt.astype(np.float64))
    xt_s, xv_s = scaler.transform(xt.astype(np.float64)), scaler.transform(xv.numpy().astype(np.float64))
    fits: dict[float, Any] = {}

    def evaluate(c: float) -> float:
        fits[c] = fit_logreg(xt_s, yt, c)
        return float(_score(task, _probabilities(fits[c], xv_s, task.num_outputs), yv)[task.metric])

    vals = {float(c): evaluate(float(c)) for c in cs} if cs else clip_sweep(evaluate)
    results = [ProbeResult(LogregConfig(c), v, state=fits[c]) for c, v in vals.items()]
    best = max(results, key=lambda r: r.best_val)

    def score(chosen: ProbeResult, test) -> tuple[dict[str, float], int]:
        xs, ys = _gather(test, cpu)
        probs = _probabilities(chosen.state, scaler.transform(xs.numpy().astype(np.float64)), task.num_outputs)
        clf = chosen.state
        return _score(task, probs, ys), int(clf.coef_.size + clf.intercept_.size)

    return best, results, score


def fit_probe(probe: str, task: TaskSpec, train: list, val, device: torch.device, seeds: Sequence[int], *,
              knn_k: Sequence[int] = (KNN_K,), knn_t: Sequence[float] = (KNN_T,),
              logreg_c: Sequence[float] | None = None) -> tuple[list, Scorer]:
    """Fit a kNN or logistic-regression probe on train copy 0, choose its setting on val; per seed
    (deterministic: the same fit) the runner's (seed, chosen, all settings) rows, and the test scorer."""
    if probe == "knn":
        best, results, score = knn_probe(task, train[0], val, device, knn_k, knn_t)
    elif probe == "logreg":
        best, results, score = logreg_probe(task, train[0], val, device, logreg_c)
    else:
        raise ValueError(f"unknown probe {probe!r}")
    return [(s, best, results) for s in seeds], score
