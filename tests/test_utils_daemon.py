"""Experiment daemon: exclusive starts across processes, resource gating, stale-lock recovery."""

import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

import pytest

from ekn_core.errors import ConfigError
from ekn_plugins.utils.daemon import ExperimentDaemon
from ekn_plugins.utils.lockfile import FileLock
from ekn_plugins.utils.resources import GPU, Requirements, Snapshot, parse_nvidia_smi

FREE = Snapshot(cpu_load=0.0, free_ram_gb=64.0, gpus=[])
DAEMON = [sys.executable, "-c", "import sys; from ekn_core.cli import main; raise SystemExit(main(sys.argv[1:]))"]
# a harmless experiment: records who started it, then sleeps a little so experiments overlap
MARK = [sys.executable, "-c", "import os, sys, time; open(os.path.join(sys.argv[1], sys.argv[2] + '.' + "
        "str(os.getpid())), 'w').write(' '.join(os.environ.get(v, '-') for v in ('CUDA_VISIBLE_DEVICES', "
        "'CUDA_DEVICE_ORDER'))); time.sleep(0.2)"]


def _queue(tmp_path, names):
    queue = tmp_path / "queue"
    queue.mkdir(exist_ok=True)
    for name in names:
        (queue / name).write_text(f"name = '{name}'\n")
    marks = tmp_path / "marks"
    marks.mkdir(exist_ok=True)
    return str(queue), str(marks)


def _wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_two_daemon_processes_never_start_the_same_experiment(tmp_path):
    names = [f"exp{i:02d}.toml" for i in range(12)]
    queue, marks = _queue(tmp_path, names)
    command = shlex.join([*MARK, marks, "{name}"])
    args = ["daemon", queue, "--command", command, "--poll", "0.02", "--start-wait", "0", "--max-running", "3",
            "--max-cpu-load", "1e9", "--min-free-ram-gb", "0", "--exit-when-empty"]
    procs = [subprocess.Popen(DAEMON + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    started = sorted(f.rsplit(".", 1)[0] for f in os.listdir(marks))
    assert started == sorted(n.rsplit(".", 1)[0] for n in names)  # each exactly once
    assert sorted(os.listdir(os.path.join(queue, "done"))) == names
    assert os.listdir(os.path.join(queue, "running")) == []
    daemons = {p.pid for p in procs}
    statuses = [json.load(open(os.path.join(queue, "status", n + ".json"))) for n in names]
    assert all(s["state"] == "done" and s["returncode"] == 0 and s["daemon_pid"] in daemons for s in statuses)
    assert not os.path.exists(os.path.join(queue, ".daemon.lock"))
    logs = [f for f in os.listdir(os.path.join(queue, "logs")) if f.startswith("daemon-")]
    assert len(logs) == 2
    text = "".join(open(os.path.join(queue, "logs", f)).read() for f in logs)
    assert text.count("started exp") == 12 and "finished with exit code 0" in text


class ScriptedProbe:
    def __init__(self, snapshots):
        self.snapshots, self.calls = list(snapshots), 0

    def __call__(self):
        self.calls += 1
        return self.snapshots.pop(0) if len(self.snapshots) > 1 else self.snapshots[0]


def test_busy_resources_delay_the_start(tmp_path, caplog):
    queue, marks = _queue(tmp_path, ["a.toml"])
    busy_gpu = [GPU(0, used_mb=15000, total_mb=16000, util=99), GPU(1, used_mb=100, total_mb=16000, util=95)]
    free_gpu = [GPU(0, used_mb=15000, total_mb=16000, util=99), GPU(1, used_mb=100, total_mb=16000, util=0)]
    probe = ScriptedProbe([Snapshot(3.0, 64.0, free_gpu), Snapshot(0.1, 0.5, free_gpu),
                           Snapshot(0.1, 64.0, busy_gpu), Snapshot(0.1, 64.0, free_gpu)])
    daemon = ExperimentDaemon(queue, command=[*MARK, marks, "{name}"], probe=probe, poll=0.01, start_wait=0)
    with caplog.at_level(logging.DEBUG, logger="ekn.daemon"):
        assert daemon.run(exit_when_empty=True) == 1
    assert probe.calls == 4  # three busy rounds, then the start
    messages = [r.getMessage() for r in caplog.records]
    started = next(i for i, m in enumerate(messages) if m.startswith("started a.toml"))
    waits = [m for m in messages[:started] if m.startswith("waiting: busy")]
    assert "cpu load 3.00" in waits[0] and "free RAM 0.5 GB" in waits[1] and "GPU 1: 15.5 GB free, 95% busy" in waits[2]
    assert "GPU 1" in messages[started]
    assert [open(os.path.join(marks, f)).read() for f in os.listdir(marks)] == ["1 PCI_BUS_ID"]  # nvidia-smi's GPU 1


def test_max_running_and_gpus_are_not_handed_out_twice(tmp_path):
    queue, marks = _queue(tmp_path, ["a", "b", "c"])
    gpus = [GPU(0, 0, 16000, 0), GPU(1, 0, 16000, 0)]  # both always look idle
    daemon = ExperimentDaemon(queue, command=[sys.executable, "-c", "import time; time.sleep(30)"],
                              probe=lambda: Snapshot(0.0, 64.0, gpus), poll=0.01, start_wait=0)
    try:
        assert daemon.step() and daemon.step() and not daemon.step()  # 2 GPUs: 2 experiments
        assert sorted(gpu for _, gpu, _ in daemon.children.values()) == [0, 1]
        assert daemon.queued() == ["c"]
    finally:
        for proc, _, _ in daemon.children.values():
            proc.kill()
            proc.wait()
    daemon.reap()
    assert sorted(os.listdir(os.path.join(queue, "failed"))) == ["a", "b"]


def test_failing_and_missing_commands_go_to_failed(tmp_path):
    queue, _ = _queue(tmp_path, ["x.toml"])
    daemon = ExperimentDaemon(queue, command=[sys.executable, "-c", "raise SystemExit(3)"], probe=lambda: FREE,
                              poll=0.01, start_wait=0)
    assert daemon.run(exit_when_empty=True) == 1
    status = json.load(open(os.path.join(queue, "status", "x.toml.json")))
    assert (status["state"], status["returncode"]) == ("failed", 3)
    (tmp_path / "queue" / "x.toml").write_text("again")
    daemon = ExperimentDaemon(queue, command=["/nonexistent/ekn-train", "{config}"], probe=lambda: FREE, poll=0.01,
                              start_wait=0)
    assert daemon.run(exit_when_empty=True) == 0
    assert sorted(os.listdir(os.path.join(queue, "failed"))) == ["x.toml", "x.toml.2"]
    assert "error" in json.load(open(os.path.join(queue, "status", "x.toml.json.2")))


def test_killed_daemon_leaves_no_stuck_lock(tmp_path, caplog):
    queue, marks = _queue(tmp_path, ["first.toml"])
    args = ["daemon", queue, "--command", f"{sys.executable} -c pass", "--poll", "0.02", "--start-wait", "60",
            "--max-cpu-load", "1e9", "--min-free-ram-gb", "0"]
    proc = subprocess.Popen(DAEMON + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = os.path.join(queue, ".daemon.lock")
    try:  # after the start the daemon holds the lock for start-wait seconds
        assert _wait_for(lambda: os.path.exists(os.path.join(queue, "status", "first.toml.json")))
        assert json.load(open(lock))["pid"] == proc.pid
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert os.path.exists(lock)  # stale now
    _queue(tmp_path, ["second.toml"])
    daemon = ExperimentDaemon(queue, command=[*MARK, marks, "{name}"], probe=lambda: FREE, poll=0.01, start_wait=0)
    t0 = time.monotonic()
    with caplog.at_level(logging.INFO, logger="ekn.daemon"):
        assert daemon.run(exit_when_empty=True) == 1
    assert time.monotonic() - t0 < 10
    assert any("broke stale lock" in r.getMessage() and "no longer runs" in r.getMessage() for r in caplog.records)
    assert os.listdir(os.path.join(queue, "done")) == ["second.toml"]
    assert not os.path.exists(lock)


def test_sigterm_stops_a_waiting_daemon_cleanly(tmp_path):
    queue, _ = _queue(tmp_path, ["a.toml"])
    args = ["daemon", queue, "--command", "true", "--poll", "0.05", "--max-cpu-load", "1e9", "--min-free-ram-gb", "1e9"]
    proc = subprocess.Popen(DAEMON + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    logs = os.path.join(queue, "logs")
    assert _wait_for(lambda: os.path.isdir(logs) and any(
        "waiting: busy: free RAM" in open(os.path.join(logs, f)).read() for f in os.listdir(logs)))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert os.listdir(queue) != [] and os.path.exists(os.path.join(queue, "a.toml"))  # never started
    assert not os.path.exists(os.path.join(queue, ".daemon.lock"))


def test_lock_staleness_rules(tmp_path):
    path = str(tmp_path / "l.lock")
    me = FileLock(path, stale_after=100)

    def plant(**record):
        with open(path, "w") as f:
            json.dump({"host": "other-host", "pid": 1, "time": time.time(), "token": "t", **record}, f)

    plant()
    assert not me.acquire(timeout=0)  # fresh lock of another host: cannot be checked, respected
    plant(time=time.time() - 1000)
    assert me.acquire(timeout=0)  # too old
    me.release()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    plant(host=socket.gethostname(), pid=dead.pid)
    assert me.acquire(timeout=0)  # dead pid on this host
    me.release()
    plant(host=socket.gethostname(), pid=os.getpid(), pid_start=1.0)
    assert me.stale_reason(json.load(open(path))).startswith("pid")  # pid reused by a younger process
    plant(host=socket.gethostname(), pid=os.getpid(), pid_start=None)
    assert not me.acquire(timeout=0)  # a live owner
    open(path, "w").close()  # crashed between create and write
    assert not me.acquire(timeout=0)
    os.utime(path, (time.time() - 60, time.time() - 60))
    assert me.acquire(timeout=0)
    with pytest.raises(RuntimeError, match="already held"):
        me.acquire()
    me.release()
    with pytest.raises(ValueError):
        FileLock(path, stale_after=0)


def test_breaking_restores_a_fresh_lock_moved_by_a_race(tmp_path, monkeypatch):
    path = str(tmp_path / "l.lock")
    fresh = FileLock(path)
    assert fresh.acquire(timeout=0)
    breaker = FileLock(path, stale_after=100)
    stale = {"host": "gone", "pid": 1, "time": 0.0, "token": "old"}
    monkeypatch.setattr(breaker, "owner", lambda: stale)  # inspected the old lock, then `fresh` replaced it
    assert not breaker._break_if_stale()
    assert json.load(open(path))["token"] == fresh.token  # put back
    assert [f for f in os.listdir(tmp_path)] == ["l.lock"]
    fresh.release()
    assert not os.path.exists(path)


def test_resources_parsing_and_config_errors(tmp_path):
    gpus = parse_nvidia_smi("0, 80000, 81559, 100\n1, 0, 81559, 0\n")
    assert [g.index for g in gpus] == [0, 1] and gpus[1].free_gb == pytest.approx(79.65, abs=0.01)
    with pytest.raises(ValueError, match="nvidia-smi"):
        parse_nvidia_smi("0, 1, 2\n")
    assert Requirements(require_gpu=True).check(FREE)[0] is False
    assert Requirements().check(FREE)[:2] == (True, "free: cpu load 0.00, 64.0 GB RAM, no GPU (runs on CPU)")
    with pytest.raises(ConfigError, match="placeholder"):
        ExperimentDaemon(str(tmp_path), command="ekn train {cfg}")
    with pytest.raises(ConfigError, match="stale_after"):
        ExperimentDaemon(str(tmp_path), start_wait=100, stale_after=120)
    with pytest.raises(ConfigError, match="empty"):
        ExperimentDaemon(str(tmp_path), command="")
    (tmp_path / ".hidden").write_text("")
    (tmp_path / "b.toml~").write_text("")
    (tmp_path / "b.toml").write_text("")
    assert ExperimentDaemon(str(tmp_path)).queued() == ["b.toml"]


def test_helper_files_of_configs_are_not_started_and_the_documented_way_to_queue_an_example_works(tmp_path, caplog):
    """`ekn train` queues: the examples' neuro_settings.py is a helper (not started, logged once); the
    config docs/utilities.md shows for queueing an example loads from running/ (where it is started)."""
    import re
    import shutil

    from ekn_core.trainer.config import ExperimentConfig
    from ekn_plugins.commands.demo import example_path

    docs = open(os.path.join(os.path.dirname(__file__), "..", "docs", "utilities.md"), encoding="utf-8").read()
    recipe = re.search(r"```python\n# QUEUE_DIR/neuro3d_lite_long.py\n(.*?)```", docs, re.S).group(1)
    queue = tmp_path / "queue"
    queue.mkdir()
    shutil.copy(example_path("neuro_settings.py"), queue)
    (queue / "neuro3d_lite_long.py").write_text(recipe)
    busy = Requirements(max_cpu_load=-1.0)  # nothing starts: each round logs why it waits
    daemon = ExperimentDaemon(str(queue), requirements=busy, probe=lambda: FREE)  # the default command: ekn train
    with caplog.at_level(logging.INFO, logger="ekn.daemon"):
        assert daemon.queued() == ["neuro3d_lite_long.py"] and not daemon.step() and not daemon.step()
    helper_lines = [r.getMessage() for r in caplog.records if "neuro_settings.py names neither" in r.getMessage()]
    assert len(helper_lines) == 1 and str(queue / "neuro_settings.py") in helper_lines[0]
    other = ExperimentDaemon(str(queue), command="python {config}", probe=lambda: FREE)
    assert other.queued() == ["neuro3d_lite_long.py", "neuro_settings.py"]  # another command: every file
    os.rename(queue / "neuro3d_lite_long.py", queue / "running" / "neuro3d_lite_long.py")
    cfg = ExperimentConfig.from_file(str(queue / "running" / "neuro3d_lite_long.py"))
    assert (cfg.n_steps, cfg.save_name, cfg.data_class) == (500000, "neuro3d_lite_long", "BatchCreatorImage")
    assert callable(cfg.create_model)
