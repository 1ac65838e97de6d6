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


@pytest.fixture
def worker_elsewhere(tmp_path, monkeypatch):
    """Runs the blocks of a Dask job in this process, as a worker started in another directory
    would (the job is recorded)."""
    from ekn_core.prediction import distributed as dist

    jobs, elsewhere = [], tmp_path / "worker_cwd"
    elsewhere.mkdir()

    def run_blocks(job, pending, write, **_):
        jobs.append(job)
        here = os.getcwd()
        os.chdir(elsewhere)
        try:
            results = [dist.compute_block(job, index) for index in pending]
        finally:
            os.chdir(here)
            dist._WORKER_CACHE.clear()
        for index, pred in results:
            write(index, pred)

    monkeypatch.setattr(dist, "run_blocks", run_blocks)
    return jobs, str(elsewhere)


def test_workers_get_absolute_model_paths_and_name_their_directory(tmp_path, raw_h5, monkeypatch, worker_elsewhere):
    from ekn_core.errors import EknError
    from ekn_core.prediction.blockwise import NetSpec

    jobs, _ = worker_elsewhere
    ekn_nets = pytest.importorskip("ekn_core.neuromancer")
    model = ekn_nets.model_manager.newmodel("relative_model")
    inp = ekn_nets.Input((None, 1, 3, 9, 9), "b,f,z,y,x", name="raw")
    out = ekn_nets.Conv(inp, 2, (1, 3, 3), activation_func="sigmoid", name="probs")
    model.designate_nodes(input_node=inp, prediction_node=out)
    model.save(str(tmp_path / "net.h5"))
    assert raw_h5 == str(tmp_path / "raw.h5:raw")
    monkeypatch.chdir(tmp_path)
    single = predict_volume("net.h5", "raw.h5:raw", "single.zarr", **KW)
    predict_volume("net.h5", "raw.h5:raw", "dask.zarr", workers=2, **KW)
    assert jobs[0].spec.model == str(tmp_path / "net.h5") and single["blocks"] > 1
    np.testing.assert_array_equal(read_volume("dask.zarr"), read_volume("single.zarr"))
    with pytest.raises(EknError, match=f"'missing.h5' does not exist \\(working directory '{tmp_path}' on "):
        NetSpec("missing.h5").load()


def test_local_workers_share_the_memory_budget(tmp_path, raw_h5, worker_elsewhere):
    from ekn_core.prediction.blockwise import make_plan

    jobs, _ = worker_elsewhere
    predict_volume(MODEL, raw_h5, str(tmp_path / "four.zarr"), workers=4, tile=None, memory_budget="4M",
                   progress=False)

    def block(budget):
        return make_plan(jobs[0].plan.geometry, (9, 45, 41), 1, 2, memory_budget=budget).block

    assert jobs[0].plan.block == block(2**20) != block(4 * 2**20)  # 4 MiB for the machine: 1 MiB a worker


def test_the_local_cluster_is_secured_with_tls():
    from ekn_core.prediction.distributed import connect

    client, close = connect(workers=1)
    try:
        assert client.scheduler.address.startswith("tls://")
        assert client.submit(sum, [1, 2]).result(timeout=60) == 3
    finally:
        close()
