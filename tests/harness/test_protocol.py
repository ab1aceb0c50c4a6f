"""The protocol: test split untouched until the end, resume, failure isolation, schedules, seeds, copies."""

import json

import pytest
import torch

import harness.runner as runner
from harness.cache import MemoryFeatures
from harness.runner import EvalOptions, run_eval
from harness.train import fit
from tasks.spec import OptimConfig
from tests.harness import toy


def opts(tmp_path, tasks, **kw):
    kw.setdefault("grid", "single")
    return EvalOptions(encoder="resnet18", tasks=tasks, out=tmp_path / "out", device="cpu", **kw)


def test_test_split_untouched_before_final_evaluation(tmp_path, monkeypatch):
    toy.ACCESS_LOG.clear()
    events = []
    real_fit_grid = runner.fit_grid

    def logged_fit_grid(build, grid, *a, **k):  # the linear head's whole grid trains in one call
        events.append(("fit", len(toy.ACCESS_LOG), len(grid)))
        return real_fit_grid(build, grid, *a, **k)

    monkeypatch.setattr(runner, "fit_grid", logged_fit_grid)
    (rec,) = run_eval(opts(tmp_path, [toy.toy_task(log=True)], grid="full"))
    assert rec["status"] == "ok" and [e[2] for e in events] == [4] and len(rec["grid"]) == 4
    test_access = [i for i, (split, _) in enumerate(toy.ACCESS_LOG) if split == "test"]
    assert test_access, "the test split was never evaluated"
    assert min(test_access) >= events[-1][1]  # first test access after the last training run
    assert {i for s, i in toy.ACCESS_LOG if s == "test"} == set(range(40))  # every test sample counted


def test_carved_val_is_disjoint_from_train_and_recorded(tmp_path):
    (rec,) = run_eval(opts(tmp_path, [toy.toy_task(val_official=False)]))
    assert rec["n"]["val"] == 24 and rec["n"]["train"] == 72 and "stratified" in rec["val_split"]
    tr, va = runner.carve_val(96, 0.25, 0, toy.ToyDataset("train", 96).labels.numpy())
    assert not set(tr) & set(va)


def test_resume_skips_finished_and_failures_do_not_stop_others(tmp_path):
    tasks = [toy.toy_task("toy_a"), toy.toy_task("toy_bad", fail=True), toy.toy_task("toy_b")]
    first = run_eval(opts(tmp_path, tasks))
    assert [r["status"] for r in first] == ["ok", "failed", "ok"]
    assert "toy dataset exploded" in first[1]["error"]
    files = sorted((tmp_path / "out").glob("*.json"))
    assert len(files) == 3
    before = {f.name: f.read_text() for f in files}
    second = run_eval(opts(tmp_path, tasks))
    assert [r.get("skipped", False) for r in second] == [True, False, True]  # the failed one is retried
    for f in files:
        if "toy_bad" not in f.name:
            assert f.read_text() == before[f.name]
    # A different run (other epochs) is a different record, not a skip.
    (other,) = run_eval(opts(tmp_path, [toy.toy_task("toy_a")], epochs=1))
    assert not other.get("skipped") and other["epochs"] == 1
    # --force redoes it and keeps the earlier record as a backup.
    (forced,) = run_eval(opts(tmp_path, [toy.toy_task("toy_a")], force=True))
    assert not forced.get("skipped") and list((tmp_path / "out").glob("*toy_a*.json.bak"))


def test_second_run_hits_the_cache_without_encoding(tmp_path, monkeypatch):
    task = toy.toy_task()
    run_eval(opts(tmp_path, [task]))
    calls = []
    import harness.features as features

    real = features.encode_batches
    monkeypatch.setattr(features, "encode_batches", lambda *a, **k: calls.append(1) or real(*a, **k))
    (rec,) = run_eval(opts(tmp_path, [task], force=True))
    assert rec["cache"]["hits"] == 3 and rec["cache"]["misses"] == 0 and not calls


def test_cosine_schedule_steps_and_best_epoch_kept(tmp_path):
    task = toy.toy_task()
    x = torch.randn(64, 512).half()
    y = torch.randint(0, 3, (64,))
    src = MemoryFeatures({"embedding": x}, y)
    from heads.linear import LinearHead

    res = fit(LinearHead(512, 3), [src], src, task, OptimConfig("sgd", 0.1, schedule="cosine"), 5,
              torch.device("cpu"), 0)
    assert res.lrs[0] == pytest.approx(0.1) and all(a > b for a, b in zip(res.lrs, res.lrs[1:], strict=False))
    vals = [h["val"] for h in res.history]
    assert res.best_val == max(vals) and vals[res.best_epoch - 1] == max(vals)
    res = fit(LinearHead(512, 3), [src], src, task, OptimConfig("adam", 1e-3, schedule="step"), 6,
              torch.device("cpu"), 0)
    assert res.lrs[0] == pytest.approx(1e-3) and res.lrs[-1] == pytest.approx(1e-5)


def test_seeds_give_mean_and_std(tmp_path):
    (rec,) = run_eval(opts(tmp_path, [toy.toy_task()], seeds=3))
    rows = rec["secondary"]["seeds"]
    assert [r["seed"] for r in rows] == [0, 1, 2]
    tests = torch.tensor([r["test"] for r in rows], dtype=torch.float64)
    assert rec["test"] == pytest.approx(float(tests.mean()))
    assert rec["secondary"]["test_std"] == pytest.approx(float(tests.std()))


def test_augmented_copies_are_encoded_once_each_and_cycled(tmp_path, monkeypatch):
    seen = []
    real_fit_grid = runner.fit_grid

    def spy(build, grid, seeds, train, *a, **k):
        seen.append(len(train))
        return real_fit_grid(build, grid, seeds, train, *a, **k)

    monkeypatch.setattr(runner, "fit_grid", spy)
    (rec,) = run_eval(opts(tmp_path, [toy.toy_task("toy_aug", random_aug=True, aug_copies=3)]))
    assert seen == [3] and rec["n"]["aug_copies"] == 3
    assert rec["cache"]["misses"] == 5  # 3 train copies + val + test
    record = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert record["transform"]["train"] != record["transform"]["eval"]


def test_an_encoder_whose_taps_cannot_feed_the_head_fails_before_encoding(tmp_path, monkeypatch):
    """An encoder with no spatial maps cannot feed DeepLabv3+: one clear error, nothing encoded; in a
    multi-task run each such task is recorded as failed with that error."""
    from encoders.base import EncoderInfo, FrozenEncoder, TapModel
    from harness.common.errors import HarnessError
    from harness.common.taps import Tap
    from tasks import get_task

    class PooledOnly(TapModel):
        taps = (Tap("embedding", 4, None),)

        def forward(self, x, taps):
            return {"embedding": x.mean((2, 3)).repeat(1, 2)[:, :4]}

    calls = []
    monkeypatch.setattr(runner, "get_features", lambda *a, **k: calls.append(a) or None)
    monkeypatch.setattr(runner, "create_encoder",
                        lambda *a, **k: FrozenEncoder(PooledOnly(), EncoderInfo(name="pooled", arch="x")))
    opts = EvalOptions(encoder="pooled", tasks=[get_task("synth_seg")], out=tmp_path, device="cpu", debug=True)
    with pytest.raises(HarnessError, match=r"encoder pooled cannot feed its deeplabv3plus head.*no spatial maps"):
        run_eval(opts)
    assert calls == []
    opts.debug = False
    opts.tasks = [get_task("synth_seg"), get_task("synth_walkable")]
    recs = run_eval(opts)
    assert [r["status"] for r in recs] == ["failed", "failed"]
    assert all("cannot feed its deeplabv3plus head" in r["error"] for r in recs)
    assert calls == []
