"""`harness report`'s architecture view (Girish et al.): architectures ranked per task and per pretraining method,
Kendall's tau-b between rankings, checked against scipy.stats.kendalltau on hand-built records."""

import json

import pandas as pd
import pytest
from scipy import stats
from typer.testing import CliRunner

from harness.cli import app
from harness.report import build_report
from tests.harness.test_report import write_record

TASKS = ["t_shape", "t_count", "t_steps"]
ARCHS = ["resnet_space:0", "resnet_space:1", "resnet_space:2", "resnet_space:3", "mobilenet_v2"]
# (method, arch) -> scores on TASKS; t_count of random init has a tie (0.40, 0.40), which tau-b corrects for
SCORES = {
    ("none", "resnet_space:0"): [0.50, 0.30, 0.20],
    ("none", "resnet_space:1"): [0.60, 0.40, 0.10],
    ("none", "resnet_space:2"): [0.55, 0.40, 0.30],
    ("none", "resnet_space:3"): [0.40, 0.20, 0.25],
    ("none", "mobilenet_v2"): [0.45, 0.35, 0.05],
    ("SimCLR", "resnet_space:0"): [0.70, 0.50, 0.35],
    ("SimCLR", "resnet_space:1"): [0.65, 0.55, 0.30],
    ("SimCLR", "resnet_space:2"): [0.75, 0.45, 0.20],
    ("SimCLR", "resnet_space:3"): [0.60, 0.60, 0.40],
    # mobilenet_v2 not pretrained: the SimCLR rankings hold 4 architectures
}


def info(method: str, arch: str) -> dict:
    return {"name": f"{method}_{arch}", "arch": arch, "method": method, "data": "-" if method == "none" else "synth",
            "size": None, "epochs": None if method == "none" else 5, "balanced": None, "corruption": None,
            "source": "x", "extra": {}}


def write_population(folder, scores=SCORES, tasks=TASKS):
    for (method, arch), row in scores.items():
        enc = f"{method}_{arch}".replace(":", "-")
        for task, score in zip(tasks, row, strict=True):
            write_record(folder, enc, task, score, info=info(method, arch), category="semantic image-level")
    return folder


def table(doc: dict, name: str) -> pd.DataFrame:
    return pd.DataFrame(doc["analyses"]["arch_rank"]["tables"][name])


@pytest.fixture(scope="module")
def doc(tmp_path_factory):
    root = write_population(tmp_path_factory.mktemp("population"))
    return build_report(root, root / "report")


def _scores(method: str, task: str) -> dict[str, float]:
    i = TASKS.index(task)
    return {arch: row[i] for (m, arch), row in SCORES.items() if m == method}


def test_tau_between_every_two_rankings_is_scipys_tau_b(doc):
    a = doc["analyses"]["arch_rank"]
    assert a["status"] == "ok", a.get("reason")
    pairs = table(doc, "pairs")
    labels = {f"{t} / {'random init' if m == 'none' else m}": (m, t) for m in ("none", "SimCLR") for t in TASKS}
    assert len(pairs) == len(labels) * (len(labels) - 1) // 2
    for row in pairs.itertuples():
        (ma, ta), (mb, tb) = labels[row.a], labels[row.b]
        sa, sb = _scores(ma, ta), _scores(mb, tb)
        shared = sorted(set(sa) & set(sb))
        ref = stats.kendalltau([sa[x] for x in shared], [sb[x] for x in shared])  # tau-b, scipy's default
        assert row.n == len(shared)
        assert row.tau_b == pytest.approx(ref.statistic, abs=1e-12), (row.a, row.b)
        assert row.p_value == pytest.approx(ref.pvalue, abs=1e-12)
        assert row.compared == ("tasks" if ma == mb else "pretraining" if ta == tb else "both")
    # the tie on t_count (random init) makes tau-b differ from tau-a: the variant matters
    ends = {"t_shape / random init", "t_count / random init"}
    tie = pairs[[{a, b} == ends for a, b in zip(pairs["a"], pairs["b"], strict=True)]].iloc[0]
    x, y = [0.50, 0.60, 0.55, 0.40, 0.45], [0.30, 0.40, 0.40, 0.20, 0.35]
    concordant = sum((x[i] - x[j]) * (y[i] - y[j]) > 0 for i in range(5) for j in range(i))
    discordant = sum((x[i] - x[j]) * (y[i] - y[j]) < 0 for i in range(5) for j in range(i))
    tau_a = (concordant - discordant) / 10
    tau_b = (concordant - discordant) / (10 * 9) ** 0.5  # 10 pairs; 1 tied in y
    assert tie.tau_b == pytest.approx(tau_b) and tie.tau_b != pytest.approx(tau_a)
    # the matrix holds the same numbers, symmetric, 1 on the diagonal
    tau = table(doc, "tau").set_index("ranking")
    for row in pairs.itertuples():
        assert tau.loc[row.a, row.b] == tau.loc[row.b, row.a] == pytest.approx(row.tau_b)
    assert all(tau.loc[lab, lab] == 1 for lab in labels)
    assert "tau-b" in " ".join(a["notes"]) and a["summary"]["tau_variant"] == "tau-b"
    means = {k: pairs.loc[pairs["compared"] == k, "tau_b"].mean() for k in ("tasks", "pretraining")}
    assert a["summary"]["mean_tau_between_tasks"] == pytest.approx(means["tasks"])
    assert a["summary"]["mean_tau_between_pretraining"] == pytest.approx(means["pretraining"])


def test_ranks_and_best_per_task_and_method(doc):
    ranks = table(doc, "ranks").set_index("architecture")
    for method, label in (("none", "random init"), ("SimCLR", "SimCLR")):
        for task in TASKS:
            col = f"{task} / {label}"
            s = pd.Series(_scores(method, task))
            expected = s.rank(ascending=False, method="average")
            for arch, r in expected.items():
                assert ranks.loc[arch, f"{col}_rank"] == r and ranks.loc[arch, col] == pytest.approx(s[arch])
    assert pd.isna(ranks.loc["mobilenet_v2", "t_shape / SimCLR_rank"])  # not pretrained: not in that ranking
    assert ranks.loc["mobilenet_v2", "n_rankings"] == 3
    best = table(doc, "best").set_index("ranking")
    assert best.loc["t_shape / random init", "best"] == "resnet_space:1"
    assert best.loc["t_count / random init", "best"] == "resnet_space:1, resnet_space:2"  # tied at the top
    assert best.loc["t_shape / SimCLR", "best"] == "resnet_space:2"
    assert best.loc["t_steps / SimCLR", "n_architectures"] == 4


def test_outputs_written_and_shown(doc, tmp_path):
    out = doc["out"]
    files = doc["analyses"]["arch_rank"]["files"]
    assert {"arch_rank.png", "arch_rank.md", "arch_rank-tau.csv", "arch_rank-pairs.csv", "arch_rank-ranks.csv",
            "arch_rank-best.csv"} <= set(files)
    tau = pd.read_csv(f"{out}/arch_rank-tau.csv")
    assert list(tau.columns[:3]) == ["ranking", "task", "pretraining"]
    md = open(f"{out}/report.md").read()
    assert "Kendall's tau-b between rankings" in md and "![arch_rank](arch_rank.png)" in md
    with open(f"{out}/arch_rank.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def _skip_reason(folder, scores, tasks) -> str:
    doc = build_report(write_population(folder, scores, tasks), folder / "report")
    a = doc["analyses"]["arch_rank"]
    assert a["status"] == "skipped" and "\n" not in a["reason"]
    return a["reason"]


def test_skipped_with_a_reason_when_one_architecture_or_one_ranking(tmp_path):
    one_arch = {k: v for k, v in SCORES.items() if k[1] == "resnet_space:0"}
    assert _skip_reason(tmp_path / "a", one_arch, TASKS) == \
        "needs >= 2 architectures (encoder_info.arch), found 1"
    one_task = {k: v[:1] for k, v in SCORES.items() if k[0] == "none"}
    reason = _skip_reason(tmp_path / "b", one_task, TASKS[:1])
    assert reason.startswith("needs >= 2 rankings to compare") and "found 1 (t_shape)" in reason
    # one task but two methods: the methods' rankings are compared
    two_methods = {k: v[:1] for k, v in SCORES.items()}
    doc = build_report(write_population(tmp_path / "c", two_methods, TASKS[:1]), tmp_path / "c" / "report")
    pairs = table(doc, "pairs")
    assert list(pairs["compared"]) == ["pretraining"] and pairs["n"].iloc[0] == 4


def test_the_cli_reports_the_view(tmp_path):
    root = write_population(tmp_path / "r")
    result = CliRunner().invoke(app, ["report", str(root), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "arch_rank: ok" in result.output
    doc = json.loads((tmp_path / "out" / "report.json").read_text())
    assert doc["analyses"]["arch_rank"]["summary"]["architectures"] == len(ARCHS)


def test_pretrainings_that_differ_beyond_the_method_rank_apart_and_repeats_are_averaged(tmp_path):
    root = tmp_path / "r"
    for epochs, shift in ((5, 0.0), (10, 0.1)):
        for arch, score in (("resnet_space:0", 0.5), ("resnet_space:1", 0.6), ("resnet_space:2", 0.4)):
            card = {**info("SimCLR", arch), "epochs": epochs}
            write_record(root, f"simclr{epochs}_{arch}".replace(":", "-"), "t_shape", score + shift, info=card)
    # random init of resnet_space:0 under two names (two seeds): one architecture, its mean score ranked
    for name, score in (("r0_seed0", 0.30), ("r0_seed1", 0.50), ("r1", 0.35)):
        arch = "resnet_space:1" if name == "r1" else "resnet_space:0"
        write_record(root, name, "t_shape", score, info=info("none", arch))
    doc = build_report(root, tmp_path / "out")
    a = doc["analyses"]["arch_rank"]
    ranks = table(doc, "ranks").set_index("architecture")
    assert set(table(doc, "tau")["ranking"]) == {"t_shape / SimCLR, epochs 5", "t_shape / SimCLR, epochs 10",
                                                  "t_shape / random init"}
    assert ranks.loc["resnet_space:0", "t_shape / random init"] == pytest.approx(0.40)
    assert ranks.loc["resnet_space:0", "t_shape / random init_rank"] == 1
    assert any("several encoders of the same pretraining" in n and "r0_seed0, r0_seed1" in n for n in a["notes"])
    pairs = table(doc, "pairs").set_index(["a", "b"])
    assert pairs.loc[("t_shape / SimCLR, epochs 10", "t_shape / SimCLR, epochs 5"), "tau_b"] == pytest.approx(1.0)
