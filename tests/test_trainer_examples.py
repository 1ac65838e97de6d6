"""Every example config trains a few steps through the real CLI on synthetic EM data (tiny
patches and widths), and `ekn demo` runs the README workflow end to end."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(HERE, "..", "examples")

#: (example, overrides): patch sizes are the smallest valid ones of each net.
CASES = {
    "mnist": ["monitor_batch_size=20"],
    "neuro3d_lite": ["model_load_args={'patch_size': (11, 75, 75), 'width': 0.05}"],
    "neuro3d": ["model_load_args={'patch_size': (15, 105, 105), 'width': 0.03}"],
    "unet3d_litelite": ["model_load_args={'patch_size': (13, 124, 124), 'width': 0.1}"],
    "unet3d_lite": ["model_load_args={'patch_size': (13, 92, 92), 'width': 0.05}"],
    "unet3d": ["model_load_args={'patch_size': (92, 92, 92), 'width': 0.03}"],
    "sequence_rnn_gru": ["model_load_args={'cell': 'gru', 'n_tap': 6, 'n_mem': 8}", "batch_size=4"],
    "sequence_rnn_lstm": ["model_load_args={'cell': 'lstm', 'n_tap': 6, 'n_mem': 8}", "batch_size=4"],
}
#: Examples whose test also writes previews (dense prediction of a 160×160 slice); for the
#: others the smallest patches make dense prediction needlessly slow.
PREVIEWS = ("neuro3d_lite", "unet3d_litelite")


def ekn_cmd(*args):
    exe = os.path.join(os.path.dirname(sys.executable), "ekn")
    return [exe, *args] if os.path.exists(exe) else [sys.executable, "-m", "ekn_core.cli", *args]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from ekn_plugins.data.synth import write_dataset

    folder = str(tmp_path_factory.mktemp("example_data"))
    write_dataset(folder, n_volumes=3, shape=(96, 160, 160), label_margin=(2, 8, 8), seed=1)
    return folder


@pytest.mark.parametrize("case", list(CASES))
def test_example_trains(case, data_dir, tmp_path):
    example = case.rsplit("_gru", 1)[0].rsplit("_lstm", 1)[0]
    config = os.path.join(EXAMPLES, example + ".py")
    sets = ["n_steps=2", "history_freq=2", "background_processes=0", "monitor_batch_size=2",
            f"save_path={str(tmp_path)!r}", "save_name='run'", *CASES[case]]
    if example not in ("mnist", "sequence_rnn"):
        sets.append("data_init_kwargs.augmenters=[]")
        sets += (["preview_kwargs={'export_class': [1], 'max_z_pred': 1}", "preview_freq=2"] if example in PREVIEWS
                 else ["preview_data_path=None"])
    cmd = ekn_cmd("train", config, *[a for s in sets for a in ("--set", s)])
    env = {**os.environ, "EKN_DATA_DIR": data_dir, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    run = tmp_path / "run"
    assert (run / "models" / "final.mdl").stat().st_size > 0
    rows = (run / "history.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and rows[1].startswith("2,")
    assert np.isfinite(float(rows[1].split(",")[2])), rows[1]
    if example in PREVIEWS:
        previews = [p for p in os.listdir(run / "previews") if "-pred-c1-" in p]
        assert previews, os.listdir(run / "previews")
        with Image.open(run / "previews" / previews[0]) as img:
            assert img.format == "PNG" and img.size == (160, 160)


def test_demo_runs_the_readme_workflow(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(ekn_cmd("demo", str(out), "--steps", "4"), capture_output=True, text=True, timeout=1500,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    text = proc.stdout
    for label in ("data:", "config:", "run directory:", "model files:", "checkpoints:", "plots:", "previews:",
                  "tensorboard:", "prediction:", "pictures:", "evaluation:", "held-out pixel error", "segmentation VI"):
        assert label in text, text
    run = out / "runs" / "neuro3d_lite_demo"
    for name in ("final.mdl", "best.mdl", "latest.mdl"):
        assert (run / "models" / name).stat().st_size > 0
    assert sorted(os.listdir(run / "plots")) == ["errors.png", "loss.png", "lr.png", "timeline.png"]
    assert any("-pred-c1-" in p for p in os.listdir(run / "previews"))
    import h5py

    with h5py.File(out / "prediction.h5", "r") as f:
        pred = f["barrier"][()]
    # the held-out volume (40, 200, 200) minus the net's context (fov 5x39x39)
    assert pred.shape == (2, 36, 162, 162)
    np.testing.assert_allclose(pred.sum(axis=0), 1.0, atol=1e-4)
    for name in ("raw.png", "prediction.png", "label.png"):
        with Image.open(out / "pictures" / name) as img:
            img.load()
            assert img.format == "PNG" and np.asarray(img).std() > 0, name
    error = float(re.search(r"pixel error .*: ([0-9.]+)", text).group(1))
    assert 0.0 <= error <= 1.0
    # the evaluation predicted the labelled box again (out of core, mirrored borders); the box lies in the
    # demo prediction's valid region, so both pixel errors count the same voxels
    record = json.loads((out / "evaluation" / "evaluation.json").read_text())
    held_out = record["volumes"][0]
    assert held_out["binary"]["pixel_error_at_half"] == pytest.approx(error, abs=2e-3)
    assert np.isfinite(held_out["segmentation"]["scores"]["vi"])
    assert "held_out" in (out / "evaluation" / "REPORT.md").read_text()


def test_malis_example_trains_affinities(data_dir, tmp_path):
    """examples/malis_affinities.py through `ekn train`: PatchSource(affinities='malis') batches
    (raw, aff, seg) from the cell ids of `ekn data synth`, a MalisNLL loss, finite losses, and a
    run directory with checkpoints, history and a model that loads with its MALIS loss."""
    import h5py

    import ekn_core.neuromancer as nm
    from ekn_core.trainer.checkpoint import list_checkpoints, read_checkpoint
    from ekn_plugins.malis import mknhood3d

    sets = ["n_steps=4", "history_freq=2", "checkpoint_freq=2", "background_processes=0", "monitor_batch_size=2",
            "batch_size=2", "preview_data_path=None", f"save_path={str(tmp_path)!r}", "save_name='run'",
            "model_load_args={'patch_size': (7, 41, 41), 'width': 0.25}"]
    cmd = ekn_cmd("train", os.path.join(EXAMPLES, "malis_affinities.py"), *[a for s in sets for a in ("--set", s)])
    env = {**os.environ, "EKN_DATA_DIR": data_dir, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    run = tmp_path / "run"
    rows = (run / "history.csv").read_text().splitlines()
    header = rows[0].split(",")
    values = [dict(zip(header, map(float, r.split(",")))) for r in rows[1:]]
    assert [v["step"] for v in values] == [2, 4]
    for v in values:  # MALIS pair-weighted NLL per voxel pair: finite and positive
        assert np.isfinite(v["train_loss"]) and np.isfinite(v["valid_loss"]) and v["train_loss"] > 0, v
    checkpoints = list_checkpoints(str(run / "checkpoints"))
    assert [s for s, _ in checkpoints] == [2, 4]
    last = read_checkpoint(checkpoints[-1][1])
    steps, losses = last.history.timeline["step"], last.history.timeline["loss"]
    assert steps.tolist() == [1, 2, 3, 4] and np.isfinite(losses).all() and (losses > 0).all()
    model = nm.modelload(str(run / "models" / "final.mdl"), name="malis_example_final")
    assert type(model["malis"]).__name__ == "MalisNLL"
    np.testing.assert_array_equal(model["malis"].nhood, mknhood3d(1))
    weights = {key: p.get_value() for key, p in model.all_params.items()}
    assert set(last.params) == set(weights)
    for key, value in last.params.items():  # the final model is the last checkpoint's
        np.testing.assert_array_equal(value, weights[key], err_msg=key)
    with h5py.File(os.path.join(data_dir, "raw_2.h5"), "r") as f:
        raw = f["raw"][:7, :41, :41].astype(np.float32)[None, None] / 255
    assert model.predict(raw).shape == (1, 6, 3, 25, 25)  # P(disconnected), P(connected) per edge


def test_lazy_cubes_train_exactly_like_cubes_in_memory(data_dir, tmp_path):
    """`ekn train` of neuro3d_lite with PatchSource(in_memory=False) and two background workers (each
    opening its own lazy files) gives the per-step losses of the in-memory run, bit for bit."""
    losses = {}
    for name, in_memory, workers in (("memory", "True", "0"), ("lazy", "False", "2")):
        sets = ["n_steps=3", "history_freq=3", f"background_processes={workers}", "monitor_batch_size=2",
                f"save_path={str(tmp_path)!r}", f"save_name={name!r}", "preview_data_path=None",
                f"data_init_kwargs.in_memory={in_memory}", *CASES["neuro3d_lite"]]
        cmd = ekn_cmd("train", os.path.join(EXAMPLES, "neuro3d_lite.py"), *[a for s in sets for a in ("--set", s)])
        env = {**os.environ, "EKN_DATA_DIR": data_dir, "TF_CPP_MIN_LOG_LEVEL": "2"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        rows = (tmp_path / name / "timeline.csv").read_text().splitlines()
        column = rows[0].split(",").index("loss")
        losses[name] = [float(r.split(",")[column]) for r in rows[1:]]
    assert len(losses["lazy"]) == 3 and losses["lazy"] == losses["memory"]
