"""`harness report`: every analysis against references computed here by hand, numpy, scipy or statsmodels."""

import dataclasses
import json
import math
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from typer.testing import CliRunner

from encoders.catalog import CATALOG
from harness.cli import app
from harness.report import (
    ANALYSES,
    ReportOptions,
    build_report,
    encoder_metadata,
    group_difference,
    load_results,
    run_analyses,
)

CATEGORY = {"imagenet_cls": "semantic image-level", "pets_cls": "semantic image-level",
            "count": "structural image-level", "seg": "semantic pixelwise", "depth": "structural pixelwise",
            "normals": "structural pixelwise"}
TASKS = list(CATEGORY)  # already in category order, then by name
# encoder -> scores on TASKS (depth is negative L1); 0.45 on count is a tie (ranks 3.5 and 3.5)
SCORES = {
    "supervised_in": [0.76, 0.60, 0.40, 0.50, -0.50, 0.30],
    "swav_in800": [0.75, 0.66, 0.50, 0.45, -0.40, 0.35],
    "swav_in200": [0.72, 0.55, 0.45, 0.48, -0.45, 0.33],
    "mocov2_in800": [0.71, 0.62, 0.42, 0.44, -0.42, 0.36],
    "mocov2_in200": [0.67, 0.50, 0.45, 0.40, -0.48, 0.31],
    "swav_places200": [0.60, 0.58, 0.48, 0.52, -0.44, 0.34],
}
NEW, OLD = "2026-01-02T00:00:00+00:00", "2026-01-01T00:00:00+00:00"


def card(encoder: str) -> dict:
    """The encoder card an eval copies into its record (the catalog's, for the paper's names)."""
    if encoder in CATALOG:
        return dataclasses.asdict(CATALOG[encoder].info)
    return {"name": encoder, "arch": "resnet50", "method": "x", "data": "x", "extra": {}}


def write_record(folder, encoder, task, score, status="ok", created=NEW, digest="0" * 10, info=None, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    rec = {"encoder": encoder, "task": task, "metric": "top1", "test": score if status == "ok" else None,
           "val": score, "status": status, "category": CATEGORY.get(task, "semantic image-level"),
           "encoder_info": info or card(encoder),
           "record_version": 2, "created": created, **extra}
    path = folder / f"{encoder}__{task}__{digest}.json"
    path.write_text(json.dumps(rec))
    return path


def write_dataset(folder, scores=SCORES, tasks=TASKS):
    for i, (enc, row) in enumerate(scores.items()):
        for task, score in zip(tasks, row, strict=True):
            write_record(folder / ("nested" if i % 2 else ""), enc, task, score)
    return folder


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The main data set plus records that must not count: an older duplicate, failed ones, a .bak, a non-record."""
    root = write_dataset(tmp_path_factory.mktemp("results"))
    write_record(root / "old", "mocov2_in800", "pets_cls", 0.99, created=OLD, digest="1" * 10)
    write_record(root, "swav_in800", "pets_cls", None, status="failed", digest="2" * 10, created="2026-02-01T00:00:00")
    write_record(root, "swav_in800", "only_failed_task", None, status="failed", error="boom")
    (root / "swav_in800__count__3333333333.json.bak").write_text(json.dumps({"encoder": "swav_in800", "task": "count",
                                                                             "status": "ok", "test": 123.0}))
    (root / "notes.json").write_text(json.dumps({"hello": "world"}))
    (root / "broken.json").write_text("{not json")
    doc = build_report(root, root / "report", ReportOptions())
    return doc, root


def table(doc, analysis, name=None):
    tables = doc["analyses"][analysis]["tables"]
    return pd.DataFrame(tables[name or next(iter(tables))])


def wide():
    return pd.DataFrame(SCORES, index=TASKS).T


def test_rank_table_hand_computed(report):
    doc, _ = report
    t = table(doc, "ranks").set_index("encoder")
    expected_ranks = {  # by hand, per task: 1 = best, the count tie averaged
        "supervised_in": [1, 3, 6, 2, 6, 6], "swav_in800": [2, 1, 1, 4, 1, 2], "swav_in200": [3, 5, 3.5, 3, 4, 4],
        "mocov2_in800": [4, 2, 5, 5, 2, 1], "mocov2_in200": [5, 6, 3.5, 6, 5, 5],
        "swav_places200": [6, 4, 2, 1, 3, 3]}
    for enc, ranks in expected_ranks.items():
        assert [t.at[enc, f"{task}_rank"] for task in TASKS] == ranks, enc
        assert [t.at[enc, task] for task in TASKS] == SCORES[enc]  # the newest duplicate (0.62), not 0.99
    mean = {"swav_in800": 11 / 6, "mocov2_in800": 19 / 6, "swav_places200": 19 / 6, "swav_in200": 22.5 / 6,
            "supervised_in": 4.0, "mocov2_in200": 30.5 / 6}
    assert list(t.index) == list(mean)  # sorted by mean rank, ties by name
    for enc, m in mean.items():
        assert t.at[enc, "mean_rank"] == pytest.approx(m, abs=1e-12)
        assert t.at[enc, "n_tasks"] == 6


def test_failed_duplicate_and_non_records_are_not_used(report):
    doc, _ = report
    rec = doc["records"]
    assert rec["used"] == 36 and rec["failed"] == 2 and rec["superseded"] == 1 and rec["not_records"] == 2
    assert rec["files"] == 36 + 1 + 2 + 2  # the .bak file is not globbed at all
    assert [t["name"] for t in doc["tasks"]] == TASKS  # no task that only failed
    notes = " ".join(doc["notes"])
    assert "newest" in notes and "mocov2_in800/pets_cls" in notes
    assert "2 failed record(s)" in notes and "swav_in800/only_failed_task" in notes


def test_baseline_gain_percentages(report):
    doc, _ = report
    t = table(doc, "baseline_gain").set_index("task")
    expected = {"imagenet_cls": ("swav_in800", (0.75 - 0.76) / 0.76 * 100), "pets_cls": ("swav_in800", 10.0),
                "count": ("swav_in800", 25.0), "seg": ("swav_places200", 4.0), "depth": ("swav_in800", 20.0),
                "normals": ("mocov2_in800", 20.0)}
    assert list(t.index) == TASKS
    for task, (best, pct) in expected.items():
        assert t.at[task, "best_encoder"] == best
        assert t.at[task, "improvement_pct"] == pytest.approx(pct, rel=1e-9)
    assert t.at["seg", "best_data"] == "Places" and t.at["count", "best_data"] == "ImageNet"
    assert doc["analyses"]["baseline_gain"]["summary"]["tasks_where_ssl_beats_baseline"] == 5


def test_imagenet_correlation_matches_scipy(report):
    doc, _ = report
    w = wide()
    t = table(doc, "imagenet_correlation", "tasks").set_index("task")
    assert list(t.index) == TASKS[1:]
    for task in TASKS[1:]:
        pr, sr = stats.pearsonr(w["imagenet_cls"], w[task]), stats.spearmanr(w["imagenet_cls"], w[task])
        assert t.at[task, "pearson_r"] == pytest.approx(pr.statistic, abs=1e-12)
        assert t.at[task, "pearson_p"] == pytest.approx(pr.pvalue, rel=1e-9)
        assert t.at[task, "spearman_rho"] == pytest.approx(sr.statistic, abs=1e-12)
        assert t.at[task, "n"] == 6
    # structural pixelwise pools depth and normals after z-scoring each over encoders
    z = np.concatenate([(w[c] - w[c].mean()) / w[c].std(ddof=1) for c in ("depth", "normals")])
    x = np.concatenate([w["imagenet_cls"]] * 2)
    cats = table(doc, "imagenet_correlation", "categories").set_index("category")
    assert list(cats.index) == ["semantic image-level", "structural image-level", "semantic pixelwise",
                                "structural pixelwise"]
    assert cats.at["structural pixelwise", "n_points"] == 12
    assert cats.at["structural pixelwise", "pearson_r"] == pytest.approx(np.corrcoef(x, z)[0, 1], abs=1e-12)
    assert cats.at["structural pixelwise", "spearman_rho"] == pytest.approx(stats.spearmanr(x, z).statistic,
                                                                           abs=1e-12)


def test_task_correlation_matrices(report):
    doc, _ = report
    w = wide()
    pear = table(doc, "task_correlation", "pearson").set_index("task")
    spear = table(doc, "task_correlation", "spearman").set_index("task")
    assert list(pear.index) == TASKS and list(pear["category"]) == [CATEGORY[t] for t in TASKS]
    np.testing.assert_allclose(pear[TASKS].to_numpy(), np.corrcoef(w.to_numpy().T), atol=1e-12)
    np.testing.assert_allclose(spear[TASKS].to_numpy(), stats.spearmanr(w.to_numpy()).statistic, atol=1e-12)


def test_group_difference_default_and_explicit(report):
    doc, root = report
    t = table(doc, "group_difference").set_index("task")
    summary = doc["analyses"]["group_difference"]["summary"]
    assert (summary["a"], summary["b"]) == ("SwAV", "MoCov2")  # the two most frequent methods (3 and 2)
    w = wide()
    swav, moco = ["swav_in800", "swav_in200", "swav_places200"], ["mocov2_in800", "mocov2_in200"]
    assert t.at["count", "difference"] == pytest.approx((0.50 + 0.45 + 0.48) / 3 - (0.42 + 0.45) / 2, abs=1e-12)
    for task in TASKS:
        assert t.at[task, "difference"] == pytest.approx(w.loc[swav, task].mean() - w.loc[moco, task].mean(),
                                                         abs=1e-12)
        assert (t.at[task, "n_a"], t.at[task, "n_b"]) == (3, 2)
        assert t.at[task, "mean_a"] == pytest.approx(w.loc[swav, task].mean(), abs=1e-12)
    scores = load_results(root, exclude=root / "report").scores
    out = group_difference(scores, ReportOptions(group_by="data", a="places", b="ImageNet"))
    seg = out.table.set_index("task").loc["seg"]
    assert (seg["group_a"], seg["group_b"], seg["n_b"]) == ("Places", "ImageNet", 5)
    assert seg["difference"] == pytest.approx(0.52 - (0.50 + 0.45 + 0.48 + 0.44 + 0.40) / 5, abs=1e-12)
    out = group_difference(scores, ReportOptions(group_by="epochs", a="800", b="200"))
    assert out.table.set_index("task").at["imagenet_cls", "difference"] == pytest.approx(
        (0.75 + 0.71) / 2 - (0.72 + 0.67 + 0.60) / 3, abs=1e-12)
    assert "1 encoder(s) with unknown epochs dropped" in out.notes  # supervised_in has no epochs


def test_normalised_scores_formula(report):
    doc, _ = report
    t = table(doc, "normalised_scores", "scores")
    w = wide().to_numpy(dtype=np.float64)
    encs = list(SCORES)
    assert len(t) == 5 * 6 and "supervised_in" not in set(t["encoder"])
    for row in t.itertuples():
        j, col = TASKS.index(row.task), w[:, TASKS.index(row.task)]
        expected = (w[encs.index(row.encoder), j] - col[0]) / np.std(col, ddof=1)
        assert row.normalised == pytest.approx(expected, rel=1e-12, abs=1e-15)
    cats = table(doc, "normalised_scores").set_index("category")
    sp = t[t["category"] == "structural pixelwise"]["normalised"]
    assert cats.at["structural pixelwise", "n"] == 10
    assert cats.at["structural pixelwise", "median"] == pytest.approx(np.median(sp), abs=1e-12)


def anova_dataset(root):
    """16 SwAV / MoCov2 encoders on 8 ImageNet subsets x 4 tasks: SwAV +0.05 planted, epochs no effect."""
    variants = ["in100", "in50", "in_half200", "in_half100", "in_lin200", "in_lin100", "in_log200",
                "in_quarter200"]
    rng = np.random.default_rng(0)
    base = {"t1": 0.5, "t2": 0.3, "t3": 0.7, "t4": 0.6}
    encs = ["supervised_in"] + [f"{m}_{v}" for m in ("swav", "mocov2") for v in variants]
    rows = []
    for enc in encs:
        for task, b in base.items():
            score = b + (0.05 if enc.startswith("swav") else 0.0) + rng.normal(0, 0.01)
            write_record(root, enc, task, score)
            rows.append({"encoder": enc, "task": task, "score": score})
    return pd.DataFrame(rows)


def test_anova_matches_statsmodels_and_finds_the_planted_effect(tmp_path):
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    df = anova_dataset(tmp_path)
    df["normalised"] = df.groupby("task")["score"].transform(
        lambda s: (s - s[df.loc[s.index, "encoder"] == "supervised_in"].iloc[0]) / s.std(ddof=1))
    df = df[df["encoder"] != "supervised_in"].copy()
    for f in ("method", "balanced", "size", "epochs"):
        df[f] = [str(getattr(CATALOG[e], f)) for e in df["encoder"]]
    fit = smf.ols("normalised ~ C(task) + C(method) + C(balanced) + C(size) + C(epochs)", data=df).fit()
    ref = anova_lm(fit, typ=2)

    scores = load_results(tmp_path).scores
    (res,) = run_analyses(scores, ReportOptions(), [a for a in ANALYSES if a.name == "anova"])
    assert res.outcome is not None, res.reason
    t = res.outcome.table.set_index("term")
    assert list(t.index) == ["task", "method", "balanced", "size", "epochs", "Residual"]
    for term in ("task", "method", "balanced", "size", "epochs"):
        assert t.at[term, "p_value"] == pytest.approx(ref.at[f"C({term})", "PR(>F)"], rel=1e-9)
        assert t.at[term, "df"] == ref.at[f"C({term})", "df"]
    assert t.at["method", "p_value"] < 0.01
    assert t.at["epochs", "p_value"] > 0.01


def test_anova_leaves_out_single_level_factors(report):
    doc, _ = report
    a = doc["analyses"]["anova"]
    terms = [r["term"] for r in a["tables"]["anova"]]
    assert terms == ["task", "method", "epochs", "Residual"]  # all five are balanced, 1.3M images
    assert any(n.startswith("balanced left out: 1 level") for n in a["notes"])
    assert all(r["p_value"] is None or 0 <= r["p_value"] <= 1 for r in a["tables"]["anova"])


def test_missing_data_skips_with_a_reason(tmp_path):
    no_sup = {k: v for k, v in SCORES.items() if k != "supervised_in"}
    doc = build_report(write_dataset(tmp_path / "a", no_sup), tmp_path / "out-a")
    for name in ("baseline_gain", "normalised_scores", "anova"):
        a = doc["analyses"][name]
        assert a["status"] == "skipped" and "supervised_in" in a["reason"] and "\n" not in a["reason"]
        assert not (tmp_path / "out-a" / f"{name}.png").exists()
    assert doc["analyses"]["imagenet_correlation"]["status"] == "ok"

    two = {k: v[1:] for k, v in list(SCORES.items())[:2]}
    doc = build_report(write_dataset(tmp_path / "b", two, TASKS[1:]), tmp_path / "out-b")
    assert "imagenet_cls" in doc["analyses"]["imagenet_correlation"]["reason"]
    assert "found 2" in doc["analyses"]["task_correlation"]["reason"]
    assert doc["analyses"]["ranks"]["status"] == "ok" and doc["analyses"]["baseline_gain"]["status"] == "ok"
    # the same out folder, now with less data: the earlier figure of a skipped analysis is removed
    build_report(tmp_path / "a", tmp_path / "out-b")
    assert (tmp_path / "out-b" / "task_correlation.png").exists()
    build_report(tmp_path / "b", tmp_path / "out-b")
    assert not (tmp_path / "out-b" / "task_correlation.png").exists()
    # --out RESULTS_DIR itself: the records are still read
    assert build_report(tmp_path / "b", tmp_path / "b")["records"]["used"] == 10


def test_metadata_from_checkpoint_and_unknown_encoders(tmp_path):
    info = {"name": "my_moco", "arch": "resnet18", "method": "mocov2", "data": "synth-lin",
            "extra": {"format": "harness", "meta": {"method": "mocov2", "data": "synth-lin", "epochs": 5,
                                                    "images": 500_000}}}
    meta = encoder_metadata("runs/pretrain/my_moco/my_moco.pt", info)
    assert (meta["method"], meta["data"], meta["epochs"], meta["size"], meta["balanced"]) == (
        "MoCov2", "synth-lin", 5, "0.5M", False)
    assert encoder_metadata("swav_in_lin200", card("swav_in_lin200"))["balanced"] is False
    unknown = encoder_metadata("mystery", {"name": "mystery", "method": "unknown", "data": "-", "extra": {}})
    assert all(unknown[k] is None for k in ("method", "data", "size", "epochs", "balanced"))

    for enc, info_ in (("mystery", {"name": "mystery", "method": "unknown", "data": "-", "extra": {}}),
                       ("runs/my_moco.pt", info), ("swav_in800", None), ("mocov2_in200", None)):
        for task, score in (("pets_cls", 0.5 + len(enc) / 100), ("count", 0.4)):
            write_record(tmp_path, enc.replace("/", "_"), task, score, info=info_)
    scores = load_results(tmp_path).scores
    out = group_difference(scores, ReportOptions(group_by="method", a="MoCov2", b="SwAV"))
    assert out.summary["encoders_a"] == ["mocov2_in200", "runs_my_moco.pt"]
    assert "1 encoder(s) with unknown method dropped" in out.notes


def test_cli_writes_files_and_json(report, tmp_path):
    _, root = report
    runner = CliRunner()
    res = runner.invoke(app, ["report", str(root)])  # default --out: RESULTS_DIR/report
    assert res.exit_code == 0, res.output
    assert "mean rank" in res.stdout and "swav_in800" in res.stdout and "anova: ok" in res.stdout
    out = root / "report"
    doc = json.loads((out / "report.json").read_text())
    assert doc["records"]["used"] == 36  # the report folder's own JSON is not read as records
    for name in ("baseline_gain", "imagenet_correlation", "task_correlation", "group_difference",
                 "normalised_scores", "anova"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert (out / "ranks.csv").exists() and (out / "ranks.md").exists() and (out / "report.md").exists()
    assert (out / "task_correlation-spearman.csv").exists()
    csv = pd.read_csv(out / "ranks.csv")
    assert csv["encoder"].iloc[0] == "swav_in800" and csv["mean_rank"].iloc[0] == pytest.approx(11 / 6)
    assert "| swav_in800 | 0.75 (2) |" in (out / "ranks.md").read_text()
    assert not list(out.glob(".*.tmp"))

    res = runner.invoke(app, ["report", str(root), "--out", str(tmp_path / "r"), "--json", "--group-by", "data",
                              "--a", "Places", "--b", "ImageNet"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["analyses"]["group_difference"]["summary"]["a"] == "Places"
    assert doc["analyses"]["ranks"]["status"] == "ok" and (tmp_path / "r" / "report.json").exists()


@pytest.mark.parametrize("args", [["--group-by", "arch"], ["--a", "SwAV"]])
def test_bad_options_exit_2(report, tmp_path, monkeypatch, capsys, args):
    from harness.cli import main

    _, root = report
    monkeypatch.setattr(sys, "argv", ["harness", "report", str(root), "--out", str(tmp_path / "r"), *args])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ("--group-by" in err or "--b" in err)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("make", ["missing", "empty", "failed_only"])
def test_no_records_exits_2_with_one_line(tmp_path, monkeypatch, capsys, make):
    from harness.cli import main

    folder = tmp_path / "results"
    if make == "empty":
        folder.mkdir()
    elif make == "failed_only":
        write_record(folder, "swav_in800", "count", None, status="failed")
    monkeypatch.setattr(sys, "argv", ["harness", "report", str(folder)])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and str(folder) in err and "Traceback" not in err
    assert captured.out == "" and not (folder / "report").exists()
    assert ("1 failed" in err) if make == "failed_only" else True


def test_nan_free_json(report):
    _, root = report
    text = (root / "report" / "report.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert math.isfinite(json.loads(text)["analyses"]["anova"]["summary"]["r_squared"])


def test_the_report_reads_encoder_metadata_from_the_records_alone(tmp_path, monkeypatch):
    """Deleting a catalog row changes nothing: the records carry the encoder cards."""
    anova_dataset(tmp_path)
    before = build_report(tmp_path, tmp_path / "a", ReportOptions())
    monkeypatch.delitem(CATALOG, "swav_in100")
    monkeypatch.delitem(CATALOG, "mocov2_in100")
    after = build_report(tmp_path, tmp_path / "b", ReportOptions())
    strip = lambda d: json.dumps(d["analyses"], sort_keys=True, default=str).replace(str(tmp_path / "b"), "OUT")  # noqa: E731
    assert strip(before).replace(str(tmp_path / "a"), "OUT") == strip(after)
    assert before["analyses"]["anova"]["status"] == "ok"


def test_records_that_differ_only_in_the_seed_are_averaged(tmp_path):
    key = {"encoder": "f", "task": "t1", "epochs": 3, "limit": None}
    write_record(tmp_path, "swav_in800", "t1", 0.50, digest="a" * 10, run_key={**key, "seed": 0})
    write_record(tmp_path, "swav_in800", "t1", 0.60, digest="b" * 10, run_key={**key, "seed": 1})
    write_record(tmp_path, "swav_in800", "t1", 0.99, digest="c" * 10, created=NEW.replace("02T", "03T"),
                 run_key={**key, "epochs": 1})
    write_record(tmp_path, "mocov2_in800", "t1", 0.40, digest="d" * 10, run_key={**key, "seed": 0})
    loaded = load_results(tmp_path)
    s = loaded.scores.set_index("encoder")
    assert s.at["swav_in800", "score"] == pytest.approx(0.55) and s.at["swav_in800", "seeds"] == 2
    assert s.at["mocov2_in800", "score"] == pytest.approx(0.40) and s.at["mocov2_in800", "seeds"] == 1
    assert any("averaged over head-training seeds" in n for n in loaded.notes)
    # t1 is not a registered task: its own epochs are unknown, so the most epochs (3) are its protocol, not
    # the newest record; the 1-epoch record is listed as another setting, never averaged in
    assert loaded.counts["superseded"] == 0 and loaded.counts["other_settings"] == 1
    assert loaded.other["settings"].tolist() == ["--epochs 1 (another record has 3; the task's own is unknown)"]
