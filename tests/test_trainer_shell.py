"""The training shell: through a pseudo-terminal (Ctrl-C, setlr, q, kill) and through ``ekn shell RUN_DIR``.

The trainer is the real ``ekn train`` in a subprocess on the bundled digits data; the learning
rate change is checked in the run's own log (status lines) and history.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import numpy as np
import pytest

pexpect = pytest.importorskip("pexpect")

CONFIG = textwrap.dedent('''
    save_name = "run"
    data_class = "MNISTData"
    n_steps = 10 ** 7
    history_freq = 20
    monitor_batch_size = 10
    optimiser = "SGD"
    optimiser_params = {"lr": 0.01, "mom": 0.9}
    batch_size = 10
    tensorboard = False
    plot_on = False

    create_model = __import__("runpy").run_path(@MODEL@)["create_model"]
''').replace("@MODEL@", repr(os.path.join(os.path.dirname(os.path.abspath(__file__)), "trainer_files", "digits_mlp.py")))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "dumb", "COLUMNS": "200"}
STARTUP = 180  # seconds for TensorFlow's import and the first steps on a busy CI machine


def _config(tmp_path) -> str:
    path = tmp_path / "tiny.py"
    path.write_text(CONFIG)
    return str(path)


def _lr_in_history(run_dir: str) -> list[float]:
    with open(os.path.join(run_dir, "history.csv")) as f:
        return [float(row["lr"]) for row in csv.DictReader(f)]


def _assert_killed_and_saved(run_dir: str) -> None:
    assert os.path.isfile(os.path.join(run_dir, "models", "final.mdl"))
    with open(os.path.join(run_dir, "run.json")) as f:
        assert json.load(f)["status"] == "killed"
    lrs = _lr_in_history(run_dir)
    assert lrs[0] == pytest.approx(0.01) and lrs[-1] == pytest.approx(0.001)


def _open_shell(child) -> None:
    child.expect("ekn training shell")
    child.expect_exact("ekn> ")


@pytest.mark.slow
def test_ctrl_c_setlr_continue_then_kill(tmp_path):
    run_dir = str(tmp_path / "runs" / "run")
    child = pexpect.spawn(sys.executable, ["-m", "ekn_core.cli", "train", _config(tmp_path), "--save-path",
                                           str(tmp_path / "runs")], env=ENV, encoding="utf-8", timeout=60,
                          dimensions=(40, 200))
    child.logfile_read = io.StringIO()
    try:
        child.expect(r"00020 L_m=", timeout=STARTUP)
        child.sendintr()
        _open_shell(child)
        child.sendintr()  # a second Ctrl-C inside the shell only clears the line
        child.expect("Ctrl-C does not stop training")
        child.sendline("trainer.config.history_freq * 2")
        child.expect("40")
        child.sendline("setlr 0.001")
        child.expect(r"lr = 0\.001 \(was 0\.01\)")
        child.sendline("q")
        child.expect("training continues")
        child.expect(r"LR=1\.00e-03")  # the next status line: the new lr is in use
        child.sendintr()
        _open_shell(child)
        child.sendline("kill")
        child.expect("end of training: killed")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
        log = child.logfile_read.getvalue()
    assert child.exitstatus == 0, log[-3000:]
    _assert_killed_and_saved(run_dir)


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen, log_path: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None or time.monotonic() > end:
            with open(log_path) as f:
                pytest.fail(f"{what} did not happen (trainer exit code {proc.poll()}):\n{f.read()[-3000:]}")
        time.sleep(0.2)


@pytest.mark.slow
def test_ekn_shell_attaches_to_a_run_under_nohup(tmp_path):
    run_dir = str(tmp_path / "runs" / "run")
    log_path = str(tmp_path / "nohup.out")
    with open(log_path, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ekn_core.cli", "train", _config(tmp_path), "--save-path",
                                 str(tmp_path / "runs")], env=ENV, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        sock = os.path.join(run_dir, ".shell", "shell.sock")
        _wait_for(lambda: os.path.exists(os.path.join(run_dir, "history.csv")), STARTUP, "a history row", proc,
                  log_path)
        assert oct(os.stat(sock).st_mode & 0o777) == oct(0o600)

        client = pexpect.spawn(sys.executable, ["-m", "ekn_core.cli", "shell", run_dir], env=ENV, encoding="utf-8",
                               timeout=60)
        client.expect("attached to run")
        _open_shell(client)
        client.sendline("setlr 0.001")
        client.expect(r"lr = 0\.001 \(was 0\.01\)")
        client.sendline("q")
        client.expect("detached: training continues")
        client.expect(pexpect.EOF)
        client.close()
        assert client.exitstatus == 0

        def new_lr_logged() -> bool:
            with open(log_path) as f:
                return "LR=1.00e-03" in f.read()

        _wait_for(new_lr_logged, 60, "a status line with the new lr", proc, log_path)
        client = pexpect.spawn(sys.executable, ["-m", "ekn_core.cli", "shell", run_dir], env=ENV, encoding="utf-8",
                               timeout=60)
        _open_shell(client)
        client.sendline("kill")
        client.expect("detached: training stops")
        client.expect(pexpect.EOF)
        client.close()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert not os.path.exists(os.path.join(run_dir, ".shell"))
    _assert_killed_and_saved(run_dir)


def test_ekn_shell_without_a_running_training_says_so(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ekn_core.cli", "shell", str(tmp_path)], env=ENV,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "no run is training there" in result.stderr


# ------------------------------------------------------------------------------------------ in-process
class _Model:
    def __init__(self):
        self.lr, self.mom, self.wd = 0.1, 0.9, 0.0
        self.nodes = {}


def _fake_trainer(tmp_path) -> SimpleNamespace:
    return SimpleNamespace(step=3, model=_Model(), data=None, optimiser=None, schedules=None, history=None,
                           config=SimpleNamespace(history_freq=10), last_batch=None,
                           run_dir=SimpleNamespace(name="fake", path=str(tmp_path), plots=str(tmp_path)))


def _run(trainer, text: str) -> tuple[str, str]:
    from ekn_core.trainer.shell import run_shell

    out = io.StringIO()
    return run_shell(trainer, stdin=io.StringIO(text), stdout=out), out.getvalue()


def test_commands_python_and_errors_in_process(tmp_path):
    trainer = _fake_trainer(tmp_path)
    result, out = _run(trainer, "setmom 0.5\nsetwd x\nsethist 7\nq = 3\nprint(q + 1)\nfor i in range(2):\n"
                                "    print('loop', i)\n\n1/0\nexit()\nhelp setlr\nhelp\nkill\n")
    assert result == "kill"
    assert trainer.model.mom == 0.5 and trainer.model.wd == 0.0 and trainer.config.history_freq == 7
    assert "setwd needs a number, got 'x'" in out and "usage: setwd VALUE" in out
    assert "4\n" in out and "loop 0\nloop 1\n" in out
    assert "ZeroDivisionError" in out
    assert "exit() does not apply here" in out
    assert "setlr VALUE: set the learning rate." in out
    assert "  q: leave the shell and continue training. (also: continue)" in out


def test_end_of_input_continues_training(tmp_path):
    assert _run(_fake_trainer(tmp_path), "x = 1\n")[0] == "continue"


def test_completion_offers_commands_python_and_node_names(tmp_path):
    from ekn_core.trainer.shell import TrainingShell, StreamIO

    trainer = _fake_trainer(tmp_path)
    trainer.model.nodes = {"conv1": SimpleNamespace(params={"w": 1}), "pool": SimpleNamespace(params={})}
    shell = TrainingShell(trainer, StreamIO(io.StringIO(), io.StringIO()))
    assert ("setlr", -4) in shell.complete("setl", 4)
    assert ("history_freq", -3) in shell.complete("trainer.config.his", 18)
    assert shell.complete("sf c", 4) == [("conv1", -1)]


def test_filter_mosaic_against_direct_tiling():
    from ekn_plugins.commands.shell_commands import filter_mosaic

    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 4, 2, 5))  # (y, x, n_in, n_out)
    mosaic = filter_mosaic(w)
    assert mosaic.shape == (2 * 4 - 1, 5 * 5 - 1)
    for i in range(2):
        for o in range(5):
            tile = w[:, :, i, o]
            expected = (tile - tile.min()) / (tile.max() - tile.min())
            np.testing.assert_allclose(mosaic[i * 4:i * 4 + 3, o * 5:o * 5 + 4], expected)
    assert np.isnan(mosaic[3, :]).all() and np.isnan(mosaic[:, 4]).all()
    w3 = rng.normal(size=(5, 3, 3, 1, 2))  # 3-D conv: the middle z slice is shown
    np.testing.assert_allclose(filter_mosaic(w3)[:3, :3], (w3[2, :, :, 0, 0] - w3[2, :, :, 0, 0].min())
                               / np.ptp(w3[2, :, :, 0, 0]))


def test_sf_says_whether_a_node_is_missing_or_has_no_filters(tmp_path):
    trainer = _fake_trainer(tmp_path)
    trainer.model.nodes = {"conv1": SimpleNamespace(params={"w": 1}), "pool": SimpleNamespace(params={})}
    _, out = _run(trainer, "sf pool\nsf conv9\n")
    assert "'pool' has no filters; nodes with filters: conv1" in out
    assert "'conv9' is not a node of the model; nodes with filters: conv1" in out


def test_a_misspelt_command_is_named_instead_of_a_syntax_error(tmp_path):
    _, out = _run(_fake_trainer(tmp_path), "setrl 1e-4\nsetrl = 2\nprint(setrl * 3)\nzzz 1\n")
    assert "unknown command 'setrl'; did you mean setlr?" in out
    assert "6\n" in out  # a near miss that is Python still runs as Python
    assert out.count("SyntaxError") == 1  # 'zzz 1' is near no command


# ------------------------------------------------------------------------------- ekn shell, in-process
class _RawClient:
    """A client of the shell socket speaking the protocol directly (what `ekn shell` sends)."""

    def __init__(self, run_dir: str):
        import socket

        from ekn_core.trainer.remote import _Channel, socket_path

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(os.path.realpath(socket_path(run_dir)))
        self.channel, self.out = _Channel(sock), []

    def until(self, key: str, timeout: float = 20.0) -> str:
        """Collects output until a message with ``key`` (``prompt``, ``bye``); returns its value."""
        while True:
            message = self.channel.receive(timeout)
            assert message is not None, "".join(self.out)
            if key in message:
                return message[key]
            self.out.append(message.get("out", ""))

    def line(self, text: str) -> str:
        self.channel.send(line=text)
        return self.until("prompt")


def _served(tmp_path, idle_timeout_s=None):
    """A fake trainer listening for `ekn shell` (its run directory with mode 0775, as under umask 002)."""
    from ekn_core.trainer.remote import ShellServer

    os.chmod(tmp_path, 0o775)
    trainer = _fake_trainer(tmp_path)
    trainer.config.shell_idle_timeout_s, trainer.pause_requested = idle_timeout_s, False
    server = ShellServer.start(trainer)
    assert server.active, "the shell does not listen in a run directory with mode 0775"
    return trainer, server


def _shell_when_attached(trainer, seconds: float = 20.0) -> str:
    """What the trainer does at its next step boundary: run the shell once a client has attached.
    A watchdog sends SIGINT every second after ``seconds`` (what rescued a hung shell before), and
    SIGTERM after three of them (a shell hung at a prompt), so that a hung shell fails the test."""
    import signal
    import threading

    from ekn_core.trainer.shell import run_shell

    end = time.monotonic() + 20
    while not trainer.pause_requested:
        assert time.monotonic() < end, "no client attached"
        time.sleep(0.02)
    done, rescued = threading.Event(), []

    def watchdog():
        if not done.wait(seconds):
            while not done.is_set():
                rescued.append(1)
                os.kill(os.getpid(), signal.SIGINT if len(rescued) <= 3 else signal.SIGTERM)
                done.wait(1.0)

    thread = threading.Thread(target=watchdog, daemon=True)
    thread.start()
    try:
        result = run_shell(trainer)
    finally:
        done.set()
        thread.join()
    assert not rescued, "the shell hung until SIGINT rescued it"
    return result


def _in_thread(function):
    import threading

    errors = []

    def run():
        try:
            function()
        except BaseException as err:  # reported by the test
            errors.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def test_ekn_shell_interrupts_running_code_and_a_leaving_client_ends_it(tmp_path):
    """Python typed into `ekn shell` runs in the trainer: the client's Ctrl-C interrupts it, and
    a client that leaves while it runs interrupts it too and training continues; then another
    client can attach. The socket lies in RUN_DIR/.shell (0700) although the run directory is 0775."""
    import stat

    from ekn_core.trainer.remote import socket_path

    trainer, server = _served(tmp_path)
    loop = "while True: time.sleep(0.05)"

    def client():
        c = _RawClient(str(tmp_path))
        c.until("prompt")
        c.line("import time")
        c.line(loop)
        c.channel.send(line="")  # the loop runs
        time.sleep(0.5)
        c.channel.send(interrupt=True)
        assert c.until("prompt") == "ekn> "
        assert "KeyboardInterrupt" in "".join(c.out)
        c.line(loop)
        c.channel.send(line="")
        time.sleep(0.5)
        c.channel.close()  # leaves while its loop runs

    try:
        thread, errors = _in_thread(client)
        assert _shell_when_attached(trainer) == "continue"
        thread.join(20)
        assert not errors, errors
        assert stat.S_IMODE(os.stat(os.path.dirname(socket_path(str(tmp_path)))).st_mode) == 0o700
        trainer.pause_requested = False
        again = _RawClient(str(tmp_path))
        assert "attached to fake" in again.channel.receive(10)["out"]
        again.channel.close()
    finally:
        server.close()
    assert not os.path.exists(os.path.dirname(socket_path(str(tmp_path))))


def test_ekn_shell_detaches_an_idle_client_and_sigterm_ends_running_code(tmp_path):
    import signal

    trainer, server = _served(tmp_path, idle_timeout_s=0.5)
    try:
        outputs = []

        def idle_client():
            c = _RawClient(str(tmp_path))
            outputs.append(c.until("bye"))
            outputs.append("".join(c.out))

        thread, errors = _in_thread(idle_client)
        assert _shell_when_attached(trainer) == "continue"
        thread.join(20)
        assert not errors and outputs[0] == "continue", (errors, outputs)
        assert "no input for 0.5 s: training continues" in outputs[1]

        trainer.pause_requested = False

        def busy_client():
            c = _RawClient(str(tmp_path))
            c.until("prompt")
            c.line("while True: pass")
            c.channel.send(line="")
            time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGTERM)
            outputs.append(c.until("bye"))

        thread, errors = _in_thread(busy_client)
        assert _shell_when_attached(trainer) == "kill"
        thread.join(20)
        assert not errors and outputs[-1] == "kill", (errors, outputs)
    finally:
        server.close()


def test_ctrl_c_in_ekn_shell_interrupts_the_code_in_the_run(tmp_path):
    """The client's Ctrl-C while the run executes code sends an interrupt (and names the way out
    if the code ignores it) instead of ending the client; before the shell opens it leaves."""
    import signal
    import socket
    import threading

    from ekn_core.trainer.remote import _Channel, attach, private_directory, socket_path
    from ekn_core.trainer.rundir import RunDir

    path = socket_path(str(tmp_path))
    private_directory(os.path.dirname(path))
    open(RunDir(str(tmp_path)).lock, "w").write("4242\n")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    received = []
    main = threading.main_thread().ident

    def fake_run():
        for opened in (True, False):
            conn = _Channel(listener.accept()[0])
            if opened:
                conn.send(prompt="ekn> ")
                received.append(conn.receive(10))  # the line; the code "runs"
            time.sleep(0.3)
            signal.pthread_kill(main, signal.SIGINT)  # Ctrl-C in the client's terminal
            if opened:
                received.append(conn.receive(10))
                conn.send(out="KeyboardInterrupt\n")
                conn.send(bye="continue")
            else:
                received.append(conn.receive(10))  # it leaves: end of input
            conn.close()

    thread, errors = _in_thread(fake_run)
    out = io.StringIO()
    try:
        first = attach(str(tmp_path), stdin=io.StringIO("while True: pass\n"), stdout=out)
        second = attach(str(tmp_path), stdin=io.StringIO(""), stdout=out)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C ended the client instead of interrupting the code in the run")
    finally:
        thread.join(20)
        listener.close()
    assert not errors, errors
    assert (first, second) == ("continue", "closed")
    assert received == [{"line": "while True: pass"}, {"interrupt": True}, None]
    assert "^C: interrupting the code that runs in the training process" in out.getvalue()
    assert "`kill -INT 4242`" in out.getvalue() and "left before the shell opened" in out.getvalue()
