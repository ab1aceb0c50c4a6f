"""Every registry checks names on registration and lookup, with one line and close matches."""

import pytest

from encoders.adapters import FORMATS
from encoders.pretrain import METHODS
from encoders.registry import ENCODERS
from harness.common.errors import UsageError
from harness.common.registry import RegistrationError, iter_modules
from heads import HEADS
from tasks.losses import LOSSES
from tasks.metrics import METRICS
from tasks.registry import TASKS, get_task, register_task

REGISTRIES = {"task": (TASKS, "synth_count"), "head": (HEADS, "deeplabv3plus"), "loss": (LOSSES, "pixel_ce"),
              "metric": (METRICS, "one_minus_fl_all"), "encoder": (ENCODERS, "resnet18"),
              "checkpoint format": (FORMATS, "torchvision"), "method": (METHODS, "mocov2")}


@pytest.mark.parametrize("kind", REGISTRIES)
def test_unknown_name_at_lookup_is_one_line_with_close_matches(kind):
    reg, known = REGISTRIES[kind]
    with pytest.raises(UsageError) as exc:
        reg[known[:-1] + "x"]
    msg = str(exc.value)
    assert "\n" not in msg and f"unknown {kind}" in msg and known in msg


@pytest.mark.parametrize("kind", REGISTRIES)
def test_duplicate_and_malformed_names_are_refused_at_registration(kind):
    reg, known = REGISTRIES[kind]
    before = reg.names()
    with pytest.raises(RegistrationError, match="registered twice"):
        reg.register(known, reg[known])
    with pytest.raises(RegistrationError, match="not valid"):
        reg.register("has space", reg[known])
    assert reg.names() == before


def test_a_task_naming_an_unknown_head_loss_or_metric_fails_when_it_registers():
    spec = get_task("synth_count")
    from dataclasses import replace

    for field, bad in (("head", "linaer"), ("loss", "cee"), ("metric", "top_1")):
        with pytest.raises(RegistrationError, match=f"unknown {field} '{bad}'"):
            register_task(replace(spec, name=f"bad_{field}", **{field: bad}))
        assert f"bad_{field}" not in TASKS


def test_builtins_are_discovered_without_an_import_list(tmp_path, monkeypatch):
    pkg = tmp_path / "plugpkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from harness.common.registry import Registry\nR = Registry('thing', "
                                     "discover='plugpkg')\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from plugpkg import R\nR.register('a', 1)\n")
    (pkg / "sub" / "b.py").write_text("from plugpkg import R\nR.register('b', 2)\n")
    (pkg / "_private.py").write_text("raise RuntimeError('never imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import plugpkg

    assert iter_modules("plugpkg") == ["plugpkg.a", "plugpkg.sub", "plugpkg.sub.b"]
    assert plugpkg.R.names() == ["a", "b"] and plugpkg.R["b"] == 2


def test_heads_register_themselves():
    assert {"linear", "fusion", "unet", "siamese_unet", "deeplabv3plus"} <= set(HEADS)
