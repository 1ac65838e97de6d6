"""The start of a training run: the run directory's first files (the config's copy, ``run.json``
with what ran where), the run's log file, TensorFlow (device, ``tf.distribute`` strategy, precision,
seeds, determinism, compile mode), the device batches are prefetched to, and the order in which the
model, data, schedules, previews and, on resume, the newest checkpoint are set up.

A new run locks its run directory (made empty if needed) first, so that a second trainer of the
same directory fails at once; then it is set up, and only then does the directory get its files (the
log lines of the set-up are kept and written into ``train.log`` then, before the start line). A
set-up error (missing data files, a patch larger than the data, a ``data_init_kwargs`` typo)
deletes the directory again if the trainer made it, so it leaves no run directory behind.

:class:`RunSetup` is mixed into :class:`~ekn_core.trainer.loop.Trainer`; it builds through
:class:`~ekn_core.trainer.model_setup.ModelSetup`,
:class:`~ekn_core.trainer.batch_feeding.BatchFeeding` and
:class:`~ekn_core.trainer.training_state.TrainingState`.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import logging
import logging.handlers
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


def run_precision(setting: str) -> tuple[str, str]:
    """The precision policy a run trains in and where it comes from: ``EKN_PRECISION`` when it is
    set (it overrides the config), else the config's ``precision`` setting.

    Example:
        >>> policy, source = run_precision("mixed_bfloat16")
        >>> policy == (os.environ.get("EKN_PRECISION") or "mixed_bfloat16")
        True
    """
    from ekn_core.node import env_precision

    env = env_precision()
    if env is not None:
        return env, f"EKN_PRECISION={env}, which overrides the config's precision setting {setting!r}"
    return setting, "the config's precision setting"


def checkpoint_precision(state: dict[str, Any]) -> tuple[str | None, str]:
    """The precision a checkpoint's run trained in, and how that is known: the checkpoint records
    it, or, in one written before ekn recorded the precision, a loss scale that moved from its
    start shows ``mixed_float16`` (only float16 training scales the loss). None: not known.

    Example:
        >>> checkpoint_precision({"precision": "mixed_bfloat16", "loss_scale": {"adam": [32768.0, 0]}})
        ('mixed_bfloat16', 'records it')
        >>> checkpoint_precision({"loss_scale": {"adam": [32768.0, 12]}})
        ('mixed_float16', 'records no precision, but its float16 loss scale moved')
        >>> checkpoint_precision({"loss_scale": {"adam": [32768.0, 0]}})[0] is None
        True
    """
    from ekn_core.model import LOSS_SCALE_INITIAL

    if state.get("precision") is not None:
        return state["precision"], "records it"
    if any(tuple(scale) != (LOSS_SCALE_INITIAL, 0) for scale in state.get("loss_scale", {}).values()):
        return "mixed_float16", "records no precision, but its float16 loss scale moved"
    return None, ""


def check_resume_precision(run_dir: Any, config: Any, source: str) -> None:
    """Refuses to resume a run in a precision other than the one its newest checkpoint records
    (:func:`checkpoint_precision`), unless a ``--set precision=...`` names the new one (a change on
    purpose: a warning): one of this resume, or the last one recorded in ``run.json`` when the run
    went on in it after that checkpoint (an earlier resume that changed it was stopped before its
    first checkpoint).

    Args:
        run_dir: The run's :class:`~ekn_core.trainer.rundir.RunDir`.
        config: The resumed run's config (its ``overrides``: those of ``run.json``, then the new ones).
        source: Where ``config.precision`` comes from (:func:`run_precision`).

    Raises:
        ConfigError: The precisions differ: says how to resume in the run's precision, or change it.
    """
    from ekn_core.trainer.checkpoint import latest_checkpoint, read_checkpoint_state
    from ekn_core.trainer.config import parse_override

    path = latest_checkpoint(run_dir.checkpoints)
    state = read_checkpoint_state(path) if path else {}
    recorded, known = checkpoint_precision(state)
    if recorded is None or recorded == config.precision:
        return
    info = run_dir.read_run_json()
    new = resume_overrides(info, config)
    named = [text for text in config.overrides if parse_override(text)[0] == "precision"]
    now = bool(named) and named[-1] in new
    went_on = now or info.get("precision") == config.precision  # run.json: the precision of the last resume
    if named and parse_override(named[-1])[1] == config.precision and went_on:
        log.warning("the run trained in precision %s until step %d (%s); it continues in %s, as --set precision=%s "
                    "%s", recorded, state.get("step", 0), os.path.basename(path), config.precision, config.precision,
                    "asks" if now else "of an earlier resume asked (run.json records it)")
        return
    by_env = source.startswith("EKN_PRECISION")
    keep = ("unset EKN_PRECISION (or set it to that)" if by_env else
            f"`ekn train --resume {run_dir.path} --set precision={recorded}`")
    change = f"--set precision={config.precision}" + (" with EKN_PRECISION unset" if by_env else "")
    raise ConfigError(f"cannot resume {run_dir.path} in precision {config.precision!r} ({source}): the run trained "
                      f"in {recorded!r} (its checkpoint {os.path.basename(path)} {known}). To resume in "
                      f"{recorded!r}: {keep}. To change the precision on purpose, resume with {change}.")


def resume_overrides(info: dict[str, Any], config: Any) -> list[str]:
    """The ``--set`` overrides of this resume: those of the config after the ones ``run.json``
    (``info``) records (all of them when they do not begin with those).

    Example:
        >>> class Config:
        ...     overrides = ["n_steps=4", "precision=float32"]
        >>> resume_overrides({"overrides": ["n_steps=4"]}, Config())
        ['precision=float32']
    """
    previous = info.get("overrides", [])
    return config.overrides[len(previous):] if config.overrides[:len(previous)] == previous else config.overrides


def accepts_new_data(info: dict[str, Any], config: Any) -> bool:
    """Whether this resume's own ``--set`` (not one of ``run.json``'s, ``info``) gives ``accept_new_data=True``."""
    from ekn_core.trainer.config import parse_override

    named = any(parse_override(text)[0] == "accept_new_data" for text in resume_overrides(info, config))
    return named and bool(config.accept_new_data)


def check_resume_data_files(run_dir: Any, config: Any, current: dict[str, Any]) -> None:
    """Compares the data files of a resumed run (``current``: its data source's record) with those
    ``run.json`` records (:func:`~ekn_core.trainer.data_files.check_resume_data`); other paths are
    accepted only when this resume's own ``--set`` gives ``accept_new_data=True``.

    Raises:
        DataFilesRefused: Other paths, not accepted: names them and how to resume on the run's files.
    """
    from ekn_core.trainer.data_files import check_resume_data

    info = run_dir.read_run_json()
    check_resume_data(info.get("data_files"), current, run_dir.path, accepts_new_data(info, config), info.get("cwd"))


def refuse_unbuilt_resume_data(run_dir: Any, config: Any, error: BaseException) -> None:
    """A resumed run whose data source could not be built (``error``): refused with what
    ``run.json``'s record tells (:func:`~ekn_core.trainer.data_files.unbuilt_data_message`: other data
    folder variables or working directory than at the run's start, the run's files gone), unless
    this resume accepts new data; returns when the record tells nothing (``error`` stands).

    Raises:
        DataFilesRefused: Naming the cause and how to resume on the run's files.
    """
    from ekn_core.trainer.data_files import DataFilesRefused, unbuilt_data_message

    info = run_dir.read_run_json()
    message = None if accepts_new_data(info, config) else unbuilt_data_message(
        info.get("data_files"), error, run_dir.path, info.get("cwd"))
    if message:
        raise DataFilesRefused(message) from error


@contextlib.contextmanager
def log_kept() -> Iterator[logging.handlers.MemoryHandler]:
    """Keeps the ``ekn`` log records of the block (they still reach the console) so that they can be
    written into a log file made later: ``kept.setTarget(handler); kept.flush()`` inside the block."""
    kept = logging.handlers.MemoryHandler(capacity=1 << 20, flushLevel=logging.CRITICAL + 1)
    logger = logging.getLogger("ekn")
    logger.addHandler(kept)
    try:
        yield kept
    finally:
        logger.removeHandler(kept)
        kept.close()


class RunSetup:
    """Run directory files, log, TensorFlow and the set-up order (mixed into the trainer)."""

    def _setup(self, device: Any) -> None:
        """Device, seeds, model, optimiser, data (on resume: checked against ``run.json``'s record,
        :func:`check_resume_data_files`), schedules, previews, and the checkpoint on resume."""
        config = self.config
        self._setup_tensorflow(device)
        with self.strategy_scope():
            self._build_model()
        self._build_data(unbuilt=functools.partial(refuse_unbuilt_resume_data, self.run_dir, config)
                         if self.resume else None)
        from ekn_core.trainer.data_files import data_files_record

        #: The files the data source reads, as ``run.json`` records them (``data_files``).
        self.data_files_record = data_files_record(self.data)
        if self.resume:
            check_resume_data_files(self.run_dir, config, self.data_files_record)
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
            "precision": self.config.precision,  # in effect, also from EKN_PRECISION; updated on resume
            "data_files": self.data_files_record,  # checked and updated on resume
        }

    def _start_log(self, kept: logging.handlers.MemoryHandler | None = None) -> None:
        """Attaches the run's log file (detached by :meth:`~ekn_core.trainer.loop.Trainer.close`),
        writes into it the records ``kept`` of the set-up before the run directory existed (and
        keeps no more), then the run's start line."""
        from ekn_core.log import add_file_log

        self._log_handler = add_file_log(self.run_dir.log)
        if kept is not None:
            logging.getLogger("ekn").removeHandler(kept)
            kept.setTarget(self._log_handler)
            kept.flush()
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
        from ekn_core.node import set_precision

        self._precision_before, self._precision_set = set_precision(self.config.precision), True  # see close()
        log.info("precision: %s (%s)", self.config.precision, self._precision_source)
        if self._precision_before not in (None, self.config.precision):
            log.warning("set_precision(%r), called in the config or before the trainer, does not apply to the run: "
                        "it trains in %s (%s). To train in %s, set precision = %r in the config (or --set "
                        "precision=%s)", self._precision_before, self.config.precision, self._precision_source,
                        self._precision_before, self._precision_before, self._precision_before)
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
