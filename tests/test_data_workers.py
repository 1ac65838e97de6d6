"""Background workers: deterministic stream, crash reporting and replacement, clean Ctrl-C shutdown."""

import functools
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from ekn_core.errors import EknError
from ekn_plugins.data.workers import BackgroundBatches, batch_rng


class CountingSource:
    """A source whose batches are a pure function of the generator; can fail on one batch."""

    def __init__(self, marker_dir=None, fail_at=-1, mode="raise"):
        self.marker_dir, self.fail_at, self.mode = marker_dir, fail_at, mode

    def getbatch(self, batch_size, source="train", rng=None):
        img = rng.random((batch_size, 1, 3, 4, 4), dtype=np.float32)
        label = rng.integers(0, 5, (batch_size, 1, 2, 2, 2)).astype(np.int16)
        if self.marker_dir is not None and np.isclose(img.flat[0], self._value_at_fail()):
            marker = os.path.join(self.marker_dir, "failed")
            if self.mode == "always" or not os.path.exists(marker):
                open(marker, "w").close()
                if self.mode == "exit":
                    os._exit(3)
                raise RuntimeError("boom in getbatch")
        return img, label

    def _value_at_fail(self):
        return batch_rng(0, self.fail_at).random((1,), dtype=np.float32)[0] if self.fail_at >= 0 else -1


def serial(n, batch_size=2, seed=0):
    src = CountingSource()
    return [src.getbatch(batch_size, rng=batch_rng(seed, i)) for i in range(n)]


def assert_same(stream, expected):
    for got, ref in zip(stream, expected):
        for a, b in zip(got, ref):
            np.testing.assert_array_equal(a, b)


def test_stream_is_deterministic_and_independent_of_worker_count():
    expected = serial(6)
    for n_workers in (1, 2):
        with BackgroundBatches(CountingSource, batch_size=2, n_workers=n_workers, seed=0) as batches:
            got = [batches.get() for _ in range(6)]
        assert_same(got, expected)
    with BackgroundBatches(CountingSource, batch_size=2, n_workers=2, seed=0, start=3) as batches:  # resume
        assert_same([batches.get() for _ in range(3)], expected[3:])


@pytest.mark.parametrize("mode", ["raise", "exit"])
def test_crashed_worker_is_reported_and_replaced(tmp_path, mode):
    factory = functools.partial(CountingSource, str(tmp_path), fail_at=3, mode=mode)
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("ekn.data.workers")  # the "ekn" logger may not propagate (CLI logging set-up)
    logger.addHandler(handler)
    try:
        with BackgroundBatches(factory, batch_size=2, n_workers=2, seed=0) as batches:
            got = [batches.get() for _ in range(6)]
            assert batches.restarts == 1
    finally:
        logger.removeHandler(handler)
    assert_same(got, serial(6))
    message = "\n".join(records)
    if mode == "raise":
        assert "failed on batch 3" in message and "boom in getbatch" in message and "Traceback" in message
    else:  # a killed worker cannot say which batch it was on; it restarts at the one awaited
        assert "exited with code 3" in message


def test_persistent_failure_raises_with_traceback(tmp_path):
    factory = functools.partial(CountingSource, str(tmp_path), fail_at=1, mode="always")
    batches = BackgroundBatches(factory, batch_size=2, n_workers=2, seed=0, max_restarts=1)
    batches.get()
    with pytest.raises(EknError, match="(?s)failed 2 times on batch 1.*boom in getbatch"):
        batches.get()
    with pytest.raises(EknError, match="closed"):
        batches.get()


SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_data_workers import CountingSource
    from ekn_plugins.data.workers import BackgroundBatches

    if __name__ == "__main__":  # spawned workers re-import this script
        batches = BackgroundBatches(CountingSource, batch_size=2, n_workers=2, seed=0)
        batches.get(); batches.get()
        print(" ".join(str(w.process.pid) for w in batches._workers), flush=True)
        print(" ".join(s.name for w in batches._workers for slot in w.shms for s in slot), flush=True)
        try:
            while True:
                batches.get()
                time.sleep(0.01)
        except KeyboardInterrupt:
            batches.close()
            print("interrupted", flush=True)
""")


def test_ctrl_c_shuts_down_cleanly(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=os.path.dirname(__file__)))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(__file__)))
    pids = [int(p) for p in proc.stdout.readline().split()]
    names = proc.stdout.readline().split()
    assert len(pids) == 2 and names
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert "interrupted" in out, err
    assert proc.returncode == 0, err
    assert "leaked" not in err and "Traceback" not in err, err
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    for name in names:
        assert not os.path.exists(f"/dev/shm/{name}")
