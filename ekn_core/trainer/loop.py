"""The training loop (:class:`Trainer`): ELEKTRONN2's ``Trainer.run`` with exact resume.

Per step the trainer updates the due schedules, draws a batch (seeded by ``(seed, step)``, so the
data of step *n* does not depend on what ran before), runs the model's compiled training step,
and fires the ``ekn_on_train_step_end`` hook in Python (two steps, two calls). Every
``history_freq`` steps it evaluates train/valid monitor batches, adds the metrics of the
``ekn_validation_metrics`` hooks (e.g. validation on whole volumes), records a history row, saves
``models/latest.mdl`` (and ``models/best.mdl`` when the monitored metric improved), logs the
status line and fires ``ekn_on_validation_end`` (the built-in plot plugin draws the PNGs then).
Every ``checkpoint_freq`` steps it writes an exact-resume checkpoint; previews are written at
the configured times.

A non-finite loss is logged, fires ``ekn_on_nan_detected`` and rolls the whole state back to the
last checkpoint; then ``nan_response`` applies (``lower_lr``: multiply lr by ``nan_lr_factor``, and
every lr the schedules set from then on by the checkpointed :attr:`Trainer.lr_factor`, and
continue; ``stop``).

Ctrl-C only sets :attr:`Trainer.pause_requested`; at the next step boundary
:meth:`Trainer.open_shell` runs ``ekn_core.trainer.shell.run_shell(trainer)`` (or a minimal
stdin prompt when that module is absent), which returns ``"continue"`` or ``"kill"``; a second
Ctrl-C before the shell opens raises KeyboardInterrupt. SIGTERM saves and stops (status
``"killed"``), also while the shell is open. Both end a wait for a background data worker at once
(the step is not done, its batch stays the next one).

Example (what ``ekn train examples/mnist.py --set n_steps=2`` does; in a script, under the
``__main__`` guard, since background data workers are spawned processes that import the script)::

    if __name__ == "__main__":
        cfg = ExperimentConfig.from_file("examples/mnist.py", overrides=["n_steps=2"])
        trainer = Trainer(cfg)
        status = trainer.run()        # "finished"; files in trainer.run_dir.path
"""

from __future__ import annotations

import collections
import contextlib
import getpass
import inspect
import logging
import math
import os
import platform
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ekn_core.errors import (ConfigError, EknError, NoValidationData, ShapeError, WaitInterrupted, keyword_names,
                              unknown_keywords)
from ekn_core.hooks import host
from ekn_core.trainer.batch_picture import FILE_NAME
from ekn_core.trainer.checkpoint import (CheckpointData, capture_host_rng, latest_checkpoint, prune_checkpoints,
                                         read_checkpoint, restore_host_rng, write_checkpoint)
from ekn_core.trainer.config import MONITORABLE, ExperimentConfig
from ekn_core.trainer.history import History
from ekn_core.trainer.rundir import RunDir

log = logging.getLogger("ekn.trainer")

#: Seed entropy of each batch stream after ``(seed, step)``; training batches use ``[seed, step]``,
#: the scheme of the background workers (``ekn.data`` entry ``background_batches``).
_STREAMS: dict[str, tuple[int, ...]] = {"train": (), "monitor_train": (1,), "monitor_valid": (2,)}
_META = ("lr", "mom", "wd", "beta2")
#: The batch picture in the run directory (ELEKTRONN2's name), see :meth:`Trainer.debug_batch_picture`.
BATCH_PICTURE = FILE_NAME


def is_improvement(score: float, best: float, mode: str, min_delta: float = 0.0) -> bool:
    """Whether ``score`` beats ``best`` by more than ``min_delta`` (``mode``: ``'min'`` or ``'max'``
    is better); a non-finite score never does.

    Example:
        >>> is_improvement(0.5, 0.6, "min"), is_improvement(0.5, 0.6, "max"), is_improvement(0.55, 0.6, "min", 0.1)
        (True, False, False)
        >>> is_improvement(0.7, float("-inf"), "max"), is_improvement(float("nan"), 1.0, "min")
        (True, False)
    """
    if not math.isfinite(score):
        return False
    return score < best - min_delta if mode == "min" else score > best + min_delta


def _worst(mode: str) -> float:
    """The best value before any evaluation: every finite score improves on it."""
    return math.inf if mode == "min" else -math.inf


def normalised_name(name: str) -> str:
    """Registry-name comparison key: ``'BatchCreatorImage'`` and ``'batch_creator_image'`` agree.

    Example:
        >>> normalised_name("MNISTData") == normalised_name("mnist_data")
        True
    """
    return name.replace("_", "").replace("-", "").lower()


def resolve_data_class(spec: Any) -> Any:
    """The data-source factory named by a config's ``data_class``.

    Args:
        spec: A name in the ``ekn.data`` registry (case and underscores ignored, so ELEKTRONN2's
            ``'BatchCreatorImage'`` finds ``batch_creator_image``) or ``(path_to_py_file, name)``.

    Raises:
        ConfigError: The file or the name does not exist.
        UnknownPluginError: No such registry entry (with suggestions).
    """
    if isinstance(spec, (tuple, list)):
        import importlib.util

        path, name = os.path.expanduser(spec[0]), spec[1]
        if not os.path.isfile(path):
            raise ConfigError(f"data_class file {path} does not exist")
        module_name = "ekn_data_" + normalised_name(os.path.splitext(os.path.basename(path))[0])
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        if not hasattr(module, name):
            raise ConfigError(f"data_class file {path} defines no {name!r}")
        return getattr(module, name)
    from ekn_core.plugins import registry

    reg = registry("data")
    by_key = {normalised_name(n): n for n in reg.names()}
    key = normalised_name(spec)
    if key not in by_key:
        import difflib

        from ekn_core.errors import UnknownPluginError

        close = [by_key[k] for k in difflib.get_close_matches(key, list(by_key), n=3)]
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownPluginError("data", spec, [], hint + f" Data sources: {', '.join(reg.names())}.")
    return reg.get(by_key[key])


class NodeInfo:
    """The geometry of a model node (``name``, ``shape``, ``dtype``) without its variables; picklable,
    so data sources can be built from it in background worker processes."""

    def __init__(self, node: Any):
        self.name, self.shape, self.dtype = node.name, node.shape, getattr(node, "dtype", "float32")


def make_data_source(data_class: Any, input_node: Any, target_node: Any, kwargs: dict[str, Any]) -> Any:
    """Builds a config's data source: ``cls.from_nodes(input, target, **kwargs)`` or ``cls(input, target, **kwargs)``."""
    factory = resolve_data_class(data_class)
    make = getattr(factory, "from_nodes", factory)
    try:
        return make(input_node, target_node, **kwargs)
    except TypeError as err:  # a misspelt data_init_kwargs key: name it, with the closest real one
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(err))
        if unexpected is None or unexpected.group(1) not in kwargs:
            raise
        names = _data_source_keywords(factory) or None
        problems = unknown_keywords(factory, [unexpected.group(1)], "data_init_kwargs", names)
        raise ConfigError(problems[0] if problems else f"data_init_kwargs: {err}") from None


def _data_source_keywords(factory: Any) -> list[str]:
    """The keyword names a data-source factory accepts for ``data_init_kwargs``: those of its
    ``from_nodes`` and of the class it builds (the factory itself, or its return annotation)."""
    import typing

    built = factory
    if not inspect.isclass(factory):
        try:
            built = typing.get_type_hints(factory).get("return")
        except Exception:  # an annotation that does not resolve: no hint
            built = None
    names = [n for f in (getattr(factory, "from_nodes", None), built) if f is not None
             for n in keyword_names(f, named_only=True) or []]
    return [n for n in dict.fromkeys(names) if n not in ("input_node", "target_node")]


def _fresh_default_model() -> None:
    """Makes a fresh, empty default model current: ELEKTRONN2 configs fetch it with
    ``model_manager.getmodel()``."""
    from ekn_core.node import model_manager

    if "default" in model_manager.models:
        model_manager.remove("default")
    model_manager.setdefault()


def _patch_size_hint(create_model: Any, args: dict[str, Any]) -> str:
    """``'; patch … is not valid for this net; nearest valid: …'`` when ``create_model(**args)``
    failed a shape check because of its input patch, else ``''``. The net is built again shape-only
    and leniently (failed checks recorded, sizes clamped) so that its valid sizes can be measured."""
    from ekn_core.geometry import check_patch_size, current_patch_size
    from ekn_core.node import model_manager, shape_only

    _fresh_default_model()
    try:
        with shape_only(lenient=True):
            model = create_model(**args) or model_manager.current
        patch = current_patch_size(model)
    except Exception:  # the net cannot be built even leniently: no hint
        return ""
    finally:
        model_manager.remove("default")
    try:
        check_patch_size(model, patch)
    except ShapeError as err:
        return f"; {err}"
    return ""


def _keyword_names(method: Any) -> frozenset[str]:
    """Names of ``method``'s parameters (``'**'`` when it takes arbitrary keywords); empty when the
    signature cannot be read."""
    try:
        params = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return frozenset()
    names = set(params)
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        names.add("**")
    return frozenset(names)


class Trainer:
    """Trains a model from an :class:`ExperimentConfig` into a run directory.

    Args:
        config: The experiment config.
        run_dir: The run directory (default ``save_path/save_name``).
        resume: Continue the run in ``run_dir`` from its newest checkpoint.
        device: GPU choice (``--gpu``): None, an int, ``'auto'`` or ``'cpu'``; overrides ``config.device``.

    Attributes (read/write from the shell; changes take effect at the next step):
        config, model, data, optimiser, schedules, history, run_dir, step (steps done),
        elapsed (training seconds), pause_requested, stop_requested, status, batch_size, lr_factor,
        prefetch_device (where the next batch is copied during a step; None: prefetching is off),
        last_batch_picture (the arrays of the last batch picture, see :meth:`debug_batch_picture`).
    """

    def __init__(self, config: ExperimentConfig, run_dir: RunDir | str | None = None, resume: bool = False,
                 device: Any = None):
        self.config = config
        self.run_dir = RunDir(run_dir) if isinstance(run_dir, str) else run_dir or RunDir(
            os.path.join(config.save_path, config.default_save_name()))
        self.resume = resume
        self.pause_requested = False
        self.stop_requested = False
        self.status = "created"
        self.step = 0
        self.elapsed = 0.0
        #: The monitored metric and its better direction (settings monitor_metric, monitor_mode).
        self.monitored: tuple[str, str] = config.monitored()
        #: Best value of the monitored metric so far (``±inf`` before the first evaluation).
        self.best_valid = _worst(self.monitored[1])
        self.evaluations_without_improvement = 0
        self.next_preview_h = float(config.initial_prev_h)
        self.nan_retries = 0
        #: Multiplies every lr the schedules set: ``nan_lr_factor`` per NaN rollback (checkpointed).
        self.lr_factor = 1.0
        self.last_batch: tuple[np.ndarray, ...] | None = None
        #: The arrays of the last batch picture (:func:`ekn_core.trainer.batch_picture.batch_panels`).
        self.last_batch_picture: dict[str, Any] | None = None
        self.last_metrics: dict[str, float] = {}
        self.history = History()
        self.strategy: Any = None  # a tf.distribute strategy, set by distributed training
        self._warned_rng = False
        self._warned_valid = False
        self._monitor_fn: Any = None
        self._last_preview_step = -1
        self._step_times: collections.deque[float] = collections.deque(
            maxlen=int(config.time_per_step_smoothing_length))
        self._compile_mode_checked = False
        self._log_handler: logging.Handler | None = None
        #: Device the next batch is copied to during a step (None: prefetching is off); see ``prefetch_to_device``.
        self.prefetch_device: str | None = None
        self._prefetcher: Any = None  # a DevicePrefetcher, started on first use
        self._background: Any = None  # the background data workers, started on first use
        self._background_settings: tuple[Any, ...] | None = None  # what their batches depend on
        # key of the prefetched batch, and the error if drawing it failed
        self._next: tuple[tuple[Any, ...], BaseException | None] | None = None

        if resume and not self.run_dir.exists():
            raise ConfigError(f"cannot resume: {self.run_dir.path} is not a run directory")
        #: The descriptor holding the run directory's lock (``run.lock``) until :meth:`close`.
        self._run_lock: int | None = self.run_dir.acquire_lock()
        restarted = False  # the directory held a run that failed before it saved anything
        if not resume:
            try:
                restarted = self.run_dir.create(overwrite=bool(config.overwrite))
                self._write_initial_files()
            except BaseException:
                self.close()
                raise
        self._start_log()
        if restarted:
            log.warning("%s held a run that failed (status 'error') before its first checkpoint: it starts afresh "
                        "with the config %s", self.run_dir.path, config.path)
        try:
            if resume:  # under the run's lock
                for path in self.run_dir.remove_stale_temporaries():
                    log.info("deleted %s, left by an interrupted write", path)
            self._setup(device)
        except BaseException as err:
            log.error("could not set up the run: %s: %s", type(err).__name__, err)
            self.run_dir.update_run_json(status="error")
            self.close()
            raise

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
            path = latest_checkpoint(self.run_dir.checkpoints)
            if path is None:
                log.warning("no checkpoint in %s: starting the run from step 0", self.run_dir.checkpoints)
            else:
                self.restore(read_checkpoint(path))
                log.info("resumed %s from %s (step %d)", self.run_dir.name, path, self.step)
                if self.step >= int(config.n_steps):
                    log.warning("the run has done %d steps and n_steps is %d: nothing to train. n_steps counts "
                                "every step of the run; continue it with e.g. --set n_steps=%d", self.step,
                                int(config.n_steps), 2 * self.step)
        hooks = host()
        hooks.configure(self.config.jsonable())
        for line in hooks.report_header(self.config.jsonable()):
            log.info("%s", line)

    # ------------------------------------------------------------------------------------------ setup
    def _write_initial_files(self) -> None:
        import shutil

        shutil.copyfile(self.config.path, self.run_dir.config_copy)
        self.run_dir.write_run_json(self._run_info(status="created"))

    def _run_info(self, status: str) -> dict[str, Any]:
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
        from ekn_core.log import add_file_log

        self._log_handler = add_file_log(self.run_dir.log)
        log.info("%s run %s (pid %d, user %s, host %s)", "resuming" if self.resume else "starting",
                 self.run_dir.path, os.getpid(), getpass.getuser(), platform.node())

    def _setup_tensorflow(self, device: Any) -> None:
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

    def _build_model(self) -> None:
        """Creates the model, sets the optimiser meta-parameters and builds the optimiser + compiled step."""
        cfg = self.config
        args = dict(cfg.model_load_args)
        if cfg.model_load_path:
            from ekn_core.persistence import modelload

            self.model = modelload(cfg.model_load_path, **args)
            log.info("loaded model %s", cfg.model_load_path)
        else:
            from ekn_core.node import model_manager

            _fresh_default_model()
            try:
                self.model = cfg.create_model(**args)
            except ShapeError as err:
                raise ShapeError(f"{err}{_patch_size_hint(cfg.create_model, args)}") from None
            if self.model is None:
                self.model = model_manager.current
        for role in ("input_node", "loss_node"):
            if getattr(self.model, role, None) is None:
                raise ConfigError(f"the model has no {role.replace('_', ' ')}: create_model must call "
                                  f"model.designate_nodes(input_node=..., target_node=..., loss_node=..., "
                                  f"prediction_node=...) and return the model")
        params = dict(cfg.optimiser_params)
        for key in _META:
            if key in params:
                setattr(self.model, key, params.pop(key))
        self.optimiser = self.model.get_optimiser(cfg.optimiser)
        if params:
            unknown = [k for k in params if k not in getattr(self.optimiser, "meta", {})]
            if unknown:
                raise ConfigError(f"optimiser_params {unknown} are not meta-parameters of {cfg.optimiser}; it has "
                                  f"{', '.join(getattr(self.optimiser, 'meta', {}))}")
            self.optimiser.set_meta(**params)
        model_b = self.model.batch_size
        if cfg.batch_size is not None and model_b is not None and cfg.batch_size != model_b:
            raise ConfigError(f"batch_size {cfg.batch_size} disagrees with the model's fixed batch size {model_b}")
        self.batch_size = int(cfg.batch_size or model_b or 1)
        if cfg.batch_size is None and model_b is None:
            log.warning("neither the config nor the model fix the batch size: using 1")
        log.info("%s", self.model.summary())

    def _build_data(self) -> None:
        cfg = self.config
        kwargs = dict(cfg.data_init_kwargs)
        if (self._n_workers and "copies" not in kwargs
                and "copies" in _data_source_keywords(resolve_data_class(cfg.data_class))):
            kwargs["copies"] = self._n_workers + 1  # this process and each worker hold a copy ('auto' memory)
        #: What ``data`` was built from; the background workers build their copies of it from this.
        self._data_recipe = (cfg.data_class, kwargs)
        self.data = make_data_source(cfg.data_class, self.model.input_node, self.model.target_node, dict(kwargs))
        self._recipe_data = self.data  # the source the workers copy; another one in trainer.data is drawn here
        #: ``getbatch``'s keyword names, read once: which of rng, monitor, force_dense it takes.
        self._batch_keywords = _keyword_names(self.data.getbatch)
        self._data_takes_rng = bool({"rng", "**"} & self._batch_keywords)
        log.info("data: %r", self.data)
        if self._data_feedback:
            log.info("the data source takes feedback from every step: batches are drawn in this process "
                     "after the previous step (no background workers, no prefetching)")

    @property
    def _n_workers(self) -> int:
        """The number of background data workers ``background_processes`` asks for (True: 2)."""
        n = self.config.background_processes
        return 2 if n is True else int(n or 0)

    @property
    def _data_feedback(self) -> bool:
        """Whether the data source takes each step's debug outputs back (``feedback``): its batches
        depend on the steps before, so they are drawn here, one step at a time (no background
        workers, no prefetching)."""
        return callable(getattr(self.data, "feedback", None))

    def _background_batches(self, step: int) -> Any:
        """The background workers for training batches, whose next batch is that of ``step``
        (started on first use, restarted when another step's batch is wanted). None when the
        batch of ``step`` is drawn here: without workers, when the workers are one batch ahead
        (a prefetched batch was dropped, or the shell drew one), which is cheaper than a restart, or
        when ``trainer.data`` was replaced by a source the workers cannot copy. The workers restart
        when what their batches depend on changed (the shell may change the batch size,
        ``data_batch_args``, the seed or the model's inputs)."""
        n = self._n_workers
        if not n or not self._data_takes_rng or self._data_feedback:
            return None
        if self.data is not self._recipe_data:
            if self._background is not None:
                log.info("trainer.data was replaced: its training batches are drawn in this process, not by the "
                         "background workers (they copy the data source built from the config)")
                self.close_background()
            return None
        settings = (n, self.batch_size, int(self.config.seed), repr(self.config.data_batch_args),
                    *[(node.name, tuple(node.shape.shape)) for node in (self.model.input_node, self.model.target_node)
                      if node is not None])
        if self._background is not None and settings != self._background_settings:
            log.info("the batch settings changed: restarting the background data workers at step %d", step)
            self.close_background()
        if self._background is not None and self._background.next_index == step + 1:
            return None
        if self._background is None or self._background.next_index != step:
            import functools

            from ekn_core.plugins import registry

            self.close_background()
            nodes = [NodeInfo(n) if n is not None else None for n in (self.model.input_node, self.model.target_node)]
            data_class, data_init_kwargs = self._data_recipe
            factory = functools.partial(make_data_source, data_class, *nodes, dict(data_init_kwargs))
            self._background = registry("data").get("background_batches")(
                factory, self.batch_size, n_workers=n, seed=int(self.config.seed), source="train",
                batch_kwargs=dict(self.config.data_batch_args), start=step)
            self._background_settings = settings
            log.info("started %d background data worker(s) at step %d", n, step)
        return self._background

    def close_background(self) -> None:
        """Stops the background data workers (they restart at the current step when needed)."""
        if self._background is not None:
            self._background.close()
            self._background = None

    # ------------------------------------------------------------------------------------------ batches
    def _rng(self, stream: str, step: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([int(self.config.seed), int(step), *_STREAMS[stream]]))

    def get_batch(self, source: str = "train", size: int | None = None, step: int | None = None,
                  stream: str | None = None) -> tuple[np.ndarray, ...]:
        """A batch as the training step needs it (``class_weights`` appended), seeded by ``(seed, step)``.

        Training batches of the current and the next step come from the background workers when
        ``background_processes`` is set; they are the same batches the serial path draws. Batches
        of a ``stream`` (the monitor batches) get ``monitor=True`` where ``getbatch`` takes it.
        """
        step = self.step if step is None else step
        background = self._background_batches(step) if (source == "train" and stream is None and size is None
                                                          and step in (self.step, self.step + 1)) else None
        if background is not None:  # SIGTERM and Ctrl-C end a wait for a worker (WaitInterrupted)
            batch = tuple(background.get(abort=lambda: self.stop_requested or self.pause_requested,
                                         timeout_s=self.config.batch_timeout_s))
        else:
            kwargs = dict(self.config.data_batch_args)
            rng = self._rng(stream or source, step)
            if stream is not None and "monitor" in self._batch_keywords:
                kwargs["monitor"] = True  # a monitor batch: a stateful source leaves its training state alone
            if self._data_takes_rng:
                kwargs["rng"] = rng
            elif hasattr(self.data, "rng"):
                self.data.rng = rng
            elif not self._warned_rng:
                log.warning("the data source %s takes no rng: batches are not reproducible and --resume is not "
                            "exact", type(self.data).__name__)
                self._warned_rng = True
            batch = tuple(self.data.getbatch(size or self.batch_size, source=source, **kwargs))
        if self.config.class_weights is not None:
            batch = (*batch, np.asarray(self.config.class_weights, dtype=np.float32))
        return batch

    def _picture_batch(self) -> tuple[tuple[np.ndarray, ...], bool]:
        """The training batch of the current step's stream for the batch picture, drawn here
        (not by the background workers) with dense targets where the data source can, without
        touching anything training draws from: numpy's and Python's global generators and a
        source's own ``rng`` attribute are restored. Returns ``(batch, dense)``."""
        from ekn_core.trainer.checkpoint import capture_host_rng, restore_host_rng

        kwargs = dict(self.config.data_batch_args)
        dense = "force_dense" in self._batch_keywords
        if dense:
            kwargs["force_dense"] = True
        rng = self._rng("train", self.step)
        own_rng = None
        if self._data_takes_rng:
            kwargs["rng"] = rng
        elif hasattr(self.data, "rng"):
            own_rng, self.data.rng = self.data.rng, rng
        host_arrays, host_state = capture_host_rng()
        try:
            batch = tuple(self.data.getbatch(self.batch_size, source="train", **kwargs))
        finally:
            restore_host_rng(host_arrays, host_state)
            if own_rng is not None:
                self.data.rng = own_rng
        if self.config.class_weights is not None:
            batch = (*batch, np.asarray(self.config.class_weights, dtype=np.float32))
        return batch, dense

    def debug_batch_picture(self, path: str | None = None) -> tuple[np.ndarray, ...]:
        """Draws a training batch and writes ``Batch_test_image.png`` (ELEKTRONN2's ``debug_getcnnbatch``).

        The batch is the current step's training batch (the same stream as :meth:`get_batch`, with
        dense targets when the data source's ``getbatch`` takes ``force_dense``); drawing it changes
        neither the batches training draws nor exact resume. The picture shows the first example's
        middle slice: the input patch with the output region outlined, the input cropped to the
        output region (in output coordinates) and the target there
        (:mod:`ekn_core.trainer.batch_picture`). The file is written atomically.

        Args:
            path: Output file (default ``RUN_DIR/Batch_test_image.png``).

        Returns:
            The batch (input, target, ...).

        Raises:
            EknError: The model is not image-to-image (no target, or a target without the input's
                spatial axes).
        """
        from ekn_core.atomic import write_bytes
        from ekn_core.trainer.batch_picture import batch_panels, render_batch_picture

        inp, target = self.model.input_node, self.model.target_node
        if target is None:
            raise EknError("the batch picture needs a target node (image-to-image training)")
        t_shape, i_shape = target.shape, inp.shape
        if t_shape.ndim < 2 or t_shape.ndim != i_shape.ndim:
            raise EknError(f"the batch picture needs image targets (input {i_shape}, target {t_shape})")
        batch, dense = self._picture_batch()
        by_tag = dict(zip(t_shape.spatial_tags, zip(t_shape.offsets, t_shape.strides)))
        try:
            offsets = [int(by_tag[t][0]) for t in i_shape.spatial_tags]
            strides = [1 if dense else int(by_tag[t][1]) for t in i_shape.spatial_tags]
        except (KeyError, TypeError, ValueError):
            raise EknError(f"the target's spatial axes {t_shape.spatial_tags} are not the input's "
                           f"{i_shape.spatial_tags} (with integer strides)") from None
        panels = batch_panels(batch, i_shape.tags, t_shape.tags, offsets, strides)
        path = path or self.run_dir.join(BATCH_PICTURE)
        write_bytes(path, render_batch_picture(panels, f"{self.run_dir.name}: training batch of step {self.step}"))
        self.last_batch_picture = panels
        log.info("wrote the batch picture %s", path)
        return batch

    def _safe_batch_picture(self) -> None:
        """The batch picture at the start of a run (setting ``batch_picture``); image-to-image nets
        only, failures are logged."""
        target = self.model.target_node
        if not self.config.batch_picture or target is None or target.shape.ndim < 2 \
                or target.shape.ndim != self.model.input_node.shape.ndim:
            return
        try:
            self.debug_batch_picture()
        except Exception as err:  # a picture must not end a run
            log.warning("the batch picture failed: %s: %s", type(err).__name__, err)

    # ------------------------------------------------------------------------------------------ prefetching
    def _batch_key(self, step: int, fn: Any) -> tuple[Any, ...]:
        """What the training batch of ``step`` and its validation depend on: a prefetched batch is
        used only if this is unchanged when its step comes (schedules and the shell may change it)."""
        cfg = self.config
        weights = None if cfg.class_weights is None else np.asarray(cfg.class_weights).tobytes()
        return (int(step), self.batch_size, int(cfg.seed), id(self.data), id(self.model), id(fn),
                repr(cfg.data_batch_args), weights, tuple(tuple(n.shape.shape) for n in fn.inputs))

    def _training_batch(self) -> tuple[tuple[np.ndarray, ...], Sequence[Any]]:
        """The batch of the step after :attr:`step`: its numpy arrays (for the NaN check, monitoring
        and the shell) and the validated canonical arrays the step runs on (tensors on the device when
        the batch was prefetched during the previous step)."""
        fn = self.model.train_function(self.config.optimiser)
        key = self._batch_key(self.step, fn)
        prefetched, self._next = self._next, None
        if prefetched is not None:
            if prefetched[0] == key:
                if prefetched[1] is not None:
                    raise prefetched[1]  # drawing it failed: fail where the serial path fails
                item = self._prefetcher.take()
                return item.tag[1], item.tensors
            log.debug("the batch prefetched for step %d is not the next step's: drawing it again",
                      prefetched[0][0] + 1)
            self._drop_prefetched()
        batch = self.get_batch("train")
        return batch, fn.check_arrays(batch)

    def _prefetch_next(self) -> None:
        """With prefetching on, draws and validates the next step's batch here (data sources are not
        thread-safe) and submits it for the copy to the device, which overlaps the coming step."""
        step = self.step + 1
        if (self.prefetch_device is None or step >= int(self.config.n_steps) or self.stop_requested
                or self.pause_requested or self._data_feedback):
            return
        fn = self.model.train_function(self.config.optimiser)
        key = self._batch_key(step, fn)
        try:
            batch = self.get_batch("train", step=step)
            canonical = fn.check_arrays(batch)
        except Exception as err:  # raised when its step comes, where the serial path would raise it
            self._next = (key, err)
            return
        if self._prefetcher is None or self._prefetcher.closed:
            from ekn_core.trainer.prefetch import DevicePrefetcher

            self._prefetcher = DevicePrefetcher(self.prefetch_device)
        self._prefetcher.submit(canonical, tag=(key, batch))
        self._next = (key, None)

    def _drop_prefetched(self) -> None:
        """Forgets the prefetched batch (rollback, resume, the shell): the next step draws its batch again."""
        self._next = None
        if self._prefetcher is not None:
            self._prefetcher.discard()

    def close_prefetcher(self) -> None:
        """Stops the device prefetch thread (it restarts when needed)."""
        self._next = None
        if self._prefetcher is not None:
            self._prefetcher.close()

    def _voxels(self, batch: tuple[np.ndarray, ...]) -> int:
        tags = self.model.input_node.shape.tags
        shape = batch[0].shape
        return int(np.prod([s for s, t in zip(shape, tags) if t != "f"])) if len(tags) == len(shape) else batch[0].size

    # ------------------------------------------------------------------------------------------ monitoring
    def _monitor_function(self) -> Any:
        if self._monitor_fn is None:
            from ekn_core.node import GraphFunction, union_inputs

            loss = self.model.loss_node
            outputs = [loss]
            err = self.model.error_node
            if err is not None and set(n.name for n in union_inputs([err])) <= {n.name for n in loss.input_nodes}:
                outputs.append(err)
            self._monitor_fn = GraphFunction(outputs, inputs=loss.input_nodes, training=False,
                                             name=f"{self.model.name}:monitor", role="monitor")
        return self._monitor_fn

    def evaluate(self, source: str) -> tuple[float, float]:
        """Mean loss and error on a monitor batch of ``source`` (``'train'``/``'valid'``).

        Both are NaN when the data source has no validation data (it raises
        :class:`~ekn_core.errors.NoValidationData`) or when drawing the validation batch fails
        (logged once, as a warning, with the error)."""
        n = int(self.config.monitor_batch_size or self.batch_size)
        chunk = self.model.batch_size or self.batch_size
        n = int(math.ceil(n / chunk) * chunk)
        try:
            batch = self.get_batch(source, size=n, stream=f"monitor_{source}")
        except NoValidationData:
            if source == "valid":
                return math.nan, math.nan
            raise
        except (ConfigError, ValueError) as err:
            if source == "valid":
                if not self._warned_valid:
                    self._warned_valid = True
                    log.warning("cannot draw a validation monitor batch (%s: %s): valid_loss and valid_error are "
                                "NaN (without monitor_metric, best.mdl and early stopping then follow train_loss); "
                                "this warning is not repeated", type(err).__name__, err)
                return math.nan, math.nan
            raise EknError(f"cannot draw a training monitor batch: {err}") from err
        fn = self._monitor_function()
        losses, errors, weights = [], [], []
        b_axes = [n.shape.tags.index("b") if n.shape.hastag("b") else None for n in fn.inputs]
        b_axes += [None] * (len(batch) - len(b_axes))
        for start in range(0, n, chunk):
            part = [np.take(a, np.arange(start, min(start + chunk, n)), axis=ax) if ax is not None else a
                    for a, ax in zip(batch, b_axes)]
            outs = fn(*part)
            outs = outs if isinstance(outs, list) else [outs]
            losses.append(float(np.mean(outs[0])))
            errors.append(float(np.mean(outs[1])) if len(outs) > 1 else math.nan)
            weights.append(min(chunk, n - start))
        w = np.asarray(weights, dtype=np.float64)
        return float(np.dot(losses, w) / w.sum()), float(np.dot(errors, w) / w.sum())

    def monitor(self, track_best: bool = True) -> dict[str, float]:
        """Evaluates the monitor batches, records a history row, saves the latest model (and, with
        ``track_best``, the best model and the early-stopping count) and fires hooks."""
        batch = self.last_batch
        loss_after = self.model.loss(*batch) if batch is not None else math.nan
        train_loss, train_err = self.evaluate("train")
        valid_loss, valid_err = self.evaluate("valid")
        metrics = {"train_loss": train_loss, "valid_loss": valid_loss, "train_error": train_err,
                   "valid_error": valid_err, "loss_gain": loss_after - self.last_metrics.get("loss", math.nan),
                   "lr": self.model.lr, "mom": self.model.mom, "wd": self.model.wd}
        extra = self._plugin_metrics()
        clash = sorted(set(extra) & set(metrics))
        if clash:
            raise EknError(f"ekn_validation_metrics hooks must not replace the trainer's metrics {clash}")
        metrics.update(extra)
        self.history.history.append(step=self.step, time=self.elapsed, **metrics)
        self.save_model("latest")
        if track_best:
            self._track_best(metrics)
        self.history.save(self.run_dir.history_h5, self.run_dir.history_csv, self.run_dir.timeline_csv)
        if self.config.print_status:
            log.info("%s", self.status_line(metrics))
        host().validation_end(self, self.step, metrics)
        return metrics

    def _plugin_metrics(self) -> dict[str, float]:
        """The ``ekn_validation_metrics`` hooks' metrics; every random-generator state is restored
        afterwards, so they cannot change training or exact resume."""
        host_arrays, host_state = capture_host_rng()
        tf_state = self.tf_generator.state.numpy()
        try:
            return {k: float(v) for k, v in host().validation_metrics(self, self.step).items()}
        finally:
            restore_host_rng(host_arrays, host_state)
            self.tf_generator.reset(tf_state)

    def _track_best(self, metrics: dict[str, float]) -> None:
        """Early-stopping count and ``models/best.mdl`` by the monitored metric; evaluations that
        did not measure it (NaN, e.g. between volume validations) do not count."""
        metric, mode = self.monitored
        score = metrics.get(metric, math.nan)
        if self.config.monitor_metric is None and not math.isfinite(score):
            score = metrics["train_loss"]  # no validation data
        if not math.isfinite(score):
            return
        improved = is_improvement(score, self.best_valid, mode, float(self.config.early_stopping_min_delta))
        self.evaluations_without_improvement = 0 if improved else self.evaluations_without_improvement + 1
        if is_improvement(score, self.best_valid, mode):
            self.best_valid = score
            self.save_model("best")

    def status_line(self, metrics: dict[str, float] | None = None) -> str:
        """ELEKTRONN2's status line: step, smoothed/current loss, errors, loss gain, lr, speed, time."""
        metrics = metrics or (self.history.history.last() if len(self.history.history) else {})
        t = self.history.timeline
        recent = t.tail("loss", int(self.config.loss_smoothing_length))
        loss_m = float(np.nanmean(recent)) if len(recent) else math.nan
        loss = recent[-1] if len(recent) else math.nan
        per_step = float(np.mean(self._step_times)) if self._step_times else math.nan
        vox = self.last_metrics.get("voxels", math.nan)
        percent = self.model.error_node is not None

        def error(key: str) -> str:  # '--' where the model has no error node (or nothing was measured)
            value = metrics.get(key, math.nan)
            return f"{value * 100:05.2f}%" if percent and math.isfinite(value) else "--"

        return (f"{self.step:05d} L_m={loss_m:.3f}, L={loss:.2f}, tr={error('train_error')}, vl={error('valid_error')}, "
                f"tr_L={metrics.get('train_loss', math.nan):.4f}, vl_L={metrics.get('valid_loss', math.nan):.4f}, "
                f"L_diff={metrics.get('loss_gain', math.nan):+.1e}, LR={self.model.lr:.2e}, "
                f"{1.0 / per_step if per_step > 0 else math.nan:.2f} it/s, "
                f"{vox / per_step / 1e6 if per_step > 0 else math.nan:.2f} MVx/s, t={self.elapsed / 60:.1f} min")

    # ------------------------------------------------------------------------------------------ files
    def save_model(self, which: str) -> str:
        """Writes ``models/<which>.mdl`` atomically and fires ``ekn_on_checkpoint_saved``."""
        path = self.model.save(self.run_dir.model_path(which))
        host().checkpoint_saved(self, path)
        return path

    def save(self, path: str | None = None) -> str:
        """Saves the model (to ``path``, default ``models/latest.mdl``); used by the shell's ``save``/``kill``."""
        if path is None:
            return self.save_model("latest")
        path = self.model.save(path)
        host().checkpoint_saved(self, path)
        return path

    def plot(self) -> list[str]:
        """Writes the PNG plots into ``plots/``; returns their paths."""
        from ekn_core.trainer.plots import plot_history

        plugin_metrics = {k: mode for k, mode in self.config.monitorable().items() if k not in MONITORABLE}
        return plot_history(self.history, self.run_dir.plots, int(self.config.loss_smoothing_length),
                            self.run_dir.name, plugin_metrics)

    def preview(self) -> list[str]:
        """Predicts the preview regions, writes their PNGs (firing ``ekn_on_preview_written`` for
        each) and hands the predictions to ``ekn_on_preview`` (snapshots, overlays)."""
        if self.previewer is None:
            log.info("no previews: preview_data_path is not set (or the prediction is not spatial)")
            return []
        t0 = time.perf_counter()
        blocks = self.previewer.predict()
        paths = self.previewer.write(self.step, blocks)
        self._last_preview_step = self.step
        for path in paths:
            host().preview_written(self, path)
        host().preview(self, self.step, blocks)
        log.info("wrote %d preview image(s) to %s in %.1f s", len(paths), self.run_dir.previews,
                 time.perf_counter() - t0)
        return paths

    def checkpoint_data(self) -> CheckpointData:
        """The complete training state (see :mod:`ekn_core.trainer.checkpoint`)."""
        host_arrays, host_state = capture_host_rng()
        rng = {"tf_generator": self.tf_generator.state.numpy(), **host_arrays}
        state = {
            "step": self.step, "elapsed": self.elapsed, "best_valid": self.best_valid if math.isfinite(
                self.best_valid) else None, "next_preview_h": self.next_preview_h,
            "evaluations_without_improvement": self.evaluations_without_improvement,
            "monitored": list(self.monitored),
            "meta": {k: getattr(self.model, k) for k in _META}, "iterations": self.model.iterations,
            "model_elapsed": self.model.elapsed_time, "schedules": self.schedules.get_state(),
            "lr_factor": self.lr_factor,
            "loss_scale": {name: list(self.model.train_function(name).get_loss_scale())
                           for name in self.model.optimisers},
            "host_rng": host_state, "tf_algorithm": int(self.tf_generator.algorithm),
            "seed": int(self.config.seed), "last_loss": self.last_metrics.get("loss"),
            "data": {"reproducible": bool(self._data_takes_rng or hasattr(self.data, "rng")),
                     "scheme": "numpy SeedSequence([seed, step, stream]) per batch",
                     "state": self.data.get_state() if hasattr(self.data, "get_state") else None},
        }
        return CheckpointData(step=self.step, params={k: p.get_value() for k, p in self.model.all_params.items()},
                              optimisers={k: o.get_state() for k, o in self.model.optimisers.items()}, rng=rng,
                              state=state, history=self.history)

    def save_checkpoint(self) -> str:
        """Writes a checkpoint atomically, prunes old ones, fires ``ekn_on_checkpoint_saved``."""
        path = write_checkpoint(self.run_dir.checkpoints, self.checkpoint_data())
        prune_checkpoints(self.run_dir.checkpoints, int(self.config.keep_checkpoints))
        self.nan_retries = 0
        host().checkpoint_saved(self, path)
        return path

    def restore(self, data: CheckpointData) -> None:
        """Restores a checkpoint's state into the live model, optimiser, schedules, RNGs and history."""
        params = self.model.all_params
        missing, extra = sorted(set(params) - set(data.params)), sorted(set(data.params) - set(params))
        if missing or extra:
            raise EknError(f"checkpoint does not match the model (missing: {missing[:5]}, unexpected: {extra[:5]}); "
                           "was the config's model changed since the run started?")
        for key, param in params.items():
            param.set_value(data.params[key], force=True)
        s = data.state
        for key, value in s["meta"].items():  # before the optimisers' own meta-parameters, which win
            setattr(self.model, key, value)
        for name, state in data.optimisers.items():
            self.model.get_optimiser(name).set_state(state)
        for name, (scale, good_steps) in s.get("loss_scale", {}).items():
            self.model.train_function(name).set_loss_scale(scale, good_steps)
        self.model.iterations, self.model.elapsed_time = int(s["iterations"]), float(s["model_elapsed"])
        self.schedules.set_state(s["schedules"])
        self.lr_factor = float(s.get("lr_factor", 1.0))
        self.schedules.set_factor("lr", self.lr_factor)
        self.tf_generator.reset(data.rng["tf_generator"])
        restore_host_rng(data.rng, s["host_rng"])
        data_state = s.get("data", {}).get("state")
        if data_state is not None and hasattr(self.data, "set_state"):
            self.data.set_state(data_state)
        self.history = data.history
        self.step, self.elapsed = int(s["step"]), float(s["elapsed"])
        self.best_valid = _worst(self.monitored[1]) if s["best_valid"] is None else float(s["best_valid"])
        self.evaluations_without_improvement = int(s.get("evaluations_without_improvement", 0))
        if tuple(s.get("monitored", ("valid_loss", "min"))) != self.monitored:
            log.info("the monitored metric is now %s (%s), not %s: the best value and the early-stopping "
                     "count start afresh", *self.monitored, (s.get("monitored") or ["valid_loss"])[0])
            self.best_valid, self.evaluations_without_improvement = _worst(self.monitored[1]), 0
        self.next_preview_h = float(s["next_preview_h"])
        self.last_metrics = {"loss": s["last_loss"]} if s.get("last_loss") is not None else {}
        self._drop_prefetched()

    # ------------------------------------------------------------------------------------------ shell seam
    def open_shell(self) -> str:
        """Pauses for the interactive shell; returns ``"continue"`` or ``"kill"`` (then the run stops)."""
        from ekn_core.trainer.shell import run_shell

        self.pause_requested = False
        self._interrupts = 0
        self._drop_prefetched()  # the shell may change what the next batch is
        result = run_shell(self)
        if result == "kill":
            self.stop_requested = True
            self.status = "killed"
        elif result != "continue":
            raise EknError(f"the training shell returned {result!r}; expected 'continue' or 'kill'")
        return result

    # ------------------------------------------------------------------------------------------ NaN
    def _handle_nan(self, loss: float, batch: tuple[np.ndarray, ...]) -> None:
        bad_inputs = [i for i, a in enumerate(batch) if np.issubdtype(np.asarray(a).dtype, np.floating)
                      and not np.all(np.isfinite(a))]
        step = self.step + 1
        log.error("step %d: the loss is %s. %s Rolling back to the last checkpoint.", step, loss,
                  f"Batch input(s) {bad_inputs} contain NaN/Inf." if bad_inputs else
                  "The batch is finite: the learning rate may be too high.")
        host().nan_detected(self, step, {"loss": loss, "lr": self.model.lr})
        self.nan_retries += 1
        path = latest_checkpoint(self.run_dir.checkpoints)
        if path is None:
            raise EknError("non-finite loss and no checkpoint to roll back to")
        self.restore(read_checkpoint(path))
        if self.config.nan_response == "stop" or self.nan_retries > int(self.config.nan_max_retries):
            why = ("nan_response is 'stop'" if self.config.nan_response == "stop" else
                   f"{self.nan_retries} rollbacks without progress (nan_max_retries={self.config.nan_max_retries})")
            log.error("stopping at step %d (%s); the state of step %d was restored", step, why, self.step)
            self.status = "nan"
            self.stop_requested = True
            return
        lower = float(self.config.nan_lr_factor) ** self.nan_retries  # each rollback since the checkpoint
        self.lr_factor *= lower
        self.schedules.set_factor("lr", self.lr_factor)
        self.model.lr = self.model.lr * lower
        log.warning("rolled back to step %d; lr lowered to %.3g (lr_factor %.3g multiplies what the lr schedule "
                    "sets)", self.step, self.model.lr, self.lr_factor)

    # ------------------------------------------------------------------------------------------ loop
    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        self._interrupts = 0  # Ctrl-Cs since the shell last opened

        def on_int(signum: int, frame: Any) -> None:
            self._interrupts += 1
            if self._interrupts > 1:
                raise KeyboardInterrupt  # a second Ctrl-C before the shell opened: stop now, without saving
            self.pause_requested = True

        def on_term(signum: int, frame: Any) -> None:
            self.stop_requested = True

        return {signal.SIGINT: signal.signal(signal.SIGINT, on_int),
                signal.SIGTERM: signal.signal(signal.SIGTERM, on_term)}

    def _progress(self) -> Any:
        from tqdm.auto import tqdm

        return tqdm(total=int(self.config.n_steps), initial=self.step, unit="step", dynamic_ncols=True,
                    disable=not sys.stderr.isatty(), file=sys.stderr, desc=self.run_dir.name[:24])

    def _previews_due(self) -> bool:
        if self.previewer is None:
            return False
        freq = self.config.preview_freq
        if freq and self.step % int(freq) == 0:
            return True
        if self.elapsed / 3600.0 >= self.next_preview_h:
            self.next_preview_h += max(float(self.config.prev_save_h), 1e-9)
            return True
        return False

    def train_step(self) -> float:
        """Runs one training step (schedules, batch, compiled step, timeline, hook); returns the loss.

        With prefetching on (:attr:`prefetch_device`), the batch of this step was copied to the
        device during the previous step, and the next step's batch is drawn, validated and
        submitted for its copy before this step runs. ``data_time`` in the metrics is the time
        spent getting batches in this step (drawing, validating, waiting for a copy).
        """
        t0 = time.perf_counter()
        self.schedules.update(self.step)
        t_data = time.perf_counter()
        batch, canonical = self._training_batch()
        data_time = time.perf_counter() - t_data
        if not self._compile_mode_checked:
            t0 += self.tune_compile_mode(batch)  # measuring is not training time
        t_next = time.perf_counter()
        self._prefetch_next()
        data_time += time.perf_counter() - t_next
        loss, step_time, debug = self.model.trainingstep_prepared(canonical, optimiser=self.config.optimiser)
        fn = self.model.train_function(self.config.optimiser)  # its params_finite: computed in the step
        if not math.isfinite(loss) or not fn.params_finite:
            loss = loss if not math.isfinite(loss) else math.nan
            self.elapsed += time.perf_counter() - t0
            self._handle_nan(loss, batch)
            return loss
        self.last_batch = batch
        if self._data_feedback:
            self.data.feedback({node.name: value for node, value in zip(self.model.debug_outputs, debug or [])})
        self.step += 1
        took = time.perf_counter() - t0
        self.elapsed += took
        self._step_times.append(took)
        row = {"step": self.step, "time": self.elapsed, "loss": loss, "batch_char": fn.target_mean}
        for node, value in zip(self.model.debug_outputs, debug or []):
            row[f"debug/{node.name}"] = float(np.mean(value))
        self.history.timeline.append(**row)
        self.last_metrics = {"loss": loss, "time_per_step": step_time, "data_time": data_time,
                             "lr": self.model.lr, "voxels": float(self._voxels(batch)),
                             **{k: v for k, v in row.items() if k.startswith("debug/")}}
        host().train_step_end(self, self.step, dict(self.last_metrics))
        return loss

    def tune_compile_mode(self, batch: tuple[np.ndarray, ...]) -> float:
        """Before the first step of this process: with compile mode ``'auto'`` (config,
        :func:`~ekn_core.node.set_compile_mode` or ``EKN_COMPILE``) and no cached choice for the
        training step's key, measures plain and XLA on ``batch`` and caches the fastest
        (:func:`ekn_core.compile_choice.tune_training_step`; the model state is restored exactly).

        Returns:
            Seconds spent measuring (0 when nothing was measured).
        """
        from ekn_core import compile_choice
        from ekn_core.node import requested_compile_mode

        self._compile_mode_checked = True
        if requested_compile_mode() != "auto":
            return 0.0
        if self.strategy is not None:
            log.info("compile mode 'auto': distributed steps are compiled with tf.function (no XLA); "
                     "nothing to measure")
            return 0.0
        step = self.model.train_function(self.config.optimiser)
        key = step.compile_key(step.check_arrays(batch))
        entry = compile_choice.cached_entry(key)
        if entry is not None:
            log.info("compile mode %s: cached choice for %s in %s", entry.get("choice"), key,
                     compile_choice.cache_path())
            return 0.0
        log.info("compile mode 'auto': measuring plain and XLA training steps on the first batch")
        t0 = time.perf_counter()
        result = compile_choice.tune_training_step(self.model, batch, optimiser=self.config.optimiser,
                                                   modes=("plain", "xla"))
        took = time.perf_counter() - t0
        log.info("compile mode %s for %s (measured in %.1f s, cached in %s):\n%s", result["choice"], key, took,
                 compile_choice.cache_path(), compile_choice.format_result(result))
        return took

    def _finish_step(self) -> None:
        cfg = self.config
        if cfg.history_freq and self.step % int(cfg.history_freq) == 0:
            t0 = time.perf_counter()
            self.monitor()
            self.elapsed += time.perf_counter() - t0
        if self.step % int(cfg.param_save_it) == 0:
            self.save_model(f"step-{self.step}")
        if self.step % cfg.effective_checkpoint_freq == 0:
            self.save_checkpoint()
        if self._previews_due():
            self._safe_preview()

    def _safe_preview(self) -> None:
        try:
            self.preview()
        except Exception as err:  # a failed preview must not end a long run
            log.error("preview failed: %s: %s", type(err).__name__, err)

    def _stop_reason(self) -> str | None:
        if self.stop_requested:
            return self.status if self.status in ("killed", "nan") else "killed"
        if self.step >= int(self.config.n_steps):
            return "finished"
        if self.config.max_runtime is not None and self.elapsed >= float(self.config.max_runtime):
            log.info("max_runtime of %s s reached", self.config.max_runtime)
            return "finished"
        patience = self.config.early_stopping_patience
        if patience is not None and self.evaluations_without_improvement >= int(patience):
            log.info("early stopping: %s has not improved on %.4g for %d evaluations", self.monitored[0],
                     self.best_valid, self.evaluations_without_improvement)
            return "finished"
        return None

    def run(self) -> str:
        """Trains until ``n_steps``, ``max_runtime``, a kill or a NaN stop; returns the status
        (``"finished"``, ``"killed"``, ``"nan"``)."""
        from tqdm.contrib.logging import logging_redirect_tqdm

        previous = self._install_signals()
        from ekn_core.trainer.remote import ShellServer

        shell_server = ShellServer.start(self)  # `ekn shell RUN_DIR` attaches through it
        self.status = "running"
        self.run_dir.update_run_json(status="running", step=self.step, overrides=self.config.overrides)
        hooks = host()
        hooks.train_begin(self)
        if latest_checkpoint(self.run_dir.checkpoints) is None:
            self.save_checkpoint()
        self._safe_batch_picture()
        bar = self._progress()
        status = "error"
        try:
            with logging_redirect_tqdm(loggers=[logging.getLogger("ekn")]) if not bar.disable else \
                    contextlib.nullcontext():
                while (reason := self._stop_reason()) is None:
                    try:
                        loss = self.train_step()
                    except WaitInterrupted:  # SIGTERM or Ctrl-C while waiting for a data worker: no step done
                        loss = math.nan
                    if not math.isfinite(loss):
                        bar.n = self.step
                        bar.refresh()
                    else:
                        self._finish_step()
                        bar.update(1)
                        if not bar.disable:  # the postfix only when the bar is shown
                            per = float(np.mean(self._step_times))
                            bar.set_postfix_str(f"loss {np.nanmean(self.history.timeline.tail('loss', 50)):.4f}, "
                                                f"{self.last_metrics['voxels'] / max(per, 1e-9) / 1e6:.2f} Mvox/s",
                                                refresh=False)
                    if self.pause_requested and not self.stop_requested:
                        self.open_shell()
                status = reason
                self._finish(status)
        except BaseException:
            self.status = "error"
            self.run_dir.update_run_json(status="error", step=self.step)
            hooks.train_end(self, "error")
            raise
        finally:
            bar.close()
            shell_server.close()
            self.close_prefetcher()
            self.close_background()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return status

    def _finish(self, status: str) -> None:
        """Ends the run: the checkpoint first (then a kill loses nothing), the final and latest
        models and the history. A run that did not end at an evaluation then gets a last history
        row, which the checkpoint does not hold and which changes neither ``best.mdl`` nor the
        early-stopping count, so a resumed run stays equal to an uninterrupted one. After a kill
        (SIGTERM, the shell's ``kill``) neither that row nor the last preview is computed."""
        self.status = status
        self.save_checkpoint()
        self.save_model("final")
        rows = self.history.history
        if status != "killed" and self.last_batch is not None and (not len(rows) or rows["step"][-1] != self.step):
            self.monitor(track_best=False)  # also saves latest.mdl and the history
        else:
            self.save_model("latest")
            self.history.save(self.run_dir.history_h5, self.run_dir.history_csv, self.run_dir.timeline_csv)
        if self.previewer is not None and status not in ("nan", "killed") and self._last_preview_step != self.step:
            self._safe_preview()
        self.run_dir.update_run_json(status=status, step=self.step, elapsed=self.elapsed)
        log.info("end of training: %s after %d steps (%.1f min); run directory %s", status, self.step,
                 self.elapsed / 60, self.run_dir.path)
        host().train_end(self, status)

    def close(self) -> None:
        """Stops the prefetch thread and the background data workers, detaches the run's log file
        and releases the run directory's lock (call when done with the trainer in a long-lived process)."""
        self.close_prefetcher()
        self.close_background()
        if self._run_lock is not None:
            os.close(self._run_lock)
            self._run_lock = None
        if self._log_handler is not None:
            logging.getLogger("ekn").removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None
