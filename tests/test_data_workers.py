"""Background workers: deterministic stream, crash reporting and replacement, clean Ctrl-C shutdown."""

import functools
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from ekn_core.errors import ConfigError, EknError, ShapeError, WaitInterrupted
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
            if self.mode.endswith("always") or not os.path.exists(marker):
                open(marker, "w").close()
                if self.mode == "exit":
                    os._exit(3)
                if self.mode.startswith("hang"):
                    time.sleep(3600)  # a stuck read
                if self.mode == "shape":
                    raise ShapeError("raw.h5: no position fits a patch of (9, 9, 9)")
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


def test_an_ekn_error_in_a_worker_is_raised_once_with_its_message(tmp_path):
    """An EknError (the config's or the data's fault) is not retried: the parent raises it as it
    was raised, without a traceback and without restart warnings."""
    factory = functools.partial(CountingSource, str(tmp_path), fail_at=1, mode="shape")
    with _Warnings() as warnings, BackgroundBatches(factory, batch_size=2, n_workers=2, seed=0) as batches:
        batches.get()
        with pytest.raises(ShapeError) as err:
            batches.get()
        assert batches.restarts == 0
    assert str(err.value) == "raw.h5: no position fits a patch of (9, 9, 9)"
    assert warnings.messages == []


class _Warnings(logging.Handler):
    """The worker module's warnings (the "ekn" logger may not propagate: CLI logging set-up)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def __enter__(self):
        logging.getLogger("ekn.data.workers").addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger("ekn.data.workers").removeHandler(self)


def test_a_stuck_worker_is_reported_and_the_wait_can_be_aborted(tmp_path):
    factory = functools.partial(CountingSource, str(tmp_path), fail_at=1, mode="hang-always")
    with _Warnings() as warnings, BackgroundBatches(factory, batch_size=2, n_workers=1, seed=0,
                                                    warn_after_s=0.5) as batches:
        batches.get()
        pid = batches._workers[0].process.pid
        end = time.monotonic() + 1.8
        with pytest.raises(WaitInterrupted, match=f"batch 1 from data worker 0 \\(pid {pid}\\)"):
            batches.get(abort=lambda: time.monotonic() > end)
        assert time.monotonic() - end < 1.0  # within a poll interval or two
        assert batches.next_index == 1 and batches.restarts == 0
    stuck = [m for m in warnings.messages if f"data worker 0 (pid {pid}) has not delivered batch 1 for" in m]
    assert len(stuck) >= 2, warnings.messages  # repeated


def test_a_stuck_worker_is_replaced_after_the_timeout(tmp_path):
    factory = functools.partial(CountingSource, str(tmp_path), fail_at=1, mode="hang")  # stuck once
    with _Warnings() as warnings, BackgroundBatches(factory, batch_size=2, n_workers=1, seed=0) as batches:
        got = [batches.get(timeout_s=1.0) for _ in range(3)]
        assert batches.restarts == 1
    assert_same(got, serial(3))
    replaced = r"failed on batch 1 .*\n.*no batch after [\d.]+ s \(timeout 1.0 s\)"
    assert any(re.search(replaced, m) for m in warnings.messages), warnings.messages
    factory = functools.partial(CountingSource, str(tmp_path), fail_at=1, mode="hang-always")
    with BackgroundBatches(factory, batch_size=2, n_workers=1, seed=0, max_restarts=1) as batches:
        batches.get()
        with pytest.raises(EknError, match=r"(?s)failed 2 times on batch 1.*no batch after [\d.]+ s \(timeout 0.5 s\)"):
            batches.get(timeout_s=0.5)


def test_a_factory_that_cannot_be_pickled_says_what_to_do():
    def scale(x):  # as if defined in an experiment config, which workers cannot import
        return x

    scale.__module__, scale.__qualname__ = "ekn_config", "scale"
    with pytest.raises(EknError, match="cannot be sent to a background worker process: PicklingError.*ekn_config.*"
                                       "importable module, or set background_processes = False"):
        BackgroundBatches(functools.partial(CountingSource, fail_at=scale), batch_size=2, n_workers=2)


UNGUARDED = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_data_workers import CountingSource
    from ekn_plugins.data.workers import BackgroundBatches

    BackgroundBatches(CountingSource, batch_size=2, n_workers=1).get()  # no `if __name__ == "__main__":`
""")


def test_a_script_without_a_main_guard_is_named(tmp_path):
    script = tmp_path / "train_it.py"
    script.write_text(UNGUARDED.format(tests=os.path.dirname(__file__)))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                            cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ekn_core.errors.EknError: data worker 0 exited with code 1 while starting"), last
    assert f"main module {script}" in last and 'under `if __name__ == "__main__":`' in last
    assert "failed" not in last  # at once, not after restarts


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


class RepeatingWarningSource(CountingSource):
    """Warns the same on every batch, and once per batch something new."""

    def getbatch(self, batch_size, source="train", rng=None):
        log = logging.getLogger("ekn.data")
        log.warning("slow read of cube 0")
        batch = super().getbatch(batch_size, source, rng)
        log.warning("odd patch with mean %.6f", batch[0].mean())
        return batch


class PatchSourceCopy(CountingSource):
    """Builds a real patch source (its checks run, as in a trainer's worker); cheap batches."""

    def __init__(self, **kwargs):
        from ekn_plugins.data.patches import PatchSource

        super().__init__()
        PatchSource(**kwargs).close()


def _user_sees(capfd, run, logger="ekn.data", level=logging.WARNING):
    """What reaches stderr (of this process and its workers) while ``run()`` runs, with one console
    handler for ``level`` on ``logger`` (isolated from the test session's logging set-up)."""
    target = logging.getLogger(logger)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(level)
    saved = target.propagate, target.level
    target.addHandler(console)
    target.propagate = False
    target.setLevel(level)
    capfd.readouterr()
    try:
        run()
    finally:
        target.removeHandler(console)
        target.propagate, target.level = saved
    return capfd.readouterr().err


def test_data_source_warnings_appear_once_with_several_workers(tmp_path, capfd):
    """The trainer's way: the source is built here (its grey check warns), then each worker builds a copy."""
    import h5py

    twelve_bit = np.random.default_rng(0).integers(0, 4096, (10, 40, 40)).astype(np.uint16)
    with h5py.File(tmp_path / "raw.h5", "w") as f:
        f["raw"], f["lab"] = twelve_bit, np.zeros((10, 40, 40), np.int16)
    factory = functools.partial(PatchSourceCopy, patch_size=(4, 16, 16), d_path=str(tmp_path),
                                l_path=str(tmp_path), d_files=[("raw.h5", "raw")], l_files=[("raw.h5", "lab")])

    def train():
        factory()
        with BackgroundBatches(factory, batch_size=2, n_workers=3, seed=0) as batches:
            for _ in range(6):
                batches.get()

    err = _user_sees(capfd, train)
    assert err.count("uint16 grey values") == 1, err


def test_repeated_worker_warnings_are_shown_once_and_new_ones_each(capfd):
    def draw():
        with BackgroundBatches(RepeatingWarningSource, batch_size=2, n_workers=2, seed=0) as batches:
            for _ in range(6):
                batches.get()

    err = _user_sees(capfd, draw)
    assert err.count("slow read of cube 0") == 1, err
    means = sorted(f"odd patch with mean {batch[0].mean():.6f}" for batch in serial(6))
    assert sorted(re.findall(r"odd patch with mean [\d.]+", err))[:6] == means, err


class StatisticsSource(CountingSource):
    """Logs statistics marked for relaying, and other INFO records."""

    def getbatch(self, batch_size, source="train", rng=None):
        batch = super().getbatch(batch_size, source, rng)
        log = logging.getLogger("ekn.data")
        log.info("statistics after batch with mean %.6f", batch[0].mean(), extra={"relay": True})
        log.info("chatter of a worker")
        return batch


def test_worker_statistics_are_relayed_and_other_info_is_not(capfd):
    def draw():
        with BackgroundBatches(StatisticsSource, batch_size=2, n_workers=2, seed=0) as batches:
            for _ in range(4):
                batches.get()
        time.sleep(0.5)

    err = _user_sees(capfd, draw, level=logging.INFO)
    assert err.count("statistics after batch") >= 4 and "chatter" not in err, err
    assert f"statistics after batch with mean {serial(1)[0][0].mean():.6f}" in err


def test_batch_arguments_that_getbatch_does_not_take_fail_at_once():
    with BackgroundBatches(CountingSource, batch_size=2, n_workers=1, seed=0,
                           batch_kwargs={"ignore_thresh": 0.5}) as batches:
        with pytest.raises(ConfigError, match="batch arguments: getbatch takes no argument 'ignore_thresh'; it takes "
                                              "batch_size, source, rng"):
            batches.get()
        assert batches.restarts == 0
