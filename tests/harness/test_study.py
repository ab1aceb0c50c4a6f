"""harness study: plans that mark what exists, a tiny study run end to end (and again: nothing left to do), the
report's table, and bad input, through a real subprocess where a user would see it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STUDY_NAMES = ("seed000", "seed001", "seed002", "seed004")


def harness(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HARNESS_CACHE": str(tmp_path / "cache"),
           "HARNESS_WEIGHTS": str(tmp_path / "weights")}
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=900)


def plan(tmp_path: Path, *args: str) -> dict:
    proc = harness(tmp_path, "study", "plan", *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_unknown_study_is_one_line_naming_the_known_ones(tmp_path):
    for command in ("plan", "run"):
        proc = harness(tmp_path, "study", command, "seed999")
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "unknown study 'seed999'" in lines[0], proc.stderr
        assert all(name in lines[0] for name in STUDY_NAMES)


@pytest.mark.parametrize("only, says", [("method=nope", "unknown method 'nope'"),
                                        ("colour=red", "unknown --only axis 'colour'"),
                                        ("method", "use AXIS=VALUE")])
def test_a_bad_only_filter_is_one_line(tmp_path, only, says):
    proc = harness(tmp_path, "study", "plan", "seed004", "--scale", "small", "--only", only)
    assert proc.returncode == 2 and says in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_plan_lists_every_job_and_marks_the_existing_ones(tmp_path):
    out = tmp_path / "study"
    doc = plan(tmp_path, "seed004", "--scale", "small", "--out", str(out))
    pre = [j for j in doc["jobs"] if j["kind"] == "pretrain"]
    evals = [j for j in doc["jobs"] if j["kind"] == "eval"]
    assert len(pre) == 25 and len(evals) == 25  # 5 methods x 5 architectures, each probed on one task
    assert {(j["axes"]["method"], j["axes"]["arch"]) for j in pre} == {
        (m, a) for m in ("rotnet", "mocov2", "splitbrain", "simclr", "byol")
        for a in ("efficientnet_lite0", "mobilenet_v2", "resnet18", "shufflenet_v2_x1_0", "squeezenet1_1")}
    assert all(j["status"] == "to run" for j in pre)
    assert all(j["status"].startswith("after pretrain") for j in evals)
    # a pretraining run's record, written by hand: its job exists, the others do not
    target = Path(next(j["record"] for j in pre if j["axes"] == {"method": "simclr", "arch": "squeezenet1_1"}))
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps({"status": "ok"}))
    again = plan(tmp_path, "seed004", "--scale", "small", "--out", str(out))
    status = {j["name"]: j["status"] for j in again["jobs"] if j["kind"] == "pretrain"}
    assert [n for n, s in status.items() if s == "exists"] == ["simclr_squeezenet1_1_1ep"]
    assert again["counts"]["exists"] == 1 and again["counts"]["to_run"] == 49


def test_plan_marks_an_existing_eval_record(tmp_path):
    out = tmp_path / "study"
    args = ("seed001", "--scale", "small", "--out", str(out), "--only", "encoder=resnet18,task=synth_count|synth_depth")
    doc = plan(tmp_path, *args)
    evals = {j["task"]: j for j in doc["jobs"]}
    assert set(evals) == {"synth_count", "synth_depth"} and all(j["status"] == "to run" for j in evals.values())
    record = Path(evals["synth_depth"]["record"])
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"encoder": "resnet18", "task": "synth_depth", "status": "ok", "test": 0.5}))
    again = {j["task"]: j["status"] for j in plan(tmp_path, *args)["jobs"]}
    assert again == {"synth_count": "to run", "synth_depth": "exists"}
    # the estimate is from a measurement or says there is none; never a made-up number
    for j in doc["jobs"]:
        assert j["here"]["hours"] is not None or "no" in j["here"]["basis"]
        assert j["gpu"]["hours"] is None and "no measurement" in j["gpu"]["basis"]


def test_a_tiny_study_runs_end_to_end_then_skips_everything_and_reports_its_table(tmp_path):
    out = tmp_path / "study"
    args = ("study", "run", "seed004", "--scale", "small", "--only", "method=rotnet,arch=resnet18", "--device", "cpu",
            "--out", str(out))
    first = harness(tmp_path, *args, "--json")
    assert first.returncode == 0, first.stderr
    doc = json.loads(first.stdout)
    assert [(j["kind"], j["status"]) for j in doc["jobs"]] == [("pretrain", "done"), ("eval", "done")]
    pre = json.loads((out / "pretrain" / "rotnet_resnet18_1ep" / "pretrain.json").read_text())
    assert pre["status"] == "ok" and pre["epochs"] == 1 and pre["images"] == 32
    assert pre["params"] == 11_176_512  # torchvision's ResNet-18 without its 1000-way classifier (11,689,512 - 513,000)
    energy = pre["energy"]
    if "codecarbon (measured" not in energy["how"]:  # time x declared power, said so
        assert "assumed" in energy["how"] and "not measured" in energy["how"]
        assert energy["kwh"] == pytest.approx(energy["watts"] * pre["wall_s"] / 3.6e6, rel=1e-2)
    record = json.loads(next((out / "results").glob("*.json")).read_text())
    assert record["status"] == "ok" and record["task"] == "synth_shape_cls"

    second = harness(tmp_path, *args, "--json")
    assert second.returncode == 0, second.stderr
    assert [j["status"] for j in json.loads(second.stdout)["jobs"]] == ["skipped", "skipped"]

    rep = harness(tmp_path, "report", str(out), "--json")
    assert rep.returncode == 0, rep.stderr
    table = json.loads(rep.stdout)["analyses"]["study_table"]
    assert table["status"] == "ok", table
    rows = {r["method"]: r for r in table["tables"]["study"]}
    assert rows["rotnet"]["resnet18"] == pytest.approx(record["test"])
    assert rows["params (M)"]["resnet18"] == pytest.approx(11.176512)
    assert rows["train time (s)"]["resnet18"] == pytest.approx(pre["train_s"])
    assert rows["energy (Wh)"]["resnet18"] == pytest.approx(energy["kwh"] * 1e3)


def test_energy_without_codecarbon_is_time_times_declared_power():
    from harness.study import CPU_W_PER_CORE, GRID_KG_PER_KWH, energy_estimate

    cores = len(os.sched_getaffinity(0))
    e = energy_estimate(3600.0, "cpu", None)
    assert e["kwh"] == pytest.approx(CPU_W_PER_CORE * cores / 1000)  # W x 1 h
    assert e["kg_co2"] == pytest.approx(e["kwh"] * GRID_KG_PER_KWH)
    assert "assumed" in e["how"]
    tracked = energy_estimate(10.0, "cpu", {"kwh": 0.5, "kg_co2": 0.2})
    assert tracked["kwh"] == 0.5 and "codecarbon" in tracked["how"]


def _sig4(x: float) -> float:
    return float(f"{x:.4g}")


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path):
    out = tmp_path / "study"
    args = ("seed004", "--scale", "small", "--only", "method=rotnet|byol,arch=squeezenet1_1", "--out", str(out))
    dry = harness(tmp_path, "study", "run", *args, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    doc = json.loads(dry.stdout)
    assert doc == {**plan(tmp_path, *args), "jobs": doc["jobs"]}  # the plan, nothing else
    assert [(j["kind"], j["name"], j["status"]) for j in doc["jobs"]] == [
        ("pretrain", "rotnet_squeezenet1_1_1ep", "to run"), ("pretrain", "byol_squeezenet1_1_1ep", "to run"),
        ("eval", "rotnet_squeezenet1_1_1ep / synth_shape_cls", "after pretrain rotnet_squeezenet1_1_1ep"),
        ("eval", "byol_squeezenet1_1_1ep / synth_shape_cls", "after pretrain byol_squeezenet1_1_1ep")]
    assert not out.exists()  # nothing run, nothing written
    human = harness(tmp_path, "study", "run", *args, "--dry-run")
    assert human.returncode == 0 and "2 pretrain and 2 eval job(s), 0 with a record already" in human.stdout
    assert not out.exists()


def _default_sigint() -> None:  # a Ctrl-C reaches the study as it would in a terminal (not ignored, as under `&`)
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_a_study_interrupted_mid_way_resumes_without_redoing_finished_jobs(tmp_path):
    """Ctrl-C (SIGINT to the whole process group) after the first of two pretraining runs: the run exits 130, the
    finished run's record and wall time are kept, the plan estimates the other run from that measured job, and the
    run again skips the finished run and completes the rest."""
    import signal
    import threading

    out = tmp_path / "study"
    args = ("study", "run", "seed004", "--scale", "small", "--only", "method=rotnet|simclr,arch=squeezenet1_1",
            "--device", "cpu", "--out", str(out))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HARNESS_CACHE": str(tmp_path / "cache"),
           "HARNESS_WEIGHTS": str(tmp_path / "weights")}
    env.pop("HARNESS_QUIET", None)  # its progress lines say when the first run is done
    proc = subprocess.Popen([sys.executable, "-m", "harness", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=tmp_path, start_new_session=True, preexec_fn=_default_sigint)
    lines: list[str] = []
    first_done = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            if "pretraining rotnet_squeezenet1_1_1ep done" in line:
                first_done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        for _ in range(600):
            if first_done.wait(1) or proc.poll() is not None:
                break
        assert first_done.is_set() and proc.poll() is None, "".join(lines)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    reader.join(timeout=10)
    assert proc.returncode == 130, "".join(lines)
    assert lines[-1].startswith("interrupted;"), "".join(lines)

    rotnet = out / "pretrain" / "rotnet_squeezenet1_1_1ep"
    simclr = out / "pretrain" / "simclr_squeezenet1_1_1ep" / "pretrain.json"
    assert json.loads((rotnet / "pretrain.json").read_text())["status"] == "ok"
    assert not simclr.exists() or json.loads(simclr.read_text())["status"] != "ok"
    kept = {p.name: p.stat().st_mtime_ns for p in (rotnet / "pretrain.json", rotnet / "rotnet_squeezenet1_1_1ep.pt")}
    timings = json.loads((out / "timings.json").read_text())["measured_jobs"]
    assert [t["name"] for t in timings] == ["rotnet_squeezenet1_1_1ep"]
    job_s = timings[0]["job_s"]
    assert job_s > timings[0]["in_process_s"] > timings[0]["train_s"] > 0  # process start and data cost on top

    # the plan now estimates the other run from the whole job measured (the same architecture, another method)
    doc = plan(tmp_path, *args[2:-4], "--out", str(out))
    est = {j["name"]: (j["status"], j["here"]) for j in doc["jobs"]}
    assert est["rotnet_squeezenet1_1_1ep"][0] == "exists"
    status, here = est["simclr_squeezenet1_1_1ep"]
    assert status == "to run" and here["hours"] == _sig4(job_s / 3600)
    assert "measured" in here["basis"] and "other methods" in here["basis"]

    again = harness(tmp_path, *args, "--json")
    assert again.returncode == 0, again.stderr
    rows = json.loads(again.stdout)["jobs"]
    assert [(r["kind"], r["name"], r["status"]) for r in rows] == [
        ("pretrain", "rotnet_squeezenet1_1_1ep", "skipped"), ("pretrain", "simclr_squeezenet1_1_1ep", "done"),
        ("eval", "rotnet_squeezenet1_1_1ep / synth_shape_cls", "done"),
        ("eval", "simclr_squeezenet1_1_1ep / synth_shape_cls", "done")]
    assert {p.name: p.stat().st_mtime_ns for p in (rotnet / "pretrain.json", rotnet / "rotnet_squeezenet1_1_1ep.pt")
            } == kept  # not redone
    timings = {t["name"]: t for t in json.loads((out / "timings.json").read_text())["measured_jobs"]}
    assert timings["rotnet_squeezenet1_1_1ep"]["job_s"] == job_s  # the first measurement is kept
    evals = [t for t in timings.values() if t["kind"] == "eval"]
    assert len(evals) == 2 and all(t["share"] == 2 for t in evals)  # one eval process served both encoders
    eval_wall = next(r["wall_s"] for r in rows if r["kind"] == "eval")
    assert evals[0]["job_s"] == pytest.approx(eval_wall / 2, abs=0.01)


def test_estimates_come_from_measured_whole_jobs_else_throughput_plus_measured_overhead_else_none():
    """Hand-made measurements: the tiers of rule 1 (same settings), the study's own jobs first, rule 2 (the
    training loop at the throughput + the overhead the whole jobs measured beyond it), and no number without both."""
    from harness.study import OWN, PretrainSpec, estimate_eval, estimate_pretrain

    def spec(method, arch, images=32, settings=("--limit", "32")):
        return PretrainSpec(f"{method}_{arch}", method, arch, settings, {}, images, 1, 64)

    def job(method, arch, job_s, source="study_x.json", settings="--limit 32"):
        return {"kind": "pretrain", "name": f"{method}_{arch}", "method": method, "arch": arch, "device": "cpu",
                "settings": settings, "images": 32, "epochs": 1, "resolution": 64, "job_s": job_s, "source": source}

    jobs = [job("rotnet", "resnet18", 43.2), job("rotnet", "squeezenet1_1", 20.0), job("byol", "resnet18", 100.0)]
    pmeas = {("rotnet", "cpu"): {"images_per_s": 10.0, "source": "bench.json"}}  # resnet18 at 64 px
    hours = {m: estimate_pretrain(spec(*m), "cpu", pmeas, jobs) for m in
             [("rotnet", "resnet18"), ("rotnet", "mobilenet_v2"), ("simclr", "resnet18"), ("simclr", "squeezenet1_1")]}
    assert hours["rotnet", "resnet18"]["hours"] == _sig4(43.2 / 3600)
    assert "same method and architecture" in hours["rotnet", "resnet18"]["basis"]
    assert hours["rotnet", "mobilenet_v2"]["hours"] == _sig4((43.2 + 20.0) / 2 / 3600)  # median of rotnet's two
    assert hours["simclr", "resnet18"]["hours"] == _sig4((43.2 + 100.0) / 2 / 3600)  # the two resnet18 jobs
    assert "same architecture, other methods" in hours["simclr", "resnet18"]["basis"]
    assert hours["simclr", "squeezenet1_1"]["hours"] == _sig4(20.0 / 3600)
    assert estimate_pretrain(spec("simclr", "vgg"), "cpu", pmeas, jobs)["hours"] == _sig4(43.2 / 3600)  # all three
    own = estimate_pretrain(spec("simclr", "squeezenet1_1"), "cpu", pmeas,
                            [*jobs, job("byol", "mobilenet_v2", 7.0, source=OWN)])
    assert own["hours"] == _sig4(7.0 / 3600) and OWN in own["basis"]  # this study's own jobs before any file's

    # settings never measured whole: 3600 images at 10/s = 360 s of training + the overhead beyond the training
    # loop that the rotnet jobs measured (resnet18: 43.2 - 32/10 s; squeezenet: 20 s - 32 images at 10/s scaled by
    # the FLOPs ratio; byol has no throughput measured)
    from encoders.archs import arch_cost

    ratio = arch_cost("squeezenet1_1", 64)["flops"] / arch_cost("resnet18", 64)["flops"]
    big = spec("rotnet", "resnet18", images=3600, settings=("--limit", "3600"))
    rule2 = estimate_pretrain(big, "cpu", pmeas, jobs)
    overhead = ((43.2 - 3.2) + (20.0 - 3.2 * ratio)) / 2
    assert rule2["hours"] == _sig4((360 + overhead) / 3600) and "overhead" in rule2["basis"]
    alone = estimate_pretrain(big, "cpu", pmeas, [])
    assert alone["hours"] is None and alone["floor_hours"] == _sig4(360 / 3600)  # a floor, never the estimate
    assert estimate_pretrain(spec("splitbrain", "resnet18"), "cpu", pmeas, [])["hours"] is None

    ev = {"kind": "eval", "name": "e", "arch": "resnet18", "device": "cpu", "settings": "synth_shape_cls --limit 64",
          "job_s": 30.0, "source": "study_x.json"}
    assert estimate_eval("squeezenet1_1", "synth_shape_cls --limit 64", "cpu", [ev], 1e-6)["hours"] == _sig4(30 / 3600)
    none = estimate_eval("resnet18", "synth_count --limit 64", "cpu", [ev], 1e-6)
    assert none["hours"] is None and none["floor_hours"] == 1e-6 and "no measurement" in none["basis"]
