"""The run directory of one experiment and the names of everything in it.

::

    <save_path>/<save_name>/
        config.py            copy of the experiment config (as given, before --set overrides)
        run.json             resolved settings, overrides, seed, versions, status, paths
        train.log            the log (appended to on resume)
        Batch_test_image.png the batch picture (start of every run, shell ``debugbatch``)
        history.h5           timeline and history tables (HDF5)
        history.csv          monitoring history, one row per history_freq steps
        timeline.csv         one row per training step
        models/              latest.mdl, best.mdl (lowest validation loss), final.mdl, step-<N>.mdl
        checkpoints/         ckpt-<step>.h5 (exact-resume state; the newest few are kept)
        plots/               loss.png, errors.png, lr.png, timeline.png
        previews/            <block>-raw-z<z>.png, <block>-pred-c<c>-z<z>-step<N>.png
        tensorboard/         TensorBoard event files (scalars, preview images)

Example:
    >>> import tempfile
    >>> rd = RunDir(tempfile.mkdtemp() + "/exp1")
    >>> rd.create(); rd.model_path("latest").endswith("models/latest.mdl")
    True
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from ekn_core.errors import ConfigError
from ekn_core.atomic import write_text

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

    def create(self, overwrite: bool = False) -> None:
        """Creates the directory tree.

        Args:
            overwrite: Delete an existing run directory first (else it is an error if it holds a run).

        Raises:
            ConfigError: The directory already holds a run and ``overwrite`` is False.
        """
        if os.path.exists(self.run_json) or os.path.isdir(self.checkpoints):
            if not overwrite:
                raise ConfigError(f"run directory {self.path} already exists. Continue it with "
                                  f"`ekn train --resume {self.path}`, choose another save_name, or set "
                                  "overwrite=True to delete it.")
            shutil.rmtree(self.path)
        os.makedirs(self.path, exist_ok=True)
        for sub in SUBDIRS:
            os.makedirs(os.path.join(self.path, sub), exist_ok=True)

    def exists(self) -> bool:
        """Whether this directory holds a run (has ``run.json``)."""
        return os.path.isfile(self.run_json)

    def join(self, *parts: str) -> str:
        """A path inside the run directory."""
        return os.path.join(self.path, *parts)

    config_copy = property(lambda self: self.join("config.py"), doc="Copy of the config file.")
    run_json = property(lambda self: self.join("run.json"), doc="Run description (JSON).")
    log = property(lambda self: self.join("train.log"), doc="Log file.")
    history_h5 = property(lambda self: self.join("history.h5"), doc="History tables (HDF5).")
    history_csv = property(lambda self: self.join("history.csv"), doc="Monitoring history (CSV).")
    timeline_csv = property(lambda self: self.join("timeline.csv"), doc="Per-step timeline (CSV).")
    models = property(lambda self: self.join("models"), doc="Model files folder.")
    checkpoints = property(lambda self: self.join("checkpoints"), doc="Checkpoint folder.")
    plots = property(lambda self: self.join("plots"), doc="Plot folder.")
    previews = property(lambda self: self.join("previews"), doc="Preview image folder.")
    tensorboard = property(lambda self: self.join("tensorboard"), doc="TensorBoard log folder.")

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


def find_latest_run(save_path: str, stem: str | None = None) -> RunDir:
    """The most recently modified run directory under ``save_path`` (optionally named ``stem__*``).

    Raises:
        ConfigError: There is none.
    """
    save_path = os.path.abspath(os.path.expanduser(save_path))
    candidates = []
    if os.path.isdir(save_path):
        for entry in os.scandir(save_path):
            rd = RunDir(entry.path)
            if entry.is_dir() and rd.exists() and (stem is None or entry.name == stem
                                                    or entry.name.startswith(stem + "__")):
                candidates.append((os.path.getmtime(rd.run_json), rd.path))
    if not candidates:
        which = f" for config {stem!r}" if stem else ""
        raise ConfigError(f"--resume latest: no run directory{which} under {save_path}")
    return RunDir(max(candidates)[1])
