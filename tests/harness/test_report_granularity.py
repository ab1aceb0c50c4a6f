"""`harness report`'s label-granularity view from hand-made records: each encoder's fine and coarse scores, paired by
the task records' ``coarse_of`` (not by name), compared relative to each task's chance; default protocol only; a
one-line reason when no encoder has both twins."""

import json

import pandas as pd
import pytest
from PIL import Image

from harness.report import ReportOptions, build_report
from harness.report.granularity import granularity_pairs
from tasks.registry import get_task
from tests.harness.test_report import write_record
from tests.harness.test_report_figures import blank_frame, harness

# (encoder, task) -> test top-1 of the default protocol
SCORES = {("resnet18", "synth_shape_cls"): 0.60, ("resnet18", "synth_shape_coarse_cls"): 0.80,
          ("resnet50", "synth_shape_cls"): 0.70, ("resnet50", "synth_shape_coarse_cls"): 0.85,
          ("resnet18", "cifar100_cls"): 0.30, ("resnet18", "cifar100_coarse_cls"): 0.45,
          ("swav_in800", "cifar100_cls"): 0.50,  # no coarse twin scored
          ("resnet34", "synth_shape_cls"): 0.65,  # its coarse result is of another budget (below)
          ("resnet18", "thing_cls"): 0.40, ("resnet18", "thing_coarse_cls"): 0.90}  # unregistered: never a pair


def write_results(root, scores=SCORES):
    for i, ((enc, task), score) in enumerate(scores.items()):
        write_record(root, enc, task, score, digest=f"{i:010d}", head="linear")
    write_record(root, "resnet34", "synth_shape_coarse_cls", 0.99, digest="9" * 10, head="linear",
                 run_key={"limit": 500, "seed": 0})  # --limit 500: not the default protocol
    return root


def norm(score, task):
    chance = get_task(task).chance
    return (score - chance) / (1.0 - chance)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = write_results(tmp_path_factory.mktemp("granularity"))
    return build_report(root, root / "report", ReportOptions()), root


def test_pairs_are_declared_on_the_task_records():
    pairs = {(f.name, c.name) for f, c in granularity_pairs()}
    assert {("cifar100_cls", "cifar100_coarse_cls"), ("synth_shape_cls", "synth_shape_coarse_cls")} <= pairs
    for fine, coarse in granularity_pairs():
        assert coarse.coarse_of == fine.name and coarse.num_outputs < fine.num_outputs
        assert fine.chance is not None and coarse.chance is not None and fine.metric == coarse.metric == "top1"


def test_fine_and_coarse_relative_to_chance_hand_computed(report):
    doc, _ = report
    a = doc["analyses"]["granularity"]
    assert a["status"] == "ok"
    t = pd.DataFrame(a["tables"]["granularity"])
    got = {(r.encoder, r.fine_task, r.coarse_task) for r in t.itertuples()}
    assert got == {("resnet18", "synth_shape_cls", "synth_shape_coarse_cls"),
                   ("resnet50", "synth_shape_cls", "synth_shape_coarse_cls"),
                   ("resnet18", "cifar100_cls", "cifar100_coarse_cls")}  # not resnet34 (limit), swav, thing_*
    for r in t.itertuples():
        fine, coarse = SCORES[(r.encoder, r.fine_task)], SCORES[(r.encoder, r.coarse_task)]
        assert (r.fine_score, r.coarse_score) == (fine, coarse)
        assert (r.fine_chance, r.coarse_chance) == (get_task(r.fine_task).chance, get_task(r.coarse_task).chance)
        assert (r.fine_classes, r.coarse_classes) == (get_task(r.fine_task).num_outputs,
                                                      get_task(r.coarse_task).num_outputs)
        assert r.fine_norm == pytest.approx(norm(fine, r.fine_task), abs=1e-12)
        assert r.coarse_norm == pytest.approx(norm(coarse, r.coarse_task), abs=1e-12)
        assert r.difference == pytest.approx(norm(coarse, r.coarse_task) - norm(fine, r.fine_task), abs=1e-12)
    # CIFAR: (0.45 - 0.05) / 0.95 - (0.30 - 0.01) / 0.99, by hand
    cifar = t[t["fine_task"] == "cifar100_cls"].iloc[0]
    assert cifar["difference"] == pytest.approx(0.4 / 0.95 - 0.29 / 0.99, abs=1e-12)
    assert a["summary"]["pairs"] == 2 and a["summary"]["encoders"] == 2
    assert any("without their twin" in n and "swav_in800/cifar100_cls" in n and "resnet34/synth_shape_cls" in n
               for n in a["notes"])


def test_skip_reason_when_no_pair_has_both(tmp_path):
    only_fine = {k: v for k, v in SCORES.items() if "coarse" not in k[1]}
    doc = build_report(write_results(tmp_path / "r", only_fine), tmp_path / "out")
    a = doc["analyses"]["granularity"]
    assert a["status"] == "skipped" and "\n" not in a["reason"]
    assert a["reason"].startswith("no encoder has default-protocol scores on both a fine task and its coarse twin")
    assert "synth_shape_cls / synth_shape_coarse_cls" in a["reason"] and "cifar100_cls / cifar100_coarse_cls" in \
        a["reason"]
    assert not (tmp_path / "out" / "granularity.png").exists() and doc["analyses"]["ranks"]["status"] == "ok"


def test_cli_writes_the_table_and_a_whole_png(tmp_path):
    root = write_results(tmp_path / "results")
    proc = harness("report", str(root), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr, proc.stderr
    a = json.loads(proc.stdout)["analyses"]["granularity"]
    out = root / "report"
    assert a["status"] == "ok" and "granularity.png" in a["files"]
    png = out / "granularity.png"
    w, h = Image.open(png).size
    assert w >= 600 and h >= 400 and blank_frame(png)
    csv = pd.read_csv(out / "granularity.csv")
    assert len(csv) == 3 and list(csv.columns[:3]) == ["encoder", "fine_task", "coarse_task"]
    md = (out / "report.md").read_text()
    assert "![granularity](granularity.png)" in md and "| resnet50 | synth_shape_cls | synth_shape_coarse_cls |" in md
