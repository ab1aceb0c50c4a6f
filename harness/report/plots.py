"""Figures, drawn from an analysis's tables only (they never compute anything)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .base import Outcome, ReportOptions


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


def _legend(ax, colors: dict[Any, Any], title: str) -> None:
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=c, label=k) for k, c in colors.items()], title=title, fontsize="small",
              loc="upper left", bbox_to_anchor=(1.01, 1))


def plot_baseline_gain(outcome: Outcome, opts: ReportOptions):
    t = outcome.table
    colors = _colors(t["best_data"].fillna("unknown"))
    fig = _figure(7, 1.2 + 0.3 * len(t))
    ax = fig.add_subplot()
    y = np.arange(len(t))[::-1]
    ax.barh(y, t["improvement_pct"].fillna(0), color=[colors[str(d)] for d in t["best_data"].fillna("unknown")])
    names = [f"{task} ({enc})" for task, enc in zip(t["task"], t["best_encoder"], strict=True)]
    ax.set_yticks(y, names, fontsize="small")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"% improvement of the best self-supervised encoder over {opts.baseline}")
    _legend(ax, colors, "pretraining data")
    return fig


def plot_imagenet_correlation(outcome: Outcome, opts: ReportOptions):
    pts = outcome.tables["points"]
    cats = outcome.tables["categories"]
    panels = list(cats["category"]) or ["all"]
    fig = _figure(4.2 * len(panels), 4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colors = _colors(pts["task"])
    for ax, cat in zip(axes, panels, strict=True):
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
    fig = _figure(1.5 + 0.45 * len(t), 4.5)
    ax = fig.add_subplot()
    ax.bar(range(len(t)), t["difference"], color=[colors[str(c)] for c in t["category"].fillna("unknown")])
    ax.set_xticks(range(len(t)), t["task"], rotation=60, ha="right", fontsize="small")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel(f"mean score, {s['a']} minus {s['b']}")
    ax.set_title(f"{s['group_by']}: {s['a']} ({len(s['encoders_a'])}) minus {s['b']} ({len(s['encoders_b'])})",
                 fontsize="small")
    _legend(ax, colors, "category")
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


def _panels(tasks: list[str], width: float = 4.2, height: float = 3.6):
    cols = min(3, max(1, len(tasks)))
    rows = math.ceil(len(tasks) / cols)
    fig = _figure(width * cols + 1.5, height * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(tasks):]:
        ax.set_visible(False)
    return fig, axes


def _curve_label(encoder: str, probe: str, probes: int) -> str:
    return encoder if probes == 1 else f"{encoder} ({probe})"


def _task_curves(t, axis: Callable, xlabel: str):
    """One panel per task, one line per encoder (and probe) of score against x. ``axis(ax, sel)``
    sets the panel's x axis up and returns grp -> (xs, ys) for the lines."""
    tasks = list(dict.fromkeys(t["task"]))
    fig, axes = _panels(tasks)
    n_probes = t["probe"].nunique()
    colors = _colors(t["encoder"] + "|" + t["probe"])
    for ax, task in zip(axes, tasks, strict=False):
        sel = t[t["task"] == task]
        points = axis(ax, sel)
        for (enc, probe), grp in sel.groupby(["encoder", "probe"], sort=True):
            ax.plot(*points(grp), marker="o", color=colors[f"{enc}|{probe}"], label=_curve_label(enc, probe, n_probes))
        ax.set_title(task, fontsize="small")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("score")
        ax.legend(fontsize="x-small")
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
