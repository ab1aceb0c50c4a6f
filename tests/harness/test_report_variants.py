"""`harness report` with probe variants: the per-tap curve, the label-fraction curve and the probes side by
side come from hand-made records; the paper's analyses keep one score per encoder x task (the default protocol)."""

import pandas as pd
import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.report import MAIN_ONLY, ReportOptions, build_report
from tasks.registry import get_task
from tests.harness.test_report import write_record

TAPS = ["conv", "block1", "block2", "block3", "block4", "embedding"]
CURVES = {"swav_in800": [0.20, 0.30, 0.45, 0.72, 0.69, 0.70],  # block3 beats the embedding
          "supervised_in": [0.10, 0.20, 0.30, 0.50, 0.58, 0.60]}
DEFAULT = {("swav_in800", "pets_cls"): 0.70, ("supervised_in", "pets_cls"): 0.60,
           ("swav_in800", "count"): 0.40, ("supervised_in", "count"): 0.50}
FRACTIONS = [("swav_in800", 0.01, 6, 0.20, 0), ("swav_in800", 0.1, 60, 0.50, 0), ("swav_in800", 0.1, 60, 0.60, 1),
             ("supervised_in", 0.1, 60, 0.40, 0)]  # (encoder, fraction, n train of 576, score, seed)


def key(seed=0, **variant):
    """A run key of the default protocol: pets_cls's own epochs (count is not a registered task)."""
    return {"epochs": get_task("pets_cls").epochs, "limit": None, "seed": seed, "grid": "full", **variant}


def write_variants(root, with_default=True):
    n = 0
    if with_default:
        for (enc, task), score in DEFAULT.items():
            extra = {} if task == "count" else {"probe": "head", "tap": "embedding", "tap_index": 5}  # count: older
            write_record(root, enc, task, score, digest=f"{n:010d}", head="linear", run_key=key(), **extra)
            n += 1
    for enc, scores in CURVES.items():
        for i, (tap, score) in enumerate(zip(TAPS[:-1], scores[:-1], strict=True)):
            write_record(root, enc, "pets_cls", score, digest=f"{n:010d}", head="linear", probe="head", tap=tap,
                         tap_index=i, pool={"mode": "adaptive_avg", "dims": 9000, "grid": [4 - i // 2] * 2},
                         run_key=key(tap=tap, pool_dims=9000))
            n += 1
    for enc, frac, n_train, score, seed in FRACTIONS:
        subset = {"kind": "fraction", "value": frac, "seed": seed, "fraction": n_train / 576,
                  "train": {"n": n_train, "of": 576, "hash": "x"}}
        write_record(root, enc, "pets_cls", score, digest=f"{n:010d}", head="linear", probe="head", tap="embedding",
                     tap_index=5, subset=subset, n={"train": n_train},
                     run_key=key(seed, subset={"kind": "fraction", "value": frac}))
        n += 1
    for probe, score in (("knn", 0.65), ("logreg", 0.71)):
        write_record(root, "swav_in800", "pets_cls", score, digest=f"{n:010d}", head="linear", probe=probe,
                     tap="embedding", tap_index=5, run_key=key(probe=probe))
        n += 1
    return root


def table(doc, analysis, name=None):
    tables = doc["analyses"][analysis]["tables"]
    return pd.DataFrame(tables[name or next(iter(tables))])


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = write_variants(tmp_path_factory.mktemp("variants"))
    return build_report(root, root / "report", ReportOptions()), root


def test_main_tables_keep_the_default_protocol_only(report):
    doc, _ = report
    ranks = table(doc, "ranks").set_index("encoder")
    for (enc, task), score in DEFAULT.items():
        assert ranks.at[enc, task] == score  # not a tap's, a probe's or a fraction's score, nor a mean with them
    assert doc["records"]["used"] == 4 and doc["records"]["variants"] == 10 + 3 + 2
    assert doc["records"]["superseded"] == 0 and any("tap, fraction and probe analyses" in n for n in doc["notes"])


def test_tap_curve_table(report):
    doc, root = report
    t = table(doc, "tap_curve", "taps")
    for enc, scores in CURVES.items():
        rows = t[t["encoder"] == enc]
        assert rows["tap"].tolist() == TAPS and rows["score"].tolist() == scores
        assert rows["tap_index"].tolist() == [0, 1, 2, 3, 4, 5]
        assert rows["pool_grid"].tolist()[:5] == ["4x4", "4x4", "3x3", "3x3", "2x2"]
        assert rows["pool_grid"].isna().iloc[5]
    best = table(doc, "tap_curve", "best").set_index("encoder")
    assert best.at["swav_in800", "tap"] == "block3" and best.at["swav_in800", "score"] == 0.72
    assert best.at["supervised_in", "tap"] == "embedding"
    assert "swav_in800/pets_cls" in " ".join(doc["analyses"]["tap_curve"]["notes"])
    assert (root / "report" / "tap_curve.png").stat().st_size > 0


def test_fraction_curve_table(report):
    doc, root = report
    t = table(doc, "fraction_curve")
    swav = t[t["encoder"] == "swav_in800"]
    assert swav["fraction"].tolist() == pytest.approx([6 / 576, 60 / 576, 1.0])
    assert swav["score"].tolist() == pytest.approx([0.20, 0.55, 0.70])  # the two seeds of 0.1 averaged; full split
    sup = t[t["encoder"] == "supervised_in"]
    assert sup["fraction"].tolist() == pytest.approx([60 / 576, 1.0]) and sup["score"].tolist() == [0.40, 0.60]
    assert set(t["task"]) == {"pets_cls"}  # count has no fraction results: no curve
    assert (root / "report" / "fraction_curve.png").stat().st_size > 0


def test_probe_comparison_table(report):
    doc, _ = report
    t = table(doc, "probe_comparison")
    assert t.to_dict("records") == [{"encoder": "swav_in800", "task": "pets_cls", "settings": "default", "head": 0.70,
                                     "knn": 0.65, "logreg": 0.71}]


def test_only_variants_skip_the_main_analyses_with_a_reason(tmp_path, monkeypatch):
    root = write_variants(tmp_path / "r", with_default=False)
    doc = build_report(root, None, ReportOptions())
    assert doc["analyses"]["ranks"]["status"] == "skipped" and doc["analyses"]["ranks"]["reason"] == MAIN_ONLY
    assert doc["analyses"]["tap_curve"]["status"] == "ok"
    t = table(doc, "tap_curve", "taps")
    assert t[t["encoder"] == "swav_in800"]["tap"].tolist() == TAPS[:-1]  # the embedding is only in a fraction run
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["report", str(root)])
    assert result.exit_code == 0, result.output
    assert "ranks: skipped" in result.output and "tap_curve: ok" in result.output
