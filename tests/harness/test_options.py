"""Each command's options are declared once (harness.common.options): the command line and the options
object cannot drift apart, and choices are checked in one place with one line."""

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
import typer.main

from harness.cka_options import CKAOptions
from harness.cli import _eval_options, app
from harness.common.errors import UsageError
from harness.common.options import PRECISIONS, Parsed, cli_fields
from harness.common.pretrain_options import PretrainOptions
from harness.eval_options import Decode, EvalOptions
from harness.report_options import GROUP_FIELDS, ReportOptions
from harness.study_options import StudyOptions, StudyPlanOptions, StudyRunOptions
from harness.sweep import EXECUTORS, Executor, SweepOptions

ROOT = Path(__file__).resolve().parents[2]
# parameters of the command itself (its arguments, and options that are not the object's), not of its options object
OWN = {"report": {"json_out", "results_dir", "out"}, "study plan": {"json_out", "name"},
       "study run": {"json_out", "name"}}
NOT_OPTIONS = {EvalOptions: {"encoder", "debug", "notes"}, SweepOptions: {"eval_args", "eval", "poll_s"},
               PretrainOptions: {"knn_bank", "knn_queries", "knn_k", "channels_last"}, CKAOptions: {"heatmaps"},
               ReportOptions: {"results_dir"}, StudyPlanOptions: {"study"}, StudyRunOptions: {"study", "gpu", "poll_s"}}
COMMANDS = [("eval", EvalOptions), ("sweep", SweepOptions), ("pretrain", PretrainOptions), ("cka", CKAOptions),
            ("report", ReportOptions), ("study plan", StudyPlanOptions), ("study run", StudyRunOptions)]


def _command(name: str):
    """A command by its path below the root (``study plan``: the plan command of the study group)."""
    cmd = typer.main.get_command(app)
    for part in name.split():
        cmd = cmd.commands[part]
    return cmd


def _parse(name: str, args: list[str]):
    """A command line -> the command's options object, by the command's own parser."""
    cls = dict(COMMANDS)[name]
    params = _command(name).make_context(f"harness {name}", list(args)).params
    return Parsed(cls, params).build(**({"study": params["name"]} if name.startswith("study ") else {}))


@pytest.mark.parametrize(("name", "cls"), COMMANDS)
def test_every_option_is_a_field_and_every_field_an_option(name, cls):
    own = OWN.get(name, {"json_out"})
    params = {p.name: p for p in _command(name).params if p.name not in own and p.name != "help"}
    fields = {f.name: cli for f, cli in cli_fields(cls)}
    assert set(params) == set(fields)
    assert {f.name for f in dataclasses.fields(cls)} - set(fields) == NOT_OPTIONS[cls]
    for field_name, cli in fields.items():  # the flags the command line shows are the field's declared ones
        declared = {flag for d in (cli.info.default, *cli.info.param_decls) if isinstance(d, str)
                    for flag in d.split("/")}  # "--amp/--no-amp": a flag and its negation
        assert set(params[field_name].opts) | set(params[field_name].secondary_opts) == declared, field_name


def test_the_command_line_imports_no_torch_nor_pandas():
    """The options objects are built at start-up: declaring them must not pull torch or pandas (`harness report`'s
    analyses) in (`harness --help`)."""
    code = "import sys, harness.cli; sys.exit('torch' in sys.modules or 'pandas' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_the_old_homes_hand_out_the_same_classes():
    from encoders.pretrain import train
    from encoders.pretrain.data import SYNTH
    from harness import cka, common, report, study
    from harness.report import base

    assert train.PretrainOptions is PretrainOptions and cka.CKAOptions is CKAOptions
    assert report.ReportOptions is base.ReportOptions is ReportOptions and base.GROUP_FIELDS is GROUP_FIELDS
    assert study.StudyOptions is StudyOptions and study.StudyRunOptions is StudyRunOptions
    assert PretrainOptions(method="simclr").data == [SYNTH] == [common.pretrain_options.SYNTH]


def test_pretrain_and_cka_defaults_on_the_command_line_are_the_objects():
    assert _parse("pretrain", ["--method", "simclr"]) == PretrainOptions(method="simclr")
    assert _parse("cka", ["--encoder", "resnet18"]) == CKAOptions(encoders=["resnet18"])


def test_each_pretrain_option_reaches_its_field():
    opts = _parse("pretrain", ["-m", "mocov2", "--data", "a", "--data", "b", "--set", "queue = 4096", "--set",
                               "optim.lr=0.1", "--no-amp", "--no-resume", "--batch-size", "2", "--knn-every", "0",
                               "--out", "r", "--manifest", "m.json"])
    assert (opts.method, opts.data, opts.overrides) == ("mocov2", ["a", "b"], {"queue": "4096", "optim.lr": "0.1"})
    assert (opts.amp, opts.resume, opts.batch_size, opts.knn_every) == (False, False, 2, 0)
    assert (opts.out, opts.manifest, opts.variant, opts.arch) == (Path("r"), Path("m.json"), "full", "resnet18")
    assert _parse("pretrain", ["-m", "byol", "--amp"]).amp is True


def test_each_cka_option_reaches_its_field():
    opts = _parse("cka", ["-e", "a", "-e", "b", "--tap", "block1", "--tap", "embedding", "--features", "pool",
                          "--kernel", "rbf", "--estimator", "biased", "--batch-size", "2", "--workers", "3"])
    assert (opts.encoders, opts.taps, opts.feature_mode) == (["a", "b"], ["block1", "embedding"], "pool")
    assert (opts.kernel, opts.estimator, opts.batch_size, opts.num_workers) == ("rbf", "biased", 2, 3)
    assert _parse("cka", ["-e", "a"]).taps is None  # no --tap: the encoders' own blocks


def test_report_and_study_defaults_on_the_command_line_are_the_objects():
    assert _parse("report", ["results"]) == ReportOptions()
    assert _parse("study plan", ["toy"]) == StudyPlanOptions(study="toy")
    assert _parse("study run", ["toy"]) == StudyRunOptions(study="toy")


def test_each_report_option_reaches_its_field():
    opts = _parse("report", ["results", "--group-by", "data", "--a", "places", "--b", "ImageNet", "--baseline", "sup",
                             "--imagenet-task", "in1k", "--out", "r"])
    assert opts == ReportOptions(baseline="sup", group_by="data", a="places", b="ImageNet", imagenet_task="in1k")


def test_each_study_option_reaches_its_field():
    plan = _parse("study plan", ["toy", "--scale", "small", "--only", "method=rotnet|simclr,arch=resnet18", "--only",
                                 "task=synth_count", "--epochs", "2", "--data", "imgs", "--out", "s", "--gpu", "H200"])
    assert (plan.study, plan.scale, plan.epochs, plan.data, plan.out, plan.gpu) == ("toy", "small", 2, "imgs",
                                                                                    Path("s"), "H200")
    assert plan.only == {"method": {"rotnet", "simclr"}, "arch": {"resnet18"}, "task": {"synth_count"}}
    assert plan.folder == Path("s") and _parse("study plan", ["toy", "--scale", "small"]).folder == Path(
        "studies/toy_small")
    run = _parse("study run", ["toy", "--executor", "slurm", "--gpus-per-job", "2", "--max-parallel", "3", "--retries",
                               "0", "--slurm-partition", "gpu", "--slurm-time", "60", "--slurm-mem", "32",
                               "--slurm-cpus", "8", "--slurm-account", "lab", "--dry-run", "--device", "cuda"])
    assert (run.dry_run, run.device, run.gpu) == (True, "cuda", None)
    assert run.sweep_settings() == {"executor": "slurm", "gpus_per_job": 2, "max_parallel": 3, "retries": 0,
                                    "slurm_partition": "gpu", "slurm_time": 60, "slurm_mem": 32, "slurm_cpus": 8,
                                    "slurm_account": "lab", "poll_s": 1.0}


def test_study_run_passes_its_executor_settings_to_the_sweep_as_sweep_declares_them():
    """study run's executor options are the sweep's: the same fields, flags and bounds, and each reaches the sweep
    of both rounds (plan: the sweep's defaults)."""
    from harness.study import _sweep_options

    sweep_fields = {f.name: cli for f, cli in cli_fields(SweepOptions)}
    for f, cli in cli_fields(StudyRunOptions):
        if f.name in sweep_fields and f.name != "out":  # --out: the study's folder, not the records'
            mine, theirs = cli.info, sweep_fields[f.name].info
            assert (mine.default, mine.param_decls, mine.min, mine.max) == (theirs.default, theirs.param_decls,
                                                                            theirs.min, theirs.max), f.name
    run = StudyRunOptions(study="toy", executor="slurm", slurm_mem=32, retries=3, poll_s=0.5)
    sweep = _sweep_options(run, lambda args: None, ["a"], ["synth_count"], [], Path("r"))
    assert (sweep.executor, sweep.slurm_mem, sweep.retries, sweep.poll_s, sweep.slurm_time) == ("slurm", 32, 3, 0.5,
                                                                                                  None)
    assert _sweep_options(StudyPlanOptions(study="toy"), lambda args: None, ["a"], ["t"], [], Path("r")) == \
        SweepOptions(encoders=["a"], tasks=["t"], out=Path("r"))


def test_eval_defaults_on_the_command_line_are_the_objects():
    """Nothing but the encoder and task given: the object typer builds equals the one Python builds."""
    from tasks.registry import resolve_tasks

    parsed = _eval_options(["--encoder", "resnet18", "--task", "synth_count"])
    assert parsed == EvalOptions(encoder="resnet18", encoders=("resnet18",), tasks=resolve_tasks(["synth_count"]))


def test_each_eval_option_reaches_its_field():
    opts = _eval_options(["-e", "a", "-e", "b", "-e", "a", "-t", "synth_count", "--workers", "3", "--no-cache",
                          "--format", "torchvision", "--head-precision", "bf16", "--decode", "cpu", "--knn-t", "0.5",
                          "--logreg-c", "1", "--logreg-c", "10", "--grid", "single"])
    assert (opts.encoder, opts.encoders, opts.num_workers, opts.use_cache, opts.fmt) == ("a", ("a", "b"), 3, False,
                                                                                       "torchvision")
    assert (opts.head_precision, opts.precision, opts.decode, opts.grid) == ("bf16", "auto", "cpu", "single")
    assert (opts.knn_k, opts.knn_t, opts.logreg_c) == ((20,), (0.5,), (1.0, 10.0))


def test_choices_are_declared_once():
    hints = {f.name: f.type for f in dataclasses.fields(EvalOptions)}
    assert hints["precision"] == hints["head_precision"] == "Precision"
    assert PRECISIONS == ("auto", "fp32", "bf16", "fp16")
    from harness.decode import MODES
    from harness.train import HEAD_PRECISIONS

    assert HEAD_PRECISIONS == PRECISIONS and get_args(Decode) == MODES
    assert get_args(Executor) == tuple(EXECUTORS)


def test_python_callers_get_the_same_checks():
    with pytest.raises(UsageError, match=r"^--grid 'bogus': use full or single$"):
        EvalOptions(encoder="resnet18", tasks=[], grid="bogus")
    with pytest.raises(UsageError, match=r"^--pool-dims 0: use a value >= 1$"):
        EvalOptions(encoder="resnet18", tasks=[], pool_dims=0)
    with pytest.raises(UsageError, match=r"^--executor 'pbs': use local or slurm$"):
        SweepOptions(encoders=["a"], tasks=["t"], executor="pbs")
    with pytest.raises(UsageError, match=r"^--batch-size 1: use a value >= 2$"):
        PretrainOptions(method="simclr", batch_size=1)
    with pytest.raises(UsageError, match=r"^--kernel 'cosine': use linear or rbf$"):
        CKAOptions(encoders=["a"], kernel="cosine")
    with pytest.raises(UsageError, match=r"^--batch-size 3: minibatch CKA with the unbiased estimator needs batches "
                                         r"of at least 4 images$"):
        CKAOptions(encoders=["a"], batch_size=3)
    CKAOptions(encoders=["a"], batch_size=3, estimator="biased")  # the biased estimator is defined from 2
    with pytest.raises(UsageError, match=r"^give at least one --encoder$"):
        CKAOptions(encoders=[])
    with pytest.raises(UsageError, match=r"^--group-by 'arch': use one of method, data, epochs, balanced, "
                                         r"corruption$"):
        ReportOptions(group_by="arch")
    with pytest.raises(UsageError, match=r"^give both --a and --b \(or neither\)$"):
        ReportOptions(a="SwAV")
    with pytest.raises(UsageError, match=r"^--scale 'huge': use paper or small$"):
        StudyPlanOptions(study="toy", scale="huge")
    with pytest.raises(UsageError, match=r"^--executor 'pbs': use local or slurm$"):
        StudyRunOptions(study="toy", executor="pbs")
    with pytest.raises(UsageError, match=r"^--retries -1: use a value >= 0$"):
        StudyRunOptions(study="toy", retries=-1)
    with pytest.raises(UsageError, match=r"^--only 'method': use AXIS=VALUE\[,AXIS=VALUE\], e.g. "):
        _parse("study plan", ["toy", "--only", "method"])


def test_a_bad_choice_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "harness", "eval", "-e", "resnet18", "-t", "synth_count",
                           "--precision", "fp8", "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: --precision 'fp8': use auto, fp32, bf16 or fp16"]


@pytest.mark.parametrize(("args", "line"), [
    (["pretrain", "-m", "simclr", "--set", "queue"], "error: --set 'queue': use KEY=VALUE"),
    (["cka", "-e", "resnet18", "--features", "mean"], "error: --features 'mean': use flatten or pool"),
    (["cka", "-e", "resnet18", "--batch-size", "3"], "error: --batch-size 3: minibatch CKA with the unbiased "
                                                     "estimator needs batches of at least 4 images"),
])
def test_pretrain_and_cka_bad_options_are_one_line_and_exit_2(tmp_path, args, line):
    proc = subprocess.run([sys.executable, "-m", "harness", *args, "--out", str(tmp_path)], capture_output=True,
                          text=True, cwd=ROOT)
    assert (proc.returncode, proc.stderr.strip().splitlines()) == (2, [line])
    assert not any(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.parametrize(("args", "line"), [
    (["report", "results", "--group-by", "arch"], "error: --group-by 'arch': use one of method, data, epochs, "
                                                  "balanced, corruption"),
    (["study", "plan", "fake_paper_study", "--scale", "huge"], "error: --scale 'huge': use paper or small"),
    (["study", "run", "fake_paper_study", "--executor", "pbs"], "error: --executor 'pbs': use local or slurm"),
])
def test_report_and_study_bad_options_are_one_line_and_exit_2(tmp_path, args, line):
    proc = subprocess.run([sys.executable, "-m", "harness", *args, "--out", str(tmp_path)], capture_output=True,
                          text=True, cwd=ROOT)
    assert (proc.returncode, proc.stderr.strip().splitlines()) == (2, [line])
    assert not any(tmp_path.iterdir())  # refused before anything was written
