"""kNN, logistic regression and any-layer probes (harness/probes.py), against hand computations,
scikit-learn fitted directly, and the pooling grid worked out by hand."""

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import harness.features as features
import harness.runner as runner
from harness.cache import MemoryFeatures
from harness.common.errors import HarnessError, UsageError
from harness.probes import (
    KnnConfig,
    check_applies,
    clip_sweep,
    knn_probe,
    knn_votes,
    pool_grid,
    pooled_encoder,
    pooled_name,
    requested_taps,
)
from harness.runner import EvalOptions, run_eval
from tasks import get_task
from tests.harness import toy

CPU = torch.device("cpu")


def test_knn_votes_by_hand():
    """Bank at angles 0, 30, 90, 180 degrees (classes 0, 0, 1, 2); the query at 60 degrees. Cosines:
    cos 60 = 0.5, cos 30, cos 30, cos 120 = -0.5. k = 3 keeps rows 1, 2, 0; T = 0.5."""
    def at(deg, r=1.0):
        return [r * math.cos(math.radians(deg)), r * math.sin(math.radians(deg))]

    bank = torch.tensor([at(0, 2.0), at(30, 0.5), at(90, 3.0), at(180)])  # norms differ: L2-normalised first
    labels = torch.tensor([0, 0, 1, 2])
    query = torch.tensor([at(60, 7.0)])
    c30 = math.cos(math.radians(30))
    (votes,) = knn_votes(bank, labels, query, 3, [KnnConfig(3, 0.5)])
    expected = [math.exp(c30 / 0.5) + math.exp(0.5 / 0.5), math.exp(c30 / 0.5), 0.0]
    assert votes[0].tolist() == pytest.approx(expected, rel=1e-6)
    (one,) = knn_votes(bank, labels, query, 3, [KnnConfig(1, 0.07)])  # k = 1: one of the two at 30 degrees
    assert one[0, 2] == 0 and one[0].sum() == pytest.approx(math.exp(c30 / 0.07), rel=1e-6)
    (all4,) = knn_votes(bank, labels, query, 3, [KnnConfig(20, 1.0)])  # k above the bank: every row votes
    assert all4[0, 2] == pytest.approx(math.exp(-0.5), rel=1e-6)


def test_knn_setting_chosen_on_val():
    """Class 0 in a tight cluster, class 1 spread out around it (x = +-1 only for class 1 far away): with
    k = 1 the val point at 0.4 goes to its nearest neighbour (class 1 at 0.5); with k = 5 the class-0
    majority wins. The val split rewards k = 5, and the test score is computed with k = 5."""
    train = MemoryFeatures({"embedding": torch.tensor([[1.0, 0.0], [1.0, 0.05], [1.0, -0.05], [1.0, 0.02],
                                                      [1.0, 0.5], [1.0, -3.0]])}, torch.tensor([0, 0, 0, 0, 1, 1]))
    val = MemoryFeatures({"embedding": torch.tensor([[1.0, 0.4]])}, torch.tensor([0]))
    test = MemoryFeatures({"embedding": torch.tensor([[1.0, 0.45], [1.0, -2.0]])}, torch.tensor([0, 1]))
    task = toy.toy_task()
    best, results, score = knn_probe(task, train, val, CPU, [1, 5], [1.0])
    assert [r.best_val for r in results] == [0.0, 1.0] and best.config == KnnConfig(5, 1.0)
    scores, params = score(best, test)
    assert params == 0 and scores["top1"] == pytest.approx(0.5)  # 0.45 -> class 0 (majority); -2.0 -> class 0 too


def numpy_knn(bank, bank_y, queries, k, t, classes):
    """An independent weighted kNN: numpy cosine similarities, argsort, exp(s / T) votes."""
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = q @ b.T
    out = []
    for row in sims:
        top = np.argsort(-row, kind="stable")[:k]
        votes = np.zeros(classes)
        np.add.at(votes, bank_y[top], np.exp(row[top] / t))
        out.append(votes.argmax())
    return np.array(out)


def capture_sources(monkeypatch):
    """The encoded train, val and test sources the runner hands its probes."""
    seen = {}
    real_tv, real_test = runner.encode_train_val, runner.encode_test

    def tv(*a, **k):
        train, val, info = real_tv(*a, **k)
        seen.update(train=train[0], val=val)
        return train, val, info

    def test(*a, **k):
        ds, src = real_test(*a, **k)
        seen["test"] = src
        return ds, src

    monkeypatch.setattr(runner, "encode_train_val", tv)
    monkeypatch.setattr(runner, "encode_test", test)
    return seen


def arrays(src):
    return src.taps["embedding"].float().numpy(), src.target.numpy()


def test_knn_eval_matches_a_numpy_knn_on_the_same_features(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))  # its own feature cache, cold
    seen = capture_sources(monkeypatch)
    (rec,) = run_eval(EvalOptions(encoder="resnet18", tasks=[toy.toy_task()], out=tmp_path, device="cpu",
                                  probe="knn", knn_k=(1, 7), knn_t=(0.07,), seeds=2))
    (xt, yt), (xv, yv), (xs, ys) = arrays(seen["train"]), arrays(seen["val"]), arrays(seen["test"])
    vals = {k: float((numpy_knn(xt, yt, xv, k, 0.07, 3) == yv).mean()) for k in (1, 7)}
    assert [g["best_val"] for g in rec["grid"]] == pytest.approx([vals[1], vals[7]])
    k = 1 if vals[1] >= vals[7] else 7
    assert rec["config"]["k"] == k and rec["probe"] == "knn" and rec["epoch"] is None
    assert rec["test"] == pytest.approx(float((numpy_knn(xt, yt, xs, k, 0.07, 3) == ys).mean()))
    assert rec["secondary"]["test_std"] == 0  # deterministic: every seed the same
    assert rec["run_key"]["probe"] == "knn" and rec["run_key"]["knn_k"] == [1, 7]


def test_logreg_eval_matches_scikit_learn_on_the_same_features_and_c(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))  # its own feature cache, cold
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    seen = capture_sources(monkeypatch)
    (rec,) = run_eval(EvalOptions(encoder="resnet18", tasks=[toy.toy_task()], out=tmp_path, device="cpu",
                                  probe="logreg", logreg_c=(0.05,)))
    (xt, yt), (xv, yv), (xs, ys) = arrays(seen["train"]), arrays(seen["val"]), arrays(seen["test"])
    scaler = StandardScaler().fit(xt.astype(np.float64))
    clf = LogisticRegression(C=0.05, max_iter=1000).fit(scaler.transform(xt.astype(np.float64)), yt)
    assert rec["val"] == pytest.approx(clf.score(scaler.transform(xv.astype(np.float64)), yv))
    assert rec["test"] == pytest.approx(clf.score(scaler.transform(xs.astype(np.float64)), ys))
    assert rec["config"]["C"] == 0.05 and rec["head_params"] == 3 * 512 + 3 and rec["probe"] == "logreg"


def test_clip_sweep_halves_around_the_best():
    """A val curve peaking at log10 C = 1.3: 7 start points two decades apart, then +-1, +-0.5, +-0.25, +-0.125
    around the running best: 15 fits, ending within an eighth of a decade of the peak."""
    tried = []

    def val(c):
        tried.append(c)
        return -abs(math.log10(c) - 1.3)

    out = clip_sweep(val)
    assert len(tried) == len(out) == 15 and tried[:7] == pytest.approx([1e-6, 1e-4, 1e-2, 1, 1e2, 1e4, 1e6])
    best = max(out, key=out.get)
    assert math.log10(best) == pytest.approx(1.25) and abs(math.log10(best) - 1.3) <= 0.0625


def test_pool_grid_by_hand():
    assert pool_grid(64, 16, 16, 9000) == (12, 12)  # sqrt(9000/64) = 11.9: 12*12*64 = 9216 is nearest
    assert pool_grid(256, 14, 14, 9000) == (6, 6)  # 5.9: 6 -> 9216 beats 5 -> 6400
    assert pool_grid(1024, 14, 14, 9000) == (3, 3)  # 2.96: 3 -> 9216
    assert pool_grid(2048, 7, 7, 9000) == (2, 2)  # 2.1: 2 -> 8192 beats 3 -> 18432
    assert pool_grid(128, 8, 8, 9000) == (8, 8)  # 8192 <= 9000: kept as it is
    assert pool_grid(64, 32, 8, 9000) == (12, 8)  # capped by the map


def test_pooled_taps_are_adaptive_average_pools_of_the_raw_ones():
    from encoders import create_encoder

    enc = create_encoder("resnet18")
    pooled = pooled_encoder(enc, 1000)
    assert pooled.fingerprint() == enc.fingerprint() and pooled.name == enc.name
    x = torch.rand(2, 3, 64, 64)
    raw = enc(x, ("block1", "block3"))
    out = pooled(x, (pooled_name("block1", 1000), pooled_name("block3", 1000), "embedding"))
    # block1: 64 x 16 x 16 -> sqrt(1000/64) = 3.95 -> 4 x 4; block3: 256 x 4 x 4 -> 1.98 -> 2 x 2
    assert torch.allclose(out[pooled_name("block1", 1000)], F.adaptive_avg_pool2d(raw["block1"], 4), atol=1e-6)
    assert torch.allclose(out[pooled_name("block3", 1000)], F.adaptive_avg_pool2d(raw["block3"], 2), atol=1e-6)
    assert torch.allclose(out["embedding"], enc(x)["embedding"], atol=1e-6)


def test_tap_all_gives_one_record_per_tap_from_one_encode(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))  # its own feature cache, cold
    calls = []
    real = features.encode_batches
    monkeypatch.setattr(features, "encode_batches", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    recs = run_eval(EvalOptions(encoder="resnet18", tasks=[toy.toy_task(epochs=2)], out=tmp_path, device="cpu",
                                grid="single", tap="all"))
    taps = ["conv", "block1", "block2", "block3", "block4", "embedding"]
    assert [r["tap"] for r in recs] == taps and [r["tap_index"] for r in recs] == list(range(6))
    assert len(calls) == 3 and all(len(c) == 6 for c in calls)  # train, val, test: each once, every tap at once
    assert all(r["cache"]["misses"] == 3 for r in recs)
    # 32 px toy images: conv 64 x 16 x 16 -> 12 x 12; block1 64 x 8 x 8 = 4096 and smaller maps are kept
    grids = {r["tap"]: (r["pool"] or {}).get("grid") for r in recs}
    assert grids == {"conv": [12, 12], "block1": [8, 8], "block2": [4, 4], "block3": [2, 2], "block4": [1, 1],
                     "embedding": None}
    assert [r["head_params"] for r in recs] == [(d + 1) * 3 for d in (9216, 4096, 2048, 1024, 512, 512)]
    keys = [r["run_key"] for r in recs]
    assert len({str(k) for k in keys}) == 6 and "tap" not in keys[-1]  # the embedding's is the default run's key
    assert len(list(tmp_path.glob("*.json"))) == 6
    # the default run finds the embedding record (the same experiment); --tap all again skips every tap
    (default,) = run_eval(EvalOptions(encoder="resnet18", tasks=[toy.toy_task(epochs=2)], out=tmp_path, device="cpu",
                                      grid="single"))
    assert default.get("skipped") and default["tap"] == "embedding"


def test_probes_that_do_not_apply_fail_with_one_line():
    with pytest.raises(HarnessError, match="--probe knn applies to image-level classification"):
        check_applies(get_task("synth_depth"), "knn", None)
    with pytest.raises(HarnessError, match="drop --tap"):
        check_applies(get_task("synth_seg"), "head", "block3")
    check_applies(get_task("synth_egomotion"), "logreg", "block2")  # fusion tasks: frames flattened

    from encoders import create_encoder

    enc = create_encoder("resnet18")
    with pytest.raises(UsageError, match="--tap block9: encoder resnet18 declares conv, block1"):
        requested_taps(enc, "block9")
    assert requested_taps(enc, None) == [None] and requested_taps(enc, "all")[-1] == "embedding"
    assert "block4_os16" not in requested_taps(enc, "all")  # derived taps are not blocks


def test_eval_options_parse_check_and_key(tmp_path):
    """The options on `harness eval` (and so on `sweep`): parsed by eval's parser, bad values are usage
    errors, and only non-default probes, taps and fractions enter the run key (default record files stay)."""
    import dataclasses
    import subprocess
    import sys

    from encoders import create_encoder
    from harness.cli import _eval_options
    from harness.runner import record_path, run_key
    from harness.sweep import SweepOptions, plan

    def parse(*args):
        return _eval_options(["--encoder", "resnet18", "--task", "synth_count", *args])

    opts = parse("--probe", "knn", "--knn-k", "5", "--knn-k", "10", "--tap", "all", "--train-fraction", "0.1")
    assert (opts.probe, opts.knn_k, opts.knn_t, opts.tap, opts.train_fraction) == ("knn", (5, 10), (0.07,), "all", 0.1)
    for bad in (["--probe", "svm"], ["--train-fraction", "0.1", "--shots", "3"], ["--knn-t", "0"],
                ["--train-fraction", "2"], ["--logreg-c", "-1"]):
        with pytest.raises(UsageError):
            parse(*bad)
    enc = create_encoder("resnet18")
    default = parse()
    task = get_task("synth_count")
    assert not {"probe", "tap", "subset", "knn_k"} & set(run_key(enc, task, default))
    assert run_key(enc, task, opts, "block2")["tap"] == "block2" and run_key(enc, task, opts, "embedding").get(
        "tap") is None
    # a sweep with --tap all knows a job by its first tap's record
    base = parse("--tap", "all", "--probe", "knn", "--out", str(tmp_path))
    (job,) = plan(SweepOptions(encoders=["resnet18"], tasks=["synth_count"], eval_args=["--tap", "all"], eval=base,
                               out=tmp_path))
    assert job.record == record_path(enc, task, dataclasses.replace(base, seeds=1), "conv")
    out = subprocess.run([sys.executable, "-m", "harness", "eval", "-e", "resnet18", "-t", "synth_count", "--shots",
                          "5", "--train-size", "100", "--out", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "error: give one of --train-fraction, --shots and --train-size"]
