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
from harness.sweep import EXECUTORS, Executor, SweepOptions

ROOT = Path(__file__).resolve().parents[2]
OWN = {"json_out"}  # parameters of the command itself, not of its options object
NOT_OPTIONS = {EvalOptions: {"encoder", "debug", "notes"}, SweepOptions: {"eval_args", "eval", "poll_s"},
               PretrainOptions: {"knn_bank", "knn_queries", "knn_k", "channels_last"}, CKAOptions: {"heatmaps"}}
COMMANDS = [("eval", EvalOptions), ("sweep", SweepOptions), ("pretrain", PretrainOptions), ("cka", CKAOptions)]


def _command(name: str):
    return typer.main.get_command(app).commands[name]


def _parse(name: str, args: list[str]):
    """A command line -> the command's options object, by the command's own parser."""
    cls = dict(COMMANDS)[name]
    return Parsed(cls, _command(name).make_context(f"harness {name}", list(args)).params).build()


@pytest.mark.parametrize(("name", "cls"), COMMANDS)
def test_every_option_is_a_field_and_every_field_an_option(name, cls):
    params = {p.name: p for p in _command(name).params if p.name not in OWN and p.name != "help"}
    fields = {f.name: cli for f, cli in cli_fields(cls)}
    assert set(params) == set(fields)
    assert {f.name for f in dataclasses.fields(cls)} - set(fields) == NOT_OPTIONS[cls]
    for field_name, cli in fields.items():  # the flags the command line shows are the field's declared ones
        declared = {flag for d in (cli.info.default, *cli.info.param_decls) if isinstance(d, str)
                    for flag in d.split("/")}  # "--amp/--no-amp": a flag and its negation
        assert set(params[field_name].opts) | set(params[field_name].secondary_opts) == declared, field_name


def test_the_command_line_imports_no_torch():
    """The options objects are built at start-up: declaring them must not pull torch in (`harness --help`)."""
    code = "import sys, harness.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_the_old_homes_hand_out_the_same_classes():
    from encoders.pretrain import train
    from encoders.pretrain.data import SYNTH
    from harness import cka, common

    assert train.PretrainOptions is PretrainOptions and cka.CKAOptions is CKAOptions
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
