"""A tracing agent trained by ekn's Trainer (examples/tracing_agent.py): it follows unseen tubes
far better than before training and than a straight line; sequence training resumes exactly
(agents in the checkpoint; prefetching and background workers stay off) and its monitor batches do
not depend on the agents; `ekn train` runs it."""

import os
import subprocess
import sys

import numpy as np
import pytest

from ekn_core.trainer.checkpoint import latest_checkpoint, read_checkpoint
from ekn_core.trainer.config import ExperimentConfig

pytest.importorskip("tensorflow")

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "..", "examples", "tracing_agent.py")
QUIET = ["history_freq=0", "plot_on=False", "tensorboard=False", "schedules={}"]


@pytest.fixture(scope="module")
def tubes(tmp_path_factory):
    from ekn_plugins.data.synth import write_tube_dataset

    folder = str(tmp_path_factory.mktemp("tubes"))
    write_tube_dataset(folder, n_volumes=4, seed=0)
    return folder


@pytest.fixture(autouse=True)
def _tubes_dir(tubes, monkeypatch):
    monkeypatch.setenv("EKN_TUBES_DIR", tubes)  # read by the example config


def trainer(save_path, name, *overrides, resume=False):
    from ekn_core.trainer.loop import Trainer

    cfg = ExperimentConfig.from_file(EXAMPLE, [f"save_path={str(save_path)!r}", f"save_name={name!r}", *overrides])
    return Trainer(cfg, resume=resume)


def followed(model, data, tubes):
    """Skeleton length the Tracer with ``model`` follows on each tube, and a straight line's."""
    from ekn_plugins.utils.model_agent import ModelAgent
    from ekn_plugins.utils.tracing import Tracer, followed_length, straight_line

    agent, line = [], []
    predictor = ModelAgent(model)
    assert predictor.patch_shape == data.patch_shape
    for volume, skeleton in tubes:
        i = int(np.searchsorted(skeleton.arc, 3.0))
        start, direction = skeleton.points[i], skeleton.tangents[i]
        trace = Tracer(predictor, volume, predictor.patch_shape, data.spacing)
        agent.append(followed_length(trace.trace(start, direction).points, skeleton, tolerance=3.0))
        line.append(followed_length(straight_line(start, direction, 1.5, 200), skeleton, tolerance=3.0))
    return np.array(agent), np.array(line)


def test_trained_agent_follows_unseen_tubes(tmp_path):
    from ekn_plugins.utils.tracing import synthetic_tube

    rng = np.random.default_rng(100)
    unseen = [synthetic_tube((32, 48, 64), rng=rng) for _ in range(3)]
    lengths = np.array([s.arc[-1] - s.arc[int(np.searchsorted(s.arc, 3.0))] for _, s in unseen])
    tr = trainer(tmp_path, "run", "n_steps=150", "data_init_kwargs.sequence_training=0", *QUIET)
    try:
        before, line = followed(tr.model, tr.data, unseen)
        assert tr.run() == "finished"
    finally:
        tr.close()
    after, _ = followed(tr.model, tr.data, unseen)
    loss = tr.history.timeline["loss"]
    assert np.mean(loss[-10:]) < 0.2 * np.mean(loss[:10])
    assert np.all(after >= 0.85 * lengths), (after, lengths)
    assert np.all(after >= 3 * line) and np.all(after >= 3 * before + 10), (after, line, before)


def test_sequence_training_resumes_exactly(tmp_path):
    common = ["data_init_kwargs.sequence_training=3", "model_load_args={'patch_size': (3, 7, 7), 'width': 0.5}",
              "batch_size=4", "monitor_batch_size=6", *QUIET, "history_freq=2"]
    whole = trainer(tmp_path, "whole", "n_steps=6", "prefetch_to_device=True", "background_processes=2",
                    *common)
    try:
        whole.run()
    finally:
        whole.close()
    part = trainer(tmp_path, "part", "n_steps=3", *common)
    try:
        part.run()
    finally:
        part.close()
    # a step's monitor batch is fresh agents from its generator: the same after 6 steps of training as after 3
    for x, y in zip(whole.get_batch("train", size=6, step=4, stream="monitor_train"),
                    part.get_batch("train", size=6, step=4, stream="monitor_train")):
        np.testing.assert_array_equal(x, y)
    saved = read_checkpoint(latest_checkpoint(part.run_dir.checkpoints)).state["data"]["state"]
    assert any(a is not None and a[3] > 0 for a in saved["agents"])  # agents that followed predictions
    rest = trainer(tmp_path, "part", "n_steps=6", *common, resume=True)
    try:
        assert rest.step == 3 and rest.data.get_state() == saved
        rest.run()
    finally:
        rest.close()
    for key, param in whole.model.all_params.items():
        np.testing.assert_allclose(rest.model.all_params[key].get_value(), param.get_value(), rtol=1e-6, atol=1e-7)
    assert rest.data.get_state() == whole.data.get_state()
    np.testing.assert_allclose(rest.history.timeline["loss"], whole.history.timeline["loss"], rtol=1e-6)


def train_with_cli(example, tubes, tmp_path, batch_size):
    """Runs `ekn train example` for 4 steps on the tubes, checks the model file and the history
    rows (with a finite validation loss on the held-out skeleton); returns the run directory."""
    exe = os.path.join(os.path.dirname(sys.executable), "ekn")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "ekn_core.cli"]
    sets = ["n_steps=4", "history_freq=2", f"monitor_batch_size={2 * batch_size}", f"batch_size={batch_size}",
            f"save_path={str(tmp_path)!r}", "save_name='run'"]
    env = {**os.environ, "EKN_TUBES_DIR": tubes, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([*cmd, "train", example, *[a for s in sets for a in ("--set", s)]], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    run = tmp_path / "run"
    assert (run / "models" / "final.mdl").stat().st_size > 0
    rows = (run / "history.csv").read_text().splitlines()
    assert rows[1].startswith("2,") and rows[2].startswith("4,")
    assert np.isfinite(float(rows[2].split(",")[3]))  # the validation loss on the held-out skeleton
    return run


@pytest.mark.slow
def test_ekn_train_runs_the_example(tubes, tmp_path):
    run = train_with_cli(EXAMPLE, tubes, tmp_path, batch_size=4)
    timeline = (run / "timeline.csv").read_text()
    assert "debug/direction" in timeline.splitlines()[0]
