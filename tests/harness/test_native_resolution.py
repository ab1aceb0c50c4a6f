"""Native-resolution evaluation: samples of different sizes are encoded, cached, streamed or
encoded on the fly batched by size, and scored at their own size; evaluation and encoder
batches shrink to fit the memory budget."""

import json

import h5py
import pytest
import torch
from typer.testing import CliRunner

from encoders import create_encoder
from harness import train as train_mod
from harness.cache import FeatureKey, GroupedFeatures, StreamFeatures, entry_path, open_entry
from harness.cli import app
from harness.features import CacheStats, EncodeSettings, OnTheFlyFeatures, get_features
from harness.train import eval_batch_size, evaluate
from tasks.spec import TransformSpec
from tests.harness import native

CPU = torch.device("cpu")


def eval_cli(tmp_path, cache, *extra):
    res = CliRunner().invoke(app, ["eval", "--encoder", "resnet18", "--task", native.NAME, "--epochs", "1", "--grid",
                                   "single", "--device", "cpu", "--out", str(tmp_path / "out"), "--json", *extra],
                             env={"HARNESS_CACHE": str(cache)}, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_hand_reference_depends_on_the_native_sizes():
    """The reference is only worth something if resizing would change it."""
    assert native.hand_miou() == pytest.approx((8784 / 9856 + 1856 / 2928) / 2)
    for common in ((48, 48), (40, 64), (56, 36), (32, 32)):
        assert abs(native.hand_miou(sizes=[common] * 5) - native.hand_miou()) > 0.01


def test_eval_scores_each_sample_at_its_own_size(tmp_path):
    with native.registered(native.native_task()):
        rec = eval_cli(tmp_path, tmp_path / "cache")
        assert rec["status"] == "ok" and rec["n"]["test"] == 5
        assert rec["test"] == pytest.approx(native.hand_miou(), abs=1e-12)
        assert rec["val"] == pytest.approx(native.hand_miou("val"), abs=1e-12)
        assert rec["secondary"]["test"]["pixels"] == sum(h * w for h, w in native.SIZES["test"])
        assert any("test: samples of 2 sizes" in n and "40x64 (3)" in n and "56x36 (2)" in n for n in rec["notes"])
        assert rec["cache"]["on_the_fly"] == 0
        # Cached without resizing: one group per size, each holding its samples' positions.
        entries = [p for p in (tmp_path / "cache" / "features").rglob("*.h5")]
        test_entry = next(p for p in entries if json.loads(h5py.File(p)["/"].attrs["key"])["split"] == "test")
        with h5py.File(test_entry) as fh:
            assert fh.attrs["layout"] == "grouped"
            groups = {tuple(g["target"].shape[1:]): sorted(g["index"][:].tolist()) for g in fh["groups"].values()}
            assert groups == {(40, 64): [0, 2, 4], (56, 36): [1, 3]}
            assert {tuple(g["taps"]["block1"].shape[1:]) for g in fh["groups"].values()} == {(64, 10, 16),
                                                                                              (64, 14, 9)}
        # A second run reads the grouped entries back (hits) and scores the same.
        again = eval_cli(tmp_path, tmp_path / "cache", "--force")
        assert again["cache"]["hits"] == 3 and again["cache"]["misses"] == 0
        assert again["test"] == rec["test"]


def test_over_the_ram_budget_streams_and_over_the_disk_budget_encodes_on_the_fly(tmp_path):
    with native.registered(native.native_task()):
        streamed = eval_cli(tmp_path, tmp_path / "c1", "--ram-budget-gb", "0.000000001")
        assert streamed["test"] == pytest.approx(native.hand_miou(), abs=1e-12)
        assert streamed["cache"]["misses"] == 3 and streamed["cache"]["on_the_fly"] == 0
        assert sum("streamed from the disk cache" in n for n in streamed["notes"]) == 3
        fly = eval_cli(tmp_path, tmp_path / "c2", "--disk-budget-gb", "0.000000001", "--force")
        assert fly["test"] == pytest.approx(native.hand_miou(), abs=1e-12)
        assert fly["cache"]["on_the_fly"] == 3 and fly["cache"]["misses"] == 0
        assert sum("encoded on the fly" in n for n in fly["notes"]) == 3
        assert not list((tmp_path / "c2" / "features").rglob("*.h5"))  # nothing cached


def features(tmp_path, split="test", **kw):
    enc = create_encoder("resnet18")
    ds = native.TwoSizes(split)
    key = FeatureKey(enc.fingerprint(), native.NAME, split, len(ds), "none", ("block1",), None)
    stats = CacheStats()
    settings = EncodeSettings(device=CPU, batch_size=4, cache_root=tmp_path, **kw)
    return enc, ds, key, stats, get_features(enc, ds, ("block1",), key, settings, stats)


def test_grouped_features_are_the_encoder_at_native_size(tmp_path):
    enc, ds, key, stats, mem = features(tmp_path)
    assert isinstance(mem, GroupedFeatures) and len(mem) == 5
    for part, index in zip(mem.parts(), mem.index, strict=True):
        for row, i in enumerate(index.tolist()):
            direct = enc(ds[i]["image"][None], ("block1",))["block1"][0]
            torch.testing.assert_close(part.taps["block1"][row].float(), direct, atol=3e-3, rtol=3e-3)
            assert torch.equal(part.target[row], ds[i]["target"])
    # A cache hit gives the same groups; so does a stream of the same entry.
    _, _, _, hit_stats, hit = features(tmp_path)
    assert hit_stats.hits == 1 and [len(p) for p in hit.parts()] == [len(p) for p in mem.parts()]
    _, _, _, s_stats, stream = features(tmp_path, ram_budget=10)
    assert isinstance(stream, GroupedFeatures) and all(isinstance(p, StreamFeatures) for p in stream.parts())
    got = sorted((tuple(y.shape), round(float(x["block1"].float().sum()), 1))
                 for x, y, _ in stream.batches(2, CPU, shuffle=True, generator=torch.Generator().manual_seed(0)))
    want = sorted((tuple(y.shape), round(float(x["block1"].float().sum()), 1)) for x, y, _ in
                  (p.batch(torch.arange(i, min(i + 2, len(p))), CPU) for p in mem.parts() for i in range(0, len(p), 2)))
    assert [g[0][1:] for g in got] == [w[0][1:] for w in want] and len(got) == len(want)


def test_a_corrupted_grouped_entry_is_rebuilt(tmp_path):
    *_, key, _, good = features(tmp_path)
    with h5py.File(entry_path(key, tmp_path), "r+") as fh:
        ds = fh["groups/g1/taps/block1"]
        ds[0] = ds[0] + 1
    _, _, _, stats, again = features(tmp_path)
    assert stats.rebuilt == 1 and stats.misses == 1 and open_entry(key, tmp_path) is not None
    assert all(torch.equal(a.taps["block1"], b.taps["block1"]) for a, b in zip(good.parts(), again.parts(),
                                                                                strict=True))


def test_on_the_fly_batches_hold_one_size_and_cover_the_split(tmp_path):
    *_, stats, fly = features(tmp_path, disk_budget=1000)
    assert isinstance(fly, OnTheFlyFeatures) and stats.on_the_fly == 1
    seen = [tuple(y.shape) for _, y, _ in fly.batches(4, CPU)]
    assert sorted(seen) == sorted([(3, 40, 64), (2, 56, 36)])
    counts: dict = {}
    for _, y, _ in fly.batches(2, CPU, True, torch.Generator().manual_seed(1)):
        assert len(y) <= 2
        counts[tuple(y.shape[1:])] = counts.get(tuple(y.shape[1:]), 0) + len(y)
    assert counts == {(40, 64): 3, (56, 36): 2}


def test_encoder_batches_shrink_to_the_memory_budget(tmp_path, monkeypatch):
    sizes = []
    enc = create_encoder("resnet18")
    real = type(enc).forward

    def spy(self, x, taps):
        sizes.append(x.shape[0])
        return real(self, x, taps)

    monkeypatch.setattr(type(enc), "forward", spy)
    ds = native.TwoSizes("train")
    key = FeatureKey(enc.fingerprint(), native.NAME, "train", len(ds), "none", ("block1",), None)
    # 40 x 64 and 56 x 36 images take about 1.5 MB each to encode by the estimate: 3 MB fits two.
    get_features(enc, ds, ("block1",), key, EncodeSettings(device=CPU, batch_size=4, cache_root=tmp_path,
                                                           memory_budget=3 << 20), CacheStats())
    assert max(sizes[1:]) == 2 and sum(sizes[1:]) == len(ds)  # sizes[0]: the one-sample probe


def test_evaluation_batches_adapt_to_the_memory_budget(tmp_path, monkeypatch):
    task = native.native_task()
    # Cityscapes at native size: 19 channels of 1024 x 2048 logits are 159 MiB; with the metric's
    # temporaries 8 times that, plus the taps: one sample per batch in 2 GiB, but 44 in 64 GiB.
    city = {"taps": {"block1": (256, 256, 512)}, "target": (1024, 2048)}
    from dataclasses import replace

    cs = replace(task, num_outputs=19)
    per = 2 * 256 * 256 * 512 * 4 + 8 * 4 * 1024 * 2048 * 19
    assert eval_batch_size(city, cs, 2 << 30, 256) == 1
    assert eval_batch_size(city, cs, 64 << 30, 256) == (64 << 30) // per == 44
    assert eval_batch_size({"taps": {"embedding": (512,)}, "target": ()}, replace(task, output="image"),
                           2 << 30, 256) == 256
    # The metric does not depend on the batch size it was computed with.
    *_, mem = features(tmp_path)
    head = native.FixedQuarter()
    batches = []
    real_predict = train_mod.predict
    monkeypatch.setattr(train_mod, "predict", lambda head, x, y, task: batches.append(len(y)) or
                        real_predict(head, x, y, task))
    small = evaluate(head, mem, task, CPU, memory_budget=1)
    sizes_small = list(batches)
    batches.clear()
    big = evaluate(head, mem, task, CPU)
    assert sizes_small == [1] * 5 and sorted(batches) == [2, 3]
    assert small["miou"] == big["miou"] == pytest.approx(native.hand_miou(), abs=1e-12)


def test_training_on_random_crops_keeps_batches_fixed_size(tmp_path):
    """Train copies drawn with a random scale, crop and flip are crop-sized whatever the sample's
    size; evaluation stays at native size."""
    crop = TransformSpec(crop=(32, 32), scale=(0.75, 1.25), hflip=True)
    with native.registered(native.native_task(crop)):
        rec = eval_cli(tmp_path, tmp_path / "cache", "--aug-copies", "2")
        assert rec["n"]["aug_copies"] == 2 and rec["test"] == pytest.approx(native.hand_miou(), abs=1e-12)
        shapes = []
        for p in (tmp_path / "cache" / "features").rglob("*.h5"):
            with h5py.File(p) as fh:
                key = json.loads(fh.attrs["key"])
                if key["split"] == "train":
                    shapes.append((key["aug_copy"], [tuple(g["target"].shape) for g in fh["groups"].values()]))
                    assert json.loads(key["data"])["aug_seed"] == 0
        assert sorted(shapes) == [(0, [(6, 32, 32)]), (1, [(6, 32, 32)])]
    # Copies 0 and 1 differ; the same copy is drawn the same way again.
    a, b, c = native.TwoSizes("train", crop, (0, 0)), native.TwoSizes("train", crop, (0, 0)), \
        native.TwoSizes("train", crop, (0, 1))
    assert all(torch.equal(a[i]["image"], b[i]["image"]) for i in range(6))
    assert not any(torch.equal(a[i]["image"], c[i]["image"]) for i in range(6))
