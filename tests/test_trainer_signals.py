"""Signals in-process on a tiny perceptron: SIGTERM and Ctrl-C while a data worker is stuck, a second
Ctrl-C, SIGTERM while the shell is open (local and `ekn shell`), and `batch_timeout_s`."""

import io
import json
import logging
import os
import signal
import threading
import time

import pytest

from ekn_core.trainer.checkpoint import list_checkpoints
from ekn_core.trainer.config import ExperimentConfig

pytest.importorskip("tensorflow")

HERE = os.path.dirname(os.path.abspath(__file__))
TOY = os.path.join(HERE, "trainer_files", "toy_config.py")
HANG = os.path.join(HERE, "trainer_files", "hang_data.py")


def make_trainer(tmp_path, *overrides):
    from ekn_core.trainer.loop import Trainer

    cfg = ExperimentConfig.from_file(TOY, [f"save_path={str(tmp_path)!r}", "save_name='run'", "history_freq=0",
                                           "tensorboard=False", "plot_on=False", "n_steps=8", *overrides])
    return Trainer(cfg)


def hanging(at, marker=None):
    """Overrides for HangData: the training batch of step ``at`` hangs (with a marker path: once)."""
    return [f"data_class=({HANG!r}, 'HangData')", f"data_init_kwargs={{'hang_at': {at}, 'marker': {marker!r}}}"]


def soon(action, when, timeout=60.0):
    """Runs ``action()`` on a thread once ``when()`` holds."""
    def wait_then_act():
        end = time.monotonic() + timeout
        while not when() and time.monotonic() < end:
            time.sleep(0.05)
        action()

    thread = threading.Thread(target=wait_then_act, daemon=True)
    thread.start()
    return thread


def kill_self(signum):
    return lambda: os.kill(os.getpid(), signum)


def assert_killed_at(trainer, step):
    assert trainer.step == step
    assert list_checkpoints(trainer.run_dir.checkpoints)[-1][0] == step
    with open(trainer.run_dir.run_json) as f:
        assert json.load(f)["status"] == "killed"


def shell_is_open():
    return type(getattr(signal.getsignal(signal.SIGTERM), "__self__", None)).__name__ == "_ShellSignals"


def test_ctrl_c_and_sigterm_end_the_wait_for_a_stuck_worker(tmp_path, monkeypatch):
    import ekn_core.trainer.shell as shell

    paused = []

    def fake_shell(trainer):  # Ctrl-C opened the shell at the step boundary; 'q'
        paused.append(trainer.step)
        soon(kill_self(signal.SIGTERM), lambda: True)
        return "continue"

    monkeypatch.setattr(shell, "run_shell", fake_shell)
    trainer = make_trainer(tmp_path, "background_processes=1", *hanging(3))
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        stuck = soon(kill_self(signal.SIGINT), lambda: trainer.step == 3 and time.sleep(1.0) is None)
        started = time.monotonic()
        assert trainer.run() == "killed"  # the wait resumed after the shell; SIGTERM ended it
        stuck.join()
    finally:
        trainer.close()
    assert paused == [3]
    assert time.monotonic() - started < 30
    assert_killed_at(trainer, 3)
    assert signal.getsignal(signal.SIGTERM) is sigterm


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    trainer = make_trainer(tmp_path, *hanging(3))  # no workers: the read hangs in this process

    def twice():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGINT)

    sigint = signal.getsignal(signal.SIGINT)
    try:
        soon(twice, lambda: trainer.step == 3 and time.sleep(0.5) is None)
        with pytest.raises(KeyboardInterrupt):
            trainer.run()
    finally:
        trainer.close()
    assert trainer.step == 3 and trainer.status == "error"
    assert signal.getsignal(signal.SIGINT) is sigint


class _SignalsAt:
    """Hook plugin: sends ``signals`` to this process after training step ``step``."""

    def __init__(self, step, *signals):
        self.step, self.signals = step, signals

    from ekn_core.hookspecs import hookimpl

    @hookimpl
    def ekn_on_train_step_end(self, trainer, step, metrics):
        if step == self.step:
            for signum in self.signals:
                os.kill(os.getpid(), signum)


def test_ctrl_c_and_sigterm_in_one_step_stop_without_the_shell(tmp_path, monkeypatch):
    import ekn_core.trainer.shell as shell
    from ekn_core.hooks import host

    monkeypatch.setattr(shell, "run_shell", lambda trainer: pytest.fail("the shell opened after SIGTERM"))
    plugin = _SignalsAt(2, signal.SIGINT, signal.SIGTERM)
    host().register(plugin)
    trainer = make_trainer(tmp_path)
    try:
        assert trainer.run() == "killed"
    finally:
        host().unregister(plugin)
        trainer.close()
    assert_killed_at(trainer, 2)


def test_sigterm_with_the_shell_open_saves_and_stops(tmp_path, monkeypatch, capsys):
    from ekn_core.hooks import host

    read_end, write_end = os.pipe()  # the shell reads input() from a pipe nobody writes to
    monkeypatch.setattr("sys.stdin", os.fdopen(read_end, "r"))
    plugin = _SignalsAt(2, signal.SIGINT)
    host().register(plugin)
    trainer = make_trainer(tmp_path)
    try:
        soon(kill_self(signal.SIGTERM), lambda: shell_is_open() and time.sleep(0.3) is None)
        assert trainer.run() == "killed"
    finally:
        host().unregister(plugin)
        trainer.close()
        os.close(write_end)
    assert "ekn training shell" in capsys.readouterr().out
    assert_killed_at(trainer, 2)


def test_sigterm_with_ekn_shell_attached_saves_stops_and_tells_the_client(tmp_path):
    from ekn_core.trainer.remote import attach, socket_path

    trainer = make_trainer(tmp_path, "n_steps=10000")
    answer = threading.Event()

    class Keyboard:  # a user who types 'q' only after the run has ended
        def readline(self):
            answer.wait(60)
            return "q\n"

    out, result = io.StringIO(), []

    def client():
        result.append(attach(trainer.run_dir.path, stdin=Keyboard(), stdout=out))

    attached = soon(client, lambda: trainer.step > 2 and os.path.exists(socket_path(trainer.run_dir.path)))
    soon(kill_self(signal.SIGTERM), lambda: shell_is_open() and "ekn> " in out.getvalue())
    try:
        assert trainer.run() == "killed"
    finally:
        trainer.close()
        answer.set()
        attached.join(30)
    assert result == ["kill"], out.getvalue()
    assert "SIGTERM: the shell closes; the run saves and stops" in out.getvalue()
    assert "detached: training stops" in out.getvalue()
    assert_killed_at(trainer, trainer.step)


def test_batch_timeout_replaces_a_stuck_worker(tmp_path, caplog):
    trainer = make_trainer(tmp_path, "n_steps=5", "background_processes=1", "batch_timeout_s=1.0",
                           *hanging(3, str(tmp_path / "hung-once")))
    try:
        with caplog.at_level(logging.WARNING, logger="ekn.data.workers"):
            assert trainer.run() == "finished"
    finally:
        trainer.close()
    assert trainer.step == 5
    assert "data worker 0 failed on batch 3" in caplog.text and "(timeout 1.0 s)" in caplog.text
