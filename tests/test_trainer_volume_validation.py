"""Validation on whole volumes inside training: at its steps, in the history and the log, with
metrics equal to an independent evaluation, best model by the volume metric, exact resume; and the
trainer's generic side: a plugin metric picks the best model, drives early stopping and cannot
change training by drawing random numbers."""

import logging
import os
import random
import re

import numpy as np
import pytest

from ekn_core.hooks import host
from ekn_core.hookspecs import hookimpl
from ekn_core.trainer.config import ExperimentConfig

tf = pytest.importorskip("tensorflow")

HERE = os.path.dirname(os.path.abspath(__file__))
TINY2D = os.path.join(HERE, "trainer_files", "tiny2d_config.py")
TOY = os.path.join(HERE, "trainer_files", "toy_config.py")


class Snapshots:
    """Records the weights at every evaluation that measured ``metric``."""

    def __init__(self, metric):
        self.metric, self.weights = metric, {}

    @hookimpl
    def ekn_on_validation_end(self, trainer, step, metrics):
        if np.isfinite(metrics.get(self.metric, np.nan)):
            self.weights[step] = {n: {k: np.array(v) for k, v in p.items()}
                                  for n, p in trainer.model.get_param_values().items()}


def _train(config, save_path, name, *overrides, resume=False):
    from ekn_core.trainer.loop import Trainer

    cfg = ExperimentConfig.from_file(config, [f"save_path={str(save_path)!r}", f"save_name={name!r}", *overrides])
    trainer = Trainer(cfg, run_dir=os.path.join(str(save_path), name) if resume else None, resume=resume)
    try:
        assert trainer.run() == "finished"
    finally:
        trainer.close()
    return trainer


def _assert_same_weights(a, b):
    for node, params in a.items():
        for key, value in params.items():
            np.testing.assert_allclose(b[node][key], value, atol=1e-6, err_msg=f"{node}/{key}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A: 16 steps; B: 8 steps, then resumed to 16. Volume validation every 4 steps on the
    validation cube with its object ids, monitor_metric volume_vi."""
    from ekn_plugins.data.synth import write_dataset

    root = tmp_path_factory.mktemp("volval")
    data = str(root / "data")
    files = write_dataset(data, n_volumes=3, shape=(10, 64, 64), label_margin=(2, 8, 8), seed=0)
    os.environ["EKN_TEST_DATA"] = data
    spec = {"every": 4, "volumes": [{"raw": files[2]["raw"], "labels": files[2]["barrier"], "ids": files[2]["ids"],
                                     "name": "cube2"}],
            "metrics": ["pixel_error", "f1", "vi", "adapted_rand_error"]}
    common = ["history_freq=2", "preview_freq=None", "plot_on=False", "tensorboard=False", "batch_picture=False",
              "optimiser_params.lr=0.03", "schedules={}", f"volume_validation={spec!r}", "monitor_metric='volume_vi'"]
    snapshots = Snapshots("volume_vi")
    host().register(snapshots)
    logger = logging.getLogger("ekn")
    level = logger.level
    logger.setLevel(logging.INFO)  # the run's log file gets INFO lines (ekn train sets this up)
    try:
        a = _train(TINY2D, root, "A", "n_steps=16", *common)
    finally:
        host().unregister(snapshots)
        logger.setLevel(level)
    _train(TINY2D, root, "B", "n_steps=8", *common)
    b = _train(TINY2D, root, "B", "n_steps=16", *common, resume=True)
    return {"A": a, "B": b, "snapshots": snapshots.weights, "files": files[2]}


def test_validation_runs_at_its_steps_into_history_and_log(runs):
    trainer = runs["A"]
    h = trainer.history.history
    measured = h["step"][np.isfinite(h["volume_f1"])].tolist()
    assert measured == [4, 8, 12, 16] and h["step"].tolist() == list(range(2, 17, 2))
    assert np.all(h["volume_seconds"][np.isfinite(h["volume_f1"])] > 0)
    header = open(trainer.run_dir.history_csv).readline().strip().split(",")
    assert {"volume_pixel_error", "volume_f1", "volume_f1_c0", "volume_f1_c1", "volume_vi", "volume_adapted_rand_error",
            "volume_seconds", "volume_segmentation_seconds"} <= set(header)
    assert "metrics.png" in [os.path.basename(p) for p in trainer.plot()]  # the plugin's metrics get a plot
    log_text = open(trainer.run_dir.log).read()
    assert "validation on whole volumes every 4 steps: cube2; metrics pixel_error, f1, vi, adapted_rand_error" \
        in log_text
    for step in (4, 8, 12, 16):
        assert re.search(rf"validation on whole volumes at step {step} \(\S+ s, segmentation \S+ s\): .*volume_vi=",
                         log_text)


def test_metrics_equal_an_independent_evaluation_of_the_final_weights(runs):
    from sklearn.metrics import f1_score

    from ekn_core.prediction import predict_dense
    from ekn_plugins.evaluation.segmentation import segmentation_scores, watershed_segmentation
    from prediction_testnets import read_volume

    raw, labels, ids = (read_volume(runs["files"][k]) for k in ("raw", "barrier", "ids"))
    whole = predict_dense(runs["A"].model.prediction_node, raw)      # the 2-D net slice by slice, valid
    start = (np.array(raw.shape) - whole.shape[1:]) // 2
    off = (np.array(raw.shape) - labels.shape) // 2
    lo, hi = np.maximum(start, off), np.minimum(start + whole.shape[1:], off + labels.shape)
    pred = whole[(slice(None), *(slice(a - s, b - s) for a, b, s in zip(lo, hi, start)))]
    box = tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, off))
    cls, lab = pred.argmax(0).ravel(), labels[box].ravel()
    last = runs["A"].history.history.last()
    assert last["step"] == 16
    assert last["volume_pixel_error"] == pytest.approx(np.mean(cls != lab), abs=2e-4)
    assert last["volume_f1"] == pytest.approx(f1_score(lab, cls), abs=1e-3)
    scores = segmentation_scores(ids[box], watershed_segmentation(pred[1]))  # the default watershed parameters
    assert last["volume_vi"] == pytest.approx(scores["vi"], abs=1e-3)
    assert last["volume_adapted_rand_error"] == pytest.approx(scores["adapted_rand_error"], abs=1e-3)


def test_best_model_is_the_one_with_the_best_volume_metric(runs):
    from ekn_core.persistence import read_model_file

    h = runs["A"].history.history
    vi = h["volume_vi"]
    best_step = int(h["step"][np.nanargmin(vi)])
    assert best_step not in (4, 16), "the case needs a best step after the first and before the end"
    assert runs["A"].best_valid == pytest.approx(np.nanmin(vi))
    _assert_same_weights(runs["snapshots"][best_step], read_model_file(runs["A"].run_dir.model_path("best")).weights)


def test_resumed_run_with_volume_validation_equals_the_uninterrupted_one(runs):
    a, b = runs["A"], runs["B"]
    _assert_same_weights(a.model.get_param_values(), b.model.get_param_values())
    for column in ("volume_pixel_error", "volume_f1", "volume_vi", "volume_adapted_rand_error", "valid_loss"):
        np.testing.assert_allclose(b.history.history[column], a.history.history[column], atol=1e-6, err_msg=column)
    assert b.best_valid == pytest.approx(a.best_valid)


class Scripted:
    """A plugin metric ``scripted`` (larger is better) with given values per step, which draws from
    every random generator while it runs (the trainer must undo that)."""

    def __init__(self, values, draw):
        self.values, self.draw = values, draw

    @hookimpl
    def ekn_history_metrics(self, config):
        return {"scripted": "max"}

    @hookimpl
    def ekn_validation_metrics(self, trainer, step):
        if self.draw:
            np.random.random(5)
            random.random()
            tf.random.get_global_generator().normal([7])
        return {"scripted": self.values.get(step, np.nan)}


def _scripted_run(tmp_path, name, draw, *overrides):
    values = {2: 0.5, 3: 0.9, 5: 0.8, 6: 0.85, 7: 0.7, 9: 0.95}
    plugin, snapshots = Scripted(values, draw), Snapshots("scripted")
    host().register(plugin)
    host().register(snapshots)
    try:
        return _train(TOY, tmp_path, name, "n_steps=8", "history_freq=1", "checkpoint_freq=100",
                      "monitor_metric='scripted'", "schedules={}", "plot_on=False", "tensorboard=False",
                      *overrides), snapshots.weights
    finally:
        host().unregister(plugin)
        host().unregister(snapshots)


def test_plugin_metric_picks_the_best_model_and_drives_early_stopping(tmp_path):
    from ekn_core.persistence import read_model_file

    trainer, weights = _scripted_run(tmp_path, "s", True, "early_stopping_patience=3")
    # evaluations with a value: 2 (best), 3 (best), 5, 6, 7 without improvement: stop at 7; the
    # steps without a value (4) do not count, else the run would stop at 6
    assert trainer.step == 7 and trainer.evaluations_without_improvement == 3
    assert trainer.best_valid == 0.9 and trainer.monitored == ("scripted", "max")
    _assert_same_weights(weights[3], read_model_file(trainer.run_dir.model_path("best")).weights)
    h = trainer.history.history
    assert np.nanargmin(h["valid_loss"]) != 2, "validation loss and the metric should disagree here"
    state = trainer.checkpoint_data().state
    assert state["best_valid"] == 0.9 and state["monitored"] == ["scripted", "max"]


def test_plugin_metrics_cannot_change_training(tmp_path):
    """The toy net has dropout: were the generators not restored, the masks and weights would differ."""
    drawing, _ = _scripted_run(tmp_path, "draw", True)
    quiet, _ = _scripted_run(tmp_path, "quiet", False)
    _assert_same_weights(quiet.model.get_param_values(), drawing.model.get_param_values())
    np.testing.assert_array_equal(drawing.history.timeline["loss"], quiet.history.timeline["loss"])


def test_mfp_and_patch_predict_like_the_training_net_and_follow_its_weights(tmp_path):
    import h5py

    import ekn_core.neuromancer as nm
    from ekn_plugins.validation.evaluate import VolumeValidator
    from ekn_plugins.validation.spec import parse_spec

    model = nm.model_manager.newmodel("volval_mfp")
    inp = nm.Input((None, 1, 21, 21), "b,f,x,y", name="raw")
    out = nm.Conv(inp, 4, (4, 4), (2, 2), name="c1")
    probs = nm.Softmax(nm.Conv(out, 2, (3, 3), activation_func="lin", name="c2"))
    model.designate_nodes(input_node=inp, prediction_node=probs)
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["raw"] = (rng.random((3, 40, 44)) * 255).astype(np.uint8)
        f["lab"] = rng.integers(0, 2, (3, 40, 44)).astype(np.int16)
    volume = {"raw": str(tmp_path / "v.h5") + ":raw", "labels": str(tmp_path / "v.h5") + ":lab"}
    plain = VolumeValidator(parse_spec({"volumes": [volume], "pad": True}, 1))
    fast = VolumeValidator(parse_spec({"volumes": [volume], "pad": True, "mfp": True, "patch": (29, 29)}, 1))
    before = plain.run(model)
    assert fast.run(model) == pytest.approx(before, abs=1e-6)
    assert nm.model_manager.current is model, "the rebuilt model must not take new nodes"
    # swapping the two logits swaps the classes: the rebuilt copy must see the new weights
    w = model.get_param_values()["c2"]
    model.set_param_values({"c2": {"b": w["b"][::-1], "w": w["w"][..., ::-1]}})
    after = fast.run(model)
    assert after == pytest.approx(plain.run(model), abs=1e-6)
    assert after["volume_pixel_error"] == pytest.approx(1 - before["volume_pixel_error"], abs=1e-6)
