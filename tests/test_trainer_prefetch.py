"""Prefetching training batches to the device (``prefetch_to_device``): the prefetcher itself, and
training runs with it forced on (on the CPU the copy targets /CPU:0) that must equal runs without it."""

import os
import signal
import threading
import traceback

import numpy as np
import pytest

from ekn_core.errors import ConfigError, EknError, ShapeError
from ekn_core.hookspecs import hookimpl
from ekn_core.trainer.config import ExperimentConfig

tf = pytest.importorskip("tensorflow")

import toy_training  # noqa: E402
from ekn_core.trainer.prefetch import DevicePrefetcher  # noqa: E402
from toy_training import TOY, StopAt, assert_same_params, make_trainer, params  # noqa: E402

CPU = "/device:CPU:0"


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "ekn-device-prefetch"]


def threads():
    """Live threads, without tqdm's process-wide monitor (started by the first progress bar, kept)."""
    return {t for t in threading.enumerate() if t.name != "tqdm_monitor"}


# ------------------------------------------------------------------------------------------ prefetcher
def test_prefetcher_returns_batches_in_order_on_its_device():
    arrays = [[np.full((2, 3), i, np.float32), np.arange(i, i + 4, dtype=np.int16)] for i in range(5)]
    with DevicePrefetcher(CPU, depth=3) as prefetcher:
        for i in range(3):
            prefetcher.submit(arrays[i], tag=i)
        with pytest.raises(EknError, match="already holds 3 batch"):
            prefetcher.submit(arrays[3], tag=3)
        got = [prefetcher.take() for _ in range(2)]
        prefetcher.submit(arrays[3], tag=3)
        prefetcher.submit(arrays[4], tag=4)
        got += [prefetcher.take() for _ in range(3)]
        with pytest.raises(EknError, match="holds no batch"):
            prefetcher.take()
    assert [item.tag for item in got] == [0, 1, 2, 3, 4]
    for item, (x, y) in zip(got, arrays):
        assert all(isinstance(t, tf.Tensor) and t.device.endswith("CPU:0") for t in item.tensors)
        assert item.tensors[0].dtype == tf.float32 and item.tensors[1].dtype == tf.int16
        np.testing.assert_array_equal(item.tensors[0].numpy(), x)
        np.testing.assert_array_equal(item.tensors[1].numpy(), y)
    assert prefetcher.taken == 5 and prefetcher.pending == 0


class Unconvertible:
    pass


class CopyFailed(RuntimeError):
    pass


def _refuse(value, dtype=None, name=None, as_ref=False):
    raise CopyFailed(f"cannot copy {type(value).__name__} #42")


tf.register_tensor_conversion_function(Unconvertible, _refuse)


def test_an_error_in_the_thread_is_raised_by_take_with_its_type_message_and_traceback():
    with DevicePrefetcher(CPU) as prefetcher:
        prefetcher.submit([np.zeros(2, np.float32), Unconvertible()], tag="bad")
        with pytest.raises(CopyFailed, match=r"^cannot copy Unconvertible #42$") as info:
            prefetcher.take()
        frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
        assert "_work" in frames and "_refuse" in frames, frames  # the thread's frames are kept
        # the thread survives and goes on with the next batch
        prefetcher.submit([np.ones(2, np.float32)], tag="good")
        assert prefetcher.take().tag == "good"
        # a failed batch that is dropped raises nothing
        prefetcher.submit([Unconvertible()], tag="dropped")
        prefetcher.discard()
        assert prefetcher.pending == 0 and prefetcher.discarded == 1


def test_close_joins_the_thread_and_drops_waiting_batches():
    before = set(threading.enumerate())
    prefetcher = DevicePrefetcher(CPU)
    (thread,) = [t for t in threading.enumerate() if t not in before]
    assert thread.name == "ekn-device-prefetch" and prefetcher.alive
    prefetcher.submit([np.ones(3, np.float32)])
    prefetcher.close()
    assert not thread.is_alive() and not prefetcher.alive and prefetcher.closed
    assert set(threading.enumerate()) == before
    assert prefetcher.pending == 0 and prefetcher.discarded == 1
    prefetcher.close()  # twice is fine
    with pytest.raises(EknError, match="closed"):
        prefetcher.submit([np.ones(3, np.float32)])


def test_run_canonical_passes_tensors_through_without_converting(monkeypatch):
    import ekn_core.neuromancer as nm

    model = nm.model_manager.newmodel("prefetch_passthrough")
    inp = nm.Input((None, 4), "b,f", name="x")
    out = nm.Perceptron(inp, 3, activation_func="lin")
    model.designate_nodes(input_node=inp, prediction_node=out)
    fn = model._function("predict", [out])
    canonical = fn.check_arrays([np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)])
    expected = fn.run_canonical(canonical)[0]
    tensors = [tf.identity(tf.convert_to_tensor(a)) for a in canonical]
    converted = []
    real = tf.convert_to_tensor
    monkeypatch.setattr(tf, "convert_to_tensor", lambda value, *a, **k: converted.append(value) or real(value, *a, **k))
    np.testing.assert_array_equal(fn.run_canonical(tensors)[0], expected)
    assert converted == []
    fn.run_canonical(canonical)  # numpy arrays are still converted
    assert len(converted) == 1 and converted[0] is canonical[0]


# ------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("value, message", [
    ("'yes'", "prefetch_to_device must be None (on when training on a GPU), True or False, got 'yes'"),
    ("1", "prefetch_to_device must be None (on when training on a GPU), True or False, got 1"),
])
def test_config_rejects_a_bad_prefetch_value(value, message):
    with pytest.raises(ConfigError) as info:
        ExperimentConfig.from_file(TOY, [f"prefetch_to_device={value}"])
    assert message in str(info.value)


def test_config_rejects_forced_prefetching_with_distribute():
    with pytest.raises(ConfigError, match="prefetch_to_device=True cannot be combined with distribute"):
        ExperimentConfig.from_file(TOY, ["prefetch_to_device=True", "distribute='mirrored'"])
    for value in ("None", "False"):
        assert ExperimentConfig.from_file(TOY, [f"prefetch_to_device={value}", "distribute='mirrored'"])


# ------------------------------------------------------------------------------------------ trainer
def train(path, *overrides, resume=False, hook=None):
    """Runs a toy trainer to its end; returns (trainer, status or the exception, params, losses)."""

    def no_thread_left(trainer):
        assert not prefetch_threads(), "the run left its prefetch thread running"

    trainer, status = toy_training.train(path, *overrides, resume=resume, hook=hook, after_run=no_thread_left)
    return trainer, status, params(trainer), np.asarray(trainer.history.timeline["loss"])


def assert_same_run(a, b):
    (_, _, params_a, losses_a), (_, _, params_b, losses_b) = a, b
    np.testing.assert_array_equal(losses_a, losses_b)
    assert_same_params(params_a, params_b)


def test_default_is_on_for_a_gpu_only_and_true_forces_it(tmp_path):
    expected = "/device:GPU:0" if tf.config.list_logical_devices("GPU") else None
    for name, setting, device in (("default", "None", expected), ("on", "True", expected or CPU),
                                  ("off", "False", None)):
        trainer = make_trainer(tmp_path / name, "n_steps=0", f"prefetch_to_device={setting}")
        trainer.close()
        assert trainer.prefetch_device == device, name


def test_training_with_prefetching_equals_training_without(tmp_path):
    before = threads()
    common = ("n_steps=7", "history_freq=3", "checkpoint_freq=2")
    off = train(tmp_path / "off", *common, "prefetch_to_device=False")
    on = train(tmp_path / "on", *common, "prefetch_to_device=True")
    trainer = on[0]
    assert off[1] == on[1] == "finished" and trainer.step == 7
    assert off[0]._prefetcher is None
    # every step after the first ran on a prefetched batch; none was drawn beyond n_steps
    assert (trainer._prefetcher.taken, trainer._prefetcher.discarded) == (6, 0)
    assert_same_run(off, on)
    assert on[0].history.history["train_loss"].tolist() == off[0].history.history["train_loss"].tolist()
    # the numpy batch is kept beside the tensors (monitoring, NaN hints, the shell's `batch`)
    assert all(isinstance(a, np.ndarray) for a in trainer.last_batch)
    for a, b in zip(trainer.last_batch, off[0].last_batch):
        np.testing.assert_array_equal(a, b)
    assert trainer.last_metrics["data_time"] >= 0
    assert trainer.model._functions["train:adam"].traces == 1, "tensors retraced the training step"
    assert threads() == before and not prefetch_threads()


def test_resume_after_an_interrupted_run_with_prefetching_equals_the_uninterrupted_run(tmp_path):
    before = threads()
    common = ("history_freq=3", "checkpoint_freq=2", "prefetch_to_device=True")
    whole = train(tmp_path / "whole", "n_steps=9", *common[:2], "prefetch_to_device=False")
    # interrupted after step 5 while the batch of step 6 was prefetched; the newest checkpoint is step 4
    broken = train(tmp_path / "parts", "n_steps=9", *common, hook=StopAt(5))
    assert isinstance(broken[1], KeyError) and broken[0].step == 5
    assert not prefetch_threads()
    resumed = train(tmp_path / "parts", "n_steps=9", *common, resume=True)
    assert resumed[1] == "finished" and resumed[0].step == 9
    assert resumed[0].history.timeline["step"].tolist() == list(range(1, 10))
    assert resumed[0]._prefetcher.taken == 4  # steps 6..9; step 5, the first after the checkpoint, draws its own
    assert_same_run(whole, resumed)
    assert threads() == before


def test_nan_rollback_with_prefetching_equals_rollback_without(tmp_path, caplog):
    import logging

    # the 3rd training batch is NaN (drawn during step 2 when prefetching); the last checkpoint is step 2
    common = ("n_steps=6", "history_freq=2", "schedules={}", "data_init_kwargs={'nan_at_call': 3}")
    off = train(tmp_path / "off", *common, "prefetch_to_device=False")
    with caplog.at_level(logging.INFO, logger="ekn"):
        on = train(tmp_path / "on", *common, "prefetch_to_device=True")
    trainer = on[0]
    assert on[1] == off[1] == "finished" and trainer.step == 6
    assert "Batch input(s) [0] contain NaN/Inf" in caplog.text and "rolled back to step 2" in caplog.text
    assert trainer.model.lr == pytest.approx(0.005)
    assert trainer.history.timeline["step"].tolist() == [1, 2, 3, 4, 5, 6]
    # the batch of step 4, prefetched while the NaN step ran, was dropped by the rollback
    assert trainer._prefetcher.discarded == 1
    assert_same_run(off, on)

    stop = train(tmp_path / "stop", *common, "nan_response='stop'", "prefetch_to_device=True")
    assert stop[1] == "nan" and stop[0].step == 2 and not prefetch_threads()


class ChangeBatchSize:
    """Changes the trainer's batch size after step 2, when the batch of step 3 is prefetched already."""

    @hookimpl
    def ekn_on_train_step_end(self, trainer, step, metrics):
        if step == 2:
            trainer.batch_size = 4


def test_a_batch_prefetched_before_a_change_is_drawn_again(tmp_path):
    common = ("n_steps=5", "history_freq=0", "schedules={}")
    off = train(tmp_path / "off", *common, "prefetch_to_device=False", hook=ChangeBatchSize())
    on = train(tmp_path / "on", *common, "prefetch_to_device=True", hook=ChangeBatchSize())
    assert off[1] == on[1] == "finished"
    assert [len(a) for a in on[0].last_batch] == [4, 4]
    assert (on[0]._prefetcher.taken, on[0]._prefetcher.discarded) == (3, 1)
    assert_same_run(off, on)


class PauseAt:
    """Sends SIGINT (Ctrl-C) after step ``step``: the trainer pauses and opens the shell."""

    def __init__(self, step):
        self.step = step

    @hookimpl
    def ekn_on_train_step_end(self, trainer, step, metrics):
        if step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def test_the_shell_drops_the_prefetched_batch(tmp_path, monkeypatch):
    """A shell session may change the data source in place (here: its labelling rule), which no key
    can see; the batch prefetched before the pause must not be used."""
    import ekn_core.trainer.shell as shell

    opened = []

    def flip_labels(trainer):
        opened.append(trainer.step)
        trainer.data.w = -trainer.data.w
        return "continue"

    monkeypatch.setattr(shell, "run_shell", flip_labels)
    common = ("n_steps=5", "history_freq=0", "schedules={}")
    off = train(tmp_path / "off", *common, "prefetch_to_device=False", hook=PauseAt(2))
    on = train(tmp_path / "on", *common, "prefetch_to_device=True", hook=PauseAt(2))
    assert off[1] == on[1] == "finished" and opened == [2, 2]
    assert (on[0]._prefetcher.taken, on[0]._prefetcher.discarded) == (3, 1)
    assert_same_run(off, on)


def test_background_workers_with_prefetching_give_the_serial_batches_and_survive_a_pause(
        tmp_path, monkeypatch, caplog):
    """The workers produce the prefetched batches too; the batch dropped for the shell is drawn
    again in this process instead of restarting the workers."""
    import logging

    import ekn_core.trainer.shell as shell

    monkeypatch.setattr(shell, "run_shell", lambda trainer: "continue")
    common = ("n_steps=5", "history_freq=0", "schedules={}")
    serial = train(tmp_path / "serial", *common, "prefetch_to_device=False")
    with caplog.at_level(logging.INFO, logger="ekn"):
        workers = train(tmp_path / "workers", *common, "prefetch_to_device=True", "background_processes=1",
                        hook=PauseAt(2))
    assert workers[1] == "finished" and workers[0]._prefetcher.discarded == 1
    assert caplog.text.count("started 1 background data worker(s)") == 1
    assert_same_run(serial, workers)


BAD_DATA = '''
import numpy as np


class BadAtThree:
    """Training batches of 8 points in 4-D; the 3rd one has 3 features."""

    def __init__(self, input_node, target_node):
        self.calls = 0

    def getbatch(self, batch_size, source="train", rng=None):
        if source == "train" and batch_size == 8:
            self.calls += 1
        x = rng.normal(size=(batch_size, 4 if self.calls != 3 or batch_size != 8 else 3)).astype(np.float32)
        return x, (x[:, :1] > 0).astype(np.int16)
'''


def test_a_bad_batch_fails_at_its_own_step_with_the_usual_message(tmp_path):
    (tmp_path / "bad_data.py").write_text(BAD_DATA)
    data_class = f"data_class=({str(tmp_path / 'bad_data.py')!r}, 'BadAtThree')"
    errors = {}
    for setting in ("False", "True"):
        trainer, status, _, losses = train(tmp_path / setting, "n_steps=5", "history_freq=0", data_class,
                                           f"prefetch_to_device={setting}")
        assert isinstance(status, ShapeError) and trainer.step == 2 and len(losses) == 2
        errors[setting] = str(status)
    assert errors["True"] == errors["False"]
    assert "input #0 'x'" in errors["True"] and "axis 'f' has size 3 but 4 is expected" in errors["True"]
    assert not prefetch_threads()
