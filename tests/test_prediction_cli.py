"""`ekn predict`: a run killed with SIGKILL resumes and ends identical to an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ekn_core.cli import main
from ekn_core.prediction.blockwise import progress_path
from prediction_testnets import read_volume, write_raw_h5

HERE = os.path.dirname(os.path.abspath(__file__))
ARGS = ["prediction_testnets:make_fast_net", None, None, "--tile", "model", "--memory-budget", "1M", "--no-progress"]


def ekn_env(**extra):
    env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def cli(src, out):
    return ["predict", ARGS[0], src, out, *ARGS[3:]]


def done_lines(out):
    try:
        with open(progress_path(out)) as f:
            return sum(1 for line in f if line.startswith("done "))
    except FileNotFoundError:
        return 0


@pytest.fixture
def raw_h5(tmp_path):
    return write_raw_h5(tmp_path, (9, 45, 41))[1]


def test_killed_predict_resumes_identically(tmp_path, raw_h5, monkeypatch, capsys):
    monkeypatch.syspath_prepend(HERE)
    full, out = str(tmp_path / "full.zarr"), str(tmp_path / "killed.zarr")
    assert main(cli(raw_h5, full)) == 0
    blocks = int(capsys.readouterr().out.split(": ")[1].split(" blocks")[0])
    assert blocks >= 6
    proc = subprocess.Popen([sys.executable, "-m", "ekn_core.cli", *cli(raw_h5, out)],
                            env=ekn_env(EKN_TESTNET_DELAY="0.2"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while done_lines(out) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = done_lines(out)
    assert 2 <= finished < blocks, proc.stderr.read().decode()
    assert main(cli(raw_h5, out)) == 0
    assert f"({finished} already done)" in capsys.readouterr().out
    np.testing.assert_array_equal(read_volume(out), read_volume(full))


def test_cli_errors_are_clear(tmp_path, raw_h5, monkeypatch, capsys):
    monkeypatch.syspath_prepend(HERE)
    assert main(["predict", ARGS[0], raw_h5, str(tmp_path / "o.zarr"), "--roi", "0:5,0:5"]) == 2
    assert "--roi" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "missing.ekn"), raw_h5, str(tmp_path / "o.zarr")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["predict", ARGS[0], raw_h5, str(tmp_path / "o.zarr"), "--overlap", "2,8"]) == 2
    assert "--overlap '2,8'" in capsys.readouterr().err
    assert main(cli(raw_h5, str(tmp_path / "o.zarr")) + ["--overlap", "0,6,6"]) == 0  # per axis (z: 1-voxel tiles)
