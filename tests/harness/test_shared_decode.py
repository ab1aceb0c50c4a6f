"""One decode for several encoders: each encoder's features from the shared pass are the ones a run
of that encoder alone writes (exactly, on CPU in fp32), and each image is decoded once."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from encoders import create_encoder
from harness.cache import FeatureKey
from harness.features import CacheStats, EncodeSettings, SharedJob, _tap_shapes, encode_shared, get_features
from harness.runner import EvalOptions, run_eval
from tasks.registry import TASKS

from . import toy
from .test_decode import _files, _split

CPU = torch.device("cpu")
ENCODERS = ("resnet18", "squeezenet1_1")


def _key(encoder, split: str, n: int) -> FeatureKey:
    return FeatureKey(encoder.fingerprint(), "shared_test", split, n, "eval", ("embedding",), 32, 0)


def _single(encoder, ds, root: Path, decode: str):
    settings = EncodeSettings(device=CPU, batch_size=4, cache_root=root, decode=decode)
    stats = CacheStats()
    feats = get_features(encoder, ds, ("embedding",), _key(encoder, "test", len(ds)), settings, stats)
    assert stats.misses == 1
    return feats


def test_shared_pass_features_equal_single_encoder_runs(tmp_path):
    ds = _split(_files(tmp_path, kinds=("rgb", "grey", "png"), n_each=3))
    encoders = [create_encoder(name).eval() for name in ENCODERS]
    for decode in ("cpu", "device"):
        shared_root = tmp_path / f"shared-{decode}"
        settings = EncodeSettings(device=CPU, batch_size=4, cache_root=shared_root, decode=decode)
        jobs = [SharedJob(e, ("embedding",), _key(e, "test", len(ds)), CacheStats()) for e in encoders]
        assert encode_shared(jobs, ds, settings) == 2
        for encoder, job in zip(encoders, jobs, strict=True):
            assert job.stats.misses == 1 and "encoded in one pass with 1 other encoder" in " ".join(job.stats.notes)
            got = get_features(encoder, ds, ("embedding",), job.key, settings, job.stats)
            assert job.stats.hits == 0  # reading back what the shared pass wrote is not a cache hit
            alone = _single(encoder, ds, tmp_path / f"alone-{decode}-{encoder.name}", decode)
            assert torch.equal(got.taps["embedding"], alone.taps["embedding"]), (decode, encoder.name)
            assert torch.equal(got.target, alone.target)
        assert encode_shared(jobs, ds, settings) == 0  # entries there: nothing encoded again


def test_tap_shapes_from_the_meta_device_equal_a_real_forward():
    """The probe reads tap shapes off a meta-device pass (no arithmetic); they are the real forward's, spatial
    taps at an odd size included, and an encoder meta tensors cannot run is measured for real."""
    from encoders.base import EncoderInfo, FrozenEncoder, TapModel
    from harness.common.taps import Tap

    settings = EncodeSettings(device=CPU)
    image = torch.rand(3, 37, 53)
    for name in ENCODERS:
        encoder = create_encoder(name).eval()
        taps = tuple(t.name for t in encoder.model.taps if not t.derived)
        real = {k: tuple(v.shape[1:]) for k, v in encoder(image.unsqueeze(0), taps).items()}
        assert any(len(s) == 3 for s in real.values())
        assert _tap_shapes(encoder, image, taps, settings) == real, name

    class ReadsAValue(TapModel):  # data-dependent shape: a meta tensor has no value to read
        taps = (Tap("embedding", 4, None),)

        def forward(self, x, taps):
            return {"embedding": x.flatten(1)[:, : 2 + int(x.max() > -10)]}

    odd = FrozenEncoder(ReadsAValue(), EncoderInfo(name="reads", arch="x"))
    assert _tap_shapes(odd, image, ("embedding",), settings) == {"embedding": (3,)}


def _toy_opts(tmp_path: Path, encoders, task, **kw) -> EvalOptions:
    return EvalOptions(encoder=encoders[0], encoders=tuple(encoders), tasks=[task],
                       out=tmp_path / "out", epochs=1, grid="single", device="cpu", num_workers=0, **kw)


def test_eval_with_two_encoders_decodes_each_image_once_and_scores_as_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache-shared"))
    task = toy.toy_task("shared_toy", log=True)
    TASKS.discover()
    TASKS._items[task.name] = task
    try:
        toy.ACCESS_LOG.clear()
        shared = run_eval(_toy_opts(tmp_path, ENCODERS, task))
        reads = len(toy.ACCESS_LOG)
        assert [r["encoder"] for r in shared] == list(ENCODERS) and all(r["status"] == "ok" for r in shared)
        for r in shared:
            assert r["cache"]["misses"] == 3 and r["cache"]["hits"] == 0  # train, val, test: encoded once each
            assert sum("encoded in one pass with 1 other encoder" in n for n in r["notes"]) == 3
        alone = []
        toy.ACCESS_LOG.clear()
        for i, name in enumerate(ENCODERS):
            monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / f"cache-{name}"))
            (rec,) = run_eval(_toy_opts(tmp_path / f"alone{i}", (name,), task))
            alone.append(rec)
        separate_reads = len(toy.ACCESS_LOG)
    finally:
        TASKS._items.pop(task.name, None)
    images = 96 + 48 + 40
    # Besides the encoding passes: sample 0 and 8 surveyed sizes per split, once in the shared pass (for every
    # encoder) and once per encoder when its run reads the entry, and the record's look at a test sample.
    surveys = (1 + len(ENCODERS)) * 9 * 3 + 1
    assert reads <= images + surveys < len(ENCODERS) * images <= separate_reads
    assert separate_reads >= len(ENCODERS) * images
    for s, a in zip(shared, alone, strict=True):
        assert s["test"] == a["test"] and s["val"] == a["val"], s["encoder"]  # identical features, same training
        assert s["run_key"] == a["run_key"]  # the same experiment: sharing is not part of the key


def test_sweep_runs_a_task_s_encoders_in_one_eval(tmp_path):
    from harness.sweep import SHARE_MAX, SweepOptions, batches, plan

    opts = SweepOptions(encoders=["resnet18", "squeezenet1_1", "random"], tasks=["synth_count"], out=tmp_path,
                        seeds=2)
    jobs = plan(opts)
    groups = batches([j for j in jobs if j.status == "pending"])
    assert len(groups) == 2 and SHARE_MAX >= 3  # one eval per seed, the three encoders in it
    for group in groups:
        argv = group.argv
        assert [argv[i + 1] for i, a in enumerate(argv) if a == "--encoder"] == ["resnet18", "squeezenet1_1",
                                                                              "random"]
        assert len({j.seed for j in group.jobs}) == 1 and argv[argv.index("--seed") + 1] == str(group.jobs[0].seed)


def test_eval_cli_with_two_encoders_on_a_jpeg_task(tmp_path):
    """What a user sees: one command, both encoders' records, each saying where and how its images were
    decoded (here the device path on CPU tensors)."""
    from tests.tasks.datasets.fixtures_a import write_eurosat
    from tests.tasks.datasets.util import harness

    write_eurosat(tmp_path, {"AnnualCrop": 5, "Forest": 5, "Pasture": 6})
    proc = harness("eval", "--encoder", ENCODERS[0], "--encoder", ENCODERS[1], "--task", "eurosat_cls", "--data-root",
                   str(tmp_path), "--out", str(tmp_path / "out"), "--resolution", "32", "--epochs", "1", "--grid",
                   "single", "--device", "cpu", "--decode", "device", "--json",
                   env={"HARNESS_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads(proc.stdout)
    assert [r["encoder"] for r in records] == list(ENCODERS) and all(r["status"] == "ok" for r in records)
    for r in records:
        notes = " ".join(r["notes"])
        for split in ("train", "val", "test"):
            assert f"{split}: images decoded in batches on cpu (torchvision decode_jpeg)" in notes, notes
        assert notes.count("encoded in one pass with 1 other encoder") == 3
    assert len(list((tmp_path / "out").glob("*.json"))) == 2
