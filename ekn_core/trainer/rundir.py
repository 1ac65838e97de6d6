"""The run directory of one experiment and the names of everything in it.

::

    <save_path>/<save_name>/
        config.py            copy of the experiment config (as given, before --set overrides)
        run.json             resolved settings, overrides, seed, precision, versions, status, paths
        run.lock             locked (fcntl.flock) by the process training in it; holds its pid
        .shell/shell.sock    while training: the socket of ``ekn shell RUN_DIR`` (folder mode 0700)
        train.log            the log (appended to on resume)
        Batch_test_image.png the batch picture (start of every run, shell ``debugbatch``)
        history.h5           timeline and history tables (HDF5)
        history.csv          monitoring history, one row per history_freq steps
        timeline.csv         one row per training step
        models/              latest.mdl, best.mdl (lowest validation loss), final.mdl, step-<N>.mdl
        checkpoints/         ckpt-<step>.h5 (exact-resume state; the newest few are kept)
        plots/               loss.png, errors.png, lr.png, timeline.png
        previews/            <block>-raw-z<z>.png, <block>-pred-c<c>-z<z>-step<N>.png (and the hook
                             plugins' snapshots.h5, snapshots.h5.d/, snapshots.zarr, <name>-step<N>.k.zip)
        tensorboard/         TensorBoard event files (scalars, preview images)

Example:
    >>> import tempfile
    >>> rd = RunDir(tempfile.mkdtemp() + "/exp1")
    >>> rd.create()  # False: no run was there before
    False
    >>> rd.model_path("latest").endswith("models/latest.mdl")
    True
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from ekn_core.errors import ConfigError, EknError
from ekn_core.atomic import remove_stale_temporaries, try_lock, write_text

MODEL_EXT = ".mdl"
SUBDIRS = ("models", "checkpoints", "plots", "previews", "tensorboard")


class RunDir:
    """Paths inside one run directory.

    Args:
        path: The run directory (``save_path/save_name``).
    """

    def __init__(self, path: str):
        self.path = os.path.abspath(os.path.expanduser(path))

    @property
    def name(self) -> str:
        """The run's name (``save_name``)."""
        return os.path.basename(self.path)

    def create(self, overwrite: bool = False) -> bool:
        """Creates the directory tree.

        A directory whose run failed before it saved anything (:meth:`failed_early`) is started
        afresh: everything but its log (appended to) and ``run.lock`` is deleted.

        Args:
            overwrite: Delete an existing run directory first (else it is an error if it holds a run);
                its ``run.lock`` is kept, so that the lock a caller holds stays the directory's lock.

        Returns:
            Whether the directory held a run that failed early and starts afresh.

        Raises:
            ConfigError: The directory already holds a run and ``overwrite`` is False.
        """
        failed_early = False
        if self.check_new(overwrite):
            failed_early = not overwrite and self.failed_early()
            for entry in os.scandir(self.path):
                if entry.path == self.lock or (failed_early and entry.path == self.log):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
        os.makedirs(self.path, exist_ok=True)
        for sub in SUBDIRS:
            os.makedirs(os.path.join(self.path, sub), exist_ok=True)
        return failed_early

    def check_new(self, overwrite: bool = False) -> bool:
        """Checks that a new run may start here (:meth:`create` may make it); changes nothing.

        Returns:
            Whether the directory holds a run (to be deleted with ``overwrite``, or one that failed early).

        Raises:
            ConfigError: The directory already holds a run and ``overwrite`` is False.
        """
        if not (os.path.exists(self.run_json) or os.path.isdir(self.checkpoints)):
            return False
        if not overwrite and not self.failed_early():
            raise ConfigError(f"run directory {self.path} already exists. Continue it with "
                              f"`ekn train --resume {self.path}`, choose another save_name, or set "
                              "overwrite=True to delete it.")
        return True

    def failed_early(self) -> bool:
        """Whether the run here ended with status ``error`` before it saved a checkpoint or a model
        (e.g. a hook plugin failed at the start of training): there is nothing to resume."""
        try:
            status = self.read_run_json().get("status")
        except (OSError, ValueError):  # no run here, or an unreadable run.json: not known to have failed
            return False
        return status == "error" and not any(os.path.isdir(d) and os.listdir(d) for d in (self.checkpoints, self.models))

    def exists(self) -> bool:
        """Whether this directory holds a run (has ``run.json``)."""
        return os.path.isfile(self.run_json)

    def join(self, *parts: str) -> str:
        """A path inside the run directory."""
        return os.path.join(self.path, *parts)

    config_copy = property(lambda self: self.join("config.py"), doc="Copy of the config file.")
    run_json = property(lambda self: self.join("run.json"), doc="Run description (JSON).")
    lock = property(lambda self: self.join("run.lock"), doc="Lock of the process training in the run.")
    log = property(lambda self: self.join("train.log"), doc="Log file.")
    history_h5 = property(lambda self: self.join("history.h5"), doc="History tables (HDF5).")
    history_csv = property(lambda self: self.join("history.csv"), doc="Monitoring history (CSV).")
    timeline_csv = property(lambda self: self.join("timeline.csv"), doc="Per-step timeline (CSV).")
    models = property(lambda self: self.join("models"), doc="Model files folder.")
    checkpoints = property(lambda self: self.join("checkpoints"), doc="Checkpoint folder.")
    plots = property(lambda self: self.join("plots"), doc="Plot folder.")
    previews = property(lambda self: self.join("previews"), doc="Preview image folder.")
    tensorboard = property(lambda self: self.join("tensorboard"), doc="TensorBoard log folder.")

    def acquire_lock(self) -> int:
        """Locks the run directory for this process: ``fcntl.flock`` on ``run.lock`` (the directory
        is created if needed), which then holds this process's pid.

        Returns:
            The descriptor holding the lock; ``os.close`` it to release the lock. The operating
            system releases it when the process ends, also after ``kill -9``: there are no stale locks.

        Raises:
            EknError: Another process (or another open trainer of this process) trains in the directory.

        Example:
            >>> import tempfile
            >>> rd = RunDir(tempfile.mkdtemp() + "/exp1")
            >>> fd = rd.acquire_lock()
            >>> rd.acquire_lock()  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ekn_core.errors.EknError: another trainer of this process (pid ...) trains in .../exp1; close it first
            >>> os.close(fd); os.close(rd.acquire_lock())
        """
        fd = try_lock(self.lock)
        if fd is not None and not _names(self.lock, fd):
            # its holder deleted the directory of a run that did not start after this process opened the file
            os.close(fd)
            return self.acquire_lock()
        if fd is None:
            try:
                with open(self.lock, encoding="utf-8") as f:
                    pid: int | None = int(f.read().strip())
            except (OSError, ValueError):  # the owner has not written its pid yet
                pid = None
            if pid == os.getpid():
                raise EknError(f"another trainer of this process (pid {pid}) trains in {self.path}; close it first")
            raise EknError(f"another process{f' (pid {pid})' if pid else ''} trains in {self.path}; stop it first")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def lock_new(self) -> tuple[int, list[str]]:
        """Locks the directory of a new run (:meth:`acquire_lock`), made here, with its missing
        parent folders, if it does not exist.

        Returns:
            The descriptor holding the lock, and the folders this call made, the run directory last
            (:meth:`remove_made` deletes them again if the run does not start).

        Raises:
            EknError: Another trainer uses the directory.

        Example:
            >>> import tempfile
            >>> rd = RunDir(tempfile.mkdtemp() + "/runs/exp1")
            >>> fd, made = rd.lock_new(); [os.path.basename(m) for m in made], os.listdir(rd.path)
            (['runs', 'exp1'], ['run.lock'])
            >>> rd.remove_made(made); os.close(fd); os.path.exists(os.path.dirname(rd.path))
            False
        """
        missing, folder = [], self.path
        while not os.path.isdir(folder):
            missing.append(folder)
            folder = os.path.dirname(folder)
        made = []
        for folder in reversed(missing):
            try:
                os.mkdir(folder)
                made.append(folder)
            except FileExistsError:  # made by another process meanwhile
                pass
        return self.acquire_lock(), made

    def remove_made(self, made: list[str]) -> None:
        """Deletes the folders :meth:`lock_new` made: the run directory with all in it (call this
        before releasing its lock), then the parent folders that are still empty."""
        for folder in reversed(made):
            if folder == self.path:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                try:
                    os.rmdir(folder)  # only an empty one: another run may have started in it
                except OSError:
                    return

    def remove_stale_temporaries(self) -> list[str]:
        """Deletes the temporary files of atomic writes that a ``kill -9`` interrupted, in the folders
        the training process writes: the run directory, its :data:`SUBDIRS` and the folders inside
        ``previews/`` (e.g. ``snapshots.h5.d/`` of HDF5 preview snapshots). Not ``evaluation/``,
        where ``ekn evaluate`` may be writing. Call it only under the run's lock (:meth:`acquire_lock`).

        Returns:
            The deleted paths.

        Example:
            >>> import tempfile
            >>> rd = RunDir(tempfile.mkdtemp() + "/exp1"); _ = rd.create()
            >>> stale = rd.join("previews", "snapshots.h5.d", ".step4.h5.0123456789ab.tmp")
            >>> os.makedirs(os.path.dirname(stale)); open(stale, "w").close()
            >>> rd.remove_stale_temporaries() == [stale], os.listdir(os.path.dirname(stale))
            (True, [])
        """
        folders = [self.path, *(self.join(sub) for sub in SUBDIRS)]
        if os.path.isdir(self.previews):
            folders += sorted(entry.path for entry in os.scandir(self.previews) if entry.is_dir())
        return [path for folder in folders for path in remove_stale_temporaries(folder)]

    def model_path(self, which: str) -> str:
        """``models/<which>.mdl``: which is ``latest``, ``best``, ``final`` or ``step-<N>``."""
        return os.path.join(self.models, which + MODEL_EXT)

    def write_run_json(self, info: dict[str, Any]) -> None:
        """Writes ``run.json`` atomically."""
        write_text(self.run_json, json.dumps(info, indent=2, sort_keys=True, default=repr) + "\n")

    def read_run_json(self) -> dict[str, Any]:
        """Reads ``run.json``.

        Raises:
            ConfigError: There is no run in this directory.
        """
        if not self.exists():
            raise ConfigError(f"{self.path} is not an ekn run directory (no run.json); give the directory "
                              "that `ekn train` created")
        with open(self.run_json, encoding="utf-8") as f:
            return json.load(f)

    def update_run_json(self, **changes: Any) -> None:
        """Changes some keys of ``run.json``."""
        info = self.read_run_json()
        info.update(changes)
        self.write_run_json(info)


def _names(path: str, fd: int) -> bool:
    """Whether ``path`` names the file open as ``fd`` (not deleted or replaced since it was opened)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _started_by(run: RunDir) -> str | None:
    """The config file a run was started with (None if its ``run.json`` cannot be read)."""
    try:
        return run.read_run_json().get("config_path")
    except (OSError, ValueError):
        return None


def find_latest_run(save_path: str, stem: str | None = None, config_path: str | None = None) -> RunDir:
    """The most recently modified run directory under ``save_path`` (optionally named ``stem__*``)
    that has something to resume: runs that failed before their first checkpoint
    (:meth:`RunDir.failed_early`, e.g. a misspelt setting) are skipped.

    Args:
        save_path: The folder of the run directories.
        stem: The config's name: only runs with the default ``save_name`` ``<stem>__<date>`` count.
        config_path: The config file; when no run is found, the error lists the runs it started
            under other names (``--set save_name=...``).

    Raises:
        ConfigError: There is none.
    """
    save_path = os.path.abspath(os.path.expanduser(save_path))
    candidates, of_config, failed = [], [], []
    runs = [RunDir(e.path) for e in os.scandir(save_path) if e.is_dir()] if os.path.isdir(save_path) else []
    for rd in filter(RunDir.exists, runs):
        if stem is None or rd.name == stem or rd.name.startswith(stem + "__"):
            if rd.failed_early():
                failed.append(rd.name)
            else:
                candidates.append((os.path.getmtime(rd.run_json), rd.path))
        elif config_path and _started_by(rd) == os.path.abspath(config_path):
            of_config.append(rd.path)
    if not candidates:
        message = f"--resume latest: no run directory{f' for config {stem!r}' if stem else ''} under {save_path}"
        if failed:
            message += (f" that has something to resume ({len(failed)} that failed before their first checkpoint: "
                        f"{', '.join(sorted(failed))}; start the config anew)")
        if stem:
            message += (f" (--resume latest finds the runs named {stem}__<date>, the default save_name; resume a run "
                        "started with another save_name by its run directory: `ekn train --resume RUN_DIR`")
            message += f"; this config's runs: {', '.join(sorted(of_config))})" if of_config else ")"
        raise ConfigError(message)
    return RunDir(max(candidates)[1])
