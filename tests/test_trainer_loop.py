"""The training loop in-process on a tiny perceptron: hooks, monitoring, NaN rollback, pause/kill."""

import logging
import math
import os
import re
import signal

import numpy as np
import pytest

from ekn_core.errors import UnknownPluginError
from ekn_core.hooks import host
from ekn_core.hookspecs import hookimpl
from ekn_core.trainer.config import ExperimentConfig

pytest.importorskip("tensorflow")

HERE = os.path.dirname(os.path.abspath(__file__))
TOY = os.path.join(HERE, "trainer_files", "toy_config.py")


class Recorder:
    """A hook plugin that records every runtime call."""

    def __init__(self):
        self.calls = []

    @hookimpl
    def ekn_on_train_begin(self, trainer):
        self.calls.append(("begin", trainer.step))

    @hookimpl
    def ekn_on_train_step_end(self, trainer, step, metrics):
        self.calls.append(("step", step, metrics["loss"]))

    @hookimpl
    def ekn_on_validation_end(self, trainer, step, metrics):
        self.calls.append(("validation", step, dict(metrics)))

    @hookimpl
    def ekn_on_checkpoint_saved(self, trainer, path):
        self.calls.append(("saved", os.path.basename(path)))

    @hookimpl
    def ekn_on_nan_detected(self, trainer, step, metrics):
        self.calls.append(("nan", step, metrics["loss"]))

    @hookimpl
    def ekn_on_train_end(self, trainer, status):
        self.calls.append(("end", status))

    def of(self, kind):
        return [c[1:] for c in self.calls if c[0] == kind]


@pytest.fixture
def recorder():
    rec = Recorder()
    host().register(rec)
    yield rec
    host().unregister(rec)


def make_trainer(tmp_path, *overrides):
    from ekn_core.trainer.loop import Trainer

    cfg = ExperimentConfig.from_file(TOY, [f"save_path={str(tmp_path)!r}", "save_name='run'", *overrides])
    return Trainer(cfg)


def test_hooks_fire_once_per_step_outside_the_compiled_step(tmp_path, recorder):
    trainer = make_trainer(tmp_path, "n_steps=2", "history_freq=2")
    try:
        assert trainer.run() == "finished"
    finally:
        trainer.close()
    assert [s[0] for s in recorder.of("step")] == [1, 2]
    assert recorder.of("begin") == [(0,)] and recorder.of("end") == [("finished",)]
    (validation,) = recorder.of("validation")
    assert validation[0] == 2 and set(validation[1]) >= {"train_loss", "valid_loss", "train_error", "valid_error"}
    saved = [s[0] for s in recorder.of("saved")]
    assert "ckpt-00000000.h5" in saved and "ckpt-00000002.h5" in saved and "final.mdl" in saved
    step_fn = trainer.model._functions["train:adam"]
    assert step_fn.traces == 1, "the training step was retraced"


def test_monitoring_matches_an_independent_numpy_loss(tmp_path):
    trainer = make_trainer(tmp_path, "n_steps=0", "monitor_batch_size=20")
    try:
        loss, error = trainer.evaluate("valid")
        # 20 examples are rounded up to whole batches of 8 and drawn from the valid stream of step 0
        x, y = trainer.get_batch("valid", size=24, stream="monitor_valid")
        probs = trainer.model.predict(x)
        p = probs[np.arange(len(y)), y[:, 0]]
        assert loss == pytest.approx(float(np.mean(-np.log(p))), rel=1e-5)
        assert error == pytest.approx(float(np.mean(np.argmax(probs, 1) != y[:, 0])), abs=1e-6)
    finally:
        trainer.close()


def test_nan_rolls_back_to_the_last_checkpoint_and_lowers_lr(tmp_path, recorder, caplog):
    # the 3rd training batch is NaN; the last checkpoint is at step 2
    trainer = make_trainer(tmp_path, "n_steps=6", "history_freq=2", "schedules={}",
                           "data_init_kwargs={'nan_at_call': 3}")
    try:
        with caplog.at_level(logging.INFO, logger="ekn"):
            assert trainer.run() == "finished"
    finally:
        trainer.close()
    assert recorder.of("nan")[0][0] == 3 and np.isnan(recorder.of("nan")[0][1])
    assert "Batch input(s) [0] contain NaN/Inf" in caplog.text and "rolled back to step 2" in caplog.text
    assert trainer.model.lr == pytest.approx(0.005)
    assert trainer.step == 6 and np.all(np.isfinite(trainer.history.timeline["loss"]))
    assert trainer.history.timeline["step"].tolist() == [1, 2, 3, 4, 5, 6]


def test_nan_response_stop_ends_the_run_with_the_last_good_state(tmp_path, recorder):
    trainer = make_trainer(tmp_path, "n_steps=6", "history_freq=2", "nan_response='stop'",
                           "data_init_kwargs={'nan_at_call': 3}")
    try:
        assert trainer.run() == "nan"
    finally:
        trainer.close()
    assert trainer.step == 2 and recorder.of("end") == [("nan",)]
    assert os.path.exists(trainer.run_dir.model_path("final"))
    import json

    assert json.load(open(trainer.run_dir.run_json))["status"] == "nan"


def test_ctrl_c_pauses_at_the_step_boundary_and_kill_saves(tmp_path, monkeypatch):
    import ekn_core.trainer.shell as shell

    seen = []

    def fake_shell(trainer):
        seen.append((trainer.step, trainer.pause_requested))
        return "kill"

    monkeypatch.setattr(shell, "run_shell", fake_shell)

    class CtrlC:
        @hookimpl
        def ekn_on_train_step_end(self, trainer, step, metrics):
            if step == 1:
                os.kill(os.getpid(), signal.SIGINT)

    plugin = CtrlC()
    host().register(plugin)
    before = signal.getsignal(signal.SIGINT)
    trainer = make_trainer(tmp_path, "n_steps=5")
    try:
        assert trainer.run() == "killed"
    finally:
        host().unregister(plugin)
        trainer.close()
    assert seen == [(1, False)]
    assert trainer.step == 1 and os.path.exists(trainer.run_dir.model_path("final"))
    assert signal.getsignal(signal.SIGINT) is before


def test_data_class_names_resolve_like_elektronn2():
    from ekn_core.trainer.data_source import resolve_data_class

    assert resolve_data_class("MNISTData").__name__ == "DigitsSource"
    assert resolve_data_class("BatchCreatorImage").__name__ == "BatchCreatorImage"
    with pytest.raises(UnknownPluginError, match="mnist_data"):
        resolve_data_class("MNISTDta")
    cls = resolve_data_class((os.path.join(HERE, "trainer_files", "toy_data.py"), "ToyData"))
    assert cls.__name__ == "ToyData"


NET_WITH_POOLING = '''
data_class = "PatchSource"
n_steps = 1

def create_model(patch_size=(23, 23)):
    import ekn_core.neuromancer as nm

    inp = nm.Input((None, 1, *patch_size), "b,f,x,y", name="raw")
    out = nm.Conv(inp, 2, (4, 4), (2, 2))
    out = nm.Conv(out, 2, (2, 2), (3, 3), activation_func="lin")
    probs = nm.Softmax(out)
    target = nm.Input_like(probs, override_f=1, dtype="int16", name="target")
    loss = nm.AggregateLoss(nm.MultinoulliNLL(probs, target, target_is_sparse=True))
    model = nm.model_manager.getmodel()
    model.designate_nodes(input_node=inp, target_node=target, loss_node=loss, prediction_node=probs)
    return model
'''


def test_an_invalid_patch_size_error_names_the_nearest_valid_sizes(tmp_path):
    from ekn_core.errors import ShapeError
    from ekn_core.node import model_manager
    from ekn_core.trainer.loop import Trainer

    path = tmp_path / "net.py"
    path.write_text(NET_WITH_POOLING)
    namespace = {}
    exec(NET_WITH_POOLING, namespace)

    def builds(size):  # brute force: does the net build with this patch size?
        model_manager.newmodel(None)
        try:
            namespace["create_model"]((size, 23))
            return True
        except ShapeError:
            return False

    wish = 26
    below = max(n for n in range(1, wish) if builds(n))
    above = min(n for n in range(wish + 1, 3 * wish) if builds(n))
    assert not builds(wish) and (below, above) == (23, 29)  # (n - 3) / 2 - 1 must be divisible by 3
    cfg = ExperimentConfig.from_file(str(path), [f"save_path={str(tmp_path)!r}",
                                                 f"model_load_args={{'patch_size': ({wish}, 23)}}"])
    with pytest.raises(ShapeError, match=f"patch {wish}×23 is not valid for this net; "
                                         f"nearest valid: {below}×23, {above}×23"):
        Trainer(cfg)


def test_resuming_a_run_that_reached_n_steps_says_how_to_continue(tmp_path, caplog):
    from ekn_core.trainer.loop import Trainer

    trainer = make_trainer(tmp_path, "n_steps=2", "history_freq=0", "checkpoint_freq=1")
    try:
        assert trainer.run() == "finished"
    finally:
        trainer.close()
    for n_steps, warned in ((2, True), (3, False)):
        cfg = ExperimentConfig.from_file(TOY, [f"save_path={str(tmp_path)!r}", "save_name='run'", f"n_steps={n_steps}",
                                               "history_freq=0"])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ekn"):
            Trainer(cfg, resume=True).close()
        expected = "the run has done 2 steps and n_steps is 2: nothing to train"
        assert any(expected in r.getMessage() and "--set n_steps=4" in r.getMessage()
                   for r in caplog.records) == warned


def test_misspelt_data_init_kwargs_are_a_config_error_with_the_closest_name(tmp_path):
    from ekn_core.errors import ConfigError
    from ekn_core.node import model_manager
    from ekn_core.plugins import registry
    from ekn_core.trainer.data_source import make_data_source

    model_manager.newmodel(None)
    Input = registry("layers").get("input")
    inp, target = Input((None, 1, 5, 9, 9), "b,f,z,y,x"), Input((None, 1, 5, 9, 9), "b,f,z,y,x", name="target")
    for data_class in ("BatchCreatorImage", "PatchSource"):  # a factory function and a class
        with pytest.raises(ConfigError, match=rf"data_init_kwargs: {data_class} takes no argument 'valid_cube' "
                                              r"\(did you mean 'valid_cubes'\?\); it takes patch_size, d_files"):
            make_data_source(data_class, inp, target, {"d_files": [], "l_files": [], "valid_cube": [1]})
    toy = (os.path.join(HERE, "trainer_files", "toy_data.py"), "ToyData")
    with pytest.raises(ConfigError, match=r"ToyData takes no argument 'nvalid' \(did you mean 'n_valid'\?\)"):
        make_data_source(toy, inp, target, {"nvalid": 3})
    with pytest.raises(TypeError):  # other errors of the constructor stay what they are
        make_data_source(toy, inp, target, {"n_valid": "many"})


def test_dropout_masks_are_restored_with_the_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, "n_steps=2", "history_freq=0", "checkpoint_freq=2", "schedules={}")
    try:
        trainer.run()
        path = trainer.save_checkpoint()
        from ekn_core.trainer.checkpoint import read_checkpoint

        def two_more_steps():
            for _ in range(2):
                trainer.train_step()
            return {k: p.get_value() for k, p in trainer.model.all_params.items()}

        first = two_more_steps()
        trainer.restore(read_checkpoint(path))
        again = two_more_steps()
    finally:
        trainer.close()
    for key in first:
        np.testing.assert_allclose(again[key], first[key], atol=1e-6, err_msg=key)


def test_preview_slices_equal_the_dense_prediction_of_the_whole_volume(tmp_path):
    from PIL import Image

    from ekn_core.prediction import predict_dense
    from ekn_core.trainer.preview import Previewer

    cfg = ExperimentConfig.from_file(os.path.join(HERE, "..", "examples", "neuro3d_lite.py"))
    import ekn_core.neuromancer as nm

    nm.model_manager.newmodel("preview_test")
    model = cfg.create_model(patch_size=(11, 43, 43), width=0.05)
    vol = np.random.default_rng(0).random((9, 50, 46)).astype(np.float32)
    paths = Previewer(model.prediction_node, [("v", vol)], str(tmp_path), export_class=[1], max_z_pred=3).write(7)
    assert sorted(os.path.basename(p) for p in paths) == [
        "v-pred-c1-z3-step7.png", "v-pred-c1-z4-step7.png", "v-pred-c1-z5-step7.png",
        "v-raw-z3.png", "v-raw-z4.png", "v-raw-z5.png"]
    full = predict_dense(model.prediction_node, vol, pad_raw=True)
    for z in (3, 4, 5):
        with Image.open(tmp_path / f"v-pred-c1-z{z}-step7.png") as img:
            got = np.asarray(img).astype(int)
        expected = np.clip(full[1, z] * 255 + 0.5, 0, 255).astype(int)
        assert got.shape == (50, 46) and np.abs(got - expected).max() <= 1
        with Image.open(tmp_path / f"v-raw-z{z}.png") as img:
            assert np.abs(np.asarray(img).astype(int) - np.clip(vol[z] * 255 + 0.5, 0, 255).astype(int)).max() <= 1


def test_early_stopping_ends_a_run_that_stopped_improving(tmp_path):
    """With lr 0 the weights never change, so the monitored loss only varies with the monitor
    batches: the run must stop at the first evaluation that completes two in a row without a new
    best (recomputed here from the history), long before n_steps."""
    trainer = make_trainer(tmp_path, "n_steps=200", "history_freq=2", "early_stopping_patience=2",
                           "optimiser_params={'lr': 0.0}", "schedules={}")
    try:
        assert trainer.run() == "finished"
        history = trainer.history.history
        scores = [v if np.isfinite(v) else t for v, t in zip(history["valid_loss"], history["train_loss"])]
        state = trainer.checkpoint_data().state
    finally:
        trainer.close()
    best, stale, stop_at = np.inf, 0, None
    for i, score in enumerate(scores):
        stale = 0 if score < best else stale + 1
        best = min(best, score)
        if stale == 2:
            stop_at = i
            break
    assert stop_at == len(scores) - 1, (scores, stop_at)
    assert trainer.step == 2 * len(scores) < 200
    assert state["evaluations_without_improvement"] == 2  # saved for an exact resume

    never = make_trainer(tmp_path / "b", "n_steps=8", "history_freq=2", "optimiser_params={'lr': 0.0}",
                         "schedules={}")
    try:
        assert never.run() == "finished" and never.step == 8  # without patience: all steps
    finally:
        never.close()


def test_status_line_shows_errors_in_percent_or_dashes(tmp_path):
    """ELEKTRONN2's status line: errors in per cent with an error node; '--' for errors that were not
    measured (a model without an error node, e.g. MALIS affinities), instead of 'nan'."""
    trainer = make_trainer(tmp_path, "n_steps=2", "history_freq=2")
    try:
        assert trainer.run() == "finished"
        line = trainer.status_line({"train_error": 0.125, "valid_error": math.nan, "train_loss": 0.5})
        assert line.startswith("00002 L_m=") and "tr=12.50%, vl=--," in line and "tr_L=0.5000" in line
        trainer.model.error_node = None
        assert "tr=--, vl=--," in trainer.status_line({"train_error": 0.125})
    finally:
        trainer.close()


class FailsToBegin:
    """A hook plugin whose start of training fails (after the run directory was made)."""

    @hookimpl
    def ekn_on_train_begin(self, trainer):
        raise RuntimeError("boom at the start")


def test_a_failed_set_up_leaves_no_run_directory_and_a_run_that_failed_early_starts_afresh(tmp_path, caplog):
    """A set-up error (the data source rejects a data_init_kwargs value) comes before the run
    directory exists. A run that failed after it, before its first checkpoint (status 'error'), is
    started afresh by the same command with the fault gone (the log says so), while a run that
    saved a checkpoint stays protected."""
    import json

    from ekn_core.errors import ConfigError
    from ekn_core.trainer.loop import Trainer

    broken = ExperimentConfig.from_file(TOY, [f"save_path={str(tmp_path)!r}", "save_name='run'",
                                              "data_init_kwargs={'n_valid': 'many'}"])
    with pytest.raises(TypeError):
        Trainer(broken)
    assert os.listdir(tmp_path) == []
    fails = FailsToBegin()
    host().register(fails)
    caplog.set_level(logging.INFO, logger="ekn")
    try:
        trainer = make_trainer(tmp_path, "n_steps=1", "history_freq=0")
        with pytest.raises(RuntimeError, match="boom at the start"):
            trainer.run()
        trainer.close()
    finally:
        host().unregister(fails)
    run_json = os.path.join(str(tmp_path), "run", "run.json")
    assert json.load(open(run_json))["status"] == "error"
    trainer = make_trainer(tmp_path, "n_steps=1", "history_freq=0")
    try:
        assert trainer.run() == "finished"
    finally:
        trainer.close()
    assert any("held a run that failed (status 'error') before its first checkpoint: it starts afresh"
               in r.getMessage() for r in caplog.records)
    assert json.load(open(run_json))["status"] == "finished"
    log_text = open(os.path.join(str(tmp_path), "run", "train.log")).read()
    stamps = re.findall(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", log_text, flags=re.MULTILINE)
    assert stamps == sorted(stamps)  # in time order: the set-up's kept lines come before the start line
    starts = [match.start() for match in re.finditer("starting run", log_text)]
    assert len(starts) == 2  # the failed run and the fresh start, each once
    assert starts[0] < log_text.index("data: ", starts[0]) < starts[1] < log_text.index("starts afresh")
    with pytest.raises(ConfigError, match="already exists"):
        make_trainer(tmp_path, "n_steps=1")


@pytest.mark.parametrize("workers, copies", [(False, 1), (2, 3)])
def test_in_memory_auto_counts_the_background_workers_copies(tmp_path, monkeypatch, workers, copies):
    import types

    import psutil

    from ekn_core.trainer.loop import Trainer
    from ekn_plugins.data import patches
    from ekn_plugins.data.synth import write_dataset

    write_dataset(str(tmp_path / "data"), n_volumes=3, shape=(6, 48, 48), label_margin=(2, 8, 8), seed=0)
    monkeypatch.setenv("EKN_TEST_DATA", str(tmp_path / "data"))
    need = 2 * 6 * 48 * 48 * 1 + 2 * 2 * 32 * 32 * 2  # two training cubes: uint8 raw (held as stored), int16 labels
    available = need / patches.AUTO_MEMORY_SHARE * 2  # room for two copies, not for three
    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=available))
    cfg = ExperimentConfig.from_file(os.path.join(HERE, "trainer_files", "tiny2d_config.py"), [
        f"save_path={str(tmp_path)!r}", "save_name='run'", f"background_processes={workers}"])
    trainer = Trainer(cfg)
    try:
        assert trainer._data_recipe[1].get("copies", 1) == copies
        assert trainer.data.in_memory == (copies == 1)
    finally:
        trainer.close()
