"""The run directory's lock and what exact resume needs beyond weights and optimiser slots, on the
toy perceptron in-process: the float16 loss scale, the lr factor of NaN rollbacks, the optimisers'
own meta-parameters, the last evaluation of a run that stops between evaluations; and what a step
or an evaluation must not hide (non-finite parameters, errors drawing validation batches, batch
settings the background workers did not follow)."""

import json
import logging
import math
import os
import re
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest

from ekn_core.errors import ConfigError, EknError
from ekn_core.hooks import host
from ekn_core.hookspecs import hookimpl
from ekn_core.trainer.checkpoint import read_checkpoint

pytest.importorskip("tensorflow")

from toy_training import StopAt, assert_same_params, make_trainer, params, train  # noqa: E402


def finished(path, *overrides, **kwargs):
    """The trainer of a toy run that must end with status ``finished``."""
    trainer, status = train(path, *overrides, **kwargs)
    assert status == "finished", status
    return trainer


def model_weights(path):
    out = {}
    with h5py.File(path, "r") as f:
        f["weights"].visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    return out


class Steps:
    """Records the lr of every training step and the steps with a NaN."""

    def __init__(self):
        self.lr, self.nan = {}, []

    @hookimpl
    def ekn_on_train_step_end(self, trainer, step, metrics):
        self.lr[step] = metrics["lr"]

    @hookimpl
    def ekn_on_nan_detected(self, trainer, step, metrics):
        self.nan.append(step)


# ------------------------------------------------------------------------------------------ run lock
HOLD_LOCK = ("import sys, time\nfrom ekn_core.trainer.rundir import RunDir\n"
             "RunDir(sys.argv[1]).acquire_lock(); print('locked', flush=True); time.sleep(120)")


def test_a_run_directory_trains_in_one_process_at_a_time(tmp_path):
    first = make_trainer(tmp_path, "n_steps=2")
    run_dir = first.run_dir.path
    try:
        for overrides, resume in (((), True), (("overwrite=True",), False)):  # resume, or delete it and start anew
            with pytest.raises(EknError, match=f"another trainer of this process .* trains in {re.escape(run_dir)}; "
                                               "close it first"):
                make_trainer(tmp_path, "n_steps=4", *overrides, resume=resume)
        assert first.run() == "finished"  # nothing of the run was touched
    finally:
        first.close()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, run_dir], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(EknError, match=rf"another process \(pid {holder.pid}\) trains in {re.escape(run_dir)}; "
                                           "stop it first"):
            make_trainer(tmp_path, "n_steps=4", resume=True)
    finally:
        holder.kill()
        holder.wait()
    resumed, status = train(tmp_path, "n_steps=4", resume=True)  # the lock ended with its process
    assert status == "finished" and resumed.step == 4
    anew = make_trainer(tmp_path, "n_steps=4", "overwrite=True")  # deletes the run but keeps its lock file
    try:
        assert anew.step == 0 and not os.listdir(anew.run_dir.checkpoints)
        with pytest.raises(EknError, match="close it first"):
            anew.run_dir.acquire_lock()
    finally:
        anew.close()


def test_a_second_trainer_of_a_new_run_fails_before_its_set_up_and_a_failed_start_leaves_nothing(tmp_path,
                                                                                                  monkeypatch):
    """The first trainer of a new run directory locks it before its set-up: a second one with the
    same save_name fails at once (it builds no model). A start that fails after the set-up (here
    writing run.json) deletes the folders it made, and with them the lock."""
    import threading

    from ekn_core.trainer.loop import Trainer
    from ekn_core.trainer.rundir import RunDir

    building, go_on, built, first = threading.Event(), threading.Event(), [], []
    build_model = Trainer._build_model

    def build(trainer):
        built.append(trainer)
        if len(built) == 1:  # the first trainer waits in its set-up
            building.set()
            go_on.wait(60)
        build_model(trainer)

    monkeypatch.setattr(Trainer, "_build_model", build)
    thread = threading.Thread(target=lambda: first.append(make_trainer(tmp_path, "n_steps=1")))
    thread.start()
    try:
        assert building.wait(60)
        with pytest.raises(EknError, match=f"another trainer of this process .* trains in "
                                           f"{re.escape(str(tmp_path / 'run'))}; close it first"):
            make_trainer(tmp_path, "n_steps=1")
        assert len(built) == 1
    finally:
        go_on.set()
        thread.join(60)
        for trainer in first:
            trainer.close()
    assert first and first[0].run_dir.exists()

    def disk_full(run_dir, info):
        raise OSError("No space left on device")

    monkeypatch.setattr(RunDir, "write_run_json", disk_full)
    with pytest.raises(OSError, match="No space left"):
        make_trainer(tmp_path / "full", "n_steps=1")
    assert not os.path.exists(tmp_path / "full")  # nor the save_path folder the run made


def test_a_lock_taken_on_a_deleted_run_directory_is_taken_again_on_the_new_one(tmp_path, monkeypatch):
    from ekn_core.trainer import rundir

    rd = rundir.RunDir(str(tmp_path / "run"))
    try_lock, calls = rundir.try_lock, []

    def deleted_meanwhile(path):  # the holder deleted the directory after this process opened the lock file
        fd = try_lock(path)
        calls.append(path)
        if len(calls) == 1:
            import shutil

            shutil.rmtree(rd.path)
        return fd

    monkeypatch.setattr(rundir, "try_lock", deleted_meanwhile)
    fd = rd.acquire_lock()
    try:
        assert len(calls) == 2 and os.path.samestat(os.fstat(fd), os.stat(rd.lock))
        with pytest.raises(EknError, match="close it first"):  # the file the path names now is the locked one
            rd.acquire_lock()
    finally:
        os.close(fd)


KILLED_WRITE = ("import os, signal, sys\nfrom ekn_core.atomic import atomic_write\n"
                "def write(tmp):\n    open(tmp, 'wb').write(b'x' * 1000)\n    os.kill(os.getpid(), signal.SIGKILL)\n"
                "atomic_write(sys.argv[1], write)")


def test_resume_deletes_the_temporary_files_of_writes_killed_midway(tmp_path):
    trainer = finished(tmp_path, "n_steps=2")
    rd = trainer.run_dir
    snapshots = os.path.join(rd.previews, "snapshots.h5.d")  # the folder of HDF5 preview snapshots
    written = (os.path.join(rd.checkpoints, "ckpt-00000004.h5"), rd.model_path("latest"), rd.history_h5,
               os.path.join(rd.plots, "loss.png"), os.path.join(rd.previews, "blk-pred-c1-z0-step4.png"),
               os.path.join(rd.previews, "blk-step4.k.zip"), os.path.join(snapshots, "step4.h5"))
    for path in written:
        assert subprocess.run([sys.executable, "-c", KILLED_WRITE, path]).returncode == -signal.SIGKILL
    folders = (rd.path, rd.models, rd.checkpoints, rd.plots, rd.previews, snapshots)
    hidden = lambda: sorted(f for d in folders for f in os.listdir(d) if f.startswith("."))
    assert len(hidden()) == len(written)
    unrelated = os.path.join(rd.checkpoints, ".notes.tmp")
    open(unrelated, "w").close()
    evaluating = rd.join("evaluation", "best", ".evaluation.json.0123456789ab.tmp")  # `ekn evaluate` may be writing
    os.makedirs(os.path.dirname(evaluating))
    open(evaluating, "w").close()
    make_trainer(tmp_path, "n_steps=2", resume=True).close()
    assert hidden() == [".notes.tmp"] and os.path.exists(evaluating)


# ------------------------------------------------------------------------------------------ exact resume
def test_resume_restores_the_float16_loss_scale(tmp_path):
    common = ("checkpoint_freq=3", "history_freq=0", "schedules={}", "precision='mixed_float16'")
    whole = finished(tmp_path / "whole", "n_steps=6", *common)
    first = finished(tmp_path / "parts", "n_steps=3", *common)
    with h5py.File(os.path.join(first.run_dir.checkpoints, "ckpt-00000003.h5"), "r+") as f:  # as ekn wrote it
        state = json.loads(f.attrs["state"])                                                  # before it recorded
        f.attrs["state"] = json.dumps({k: v for k, v in state.items() if k != "precision"})  # the precision
    with pytest.raises(ConfigError, match=re.escape(
            "the run trained in 'mixed_float16' (its checkpoint ckpt-00000003.h5 records no precision, but its "
            "float16 loss scale moved)")):
        make_trainer(tmp_path / "parts", "n_steps=6", *common[:-1], resume=True)
    resumed = finished(tmp_path / "parts", "n_steps=6", *common, resume=True)
    scale = [t.model.train_function("Adam").get_loss_scale() for t in (whole, resumed)]
    assert scale[0] == scale[1] == (2.0 ** 15, 6)  # six finite steps since the scale was set
    assert_same_params(params(whole), params(resumed))
    trainer = make_trainer(tmp_path / "parts", "n_steps=6", *common, resume=True)
    try:
        step = trainer.model.train_function("Adam")
        step.set_loss_scale(4.0, 7)
        path = trainer.save_checkpoint()
        step.set_loss_scale(1.0, 0)
        trainer.restore(read_checkpoint(path))
        assert step.get_loss_scale() == (4.0, 7)
    finally:
        trainer.close()


def test_a_bfloat16_run_records_its_precision_and_resumes_exactly_only_in_it(tmp_path, monkeypatch, caplog):
    """The precision (here from EKN_PRECISION, which overrides the setting) is recorded in run.json,
    train.log and the checkpoints; a resume without it is refused with the way to resume; resumed in
    it, the run equals the uninterrupted one; a change named by the resume's --set is taken."""
    import shutil

    from ekn_core.node import precision
    from ekn_core.trainer.checkpoint import read_checkpoint_state

    caplog.set_level(logging.INFO, logger="ekn")
    common = ("checkpoint_freq=3", "history_freq=0", "schedules={}")
    whole = finished(tmp_path / "whole", "n_steps=6", *common, "precision='mixed_bfloat16'")
    monkeypatch.setenv("EKN_PRECISION", "mixed_bfloat16")
    first = finished(tmp_path / "parts", "n_steps=3", *common)
    monkeypatch.delenv("EKN_PRECISION")
    assert precision() == "float32"  # the trainer's policy ended with it
    rd = first.run_dir
    info = json.load(open(rd.run_json))
    assert info["precision"] == info["settings"]["precision"] == "mixed_bfloat16"
    assert read_checkpoint_state(os.path.join(rd.checkpoints, "ckpt-00000003.h5"))["precision"] == "mixed_bfloat16"
    assert ("precision: mixed_bfloat16 (EKN_PRECISION=mixed_bfloat16, which overrides the config's precision "
            "setting 'float32')") in open(rd.log).read()
    shutil.copytree(tmp_path / "parts", tmp_path / "changed")
    with pytest.raises(ConfigError, match=re.escape(
            f"cannot resume {rd.path} in precision 'float32' (the config's precision setting): the run trained in "
            f"'mixed_bfloat16' (its checkpoint ckpt-00000003.h5 records it). To resume in 'mixed_bfloat16': `ekn "
            f"train --resume {rd.path} --set precision=mixed_bfloat16`. To change the precision on purpose, resume "
            "with --set precision=float32.")):
        make_trainer(tmp_path / "parts", "n_steps=6", *common, resume=True)
    assert json.load(open(rd.run_json))["status"] == "finished"  # a refused resume is no failed run
    resumed = finished(tmp_path / "parts", "n_steps=6", *common, "precision='mixed_bfloat16'", resume=True)
    assert_same_params(params(whole), params(resumed))
    changed = finished(tmp_path / "changed", "n_steps=6", *common, "precision='float32'", resume=True)
    assert not all(np.array_equal(a, params(changed)[k]) for k, a in params(whole).items())  # the precision counts
    assert read_checkpoint_state(os.path.join(changed.run_dir.checkpoints, "ckpt-00000006.h5"))["precision"] == "float32"
    assert json.load(open(changed.run_dir.run_json))["precision"] == "float32"
    assert "the run trained in precision mixed_bfloat16 until step 3 (ckpt-00000003.h5); it continues in float32" \
        in caplog.text


def test_a_precision_set_before_the_trainer_gives_way_to_the_config_with_a_warning(tmp_path, caplog):
    from ekn_core.node import precision, set_precision

    caplog.set_level(logging.WARNING, logger="ekn")
    before = set_precision("mixed_bfloat16")
    try:
        trainer = make_trainer(tmp_path, "n_steps=1")
        assert precision() == "float32"
        trainer.close()
        assert precision() == "mixed_bfloat16"  # restored when the trainer is closed
        assert ("set_precision('mixed_bfloat16'), called in the config or before the trainer, does not apply to the "
                "run: it trains in float32 (the config's precision setting). To train in mixed_bfloat16, set "
                "precision = 'mixed_bfloat16' in the config (or --set precision=mixed_bfloat16)") in caplog.text
        caplog.clear()
        make_trainer(tmp_path / "same", "n_steps=1", "precision='mixed_bfloat16'").close()
        assert "set_precision" not in caplog.text
    finally:
        set_precision(before)


def resume_as_cli(run_dir, *overrides, hook=None):
    """``ekn train --resume RUN_DIR --set ...`` in-process (the run's config copy with its recorded
    overrides, then these); returns ``(trainer, status or the exception that ended the run)``."""
    from ekn_core.trainer.loop import Trainer
    from ekn_plugins.commands.train import load_for_run

    cfg, rd = load_for_run(None, list(overrides), str(run_dir))
    trainer = Trainer(cfg, run_dir=rd, resume=True)
    if hook is not None:
        host().register(hook)
    try:
        try:
            status = trainer.run()
        except KeyError as err:
            status = err
    finally:
        trainer.close()
        if hook is not None:
            host().unregister(hook)
    return trainer, status


def test_a_precision_change_stopped_before_its_first_checkpoint_holds_on_the_next_resume(tmp_path, monkeypatch,
                                                                                          caplog):
    """A resume with --set precision=float32 stopped before its first checkpoint: the next plain
    resume (whose config has that override from run.json) continues in float32, exactly as the
    changed resume would have; unless that resume had not trained in float32 (EKN_PRECISION won)."""
    import shutil

    caplog.set_level(logging.WARNING, logger="ekn")
    common = ("checkpoint_freq=3", "history_freq=0", "schedules={}")
    first = finished(tmp_path / "parts", "n_steps=3", *common, "precision='mixed_bfloat16'")
    for name in ("changed", "env"):
        shutil.copytree(tmp_path / "parts", tmp_path / name)
    changed, status = resume_as_cli(first.run_dir.path.replace("parts", "changed"), "n_steps=6", "precision=float32")
    assert status == "finished"
    _, status = resume_as_cli(first.run_dir.path, "n_steps=6", "precision=float32", hook=StopAt(4))
    assert isinstance(status, KeyError), status  # interrupted after step 4
    resumed, status = resume_as_cli(first.run_dir.path)
    assert status == "finished" and resumed.config.precision == "float32"
    assert_same_params(params(changed), params(resumed))
    assert ("it continues in float32, as --set precision=float32 of an earlier resume asked (run.json records it)"
            in caplog.text)
    env_run = first.run_dir.path.replace("parts", "env")
    monkeypatch.setenv("EKN_PRECISION", "mixed_bfloat16")
    _, status = resume_as_cli(env_run, "n_steps=6", "precision=float32", hook=StopAt(4))
    assert isinstance(status, KeyError), status  # interrupted after step 4
    monkeypatch.delenv("EKN_PRECISION")
    with pytest.raises(ConfigError, match="cannot resume .* in precision 'float32'"):
        resume_as_cli(env_run)


def test_the_lr_lowered_by_nan_rollbacks_holds_under_an_absolute_schedule_and_on_resume(tmp_path, caplog):
    # the 3rd and the 4th training batch are NaN: two rollbacks to the checkpoint of step 2, the
    # second one lowering the lr of that checkpoint twice (0.5 ** 2)
    common = ("history_freq=2", "schedules={'lr': {'cosine': 100}}", "data_init_kwargs={'nan_at_call': [3, 4]}")
    whole_steps = Steps()
    with caplog.at_level(logging.INFO, logger="ekn"):
        whole, status = train(tmp_path / "whole", "n_steps=6", *common, hook=whole_steps)
    assert status == "finished" and whole_steps.nan == [3, 3]

    def lr(step):  # the cosine schedule before training step `step` (1-based), times the lr factor
        return 0.01 * 0.5 * (1 + math.cos(math.pi * (step - 1) / 100)) * (0.25 if step >= 3 else 1.0)

    assert [whole_steps.lr[k] for k in range(1, 7)] == pytest.approx([lr(k) for k in range(1, 7)], rel=1e-12)
    assert whole.lr_factor == 0.25 and "lr lowered to 0.0025 (lr_factor 0.25" in caplog.text
    finished(tmp_path / "parts", "n_steps=4", *common)
    resumed_steps = Steps()
    resumed = finished(tmp_path / "parts", "n_steps=6", *common, resume=True, hook=resumed_steps)
    assert [resumed_steps.lr[k] for k in (5, 6)] == [whole_steps.lr[k] for k in (5, 6)]
    assert_same_params(params(whole), params(resumed))


def test_restoring_a_checkpoint_keeps_the_optimisers_own_meta_parameters(tmp_path):
    trainer = make_trainer(tmp_path, "n_steps=1", "history_freq=0")
    try:
        trainer.run()
        optimiser = trainer.model.optimisers["adam"]
        optimiser.beta2 = 0.99  # as in docs/training.md's shell example
        path = trainer.save_checkpoint()
        optimiser.beta2 = 0.9
        trainer.restore(read_checkpoint(path))
        assert optimiser.beta2 == pytest.approx(0.99)
    finally:
        trainer.close()
    resumed = make_trainer(tmp_path, "n_steps=1", "history_freq=0", resume=True)
    try:
        assert resumed.model.optimisers["adam"].beta2 == pytest.approx(0.99)
    finally:
        resumed.close()


def test_a_run_stopped_between_evaluations_resumes_like_the_uninterrupted_run(tmp_path):
    common = ("history_freq=2", "schedules={}", "optimiser_params={'lr': 1.0}")  # a jumpy validation loss
    whole = finished(tmp_path / "whole", "n_steps=10", *common)
    first = finished(tmp_path / "parts", "n_steps=5", *common)
    assert first.history.history["step"].tolist() == [2, 4, 5]  # the last evaluation, for the user
    state = read_checkpoint(os.path.join(first.run_dir.checkpoints, "ckpt-00000005.h5")).state
    assert (first.best_valid, first.evaluations_without_improvement) == (  # which changes neither
        state["best_valid"], state["evaluations_without_improvement"])
    resumed = finished(tmp_path / "parts", "n_steps=10", *common, resume=True)
    want, have = whole.history.history, resumed.history.history
    assert have.columns == want.columns and want["step"].tolist() == [2, 4, 6, 8, 10]
    for column in want.columns:
        if column != "time":
            np.testing.assert_array_equal(have[column], want[column], err_msg=column)
    assert (resumed.best_valid, resumed.evaluations_without_improvement) == (
        whole.best_valid, whole.evaluations_without_improvement)
    best = [model_weights(t.run_dir.model_path("best")) for t in (whole, resumed)]
    assert_same_params(*best)


class TermAt:
    """Sends SIGTERM after step ``step``."""

    def __init__(self, step):
        self.step = step

    @hookimpl
    def ekn_on_train_step_end(self, trainer, step, metrics):
        if step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_saves_the_checkpoint_without_a_last_evaluation_or_preview(tmp_path):
    trainer = make_trainer(tmp_path, "n_steps=10", "history_freq=2")
    previews = []
    trainer.previewer = object()  # as if previews were configured (the toy net has none)
    trainer._safe_preview = lambda: previews.append(trainer.step)
    hook = TermAt(3)
    host().register(hook)
    try:
        status = trainer.run()
    finally:
        trainer.close()
        host().unregister(hook)
    assert status == "killed" and trainer.step == 3 and previews == []
    assert trainer.history.history["step"].tolist() == [2]
    assert read_checkpoint(os.path.join(trainer.run_dir.checkpoints, "ckpt-00000003.h5")).step == 3
    assert os.path.isfile(trainer.run_dir.model_path("final"))


# ------------------------------------------------------------------------------------------ steps, evaluations
def test_a_step_that_makes_the_parameters_infinite_rolls_back_though_its_loss_is_finite(tmp_path):
    """With lr 1e39 the first update overflows float32 (the loss before it is finite): the
    compiled step must report it at step 1, not the forward pass of step 2."""
    steps = Steps()
    trainer, status = train(tmp_path, "n_steps=3", "optimiser_params={'lr': 1e39}", "schedules={}",
                            "nan_max_retries=0", hook=steps)
    assert status == "nan" and steps.nan == [1] and not steps.lr and trainer.step == 0


def test_batch_char_is_the_mean_target_of_each_batch(tmp_path):
    trainer = finished(tmp_path, "n_steps=3", "history_freq=0")
    assert int(trainer.config.seed) == 0
    expected = [np.mean(trainer.data.getbatch(8, rng=np.random.default_rng(np.random.SeedSequence([0, k])))[1])
                for k in range(3)]  # the batch of step k + 1: seeded by (seed, k)
    np.testing.assert_allclose(trainer.history.timeline["batch_char"], expected, rtol=1e-6)


def test_validation_batch_errors_are_logged_once_and_a_source_without_validation_data_is_quiet(tmp_path, caplog):
    for name, kwargs, warned in (("broken", "{'n_valid': 0}", 1), ("none", "{'no_valid': True}", 0)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ekn"):
            trainer, status = train(tmp_path / name, "n_steps=4", "history_freq=2", f"data_init_kwargs={kwargs}")
        valid = trainer.history.history["valid_loss"]
        assert status == "finished" and len(valid) == 2 and np.isnan(valid).all()
        messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        logged = [m for m in messages if "cannot draw a validation monitor batch (ValueError: " in m]
        assert len(logged) == warned and len(messages) == warned, messages


def test_background_workers_follow_a_new_batch_size_and_leave_a_replaced_data_source_to_the_trainer(tmp_path):
    from ekn_core.trainer.data_source import make_data_source

    trainer = make_trainer(tmp_path, "n_steps=100", "history_freq=0", "schedules={}", "background_processes=1")

    def serial(source, size, step):  # the batch of training step `step` + 1, as the serial path draws it
        return source.getbatch(size, rng=np.random.default_rng(np.random.SeedSequence([0, step])))

    try:
        trainer.train_step()
        trainer.train_step()
        assert trainer._background is not None
        trainer.batch_size = 4  # as the shell may
        trainer.train_step()
        for got, want in zip(trainer.last_batch, serial(trainer.data, 4, 2)):
            np.testing.assert_array_equal(got, want)
        model = trainer.model
        replacement = make_data_source(trainer.config.data_class, model.input_node, model.target_node, {})
        replacement.w = -replacement.w  # another labelling rule, which the workers' copies do not have
        trainer.data = replacement
        trainer.train_step()
        for got, want in zip(trainer.last_batch, serial(replacement, 4, 3)):
            np.testing.assert_array_equal(got, want)
    finally:
        trainer.close()
