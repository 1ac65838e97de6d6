"""`ekn train` end to end in subprocesses on synthetic EM data: the run directory, exact resume,
and `kill -9` at a random point followed by `--resume`.

Three runs of the same config start together: U (uninterrupted, S steps), A (N steps, then
resumed to S) and K (killed with SIGKILL at a random moment, then resumed). All three must end
with the same weights and optimiser state (1e-6).
"""

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from PIL import Image

from ekn_core.trainer.checkpoint import list_checkpoints, read_checkpoint
from ekn_core.trainer.rundir import RunDir

pytestmark = pytest.mark.slow  # five `ekn train` processes (about a minute on 2 idle cores)

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(HERE, "trainer_files", "tiny2d_config.py")
S, N = 200, 80


def ekn(*args, **kwargs):
    exe = os.path.join(os.path.dirname(sys.executable), "ekn")
    cmd = [exe, *args] if os.path.exists(exe) else [sys.executable, "-m", "ekn_core.cli", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def finish(proc, timeout=400):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from ekn_plugins.data.synth import write_dataset

    base = tmp_path_factory.mktemp("trainer_cli")
    data = str(base / "data")
    write_dataset(data, n_volumes=3, shape=(10, 64, 64), label_margin=(2, 8, 8), seed=0)
    env = {**os.environ, "EKN_TEST_DATA": data, "TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": "1"}
    save_path = str(base / "runs")
    common = [CONFIG, "--set", f"save_path={save_path!r}", "--set", "history_freq=50", "--set", "checkpoint_freq=20",
              "--set", "preview_freq=100", "--set", "param_save_it=100", "--set", "tensorboard_freq=10"]
    procs = {name: ekn("train", *common, "--set", f"save_name={name!r}", "--set", f"n_steps={n}", env=env, cwd=str(base))
             for name, n in (("U", S), ("A", N), ("K", S))}
    k_dir = RunDir(os.path.join(save_path, "K"))
    deadline = time.time() + 300
    while time.time() < deadline and not [s for s, _ in list_checkpoints(k_dir.checkpoints) if s >= 20]:
        assert procs["K"].poll() is None, finish(procs["K"])[1]
        time.sleep(0.05)
    time.sleep(random.Random().uniform(0.0, 0.5))
    procs["K"].send_signal(signal.SIGKILL)
    results = {name: finish(p) for name, p in procs.items()}
    killed_at = max(s for s, _ in list_checkpoints(k_dir.checkpoints))
    resumed = {"A": ekn("train", "--resume", os.path.join(save_path, "A"), "--set", f"n_steps={S}", env=env),
               "K": ekn("train", "--resume", os.path.join(save_path, "K"), env=env)}
    results.update({name + "2": finish(p) for name, p in resumed.items()})
    return {"save_path": save_path, "results": results, "killed_at": killed_at}


def run_dir(runs, name):
    return RunDir(os.path.join(runs["save_path"], name))


def test_runs_end_as_expected(runs):
    res = runs["results"]
    for name in ("U", "A", "A2", "K2"):
        assert res[name][0] == 0, f"{name} failed:\n{res[name][1][-3000:]}"
    assert res["K"][0] == -signal.SIGKILL, "K finished before it was killed; the test did not test a kill"
    assert runs["killed_at"] < S
    assert f"status: finished, step {S}" in res["U"][1]
    assert f"status: finished, step {N}" in res["A"][1] and f"status: finished, step {S}" in res["A2"][1]
    info = run_dir(runs, "K").read_run_json()
    assert info["status"] == "finished" and info["step"] == S


def _model_weights(path):
    out = {}
    with h5py.File(path, "r") as f:
        f["weights"].visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    return out


@pytest.mark.parametrize("name", ["A", "K"])
def test_resumed_runs_equal_the_uninterrupted_run(runs, name):
    ref = _model_weights(run_dir(runs, "U").model_path("final"))
    got = _model_weights(run_dir(runs, name).model_path("final"))
    assert sorted(ref) == sorted(got) and len(ref) >= 6
    for key in ref:
        np.testing.assert_allclose(got[key], ref[key], rtol=0, atol=1e-6, err_msg=key)
    ck_ref = read_checkpoint(dict(list_checkpoints(run_dir(runs, "U").checkpoints))[S])
    ck_got = read_checkpoint(dict(list_checkpoints(run_dir(runs, name).checkpoints))[S])
    for opt, state in ck_ref.optimisers.items():
        for key, value in state.items():
            np.testing.assert_allclose(ck_got.optimisers[opt][key], value, rtol=0, atol=1e-6, err_msg=key)
    assert ck_got.state["schedules"] == ck_ref.state["schedules"]
    assert ck_got.state["meta"] == pytest.approx(ck_ref.state["meta"])
    np.testing.assert_array_equal(ck_got.rng["tf_generator"], ck_ref.rng["tf_generator"])
    # the per-step losses of the resumed run continue the same sequence
    np.testing.assert_allclose(ck_got.history.timeline["loss"], ck_ref.history.timeline["loss"], atol=1e-6)
    assert ck_got.history.timeline["step"].tolist() == list(range(1, S + 1))
    # the same evaluations (A stopped between two, at N), so the same best model and early-stopping count
    want, have = ck_ref.history.history, ck_got.history.history
    assert have.columns == want.columns and have["step"].tolist() == list(range(50, S + 1, 50))
    for column in want.columns:
        if column != "time":
            np.testing.assert_allclose(have[column], want[column], rtol=0, atol=1e-6, err_msg=column)
    for key in ("best_valid", "evaluations_without_improvement"):
        assert ck_got.state[key] == pytest.approx(ck_ref.state[key], abs=1e-6), key
    assert ck_got.state["lr_factor"] == ck_ref.state["lr_factor"] == 1.0
    rd = run_dir(runs, name)  # K: a write cut by kill -9 leaves a temporary file, which the resume deletes
    assert not [f for d in (rd.path, rd.models, rd.checkpoints) for f in os.listdir(d) if f.startswith(".")]


def test_run_directory_holds_every_file(runs):
    rd = run_dir(runs, "U")
    for path in (rd.config_copy, rd.run_json, rd.log, rd.history_h5, rd.history_csv, rd.timeline_csv,
                 rd.model_path("latest"), rd.model_path("best"), rd.model_path("final"),
                 rd.model_path("step-100"), rd.model_path("step-200")):
        assert os.path.getsize(path) > 0, path
    assert open(rd.config_copy).read() == open(CONFIG).read()
    info = json.load(open(rd.run_json))
    assert info["status"] == "finished" and info["settings"]["n_steps"] == S
    log_text = open(rd.log).read()
    assert "00050 L_m=" in log_text and "end of training: finished after 200 steps" in log_text
    rows = list(csv.DictReader(open(rd.history_csv)))
    assert [int(r["step"]) for r in rows] == list(range(50, S + 1, 50))
    assert all(np.isfinite(float(r["valid_loss"])) for r in rows)
    assert len(list(csv.DictReader(open(rd.timeline_csv)))) == S
    assert [s for s, _ in list_checkpoints(rd.checkpoints)] == [180, 200]  # keep_checkpoints = 2
    assert sorted(os.listdir(rd.plots)) == ["errors.png", "loss.png", "lr.png", "timeline.png"]
    for name in os.listdir(rd.plots):
        with Image.open(os.path.join(rd.plots, name)) as img:
            img.load()
            assert img.format == "PNG" and np.asarray(img.convert("L")).std() > 5, name
    previews = sorted(os.listdir(rd.previews))
    assert "raw_2-raw-z4.png" in previews and "raw_2-pred-c1-z4-step200.png" in previews
    assert "raw_2-pred-c1-z4-step100.png" in previews
    with Image.open(os.path.join(rd.previews, "raw_2-pred-c1-z4-step200.png")) as img:
        pred = np.asarray(img)
    with Image.open(os.path.join(rd.previews, "raw_2-raw-z4.png")) as img:
        raw = np.asarray(img)
    assert pred.shape == raw.shape == (64, 64) and pred.std() > 1
    assert not [f for d in (rd.path, rd.models, rd.checkpoints) for f in os.listdir(d) if f.startswith(".")]


def test_tensorboard_has_scalars_and_preview_images(runs):
    from ekn_core.trainer.tensorboard import read_images, read_scalars

    rd = run_dir(runs, "U")
    scalars = read_scalars(rd.tensorboard)
    assert [s for s, _ in scalars["train/step_loss"]] == list(range(10, S + 1, 10))
    assert [s for s, _ in scalars["monitor/valid_loss"]] == list(range(50, S + 1, 50))
    images = read_images(rd.tensorboard)
    assert "preview/raw_2-pred-c1-z4" in images
    assert images["preview/raw_2-pred-c1-z4"][0][1][:4] == b"\x89PNG"


def test_saved_model_predicts_like_the_preview(runs):
    import ekn_core.neuromancer as nm

    rd = run_dir(runs, "U")
    model = nm.modelload(rd.model_path("final"))
    x = np.random.default_rng(0).random((2, 1, 21, 21)).astype("float32")
    probs = model.predict(x)
    assert probs.shape == (2, 2, 7, 7)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
