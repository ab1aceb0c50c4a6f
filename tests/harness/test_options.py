"""Each command's options are declared once (harness.common.options): the command line and the options
object cannot drift apart, and choices are checked in one place with one line."""

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
import typer.main

from harness.cli import _eval_options, app
from harness.common.errors import UsageError
from harness.common.options import PRECISIONS, cli_fields
from harness.eval_options import Decode, EvalOptions
from harness.sweep import EXECUTORS, Executor, SweepOptions

ROOT = Path(__file__).resolve().parents[2]
OWN = {"json_out"}  # parameters of the command itself, not of its options object
NOT_OPTIONS = {EvalOptions: {"encoder", "debug", "notes"}, SweepOptions: {"eval_args", "eval", "poll_s"}}


def _command(name: str):
    return typer.main.get_command(app).commands[name]


@pytest.mark.parametrize(("name", "cls"), [("eval", EvalOptions), ("sweep", SweepOptions)])
def test_every_option_is_a_field_and_every_field_an_option(name, cls):
    params = {p.name: p for p in _command(name).params if p.name not in OWN and p.name != "help"}
    fields = {f.name: cli for f, cli in cli_fields(cls)}
    assert set(params) == set(fields)
    assert {f.name for f in dataclasses.fields(cls)} - set(fields) == NOT_OPTIONS[cls]
    for field_name, cli in fields.items():  # the flags the command line shows are the field's declared ones
        declared = {d for d in (cli.info.default, *cli.info.param_decls) if isinstance(d, str)}
        assert set(params[field_name].opts) | set(params[field_name].secondary_opts) == declared, field_name


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


def test_a_bad_choice_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "harness", "eval", "-e", "resnet18", "-t", "synth_count",
                           "--precision", "fp8", "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: --precision 'fp8': use auto, fp32, bf16 or fp16"]
