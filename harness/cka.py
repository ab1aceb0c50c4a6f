"""Centered kernel alignment between the taps of one or more frozen encoders.

Kornblith et al. 2019 (linear / RBF CKA, biased HSIC) and Nguyen et al. 2021 (minibatch
CKA: unbiased HSIC averaged over batches). Everything works in the Gram form: a batch of
B images gives one B x B Gram per tap, whatever the width of the tap, so flattened spatial
maps of any size cost B x B memory, and the memory of a run depends on the batch size and
the number of taps, never on the number of images. All tap pairs of all encoders come out
of one batched product of the stacked Grams (no per-pair loop), accumulated in float64.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

# The options and their choices are declared in cka_options (no torch: the command line is built from them).
from .cka_options import ESTIMATORS, FEATURE_MODES, KERNELS, CKAOptions, min_batch
from .common.errors import HarnessError, UsageError

# Columns per float64 chunk when forming a Gram: bounds the float64 copy of a wide tap
# (B x 2**22 / B doubles = 32 MiB) whatever the tap's flattened width.
_GRAM_CHUNK_ELEMENTS = 1 << 22


def _check_choice(kind: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"unknown CKA {kind} {value!r}; use one of: {', '.join(choices)}")


def features_2d(x: torch.Tensor, mode: str = "flatten") -> torch.Tensor:
    """(B, C, H, W) spatial maps -> (B, C*H*W) flattened, or (B, C) averaged; (B, p) unchanged."""
    _check_choice("feature mode", mode, FEATURE_MODES)
    if x.dim() <= 2:
        return x.reshape(x.shape[0], -1)
    if mode == "pool":
        return x.flatten(2).mean(dim=2)
    return x.reshape(x.shape[0], -1)


def gram(x: torch.Tensor, kernel: str = "linear", rbf_threshold: float = 1.0) -> torch.Tensor:
    """The B x B float64 Gram of a batch of features (B, ...) flattened to (B, p).

    The linear Gram is summed over column chunks in float64, so that a wide tap never needs a
    full float64 copy. The RBF bandwidth is ``rbf_threshold`` times the median pairwise
    distance within the batch (Kornblith et al.'s convention, median over the whole matrix).
    """
    _check_choice("kernel", kernel, KERNELS)
    x = x.reshape(x.shape[0], -1)
    b, p = x.shape
    step = max(1, _GRAM_CHUNK_ELEMENTS // max(b, 1))
    k = torch.zeros(b, b, dtype=torch.float64, device=x.device)
    for start in range(0, p, step):
        chunk = x[:, start:start + step].to(torch.float64)
        k.addmm_(chunk, chunk.T)
    if kernel == "linear":
        return k
    sq = k.diagonal()
    sq_dist = (sq[:, None] + sq[None, :] - 2.0 * k).clamp_min_(0.0)
    ordered = sq_dist.flatten().sort().values  # median as numpy takes it (mean of the middle two)
    median = 0.5 * (ordered[(ordered.numel() - 1) // 2] + ordered[ordered.numel() // 2])
    if median <= 0:
        raise HarnessError("RBF CKA: every pair of samples in a batch has the same features (median distance 0)")
    return torch.exp(-sq_dist / (2.0 * rbf_threshold ** 2 * median))


def hsic_matrix(grams: torch.Tensor, estimator: str = "unbiased") -> torch.Tensor:
    """HSIC between every pair of T Grams (T, n, n) -> (T, T), as three batched products.

    biased (Gretton): tr(K H L H) / (n-1)^2 = <HKH, HLH>_F / (n-1)^2.
    unbiased (Song et al. 2012), K~ = K with zero diagonal:
      [tr(K~ L~) + (1'K~1)(1'L~1)/((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)).
    """
    _check_choice("estimator", estimator, ESTIMATORS)
    t, n, _ = grams.shape
    if n < min_batch(estimator):
        raise UsageError(f"CKA needs at least {min_batch(estimator)} samples per batch for the {estimator} "
                         f"estimator, got {n}; use a larger --batch-size / more images")
    grams = grams.to(torch.float64)
    if estimator == "biased":
        centered = grams - grams.mean(dim=1, keepdim=True) - grams.mean(dim=2, keepdim=True) \
            + grams.mean(dim=(1, 2), keepdim=True)
        flat = centered.reshape(t, -1)
        return flat @ flat.T / (n - 1) ** 2
    eye = torch.eye(n, dtype=torch.bool, device=grams.device)
    k = grams.masked_fill(eye, 0.0)
    flat = k.reshape(t, -1)
    sums = flat.sum(dim=1)
    rows = k.sum(dim=2)  # K~ 1, (T, n)
    out = flat @ flat.T + torch.outer(sums, sums) / ((n - 1) * (n - 2)) - (2.0 / (n - 2)) * (rows @ rows.T)
    return out / (n * (n - 3))


def cka_from_hsic(hsic: torch.Tensor) -> torch.Tensor:
    """CKA_ij = HSIC_ij / sqrt(HSIC_ii HSIC_jj); NaN where a self-HSIC is not positive."""
    d = hsic.diagonal()
    denom = torch.sqrt(torch.outer(d, d).clamp_min(0.0))
    out = hsic / denom
    return out.masked_fill(denom <= 0, float("nan"))


def cka(x: torch.Tensor, y: torch.Tensor, kernel: str = "linear", estimator: str = "biased",
        rbf_threshold: float = 1.0) -> float:
    """Full-batch CKA of two feature matrices for the same n samples (n x p, n x q), in float64."""
    if x.dim() < 2 or y.dim() < 2 or x.shape[0] != y.shape[0]:
        raise UsageError(f"cka needs (n, p) and (n, q) features for the same n samples, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    grams = torch.stack([gram(x, kernel, rbf_threshold), gram(y.to(x.device), kernel, rbf_threshold)])
    return float(cka_from_hsic(hsic_matrix(grams, estimator))[0, 1])


class MinibatchCKA:
    """Streaming CKA between every pair of named feature streams (Nguyen et al. 2021).

    ``update`` takes one batch of every stream (same images, same order); the accumulator keeps
    only the (T, T) sum of per-batch HSICs, so memory is O(T^2 + T B^2), independent of the
    number of images. With the unbiased estimator the result converges to the full-batch
    unbiased CKA as batches grow; the biased estimator per batch is offered for comparison.
    """

    def __init__(self, names: Sequence[str], estimator: str = "unbiased", kernel: str = "linear",
                 rbf_threshold: float = 1.0, feature_mode: str = "flatten"):
        _check_choice("estimator", estimator, ESTIMATORS)
        _check_choice("kernel", kernel, KERNELS)
        _check_choice("feature mode", feature_mode, FEATURE_MODES)
        if len(set(names)) != len(names):
            raise ValueError(f"stream names must be unique, got {list(names)}")
        self.names = list(names)
        self.estimator, self.kernel, self.rbf_threshold, self.feature_mode = (
            estimator, kernel, rbf_threshold, feature_mode)
        self._sum: torch.Tensor | None = None
        self.batches = 0
        self.n = 0

    def update(self, feats: Sequence[torch.Tensor]) -> None:
        if len(feats) != len(self.names):
            raise ValueError(f"expected {len(self.names)} feature tensors, got {len(feats)}")
        b = feats[0].shape[0]
        if any(f.shape[0] != b for f in feats):
            raise ValueError(f"all streams need the same batch, got sizes {[f.shape[0] for f in feats]}")
        if b < min_batch(self.estimator):
            raise UsageError(f"minibatch CKA needs batches of at least {min_batch(self.estimator)} images "
                             f"({self.estimator} HSIC), got {b}")
        grams = torch.stack([gram(features_2d(f, self.feature_mode), self.kernel, self.rbf_threshold)
                             for f in feats])
        h = hsic_matrix(grams, self.estimator)
        self._sum = h if self._sum is None else self._sum + h
        self.batches += 1
        self.n += b

    def hsic(self) -> torch.Tensor:
        """Mean per-batch HSIC, (T, T) float64 on the CPU."""
        if self._sum is None:
            raise HarnessError("no batch was accumulated; CKA needs at least one batch of images")
        return (self._sum / self.batches).cpu()

    def compute(self) -> torch.Tensor:
        """(T, T) float64 CKA matrix in the order of ``names``."""
        return cka_from_hsic(self.hsic())


# --------------------------------------------------------------------------- the run over encoders


@dataclass
class CKAResult:
    """The JSON document of ``harness cka --json`` (docs/cli.md field names, more welcome)."""

    encoders: list[str]
    taps: dict[str, list[str]]
    n: int
    resolution: int
    estimator: str
    kernel: str
    feature_mode: str
    batch_size: int
    batches: int
    data: str
    per_class: int | None
    seed: int
    matrices: dict[str, list[list[float | None]]]
    summary: dict[str, dict[str, float | None]]
    heatmaps: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _unique_labels(names: Sequence[str]) -> list[str]:
    """Encoder labels for matrix keys; a name given twice gets '#2', '#3', ..."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        label = Path(name).stem if "/" in name or name.endswith((".pt", ".pth", ".safetensors")) else name
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return out


def off_diagonal_mean(m: torch.Tensor) -> float:
    """Mean of the entries off the diagonal of a square matrix (the paper's Appendix E summary)."""
    k = m.shape[0]
    if k < 2:
        return float("nan")
    mask = ~torch.eye(k, dtype=torch.bool)
    return float(m[mask].mean())


def split_matrix(full: torch.Tensor, labels: Sequence[str], taps: dict[str, list[str]]) -> dict[str, torch.Tensor]:
    """Blocks of the all-taps matrix per ordered encoder pair, keyed 'A|B' (rows A's taps)."""
    offsets, start = {}, 0
    for label in labels:
        offsets[label] = (start, start + len(taps[label]))
        start += len(taps[label])
    return {f"{a}|{b}": full[offsets[a][0]:offsets[a][1], offsets[b][0]:offsets[b][1]]
            for a in labels for b in labels}


def _num(v: float) -> float | None:
    return None if math.isnan(v) else round(float(v), 8)


def summarize(blocks: dict[str, torch.Tensor], labels: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """Per encoder: mean off-diagonal CKA of its own matrix, and the mean matched-tap CKA with each other one."""
    out: dict[str, dict[str, float | None]] = {}
    for a in labels:
        row = {"mean_offdiag": _num(off_diagonal_mean(blocks[f"{a}|{a}"]))}
        for b in labels:
            m = blocks[f"{a}|{b}"]
            if b != a and m.shape[0] == m.shape[1]:
                row[f"mean_diag_vs_{b}"] = _num(float(m.diagonal().mean()))
        out[a] = row
    return out


def _to_rows(m: torch.Tensor) -> list[list[float | None]]:
    return [[_num(v) for v in row] for row in m.tolist()]


def save_heatmap(m: torch.Tensor, rows: Sequence[str], cols: Sequence[str], title: str, path: Path,
                 row_label: str = "", col_label: str = "") -> Path:
    """A heatmap of ``m`` (rows x cols), first row at the bottom: shallow taps low and left, deep ones up
    and right, as ``format_table`` prints it. Published atomically, cropped to what it draws."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .common.atomic import atomic_path

    fig = Figure(figsize=(1.6 + 0.8 * len(cols), 1.2 + 0.7 * len(rows)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(m.numpy(), vmin=0.0, vmax=1.0, cmap="magma", origin="lower")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j in range(len(cols)):
            v = float(m[i, j])
            ax.text(j, i, "-" if math.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if v > 0.6 else "white")
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(row_label)
    ax.set_xlabel(col_label)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", pad_inches=0.08)
    return path


def unordered_pairs(labels: Sequence[str]) -> list[tuple[str, str]]:
    """Each encoder with itself and with every later one: B vs A is A vs B transposed, so it is drawn
    and printed once."""
    return [(a, b) for i, a in enumerate(labels) for b in labels[i:]]


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def accumulate(acc: MinibatchCKA, encoders: Sequence[torch.nn.Module], taps: Sequence[Sequence[str]],
               images: torch.Tensor) -> None:
    """One batch: one forward pass per encoder (all its taps at once), then every tap pair at once."""
    feats: list[torch.Tensor] = []
    for enc, names in zip(encoders, taps, strict=True):
        out = enc(images, tuple(names))
        feats.extend(out[t] for t in names)
    acc.update(feats)


def run_cka(opts: CKAOptions) -> CKAResult:
    """Encode the subset once per encoder per batch and accumulate every tap pair of every encoder."""
    from encoders.registry import create_encoder

    from .cka_data import build_source
    from .common.device import resolve_device
    from .common.progress import progress
    from .features import loader

    t0 = time.perf_counter()
    device = resolve_device(opts.device)
    encoders = [create_encoder(name, opts.encoder_seed) for name in opts.encoders]
    labels = _unique_labels(opts.encoders)
    taps: dict[str, list[str]] = {}
    for label, enc in zip(labels, encoders, strict=True):
        declared = list(enc.taps)
        # By default the encoder's own blocks; derived taps (block4_os16) only when asked for.
        wanted = list(opts.taps) if opts.taps else [n for n, t in enc.taps.items() if not t.derived]
        unknown = [t for t in wanted if t not in enc.taps]
        if unknown:
            raise UsageError(f"encoder {label} has no tap(s) {unknown}; it declares {declared}")
        taps[label] = wanted
        enc.to(device)
    source = build_source(opts.data, limit=opts.limit, resolution=opts.resolution, seed=opts.seed,
                          data_root=opts.data_root, split=opts.split)
    n_total = len(source.dataset)
    if n_total < min_batch(opts.estimator):
        raise HarnessError(f"only {n_total} images selected from {opts.data}; CKA needs at least "
                           f"{min_batch(opts.estimator)}")
    names = [f"{label}/{t}" for label in labels for t in taps[label]]
    acc = MinibatchCKA(names, opts.estimator, opts.kernel, opts.rbf_threshold, opts.feature_mode)
    dl = loader(source.dataset, opts.batch_size, device, num_workers=opts.num_workers)
    t_loop = time.perf_counter()
    for batch in progress(dl, desc="cka", total=len(dl)):
        images = batch["image"]
        if images.shape[0] < min_batch(opts.estimator):
            continue  # a ragged last batch too small for the estimator is left out (n says so)
        images = _resize(images.to(device, non_blocking=True).float(), source.resolution)
        accumulate(acc, encoders, [taps[label] for label in labels], images)
    loop_s = time.perf_counter() - t_loop
    full = acc.compute()
    blocks = split_matrix(full, labels, taps)
    result = CKAResult(
        encoders=labels, taps=taps, n=acc.n, resolution=source.resolution, estimator=opts.estimator,
        kernel=opts.kernel, feature_mode=opts.feature_mode, batch_size=opts.batch_size, batches=acc.batches,
        data=source.description, per_class=source.per_class, seed=opts.seed,
        matrices={k: _to_rows(v) for k, v in blocks.items()}, summary=summarize(blocks, labels),
        sources={label: enc.info.source for label, enc in zip(labels, encoders, strict=True)},
    )
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    if opts.heatmaps:
        for a, b in unordered_pairs(labels):  # B vs A is the transpose of A vs B: drawn once
            key = f"{a}|{b}"
            m = blocks[key]
            fname = f"cka_{a}_vs_{b}.png".replace("#", "-").replace("/", "_")
            title = f"{opts.kernel} CKA ({opts.estimator}), n={acc.n}, {source.resolution}px: {a} vs {b}"
            result.heatmaps[key] = str(save_heatmap(m, taps[a], taps[b], title, out / fname, a, b))
    result.timings = {"loop_s": round(loop_s, 3), "total_s": round(time.perf_counter() - t0, 3)}
    from .common.atomic import write_json

    write_json(out / "cka.json", result.to_dict())
    return result


def _fmt(v: float | None) -> str:
    return "nan" if v is None else f"{v:.3f}"


def format_table(result: CKAResult) -> str:
    """The matrices for the terminal, one per unordered encoder pair and in the heatmaps' orientation
    (deepest tap at the top), then the summary in words."""
    lines = [(f"{result.kernel} CKA, {result.estimator} estimator, n={result.n} images "
              f"({result.batches} batches of {result.batch_size}), {result.resolution}px, "
              f"{result.feature_mode} features, data: {result.data}")]
    for a, b in unordered_pairs(result.encoders):
        rows = result.matrices[f"{a}|{b}"]
        width = max(len(t) for t in result.taps[a]) + 2
        col = max(7, *(len(t) + 1 for t in result.taps[b]))
        lines.append("")
        heatmap = result.heatmaps.get(f"{a}|{b}")
        lines.append(f"{a} (rows, deepest at the top) vs {b} (columns)"
                     + (f", as in {Path(heatmap).name}" if heatmap else ""))
        for t, row in reversed(list(zip(result.taps[a], rows, strict=True))):
            lines.append(f"{t:<{width}}" + "".join(f"{_fmt(v):>{col}}" for v in row))
        lines.append(" " * width + "".join(f"{t:>{col}}" for t in result.taps[b]))
    lines.append("")
    lines.append("mean CKA between different taps of one encoder (higher: early and late blocks more alike):")
    name_w = max(len(label) for label in result.encoders)
    for label, row in result.summary.items():
        lines.append(f"  {label:<{name_w}}  {_fmt(row['mean_offdiag'])}")
    matched = [(a, b, result.summary[a].get(f"mean_diag_vs_{b}")) for a, b in unordered_pairs(result.encoders)
               if a != b and f"mean_diag_vs_{b}" in result.summary[a]]
    if matched:
        lines.append("mean CKA of the same tap across two encoders (conv with conv, ..., in tap order):")
        pair_w = max(len(f"{a} and {b}") for a, b, _ in matched)
        for a, b, v in matched:
            lines.append(f"  {f'{a} and {b}':<{pair_w}}  {_fmt(v)}")
    return "\n".join(lines)


def dumps(result: CKAResult) -> str:
    return json.dumps(result.to_dict(), indent=2)
