"""Figures, drawn from an analysis's tables only (they never compute anything)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .base import Outcome, ReportOptions
from .load import DEFAULT_SETTINGS


def _colors(labels: Iterable[Any]) -> dict[Any, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    uniq = sorted({str(v) for v in labels})
    return {v: cmap(i % 10) for i, v in enumerate(uniq)}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _legend(fig, colors: dict[Any, Any], title: str) -> None:
    """A legend of colour patches beside the axes; the constrained layout makes room for it."""
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(color=c, label=k) for k, c in colors.items()], title=title, fontsize="small",
               title_fontsize="small", loc="outside right upper")


def _legend_width(labels: Iterable[Any]) -> float:
    """Inches a legend of these labels takes beside the axes (small font, a colour patch)."""
    return 0.9 + 0.07 * max((len(str(v)) for v in labels), default=0)


def plot_baseline_gain(outcome: Outcome, opts: ReportOptions):
    t = outcome.table
    colors = _colors(t["best_data"].fillna("unknown"))
    fig = _figure(6 + _legend_width(colors), 1.2 + 0.3 * len(t))
    ax = fig.add_subplot()
    y = np.arange(len(t))[::-1]
    ax.barh(y, t["improvement_pct"].fillna(0), color=[colors[str(d)] for d in t["best_data"].fillna("unknown")])
    names = [f"{task} ({enc})" for task, enc in zip(t["task"], t["best_encoder"], strict=True)]
    ax.set_yticks(y, names, fontsize="small")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"% improvement of the best self-supervised encoder over {opts.baseline}")
    _legend(fig, colors, "pretraining data")
    return fig


def plot_imagenet_correlation(outcome: Outcome, opts: ReportOptions):
    pts = outcome.tables["points"]
    cats = outcome.tables["categories"]
    panels = list(cats["category"]) or ["all"]
    fig, axes = _panels(panels, cols=2, width=4.6, height=4)
    colors = _colors(pts["task"])
    for ax, cat in zip(axes, panels, strict=False):
        sel = pts if cat == "all" else pts[pts["category"] == cat]
        for t, grp in sel.groupby("task"):
            ax.scatter(grp["imagenet_top1"], grp["z"], color=colors[str(t)], label=t, s=18)
        row = cats[cats["category"] == cat]
        stats = (f"\nPearson {row['pearson_r'].iloc[0]:.2f}, Spearman {row['spearman_rho'].iloc[0]:.2f}"
                 if len(row) else "")
        ax.set_title(f"{cat}{stats}", fontsize="small")
        ax.set_xlabel(f"{opts.imagenet_task} (ImageNet top-1)")
        ax.set_ylabel("task score (z-scored per task)")
        ax.legend(fontsize="x-small")
    return fig


def plot_task_correlation(outcome: Outcome, opts: ReportOptions):
    n = len(outcome.table)
    fig = _figure(2 * (2.5 + 0.35 * n), 2 + 0.35 * n)
    axes = fig.subplots(1, 2)
    for ax, (method, mat) in zip(axes, outcome.tables.items(), strict=True):
        tasks = list(mat["task"])
        values = mat[tasks].to_numpy(dtype=float)
        im = ax.imshow(values, cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_xticks(range(n), tasks, rotation=90, fontsize="x-small")
        ax.set_yticks(range(n), tasks, fontsize="x-small")
        cats = list(mat["category"])
        for i in range(1, n):  # lines between categories
            if cats[i] != cats[i - 1]:
                ax.axhline(i - 0.5, color="black", linewidth=1)
                ax.axvline(i - 0.5, color="black", linewidth=1)
        ax.set_title(f"{method.capitalize()} over encoders", fontsize="small")
    fig.colorbar(im, ax=list(axes), shrink=0.8)
    return fig


def plot_group_difference(outcome: Outcome, opts: ReportOptions):
    t, s = outcome.table, outcome.summary
    colors = _colors(t["category"].fillna("unknown"))
    ylabel = f"mean score, {s['a']} minus {s['b']}"
    fig = _figure(max(3.5, 1.2 + 0.45 * len(t)) + _legend_width(colors), 4.5)
    ax = fig.add_subplot()
    ax.bar(range(len(t)), t["difference"], color=[colors[str(c)] for c in t["category"].fillna("unknown")])
    ax.set_xticks(range(len(t)), t["task"], rotation=60, ha="right", fontsize="small")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{s['group_by']}: {s['a']} ({len(s['encoders_a'])}) minus {s['b']} ({len(s['encoders_b'])})",
                 fontsize="small")
    _legend(fig, colors, "category")
    return fig


def plot_normalised_distribution(outcome: Outcome, opts: ReportOptions):
    norm = outcome.tables["scores"]
    cats = list(outcome.table["category"])
    fig = _figure(1.5 + 1.8 * len(cats), 4.5)
    ax = fig.add_subplot()
    ax.boxplot([norm.loc[norm["category"] == c, "normalised"].to_numpy() for c in cats])
    ax.set_xticks(range(1, len(cats) + 1), [c.replace(" ", "\n") for c in cats], fontsize="small")
    ax.axhline(0, color="black", linewidth=0.8, linestyle="--")
    ax.set_ylabel(f"(score - {opts.baseline}) / task std")
    return fig


def plot_anova(outcome: Outcome, opts: ReportOptions):
    t = outcome.table.dropna(subset=["p_value"])
    fig = _figure(6, 1.2 + 0.45 * len(t))
    ax = fig.add_subplot()
    y = np.arange(len(t))[::-1]
    p = np.clip(t["p_value"].to_numpy(dtype=float), 1e-300, 1)
    ax.barh(y, -np.log10(p), color=["tab:red" if v < 0.05 else "tab:gray" for v in p])
    ax.set_yticks(y, t["term"])
    ax.axvline(-np.log10(0.05), color="black", linestyle="--", linewidth=0.8, label="p = 0.05")
    ax.set_xlabel("-log10 p (type-2 ANOVA on the normalised score)")
    ax.legend(fontsize="small")
    return fig


def _panels(names: list[str], cols: int = 3, width: float = 4.2, height: float = 3.6, extra: float = 0.0):
    """One panel per name, ``cols`` to a row; ``extra`` inches of height for a legend below them."""
    cols = min(cols, max(1, len(names)))
    rows = math.ceil(len(names) / cols)
    fig = _figure(width * cols, height * rows + extra)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(names):]:
        ax.set_visible(False)
    return fig, axes


def _curve_label(encoder: str, probe: str, settings: str, probes: int) -> str:
    """The encoder, its probe when several are drawn, and its run settings when they are not the default."""
    label = encoder if probes == 1 else f"{encoder} ({probe})"
    return label if settings == DEFAULT_SETTINGS else f"{label}, {settings}"


def _task_curves(t, axis: Callable, xlabel: str):
    """One panel per task, one line per encoder (and probe) of score against x. ``axis(ax, sel)``
    sets the panel's x axis up and returns grp -> (xs, ys) for the lines."""
    tasks = list(dict.fromkeys(t["task"]))
    n_probes = t["probe"].nunique()
    curves = t[["encoder", "probe", "settings"]].drop_duplicates().sort_values(["encoder", "probe", "settings"])
    labels = {f"{e}|{p}|{s}": _curve_label(e, p, s, n_probes) for e, p, s in curves.itertuples(index=False)}
    cols = min(3, len(tasks))
    per_row = max(1, int(4.2 * cols / (0.5 + 0.075 * max(len(v) for v in labels.values()))))
    fig, axes = _panels(tasks, cols=cols, extra=0.3 + 0.22 * math.ceil(len(labels) / per_row))
    colors = _colors(labels)
    for ax, task in zip(axes, tasks, strict=False):
        sel = t[t["task"] == task]
        points = axis(ax, sel)
        for (enc, probe, settings), grp in sel.groupby(["encoder", "probe", "settings"], sort=True):
            key = f"{enc}|{probe}|{settings}"
            ax.plot(*points(grp), marker="o", color=colors[key], label=labels[key])
        ax.set_title(task, fontsize="small")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("score")
    from matplotlib.lines import Line2D

    # one legend for every panel (a curve keeps its colour across tasks), below them
    fig.legend(handles=[Line2D([], [], marker="o", color=colors[k], label=v) for k, v in labels.items()],
               fontsize="x-small", loc="outside lower center", ncols=min(per_row, len(labels)))
    return fig


def plot_tap_curve(outcome: Outcome, opts: ReportOptions):
    """One panel per task: the score at each tap (by depth), one line per encoder (and probe)."""
    def axis(ax, sel):
        order = sel.sort_values(["tap_index", "tap"]).drop_duplicates("tap")["tap"].tolist()
        x = {tap: i for i, tap in enumerate(order)}
        ax.set_xticks(range(len(order)), order, rotation=30, fontsize="small")
        return lambda grp: ([x[v] for v in grp["tap"]], grp["score"])

    return _task_curves(outcome.tables["taps"], axis, "tap (shallow to deep)")


def plot_fraction_curve(outcome: Outcome, opts: ReportOptions):
    """One panel per task: the score against the fraction of the train split used (log scale)."""
    def axis(ax, sel):
        ax.set_xscale("log")

        def points(grp):
            grp = grp.sort_values("fraction")
            return grp["fraction"], grp["score"]
        return points

    return _task_curves(outcome.tables["fractions"], axis, "fraction of the train split (labels) used")


def plot_ranks(outcome: Outcome, opts: ReportOptions):
    """Encoders x tasks coloured by the rank on each task (1 = best, dark), each cell 'score (rank)';
    encoders by mean rank, best at the top."""
    t = outcome.table
    tasks = [c[: -len("_rank")] for c in t.columns if c.endswith("_rank") and c != "mean_rank"]
    ranks = t[[f"{task}_rank" for task in tasks]].to_numpy(dtype=float)
    scores = t[tasks].to_numpy(dtype=float)
    n_enc = len(t)
    fig = _figure(2.6 + 0.95 * len(tasks) + 1.2, 2.2 + 0.34 * n_enc)
    ax = fig.add_subplot()
    im = ax.imshow(ranks, cmap="viridis", vmin=1, vmax=max(2, n_enc), aspect="auto")
    for i in range(n_enc):
        for j in range(len(tasks)):
            if math.isnan(scores[i, j]):
                ax.text(j, i, "-", ha="center", va="center", fontsize="x-small")
                continue
            dark = ranks[i, j] < 1 + 0.6 * (max(2, n_enc) - 1)
            ax.text(j, i, f"{scores[i, j]:.3g} ({ranks[i, j]:g})", ha="center", va="center", fontsize="x-small",
                    color="white" if dark else "black")
    ax.set_xticks(range(len(tasks)), tasks, rotation=40, ha="right", fontsize="small")
    names = [f"{e}  ({m:.2f})" for e, m in zip(t["encoder"], t["mean_rank"], strict=True)]
    ax.set_yticks(range(n_enc), names, fontsize="small")
    ax.set_ylabel("encoder  (mean rank)")
    ax.set_title("score (rank on the task, 1 = best)", fontsize="small")
    from matplotlib.ticker import MaxNLocator

    bar = fig.colorbar(im, ax=ax, label="rank on the task", shrink=0.9)
    bar.locator = MaxNLocator(integer=True)
    bar.update_ticks()
    return fig


def plot_probe_comparison(outcome: Outcome, opts: ReportOptions):
    """One group of bars per encoder x task (and settings), one bar per probe."""
    t = outcome.table
    probes = [c for c in t.columns if c not in ("encoder", "task", "settings")]
    colors = _colors(probes)
    groups = [f"{e} / {task}" + ("" if s == DEFAULT_SETTINGS else f"\n{s}")
              for e, task, s in zip(t["encoder"], t["task"], t["settings"], strict=True)]
    step = len(probes) + 1
    fig = _figure(4.5 + 0.075 * max(len(g.split("\n")[0]) for g in groups) + _legend_width(probes),
                  1.2 + 0.22 * step * len(t))
    ax = fig.add_subplot()
    for k, probe in enumerate(probes):
        y = [(len(t) - 1 - i) * step + (len(probes) - 1 - k) for i in range(len(t))]  # first row on top
        ax.barh(y, t[probe].fillna(0), color=colors[probe], height=0.9)
    centres = [(len(t) - 1 - i) * step + (len(probes) - 1) / 2 for i in range(len(t))]
    ax.set_yticks(centres, groups, fontsize="small")
    ax.set_xlabel("test score")
    _legend(fig, colors, "probe")
    return fig
