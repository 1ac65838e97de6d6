"""The start of a training run: the run directory's first files (the config's copy, ``run.json``
with what ran where), the run's log file, TensorFlow (device, ``tf.distribute`` strategy, seeds,
determinism, compile mode), the device batches are prefetched to, and the order in which the model,
data, schedules, previews and, on resume, the newest checkpoint are set up.

:class:`RunSetup` is mixed into :class:`~ekn_core.trainer.loop.Trainer`; it builds through
:class:`~ekn_core.trainer.model_setup.ModelSetup`,
:class:`~ekn_core.trainer.batch_feeding.BatchFeeding` and
:class:`~ekn_core.trainer.training_state.TrainingState`.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import platform
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from ekn_core.errors import ConfigError
from ekn_core.hooks import host

log = logging.getLogger("ekn.trainer")


class RunSetup:
    """Run directory files, log, TensorFlow and the set-up order (mixed into the trainer)."""

    def _setup(self, device: Any) -> None:
        """Device, seeds, model, optimiser, data, schedules, previews, and the checkpoint on resume."""
        config = self.config
        self._setup_tensorflow(device)
        with self.strategy_scope():
            self._build_model()
        self._build_data()
        from ekn_core.schedules import bind_schedules

        self.schedules = bind_schedules(config.schedules, self.model, self.config)
        from ekn_core.trainer.preview import make_previewer

        self.previewer = make_previewer(self.model, config, self.run_dir.previews)
        if self.resume:
            self._resume()
        hooks = host()
        hooks.configure(self.config.jsonable())
        for line in hooks.report_header(self.config.jsonable()):
            log.info("%s", line)

    def _write_initial_files(self) -> None:
        """The config's copy and ``run.json`` of a new run."""
        import shutil

        shutil.copyfile(self.config.path, self.run_dir.config_copy)
        self.run_dir.write_run_json(self._run_info(status="created"))

    def _run_info(self, status: str) -> dict[str, Any]:
        """What ``run.json`` records of a new run: settings, versions, host, user, command."""
        import importlib.metadata as metadata

        from ekn_core._version import __version__

        try:
            tf_version = metadata.version("tensorflow")
        except metadata.PackageNotFoundError:
            tf_version = None
        return {
            "name": self.run_dir.name, "config_path": self.config.path, "overrides": self.config.overrides,
            "settings": self.config.jsonable(), "status": status, "step": self.step, "ekn_version": __version__,
            "tensorflow_version": tf_version, "python": platform.python_version(), "host": platform.node(),
            "user": getpass.getuser(), "created": time.strftime("%Y-%m-%d %H:%M:%S"), "command": sys.argv,
            "cwd": os.getcwd(),  # relative volume paths in the settings refer to it (ekn evaluate RUN_DIR)
        }

    def _start_log(self) -> None:
        """Attaches the run's log file (detached by :meth:`~ekn_core.trainer.loop.Trainer.close`)."""
        from ekn_core.log import add_file_log

        self._log_handler = add_file_log(self.run_dir.log)
        log.info("%s run %s (pid %d, user %s, host %s)", "resuming" if self.resume else "starting",
                 self.run_dir.path, os.getpid(), getpass.getuser(), platform.node())

    def _setup_tensorflow(self, device: Any) -> None:
        """Device, distribution strategy, prefetch device, determinism, compile mode and every seed."""
        import random

        import tensorflow as tf

        from ekn_core.node import set_compile_mode, set_seed
        from ekn_core.trainer.devices import select_device

        log.info("device: %s", select_device(device if device is not None else self.config.device))
        from ekn_core.trainer.distributed import make_strategy

        self.strategy = make_strategy(self.config.distribute)  # before any op: MultiWorker needs that
        self.prefetch_device = self._choose_prefetch_device()
        seed = int(self.config.seed)
        if self.config.deterministic:
            tf.config.experimental.enable_op_determinism()
        if self.config.compile_mode:
            set_compile_mode(self.config.compile_mode)
        tf.random.set_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        set_seed(seed)
        # Random ops in layers should draw from the global generator: its state is checkpointed.
        self.tf_generator = tf.random.Generator.from_seed(seed)
        tf.random.set_global_generator(self.tf_generator)

    def _choose_prefetch_device(self) -> str | None:
        """The device batches are prefetched to, from ``prefetch_to_device`` (None: on for a GPU)."""
        from ekn_core.trainer.config import PREFETCH_DISTRIBUTED
        from ekn_core.trainer.devices import training_device

        setting = self.config.prefetch_to_device
        if self.strategy is not None:
            if setting:
                raise ConfigError(PREFETCH_DISTRIBUTED)
            return None
        device = training_device()
        if not (setting if setting is not None else "GPU" in device):
            return None
        log.info("prefetching training batches to %s", device)
        return device

    @contextlib.contextmanager
    def strategy_scope(self) -> Iterator[None]:
        """Scope in which model and optimiser variables are created (a tf.distribute strategy's scope)."""
        if self.strategy is None:
            yield
        else:
            with self.strategy.scope():
                yield
