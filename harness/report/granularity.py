"""Label granularity (Cole et al.): each encoder's score on a fine task beside its score on the task's coarse
twin, the same images labelled with fewer, broader classes.

The pairs are declared on the task records (``TaskSpec.coarse_of``: ``cifar100_coarse_cls`` groups the classes of
``cifar100_cls``, ``synth_shape_coarse_cls`` those of ``synth_shape_cls``), never read from the names. Scores of
tasks with different numbers of classes are compared relative to each task's chance (the trivial predictor's
score its record declares): ``(score - chance) / (perfect - chance)``, the share of the way from chance to a
perfect score. ``difference`` is coarse minus fine on that scale: how much more of the coarse grouping than of
the fine classes a linear head finds in the encoder's features. Cole et al. found that gap widening for
self-supervised encoders as labels get finer.

Cole et al. train the fine classifier once and coarsen its predictions; here each twin trains its own head on
its own labels (the task's protocol), so the coarse score is that of the best head for the coarse labels.
"""

from __future__ import annotations

import pandas as pd

from .base import Outcome, ReportOptions, Skip, _pairs
from .plots import _colors, _figure

# The best score of each metric a pair can be compared on (top-1 of a classification task).
PERFECT: dict[str, float] = {"top1": 1.0}

COLUMNS = ["encoder", "fine_task", "coarse_task", "fine_classes", "coarse_classes", "fine_score", "fine_chance",
           "coarse_score", "coarse_chance", "fine_norm", "coarse_norm", "difference"]


def granularity_pairs() -> list[tuple[object, object]]:
    """(fine task, coarse task) records of every registered coarse twin whose fine task is registered."""
    from tasks.registry import TASKS, all_tasks

    return [(TASKS[t.coarse_of], t) for t in all_tasks() if t.coarse_of and t.coarse_of in TASKS]


def relative_to_chance(score: float, chance: float, perfect: float) -> float:
    """The share of the way from chance (0) to a perfect score (1)."""
    return (score - chance) / (perfect - chance)


def granularity(scores: pd.DataFrame, opts: ReportOptions) -> Outcome:
    """One row per encoder x pair with default-protocol scores on both twins: the two scores, their chance
    levels, each relative to its chance and the coarse minus fine difference on that scale."""
    pairs = granularity_pairs()
    have = scores.set_index(["encoder", "task"])["score"]
    rows, notes, unusable, alone = [], [], [], []
    for fine, coarse in pairs:
        fine_enc = set(scores.loc[scores["task"] == fine.name, "encoder"])
        coarse_enc = set(scores.loc[scores["task"] == coarse.name, "encoder"])
        both = sorted(fine_enc & coarse_enc)
        alone += [(e, fine.name) for e in sorted(fine_enc - coarse_enc)]
        alone += [(e, coarse.name) for e in sorted(coarse_enc - fine_enc)]
        if not both:
            continue
        why = [f"{t.name} declares no chance level" for t in (fine, coarse) if t.chance is None]
        why += [f"{t.name}'s metric {t.metric} has no known perfect score" for t in (fine, coarse)
                if t.metric not in PERFECT]
        if why:
            unusable.append(f"{fine.name} / {coarse.name} ({'; '.join(why)})")
            continue
        for enc in both:
            f, c = float(have[(enc, fine.name)]), float(have[(enc, coarse.name)])
            fn = relative_to_chance(f, fine.chance, PERFECT[fine.metric])
            cn = relative_to_chance(c, coarse.chance, PERFECT[coarse.metric])
            rows.append({"encoder": enc, "fine_task": fine.name, "coarse_task": coarse.name,
                         "fine_classes": fine.num_outputs, "coarse_classes": coarse.num_outputs,
                         "fine_score": f, "fine_chance": fine.chance, "coarse_score": c, "coarse_chance": coarse.chance,
                         "fine_norm": fn, "coarse_norm": cn, "difference": cn - fn})
    if unusable:
        notes.append(f"pairs left out: {'; '.join(unusable)}")
    if alone:
        notes.append(f"{len(alone)} result(s) without their twin's (same encoder, default protocol): {_pairs(alone)}")
    if not rows:
        known = ", ".join(f"{f.name} / {c.name}" for f, c in pairs) or "none registered"
        raise Skip(f"no encoder has default-protocol scores on both a fine task and its coarse twin ({known})"
                   + (f"; {notes[0]}" if unusable else ""))
    table = pd.DataFrame(rows, columns=COLUMNS)
    for (fine_task, coarse_task), grp in table.groupby(["fine_task", "coarse_task"], sort=False):
        lo, hi = grp.loc[grp["difference"].idxmin()], grp.loc[grp["difference"].idxmax()]
        span = (f"{lo['difference']:+.3f} ({lo['encoder']})" if len(grp) == 1 else
                f"from {lo['difference']:+.3f} ({lo['encoder']}) to {hi['difference']:+.3f} ({hi['encoder']})")
        notes.insert(0, f"{coarse_task} minus {fine_task}, relative to chance: {span}")
    notes.insert(0, "norm = (score - chance) / (1 - chance): 0 is chance, 1 a perfect score; difference = coarse "
                    "norm - fine norm (> 0: the coarse grouping is resolved better than the fine classes)")
    summary = {"pairs": int(table[["fine_task", "coarse_task"]].drop_duplicates().shape[0]),
               "encoders": int(table["encoder"].nunique()), "mean_difference": float(table["difference"].mean())}
    return Outcome({"granularity": table}, notes, summary)


def plot_granularity(outcome: Outcome, opts: ReportOptions):
    """Per pair, two panels in the paper's layout (coarse to fine, left to right): the scores with each task's
    chance level, and the same relative to chance; one line per encoder."""
    t = outcome.table
    pairs = list(dict.fromkeys(zip(t["fine_task"], t["coarse_task"], strict=True)))
    colors = _colors(t["encoder"])
    fig = _figure(9, 3.4 * len(pairs) + 0.35 + 0.22 * ((len(colors) + 3) // 4))
    axes = fig.subplots(len(pairs), 2, squeeze=False)
    for (fine_task, coarse_task), (ax_raw, ax_norm) in zip(pairs, axes, strict=True):
        sel = t[(t["fine_task"] == fine_task) & (t["coarse_task"] == coarse_task)]
        first = sel.iloc[0]
        ticks = [f"{coarse_task}\n({first['coarse_classes']} classes)",
                 f"{fine_task}\n({first['fine_classes']} classes)"]
        for _, r in sel.iterrows():
            ax_raw.plot([0, 1], [r["coarse_score"], r["fine_score"]], marker="o", color=colors[str(r["encoder"])])
            ax_norm.plot([0, 1], [r["coarse_norm"], r["fine_norm"]], marker="o", color=colors[str(r["encoder"])])
        for x, chance in ((0, first["coarse_chance"]), (1, first["fine_chance"])):
            ax_raw.plot([x - 0.15, x + 0.15], [chance, chance], color="gray", linestyle="--", linewidth=1)
        ax_raw.text(1.17, first["fine_chance"], "chance", color="gray", fontsize="x-small", va="center")
        ax_norm.axhline(0, color="gray", linestyle="--", linewidth=1)
        ax_raw.set_ylabel("test score (top-1)")
        ax_norm.set_ylabel("(score - chance) / (1 - chance)")
        for ax in (ax_raw, ax_norm):
            ax.set_xticks([0, 1], ticks, fontsize="small")
            ax.set_xlim(-0.3, 1.45)
        ax_raw.set_title("score (dashes: chance)", fontsize="small")
        ax_norm.set_title("relative to chance (0: chance, 1: perfect)", fontsize="small")
    from matplotlib.lines import Line2D

    fig.legend(handles=[Line2D([], [], marker="o", color=c, label=k) for k, c in colors.items()],
               fontsize="x-small", loc="outside lower center", ncols=min(4, len(colors)), title="encoder",
               title_fontsize="x-small")
    return fig
