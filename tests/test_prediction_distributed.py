"""Blockwise prediction on a local Dask cluster: bit-exact with one process, survives a killed worker."""

import os
import signal

import h5py
import numpy as np
import pytest

from ekn_core.prediction.blockwise import predict_volume
from ekn_core.volumes import open_volume

distributed = pytest.importorskip("distributed")

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = "prediction_testnets:make_net"
KW = dict(tile=None, memory_budget="1M", progress=False)


@pytest.fixture
def cluster(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("EKN_TESTNET_DELAY", "0.01")
    monkeypatch.syspath_prepend(HERE)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  memory_limit=0) as c:
        yield c


@pytest.fixture
def raw_h5(tmp_path):
    raw = (np.random.default_rng(0).random((9, 45, 41)) * 255).astype(np.uint8)
    path = str(tmp_path / "raw.h5")
    with h5py.File(path, "w") as f:
        f["raw"] = raw
    return path + ":raw"


def read(path):
    with open_volume(path) as vol:
        return np.asarray(vol[...])


def test_cluster_result_is_bit_exact_and_survives_a_killed_worker(tmp_path, raw_h5, cluster, monkeypatch):
    single = str(tmp_path / "single.zarr")
    predict_volume(MODEL, raw_h5, single, **KW)
    reference = read(single)

    out = str(tmp_path / "dask.h5:pred")  # HDF5 output: the client writes
    summary = predict_volume(MODEL, raw_h5, out, scheduler=cluster.scheduler_address, **KW)
    assert summary["blocks"] >= 6
    np.testing.assert_array_equal(read(out), reference)

    monkeypatch.setenv("EKN_TESTNET_DELAY", "0.05")
    killed = []
    pid = sorted(n.process.pid for n in cluster.workers.values())[0]

    def kill_one(index):
        if not killed:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    out2 = str(tmp_path / "killed.zarr")
    predict_volume(MODEL, raw_h5, out2, scheduler=cluster.scheduler_address, on_block=kill_one, **KW)
    assert killed
    np.testing.assert_array_equal(read(out2), reference)


def test_local_cluster_from_workers_argument(tmp_path, raw_h5, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.syspath_prepend(HERE)
    single, multi = str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")
    predict_volume(MODEL, raw_h5, single, mfp=True, **KW)
    predict_volume(MODEL, raw_h5, multi, mfp=True, workers=2, **KW)
    np.testing.assert_array_equal(read(multi), read(single))
