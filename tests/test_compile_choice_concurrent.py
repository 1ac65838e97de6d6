"""The compile-mode cache with several writers: processes recording at the same time keep each
other's entries (exclusive lock, re-read under it, atomic write), and lookups take no lock.

No TensorFlow here: the spawned processes import this module, and only the cache is exercised.
"""

import json
import multiprocessing
import os
import threading

from ekn_core import compile_choice
from ekn_core.atomic import exclusive_lock

N_PROCESSES, N_KEYS, N_ROUNDS = 4, 12, 3


def _entry(worker: int, key: int, round_: int) -> dict:
    return {"plain": {"first_step_s": float(round_), "median_s": worker + key / 100}, "choice": "plain"}


def _record_many(path: str, worker: int, start: "multiprocessing.synchronize.Barrier") -> None:
    """Records this worker's keys N_ROUNDS times each, starting with the other workers."""
    start.wait()
    for round_ in range(N_ROUNDS):
        for key in range(N_KEYS):
            compile_choice.record_choice(f"w{worker}|k{key}", _entry(worker, key, round_), path)
            compile_choice.cached_choice(f"w{(worker + 1) % N_PROCESSES}|k{key}", path)  # reads in between


def test_processes_recording_at_once_keep_every_entry(tmp_path):
    path = str(tmp_path / "cache" / "modes.json")
    compile_choice.record_choice("before", {"choice": "xla"}, path)
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(N_PROCESSES)
    workers = [ctx.Process(target=_record_many, args=(path, w, start)) for w in range(N_PROCESSES)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0] * N_PROCESSES
    with open(path) as f:
        data = json.load(f)
    expected = {f"w{w}|k{k}": _entry(w, k, N_ROUNDS - 1) for w in range(N_PROCESSES) for k in range(N_KEYS)}
    missing = sorted(set(expected) - set(data))
    assert not missing, f"{len(missing)} of {len(expected)} entries lost, e.g. {missing[:3]}"
    assert data == {"before": {"choice": "xla"}, **expected}
    assert sorted(os.listdir(tmp_path / "cache")) == ["modes.json", "modes.json.lock"]  # no temporary files


def test_lookups_do_not_wait_for_the_lock(tmp_path):
    path = str(tmp_path / "modes.json")
    compile_choice.record_choice("k", {"choice": "eager"}, path)
    found = []
    with exclusive_lock(path):  # a writer holds the lock: a lookup must still answer
        reader = threading.Thread(target=lambda: found.append(compile_choice.cached_choice("k", path)))
        reader.start()
        reader.join(timeout=10)
        assert not reader.is_alive() and found == ["eager"]
        recorder = threading.Thread(target=compile_choice.record_choice, args=("k2", {"choice": "plain"}, path))
        recorder.start()
        recorder.join(timeout=0.5)
        assert recorder.is_alive()  # a recorder waits for the lock
    recorder.join(timeout=10)
    assert not recorder.is_alive() and compile_choice.cached_choice("k2", path) == "plain"


def test_recording_rereads_a_file_that_looks_unchanged(tmp_path):
    """Under the lock the file is read again even when (mtime, size, inode) match the memo: they
    can repeat within one clock tick, and the memo would then drop another writer's entry."""
    path = str(tmp_path / "modes.json")
    compile_choice.record_choice("key-1", {"choice": "plain"}, path)
    assert compile_choice.cached_choice("key-1", path) == "plain"  # memoised with its identity
    st = os.stat(path)
    with open(path, "r+") as f:  # another writer: same inode, same size, same mtime
        text = f.read().replace("key-1", "key-2")
        f.seek(0)
        f.write(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    compile_choice.record_choice("key-3", {"choice": "eager"}, path)
    with open(path) as f:
        assert json.load(f) == {"key-2": {"choice": "plain"}, "key-3": {"choice": "eager"}}
