"""Experiment daemon: starts queued experiment configs when this host has free resources.

Layout of a queue directory shared by several hosts (e.g. over NFS)::

    QUEUE_DIR/            experiment configs waiting to start, started in name order
    QUEUE_DIR/running/    configs of started experiments (moved here atomically when claimed)
    QUEUE_DIR/done/       ... of experiments whose process exited with 0
    QUEUE_DIR/failed/     ... of experiments whose process exited with another code
    QUEUE_DIR/status/     NAME.json: host, pid, GPU, command, start/end time, exit code
    QUEUE_DIR/logs/       NAME.log (the experiment's output) and the daemons' decision logs
    QUEUE_DIR/.daemon.lock  the start lock (host, pid, time; see :mod:`ekn_plugins.utils.lockfile`)

Each daemon loops: reap its finished experiments; take the start lock; if a config is queued,
fewer than ``max_running`` of its own experiments run and :class:`~.resources.Requirements` finds
the host free, claim the first config by renaming it into ``running/`` (an atomic rename, so two
daemons can never claim the same file), start the command as a new process session (it survives
the daemon) and keep the lock ``start_wait`` seconds, so that the next resource probe on any
host sees the new experiment's load; release the lock. Every decision is logged on the
``ekn.daemon`` logger. A daemon killed while holding the lock leaves a stale lock that the next
daemon breaks (dead pid on the same host, or older than ``stale_after``).

Hidden files (``.name``), editor backups (``name~``) and sub-directories are never started, nor,
when the command is ``ekn train`` (the default), Python files that are no experiment config but a
helper file configs load (:func:`~ekn_plugins.commands.train.is_experiment_config`): they stay in
the queue. A started config runs from ``running/``, so it must load its helpers by a path that does
not depend on its own folder (docs/utilities.md).

Example:
    >>> import os, sys, tempfile
    >>> queue = tempfile.mkdtemp()
    >>> with open(os.path.join(queue, "exp1.toml"), "w") as f:
    ...     _ = f.write("lr = 0.1\\n")
    >>> daemon = ExperimentDaemon(queue, command=[sys.executable, "-c", "print('{name}')"],
    ...                           probe=lambda: Snapshot(0.0, 8.0, []), start_wait=0, poll=0.05)
    >>> daemon.run(exit_when_empty=True)
    1
    >>> sorted(os.listdir(os.path.join(queue, "done"))), open(os.path.join(queue, "logs", "exp1.log")).read()
    (['exp1.toml'], 'exp1\\n')
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from typing import Any, Callable, Sequence

from ekn_core.errors import ConfigError
from ekn_plugins.utils.lockfile import FileLock
from ekn_plugins.utils.resources import Requirements, Snapshot, probe

log = logging.getLogger("ekn.daemon")

DEFAULT_COMMAND = "ekn train {config}"
PLACEHOLDERS = {"config": "/queue/running/x.toml", "name": "x", "gpu": "0", "host": "host"}
SUBDIRS = ("running", "done", "failed", "status", "logs")


def write_json_atomic(path: str, record: dict[str, Any]) -> None:
    """Writes ``record`` as JSON to ``path`` atomically (temporary file, fsync, rename)."""
    from ekn_core.atomic import write_json

    write_json(path, record)


def _free_name(folder: str, name: str) -> str:
    """``folder/name``, or ``folder/name.N`` for the first N that does not exist yet."""
    path, n = os.path.join(folder, name), 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(folder, f"{name}.{n}")
    return path


class ExperimentDaemon:
    """Starts queued experiments from ``queue_dir`` when resources allow (see the module docs).

    Args:
        queue_dir: The shared queue directory; it must exist unless ``create`` (its
            sub-directories are created).
        command: Command line run per experiment, a string (split like a shell) or a list; the
            placeholders ``{config}``, ``{name}``, ``{gpu}`` and ``{host}`` are filled in.
        requirements: Resources that must be free to start one more experiment.
        probe: Function returning a :class:`~.resources.Snapshot` (default: this host's).
        poll: Seconds between decision rounds when nothing could be started.
        start_wait: Seconds the lock is kept after a start, so the new load becomes visible.
        stale_after: Age in seconds after which any lock counts as stale (> ``start_wait`` + 60).
        max_running: Most experiments this daemon runs at once (default: one per GPU, or 1).
        cwd: Working directory of the experiments (default: the daemon's).
        host: Host name recorded in locks and status files.
        create: Create ``queue_dir`` when it does not exist (else that is an error: a misspelt
            folder would be waited on for ever).
    """

    def __init__(self, queue_dir: str, command: str | Sequence[str] = DEFAULT_COMMAND,
                 requirements: Requirements | None = None, probe: Callable[[], Snapshot] = probe,
                 poll: float = 30.0, start_wait: float = 60.0, stale_after: float | None = None,
                 max_running: int | None = None, cwd: str | None = None, host: str | None = None,
                 create: bool = False):
        self.queue_dir = os.path.abspath(queue_dir)
        if not create and not os.path.isdir(self.queue_dir):
            raise ConfigError(f"the queue directory {queue_dir} does not exist: check the path, or give --create "
                              "(create=True) to start a new queue there")
        self.command = shlex.split(command) if isinstance(command, str) else list(command)
        if not self.command:
            raise ConfigError("the experiment command is empty; give e.g. --command 'ekn train {config}'")
        try:
            [part.format(**PLACEHOLDERS) for part in self.command]
        except (KeyError, IndexError, ValueError) as err:
            raise ConfigError(f"bad placeholder in command {self.command}: {err!r}; use only "
                              f"{', '.join('{' + p + '}' for p in PLACEHOLDERS)} (double braces for literal ones)")
        if poll <= 0 or start_wait < 0:
            raise ConfigError(f"poll must be > 0 and start_wait >= 0 seconds (got {poll}, {start_wait})")
        stale_after = start_wait + 600.0 if stale_after is None else stale_after
        if stale_after <= start_wait + 60:
            raise ConfigError(f"stale_after ({stale_after} s) must exceed start_wait + 60 s ({start_wait + 60} s): "
                              "the lock is held for start_wait seconds after each start")
        if max_running is not None and max_running < 1:
            raise ConfigError(f"max_running must be >= 1, got {max_running}")
        self.requirements = requirements or Requirements()
        self.probe, self.poll, self.start_wait = probe, float(poll), float(start_wait)
        self.max_running, self.cwd = max_running, cwd
        self.host = host or socket.gethostname()
        for sub in SUBDIRS:
            os.makedirs(os.path.join(self.queue_dir, sub), exist_ok=True)
        self.lock = FileLock(os.path.join(self.queue_dir, ".daemon.lock"), stale_after=stale_after, host=self.host)
        self.children: dict[str, tuple[subprocess.Popen, int | None, dict[str, Any]]] = {}
        self.started = 0
        self._stop = threading.Event()
        self._last_message = ""
        program = os.path.basename(self.command[0])
        #: Whether the command trains ekn configs (then helper .py files in the queue are not started).
        self.trains = program == "ekn-train" or (program == "ekn" and self.command[1:2] == ["train"])
        self._helpers: set[str] = set()  # the helper files found in the queue (each logged once)

    # --- queue ---
    def queued(self) -> list[str]:
        """Names of the configs waiting in the queue, in start order."""
        names = []
        with os.scandir(self.queue_dir) as entries:
            for entry in entries:
                if (entry.is_file() and not entry.name.startswith(".") and not entry.name.endswith("~")
                        and not self._is_helper(entry.path)):
                    names.append(entry.name)
        return sorted(names)

    def _is_helper(self, path: str) -> bool:
        """Whether ``path`` is a helper file of ``ekn train`` configs, not an experiment (logged once)."""
        if not (self.trains and path.endswith(".py")):
            return False
        from ekn_plugins.commands.train import is_experiment_config

        try:
            if is_experiment_config(path):
                return False
        except (OSError, ValueError):  # claimed by another daemon meanwhile, or not text: ekn train says so
            return False
        name = os.path.basename(path)
        if name not in self._helpers:
            self._helpers.add(name)
            self._say(f"{name} names neither create_model nor model_load_path: a helper file of configs, not "
                      "started. It stays in the queue; a started config runs from running/, so it must load it "
                      f"by its absolute path, {path}")
        return True

    def _say(self, message: str, level: int = logging.INFO) -> None:
        """Logs a decision; an unchanged repeat of the last decision is logged at DEBUG only."""
        log.log(level if message != self._last_message else logging.DEBUG, message)
        self._last_message = message

    def stop(self) -> None:
        """Asks :meth:`run` to return after the current round (also called on SIGTERM/SIGINT)."""
        self._stop.set()

    # --- experiments ---
    def reap(self) -> None:
        """Moves the configs of this daemon's finished experiments to ``done/`` or ``failed/``."""
        for name, (proc, gpu, record) in list(self.children.items()):
            code = proc.poll()
            if code is None:
                continue
            del self.children[name]
            target = _free_name(os.path.join(self.queue_dir, "done" if code == 0 else "failed"), name)
            os.rename(record["config"], target)
            record.update(state="done" if code == 0 else "failed", returncode=code, finished=time.time(),
                          config=target)
            write_json_atomic(record["status_file"], record)
            self._say(f"experiment {name} (pid {proc.pid}) finished with exit code {code}; config moved to "
                      f"{os.path.relpath(target, self.queue_dir)}", logging.INFO if code == 0 else logging.WARNING)

    def _limit(self, snap: Snapshot) -> int:
        return self.max_running or max(1, len(snap.gpus))

    def _claim_and_start(self, name: str, gpu: int | None) -> bool:
        running = os.path.join(self.queue_dir, "running")
        config = _free_name(running, name)
        try:
            os.rename(os.path.join(self.queue_dir, name), config)
        except FileNotFoundError:
            self._say(f"{name} was claimed by another daemon")
            return False
        values = {"config": config, "name": os.path.splitext(name)[0], "gpu": "" if gpu is None else str(gpu),
                  "host": self.host}
        argv = [part.format(**values) for part in self.command]
        env = dict(os.environ)
        if gpu is not None:  # nvidia-smi's number, which CUDA uses only in PCI bus order
            env["CUDA_VISIBLE_DEVICES"], env["CUDA_DEVICE_ORDER"] = str(gpu), "PCI_BUS_ID"
        logfile = _free_name(os.path.join(self.queue_dir, "logs"), os.path.splitext(name)[0] + ".log")
        record = {"name": name, "host": self.host, "daemon_pid": os.getpid(), "gpu": gpu, "command": argv,
                  "config": config, "log": logfile, "started": time.time(), "state": "running",
                  "status_file": _free_name(os.path.join(self.queue_dir, "status"), name + ".json")}
        try:
            with open(logfile, "wb") as out:
                proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=env, cwd=self.cwd, start_new_session=True)
        except OSError as err:
            target = _free_name(os.path.join(self.queue_dir, "failed"), name)
            os.rename(config, target)
            record.update(state="failed", error=str(err), config=target, finished=time.time())
            write_json_atomic(record["status_file"], record)
            self._say(f"could not start {name}: {err}; config moved to failed/", logging.ERROR)
            return False
        record["pid"] = proc.pid
        write_json_atomic(record["status_file"], record)
        self.children[name] = (proc, gpu, record)
        self.started += 1
        where = f"GPU {gpu}" if gpu is not None else "CPU"
        self._say(f"started {name} on {self.host} {where} as pid {proc.pid}: {shlex.join(argv)}")
        return True

    def step(self) -> bool:
        """One decision round; returns True if an experiment was started."""
        self.reap()
        if not self.queued():
            self._say("queue empty", logging.DEBUG)
            return False
        if not self.lock.acquire(timeout=0):
            owner = self.lock.owner() or {}
            self._say(f"start lock held by {owner.get('host')} pid {owner.get('pid')}; waiting", logging.DEBUG)
            return False
        try:
            names = self.queued()  # again: another daemon may have emptied the queue meanwhile
            if not names:
                self._say("queue empty", logging.DEBUG)
                return False
            snap = self.probe()
            limit = self._limit(snap)
            if len(self.children) >= limit:
                self._say(f"waiting: {len(self.children)} of max {limit} experiments of this daemon run; "
                          f"{len(names)} queued")
                return False
            taken = frozenset(gpu for _, gpu, _ in self.children.values() if gpu is not None)
            free, reason, gpu = self.requirements.check(snap, taken)
            if not free:
                self._say(f"waiting: {reason}; {len(names)} queued")
                return False
            self._say(f"{reason}: starting {names[0]}")
            started = self._claim_and_start(names[0], gpu)
            if started and self.start_wait:
                self._stop.wait(self.start_wait)
            return started
        finally:
            self.lock.release()

    def run(self, max_starts: int | None = None, exit_when_empty: bool = False) -> int:
        """Runs decision rounds until stopped; returns the number of experiments started.

        Args:
            max_starts: Return after this many starts (and after those experiments ended).
            exit_when_empty: Return when the queue is empty and this daemon's experiments ended.
        """
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                handlers[sig] = signal.signal(sig, lambda *_: self.stop())
        self._say(f"daemon pid {os.getpid()} on {self.host} watches {self.queue_dir}")
        try:
            while not self._stop.is_set():
                if max_starts is not None and self.started >= max_starts:
                    self.reap()
                    if not self.children:
                        break
                elif self.step():
                    continue
                elif exit_when_empty and not self.queued() and not self.children:
                    break
                self._stop.wait(self.poll)
        finally:
            self.lock.release()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        if self.children:
            self._say(f"daemon stops; {len(self.children)} experiment(s) keep running: {', '.join(self.children)}")
        else:
            self._say(f"daemon stops after starting {self.started} experiment(s)")
        return self.started
