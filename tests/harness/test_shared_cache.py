"""Several processes on one cache (a sweep on shared storage): one encodes each entry, the others
wait and read it; a lock left by a killed process is taken over."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARGS = ("eval", "--encoder", "resnet18", "--task", "synth_count", "--limit", "64", "--epochs", "1", "--grid",
        "single", "--device", "cpu", "--json")


def start(cache: Path, out: Path, quiet: bool = True) -> subprocess.Popen:
    env = {**os.environ, "HARNESS_CACHE": str(cache), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "HARNESS_QUIET": "1" if quiet else ""}
    return subprocess.Popen([sys.executable, "-m", "harness", *ARGS, "--out", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    return json.loads(out)


def entries(cache: Path) -> list[Path]:
    return sorted((cache / "features").rglob("*.h5"))


def leftovers(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.name.endswith((".lock", ".tmp"))]


def test_two_processes_on_a_cold_entry_encode_it_once(tmp_path):
    cache = tmp_path / "cache"
    a, b = start(cache, tmp_path / "a"), start(cache, tmp_path / "b")
    ra, rb = finish(a), finish(b)
    assert ra["test"] == rb["test"] and ra["val"] == rb["val"]
    # train, val and test entries: each encoded by exactly one of the two, read by the other
    assert ra["cache"]["misses"] + rb["cache"]["misses"] == 3
    assert ra["cache"]["hits"] + rb["cache"]["hits"] == 3
    assert len(entries(cache)) == 3 and not leftovers(cache)


def test_a_waiting_process_reads_the_entry_another_publishes_and_a_dead_owners_lock_is_taken_over(tmp_path):
    warm = tmp_path / "warm"
    finish(start(warm, tmp_path / "w"))  # the three entries, made once
    cache = tmp_path / "cache"
    shutil.copytree(warm / "synthetic", cache / "synthetic")
    train, *others = entries(warm)
    # A live owner (a sleeping process on this host) holds the lock of one entry: the eval must wait.
    holder = subprocess.Popen(["sleep", "120"])
    try:
        target = cache / "features" / train.relative_to(warm / "features")
        target.parent.mkdir(parents=True)
        lock = target.with_name(target.name + ".lock")
        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid, "since": time.time()}))
        proc = start(cache, tmp_path / "out", quiet=False)
        # Publish only once it says it waits (a fixed sleep raced a slow start on a loaded machine).
        said = []
        for line in proc.stderr:  # ends at EOF if it finishes without waiting
            said.append(line)
            if "waiting for" in line:
                break
        assert "which is encoding it" in said[-1], "".join(said)[-2000:]
        time.sleep(1)
        assert proc.poll() is None and not target.exists()  # still waiting, not encoding it
        shutil.copyfile(train, target)  # the owner publishes the entry
        rec = finish(proc)
    finally:
        holder.kill()
        holder.wait()
    assert rec["cache"]["waited"] == 1 and any("encoded by another process" in n for n in rec["notes"])
    assert rec["cache"]["hits"] >= 1
    # A lock whose owner died (its pid is gone) is broken and the entry encoded.
    dead = subprocess.Popen(["true"])
    dead.wait()
    cache2 = tmp_path / "cache2"
    shutil.copytree(warm / "synthetic", cache2 / "synthetic")
    for e in entries(warm):
        t = cache2 / "features" / e.relative_to(warm / "features")
        t.parent.mkdir(parents=True, exist_ok=True)
        t.with_name(t.name + ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))
    rec2 = finish(start(cache2, tmp_path / "out2"))
    assert rec2["cache"]["misses"] == 3 and rec2["test"] == rec["test"]
    assert any("stale cache lock" in n for n in rec2["notes"])
    assert len(entries(cache2)) == 3 and not leftovers(cache2)


def test_a_lock_from_another_host_is_stale_only_when_its_owner_stops_touching_it(tmp_path):
    from harness.common.locks import EntryLock

    target = tmp_path / "entry.h5"
    lock = EntryLock(target, stale_s=60)
    lock.path.write_text(json.dumps({"host": "some-other-host", "pid": 1}))
    assert not lock._stale()  # touched just now: its owner may be working
    old = time.time() - 120
    os.utime(lock.path, (old, old))
    assert lock._stale()
    assert lock.acquire() and lock.owned and "some-other-host" in lock.broke
    owner = json.loads(lock.path.read_text())
    assert owner["host"] == socket.gethostname() and owner["pid"] == os.getpid()
    lock.release()
    assert not lock.path.exists()
