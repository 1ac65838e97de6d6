"""Blockwise prediction on a local Dask cluster: bit-exact with one process, survives a killed worker."""

import os
import signal
import threading
import time

import numpy as np
import pytest

from ekn_core.prediction.blockwise import predict_volume
from prediction_testnets import read_volume, write_raw_h5

distributed = pytest.importorskip("distributed")

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = "prediction_testnets:make_fast_net"
KW = dict(tile=None, memory_budget="1M", progress=False)


@pytest.fixture
def cluster(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.syspath_prepend(HERE)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  memory_limit=0) as c:
        yield c


@pytest.fixture
def raw_h5(tmp_path):
    return write_raw_h5(tmp_path, (9, 45, 41))[1]


def test_cluster_result_is_bit_exact_and_survives_a_killed_worker(tmp_path, raw_h5, cluster, monkeypatch):
    single = str(tmp_path / "single.zarr")
    predict_volume(MODEL, raw_h5, single, **KW)
    reference = read_volume(single)

    out = str(tmp_path / "dask.h5:pred")  # HDF5 output: the client writes
    summary = predict_volume(MODEL, raw_h5, out, scheduler=cluster.scheduler_address, **KW)
    assert summary["blocks"] >= 6
    np.testing.assert_array_equal(read_volume(out), reference)

    killed = []
    pid = sorted(n.process.pid for n in cluster.workers.values())[0]

    def kill_one(index):
        if not killed:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    out2 = str(tmp_path / "killed.zarr")
    predict_volume(MODEL, raw_h5, out2, scheduler=cluster.scheduler_address, on_block=kill_one, **KW)
    assert killed
    np.testing.assert_array_equal(read_volume(out2), reference)


def test_local_cluster_from_workers_argument(tmp_path, raw_h5, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.syspath_prepend(HERE)
    single, multi = str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")
    predict_volume(MODEL, raw_h5, single, mfp=True, **KW)
    predict_volume(MODEL, raw_h5, multi, mfp=True, workers=2, **KW)
    np.testing.assert_array_equal(read_volume(multi), read_volume(single))


_RELEASE = {"job": threading.Event(), "fail": threading.Event()}  # the in-process workers' tasks wait for them


def _block_or_wait(job, index):
    """Block 0 at once (or, with job "fail", an error); the others only when released."""
    if index == 0 and job == "fail":
        raise ValueError("block 0 failed")
    if index > 0:
        _RELEASE[job].wait(30)
    return index, np.zeros(1)


def _task_keys(dask_scheduler):
    return [str(key) for key in dask_scheduler.tasks]


def test_stopping_early_cancels_the_tasks_in_flight(monkeypatch):
    """write() raises, or a task fails for good: the blocks still in flight on the caller's client are
    cancelled (the scheduler forgets them while they still wait), none left running for nothing."""
    from ekn_core.prediction import distributed as dist

    monkeypatch.setattr(dist, "compute_block", _block_or_wait)
    for event in _RELEASE.values():
        event.clear()

    def write(index, pred):
        raise OSError("disk full")

    def tasks_left(client):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            left = [key for key in client.run_on_scheduler(_task_keys) if key.startswith("ekn-block")]
            if not left:
                break
            time.sleep(0.05)
        return left

    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        try:
            with pytest.raises(OSError, match="disk full"):
                dist.run_blocks("job", list(range(6)), write, client=client)
            assert tasks_left(client) == []
            _RELEASE["job"].set()  # the worker threads of the cancelled blocks are free again
            with pytest.raises(ValueError, match="block 0 failed"):
                dist.run_blocks("fail", list(range(6)), lambda index, pred: None, retries=0, client=client)
            assert tasks_left(client) == []
        finally:
            for event in _RELEASE.values():
                event.set()
