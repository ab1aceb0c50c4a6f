"""Analysis: architectures ranked per task and per pretraining method, with Kendall's tau between the rankings.

The view of Girish et al. 2022 ("One Network Doesn't Rule Them All"): over a population of architectures
(``resnet_space:K``, ``mobilenet_space:K``, or any others) pretrained the same way, does the order of the
architectures on one task hold on another task, or under another pretraining method? A ranking is one
(pretraining, task): its architectures ordered by score (1 = best, ties averaged). Every two rankings are
compared by Kendall's tau-b (``scipy.stats.kendalltau``, its default variant, which corrects for ties) over the
architectures both score; tau 1 is the same order, -1 the reverse, 0 no agreement.

The architecture of a result is its record's ``encoder_info.arch``; its pretraining is the card's method, and
where encoders of one method differ in data, size, epochs or corruption, those too. Several encoders of one
architecture and pretraining (random init under two names) are averaged, said so in a note.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd

from .base import Outcome, ReportOptions, Skip, _label
from .load import task_categories
from .writers import markdown_table

MIN_ARCHITECTURES = 2  # a ranking orders at least two architectures; tau needs two shared ones
PRETRAINING = ("method", "data", "size", "epochs", "corruption")  # what must agree for archs to share a ranking
TAU_VARIANT = "b"  # scipy's default: tau-b, tie-corrected
RANDOM_INIT = "none"  # the method a random-init encoder's card states


def _pretraining(scores: pd.DataFrame) -> pd.Series:
    """Each row's pretraining label: its method ('random init' for none), with the fields in which encoders of
    that method differ ('SimCLR, epochs 5')."""
    fields = scores[list(PRETRAINING)].map(_label)
    method = fields["method"].fillna("unknown method").replace(RANDOM_INIT, "random init")
    labels = method.copy()
    for m in method.unique():
        rows = method == m
        differ = [f for f in PRETRAINING[1:] if fields.loc[rows, f].nunique(dropna=False) > 1]
        if differ:
            labels[rows] = [m + ", " + ", ".join(f"{f} {fields.at[i, f] or '-'}" for f in differ)
                            for i in fields.index[rows]]
    return labels


def _ranking_label(task: str, pretraining: str, several: bool) -> str:
    return f"{task} / {pretraining}" if several else task


def arch_rank(scores: pd.DataFrame, opts: ReportOptions) -> Outcome:
    """Architectures ranked per (pretraining, task), and Kendall's tau-b between every two rankings."""
    from scipy import stats

    notes: list[str] = []
    archs = scores["arch"] if "arch" in scores else pd.Series(None, index=scores.index, dtype=object)
    known = archs.notna() & (archs.astype(str) != "?")
    if not known.all():
        missing = sorted(scores.loc[~known, "encoder"].unique())
        notes.append(f"{len(missing)} encoder(s) without an architecture on their card left out: "
                     + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
    df = scores.loc[known].assign(arch=archs[known].astype(str))
    n_arch = df["arch"].nunique()
    if n_arch < MIN_ARCHITECTURES:
        raise Skip(f"needs >= {MIN_ARCHITECTURES} architectures (encoder_info.arch), found {n_arch}")
    df = df.assign(pretraining=_pretraining(df))
    shared = df.groupby(["pretraining", "arch", "task"])["encoder"].transform("nunique")
    if (shared > 1).any():
        dup = df.loc[shared > 1].groupby(["pretraining", "arch"])["encoder"].unique()
        notes.append(f"{len(dup)} architecture(s) scored by several encoders of the same pretraining: their mean "
                     "score is ranked (" + "; ".join(f"{a} ({p}): {', '.join(sorted(e))}"
                                                     for (p, a), e in list(dup.items())[:3])
                     + (" ..." if len(dup) > 3 else "") + ")")
    cell = df.groupby(["pretraining", "task", "arch"], as_index=False)["score"].mean()
    tasks = [t for t in task_categories(df).index if t in set(cell["task"])]
    pretrainings = sorted(cell["pretraining"].unique())
    several = len(pretrainings) > 1
    rankings: dict[str, pd.Series] = {}  # label -> score per architecture
    meta: dict[str, tuple[str, str]] = {}
    thin = []
    for p in pretrainings:
        for t in tasks:
            sel = cell[(cell["pretraining"] == p) & (cell["task"] == t)].set_index("arch")["score"]
            label = _ranking_label(t, p, several)
            if len(sel) < MIN_ARCHITECTURES:
                if len(sel):
                    thin.append(label)
                continue
            rankings[label], meta[label] = sel.sort_index(), (t, p)
    if thin:
        notes.append(f"{len(thin)} task/pretraining pair(s) with fewer than {MIN_ARCHITECTURES} architectures are "
                     f"not ranked: {', '.join(thin)}")
    if len(rankings) < 2:
        raise Skip(f"needs >= 2 rankings to compare (tasks, or pretraining methods, each scored for "
                   f">= {MIN_ARCHITECTURES} architectures), found {len(rankings)}"
                   + (f" ({next(iter(rankings))})" if rankings else ""))

    labels = list(rankings)
    wide = pd.DataFrame(rankings)
    wide = wide.loc[sorted(wide.index)]
    ranks = wide.rank(axis=0, ascending=False, method="average")
    table = pd.DataFrame({"architecture": wide.index})
    for label in labels:
        table[label] = wide[label].to_numpy()
        table[f"{label}_rank"] = ranks[label].to_numpy()
    table["mean_rank"] = ranks.mean(axis=1, skipna=True).to_numpy()
    table["n_rankings"] = wide.notna().sum(axis=1).to_numpy()
    table = table.sort_values(["mean_rank", "architecture"], kind="mergesort").reset_index(drop=True)

    tau = np.eye(len(labels))
    pairs = []
    for (i, a), (j, b) in itertools.combinations(enumerate(labels), 2):
        both = wide[[a, b]].dropna()
        value, p_value = math.nan, math.nan
        if len(both) >= MIN_ARCHITECTURES and both[a].nunique() > 1 and both[b].nunique() > 1:
            res = stats.kendalltau(both[a], both[b], variant=TAU_VARIANT)
            value, p_value = float(res.statistic), float(res.pvalue)
        tau[i, j] = tau[j, i] = value
        (ta, pa), (tb, pb) = meta[a], meta[b]
        compared = "tasks" if pa == pb else "pretraining" if ta == tb else "both"
        pairs.append({"a": a, "b": b, "compared": compared, "task_a": ta, "task_b": tb, "pretraining_a": pa,
                      "pretraining_b": pb, "n": len(both), "tau_b": value, "p_value": p_value})
    pairs_df = pd.DataFrame(pairs)
    matrix = pd.DataFrame(tau, columns=labels)
    matrix.insert(0, "ranking", labels)
    matrix.insert(1, "task", [meta[lab][0] for lab in labels])
    matrix.insert(2, "pretraining", [meta[lab][1] for lab in labels])

    best_rows = []
    for label in labels:
        s = wide[label].dropna()
        top = sorted(s.index[s == s.max()])
        best_rows.append({"ranking": label, "task": meta[label][0], "pretraining": meta[label][1],
                          "best": ", ".join(top), "score": float(s.max()), "worst": ", ".join(sorted(
                              s.index[s == s.min()])), "n_architectures": len(s)})
    best = pd.DataFrame(best_rows)
    undefined = pairs_df.loc[pairs_df["tau_b"].isna(), ["a", "b"]]
    if len(undefined):
        notes.append(f"{len(undefined)} pair(s) of rankings without a tau (fewer than {MIN_ARCHITECTURES} shared "
                     "architectures, or constant scores): " + "; ".join(f"{a} vs {b}" for a, b in
                                                                       undefined.itertuples(index=False)))
    notes.append("Kendall's tau-b (scipy.stats.kendalltau, variant 'b': tie-corrected) over the architectures "
                 "both rankings score; rank 1 = best score")
    summary = {"architectures": int(wide.shape[0]), "rankings": len(labels), "pretrainings": len(pretrainings),
               "tau_variant": f"tau-{TAU_VARIANT}", "distinct_best": int(best["best"].nunique())}
    for kind in ("tasks", "pretraining"):
        sel = pairs_df.loc[pairs_df["compared"] == kind, "tau_b"].dropna()
        if len(sel):
            summary[f"mean_tau_between_{kind}"] = float(sel.mean())
    return Outcome({"ranks": table, "tau": matrix, "pairs": pairs_df, "best": best}, notes, summary)


def arch_rank_display(outcome: Outcome) -> pd.DataFrame:
    """The ranks table as text cells, 'score (rank)'."""
    t = outcome.tables["ranks"]
    labels = list(outcome.tables["tau"]["ranking"])
    out = pd.DataFrame({"architecture": t["architecture"]})
    for label in labels:
        out[label] = ["-" if math.isnan(s) else f"{s:.4g} ({r:g})"
                      for s, r in zip(t[label], t[f"{label}_rank"], strict=True)]
    out["mean rank"] = [f"{v:.2f}" for v in t["mean_rank"]]
    return out


def arch_rank_markdown(outcome: Outcome) -> str:
    tau = outcome.tables["tau"]
    labels = list(tau["ranking"])
    shown = tau[["ranking", *labels]].copy()
    for label in labels:
        shown[label] = ["" if math.isnan(v) else f"{v:.2f}" for v in shown[label]]
    s = outcome.summary
    means = "; ".join(f"mean tau-b between {k}: {s[f'mean_tau_between_{k}']:.3f}"
                      for k in ("tasks", "pretraining") if f"mean_tau_between_{k}" in s)
    return "\n".join([
        "### Architectures ranked per task and pretraining", "",
        "score (rank, 1 = best), sorted by mean rank", "", markdown_table(arch_rank_display(outcome)),
        "([arch_rank-ranks.csv](arch_rank-ranks.csv))", "",
        f"### Kendall's tau-b between rankings ({s['architectures']} architectures)", "",
        *([means, ""] if means else []), markdown_table(shown),
        "([arch_rank-tau.csv](arch_rank-tau.csv), p-values and shared counts in "
        "[arch_rank-pairs.csv](arch_rank-pairs.csv))", "",
        f"### Best architecture per ranking ({s['distinct_best']} distinct)", "",
        markdown_table(outcome.tables["best"]), "([arch_rank-best.csv](arch_rank-best.csv))", ""])


def plot_arch_rank(outcome: Outcome, opts: ReportOptions):
    """Left: Kendall's tau-b between every two rankings (annotated). Right: each architecture's rank in each
    ranking (1 = best, dark), architectures by mean rank."""
    from matplotlib.ticker import MaxNLocator

    from .plots import _figure

    tau = outcome.tables["tau"]
    labels = list(tau["ranking"])
    values = tau[labels].to_numpy(dtype=float)
    t = outcome.tables["ranks"]
    n, n_arch = len(labels), len(t)
    side = 1.6 + 0.45 * n
    fig = _figure(2 * side + 2.5 + 0.06 * max(len(a) for a in t["architecture"]), 1.6 + max(0.45 * n, 0.3 * n_arch))
    left, right = fig.subplots(1, 2, width_ratios=[n, n])
    im = left.imshow(values, cmap="RdBu_r", vmin=-1, vmax=1)
    for i in range(n):
        for j in range(n):
            v = values[i, j]
            left.text(j, i, "-" if math.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize="x-small",
                      color="white" if not math.isnan(v) and abs(v) > 0.6 else "black")
    left.set_xticks(range(n), labels, rotation=50, ha="right", fontsize="x-small")
    left.set_yticks(range(n), labels, fontsize="x-small")
    left.set_title(f"Kendall's tau-b between rankings\n({outcome.summary['architectures']} architectures)",
                   fontsize="small")
    fig.colorbar(im, ax=left, shrink=0.8, label="tau-b")
    ranks = t[[f"{label}_rank" for label in labels]].to_numpy(dtype=float)
    rim = right.imshow(ranks, cmap="viridis", vmin=1, vmax=max(2, n_arch), aspect="auto")
    for i in range(n_arch):
        for j in range(n):
            r = ranks[i, j]
            right.text(j, i, "-" if math.isnan(r) else f"{r:g}", ha="center", va="center", fontsize="x-small",
                       color="white" if not math.isnan(r) and r < 1 + 0.6 * (max(2, n_arch) - 1) else "black")
    right.set_xticks(range(n), labels, rotation=50, ha="right", fontsize="x-small")
    right.set_yticks(range(n_arch), [f"{a}  ({m:.2f})" for a, m in zip(t["architecture"], t["mean_rank"],
                                                                         strict=True)], fontsize="x-small")
    right.set_title("rank of each architecture (1 = best)\narchitecture (mean rank)", fontsize="small")
    bar = fig.colorbar(rim, ax=right, shrink=0.8, label="rank")
    bar.locator = MaxNLocator(integer=True)
    bar.update_ticks()
    return fig
