"""The feature cache: keys, atomic publication under SIGKILL, corruption, streaming."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from encoders import create_encoder
from harness.cache import FeatureKey, StreamFeatures, entry_path, list_entries, open_entry
from harness.features import CacheStats, EncodeSettings, get_features
from tests.harness.toy import ToyDataset

ROOT = Path(__file__).resolve().parents[2]


def key(**kw):
    base = dict(encoder_fingerprint="abc", task="t", split="train", n=10, transform="none", taps=("embedding",),
                resolution=64)
    return FeatureKey(**{**base, **kw})


@pytest.mark.parametrize("change", [
    {"encoder_fingerprint": "abd"}, {"transform": "flip"}, {"taps": ("block4",)}, {"aug_copy": 1},
    {"split": "val"}, {"n": 11}, {"resolution": 224}, {"dtype": "float32"}, {"task": "u"}, {"format_version": 99},
])
def test_key_changes_with_every_field(change):
    assert key().digest() != key(**change).digest()
    assert key().digest() == key().digest()


def settings(tmp_path, **kw):
    return EncodeSettings(device=torch.device("cpu"), batch_size=8, cache_root=tmp_path, **kw)


def test_hit_returns_the_same_features_and_weights_change_misses(tmp_path):
    enc = create_encoder("resnet18")
    ds = ToyDataset("train", 20)
    k = key(encoder_fingerprint=enc.fingerprint(), n=len(ds))
    s1, s2 = CacheStats(), CacheStats()
    first = get_features(enc, ds, ("embedding", "block3"), k, settings(tmp_path), s1)
    second = get_features(enc, ds, ("embedding", "block3"), k, settings(tmp_path), s2)
    assert (s1.misses, s1.hits, s2.misses, s2.hits) == (1, 0, 0, 1)
    for t in ("embedding", "block3"):
        assert torch.equal(first.taps[t], second.taps[t]) and first.taps[t].dtype == torch.float16
    assert torch.equal(first.target, second.target)
    direct = enc(torch.stack([ds[i]["image"] for i in range(len(ds))]), ("embedding",))["embedding"]
    torch.testing.assert_close(first.taps["embedding"].float(), direct, atol=2e-3, rtol=2e-3)
    other = create_encoder("resnet18", seed=1)
    s3 = CacheStats()
    get_features(other, ds, ("embedding", "block3"), key(encoder_fingerprint=other.fingerprint(), n=len(ds)),
                 settings(tmp_path), s3)
    assert s3.misses == 1


def test_corrupted_entry_is_detected_and_rebuilt(tmp_path):
    enc = create_encoder("resnet18")
    ds = ToyDataset("train", 16)
    k = key(encoder_fingerprint=enc.fingerprint(), n=len(ds))
    good = get_features(enc, ds, ("embedding",), k, settings(tmp_path), CacheStats())
    path = entry_path(k, tmp_path)
    data = bytearray(path.read_bytes())
    # Flip bytes inside the stored embedding values (the largest dataset, near the file's end).
    emb = good.taps["embedding"].numpy().tobytes()
    at = bytes(data).find(emb[:64])
    assert at > 0
    for i in range(at + 100, at + 164):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    stats = CacheStats()
    again = get_features(enc, ds, ("embedding",), k, settings(tmp_path), stats)
    assert stats.rebuilt == 1 and stats.misses == 1 and "corrupt" in stats.notes[0]
    assert torch.equal(again.taps["embedding"], good.taps["embedding"])
    # A truncated file too.
    path.write_bytes(path.read_bytes()[:1000])
    stats = CacheStats()
    get_features(enc, ds, ("embedding",), k, settings(tmp_path), stats)
    assert stats.rebuilt == 1 and open_entry(k, tmp_path) is not None


KILL_SCRIPT = r"""
import sys, time, torch
sys.path.insert(0, sys.argv[3])
from pathlib import Path
from encoders import create_encoder
from harness.cache import FeatureKey
from harness.features import CacheStats, EncodeSettings, get_features
from tests.harness.toy import ToyDataset

class Slow(ToyDataset):
    def __getitem__(self, i):
        if i == 40:
            Path(sys.argv[2]).write_text("mid-encode")
            time.sleep(120)
        return super().__getitem__(i)

enc = create_encoder("resnet18")
ds = Slow("train", 64)
k = FeatureKey(enc.fingerprint(), "t", "train", len(ds), "none", ("embedding",), 64)
get_features(enc, ds, ("embedding",), k, EncodeSettings(device=torch.device("cpu"), batch_size=8,
             cache_root=Path(sys.argv[1])), CacheStats())
"""


def test_sigkill_mid_encode_leaves_nothing_read_as_complete(tmp_path):
    marker = tmp_path / "marker"
    root = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(root), str(marker), str(ROOT)],
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert proc.poll() is None, "the encoding subprocess ended early"
            assert time.time() < deadline, "encoding never reached the middle"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    enc = create_encoder("resnet18")
    ds = ToyDataset("train", 64)
    k = FeatureKey(enc.fingerprint(), "t", "train", len(ds), "none", ("embedding",), 64)
    assert open_entry(k, root) is None  # nothing published
    leftovers = list_entries(root)
    assert leftovers and not any(e.complete for e in leftovers)  # the partial file is visible as incomplete
    stats = CacheStats()
    feats = get_features(enc, ds, ("embedding",), k, settings(root), stats)
    assert stats.misses == 1 and len(feats) == 64 and open_entry(k, root) is not None


def test_stream_features_serve_every_sample_once(tmp_path):
    enc = create_encoder("resnet18")
    ds = ToyDataset("train", 50)
    k = key(encoder_fingerprint=enc.fingerprint(), n=len(ds))
    mem = get_features(enc, ds, ("embedding",), k, settings(tmp_path), CacheStats())
    stream = StreamFeatures(entry_path(k, tmp_path), block_rows=16)
    seen_t, seen_x = [], []
    for x, y, _ in stream.batches(7, torch.device("cpu"), shuffle=True, generator=torch.Generator().manual_seed(0)):
        seen_t.append(y)
        seen_x.append(x["embedding"])
    xs, ts = torch.cat(seen_x), torch.cat(seen_t)
    assert len(ts) == 50
    # Same multiset of rows as in memory, in a shuffled order.
    order = np.lexsort(xs.float().numpy().T)
    ref = np.lexsort(mem.taps["embedding"].float().numpy().T)
    assert torch.equal(xs[order], mem.taps["embedding"][ref])
    assert not torch.equal(xs, mem.taps["embedding"])


def test_ram_budget_switches_to_streaming_and_disk_budget_to_on_the_fly(tmp_path):
    enc = create_encoder("resnet18")
    ds = ToyDataset("train", 12)
    k = key(encoder_fingerprint=enc.fingerprint(), n=len(ds))
    streamed = get_features(enc, ds, ("embedding",), k, settings(tmp_path, ram_budget=10), CacheStats())
    assert isinstance(streamed, StreamFeatures)
    stats = CacheStats()
    fly = get_features(enc, ds, ("block1",), key(encoder_fingerprint=enc.fingerprint(), n=12, taps=("block1",)),
                       settings(tmp_path, disk_budget=1000), stats)
    assert stats.on_the_fly == 1 and "on the fly" in stats.notes[0]
    batches = list(fly.batches(5, torch.device("cpu")))
    assert sum(len(y) for _, y, _ in batches) == 12 and batches[0][0]["block1"].shape[1:] == (64, 8, 8)
