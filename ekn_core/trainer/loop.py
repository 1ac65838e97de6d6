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
:meth:`Trainer.open_shell` runs ``ekn_core.trainer.shell.run_shell(trainer)``, which returns ``"continue"`` or ``"kill"``; a second
Ctrl-C before the shell opens raises KeyboardInterrupt. SIGTERM saves and stops (status
``"killed"``), also while the shell is open. Both end a wait for a background data worker at once
(the step is not done, its batch stays the next one).

Each of the trainer's other jobs is a module of its own, mixed into :class:`Trainer`:
:mod:`~ekn_core.trainer.run_setup` (run directory files, log, TensorFlow, the set-up order),
:mod:`~ekn_core.trainer.model_setup` (model, optimiser, compile mode),
:mod:`~ekn_core.trainer.batch_feeding` (seeded batches, background workers, prefetching),
:mod:`~ekn_core.trainer.batch_picture_writer` (the batch picture),
:mod:`~ekn_core.trainer.monitoring` (monitor batches, history rows, best model, status line),
:mod:`~ekn_core.trainer.outputs` (model files, plots, previews),
:mod:`~ekn_core.trainer.training_state` (checkpoints and their restore),
:mod:`~ekn_core.trainer.nan_rollback` and :mod:`~ekn_core.trainer.interrupts` (signals, the shell).
This module holds the loop itself: a step, what follows it, when to stop, and the end of the run.

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
import logging
import math
import os
import signal
import sys
import time
from typing import Any

import numpy as np

from ekn_core.errors import ConfigError, WaitInterrupted
from ekn_core.hooks import host
from ekn_core.trainer.batch_feeding import BatchFeeding
from ekn_core.trainer.batch_picture_writer import BatchPictureWriter
from ekn_core.trainer.checkpoint import latest_checkpoint
from ekn_core.trainer.config import ExperimentConfig
from ekn_core.trainer.data_files import DataFilesRefused
from ekn_core.trainer.devices import parse_device_spec
from ekn_core.trainer.history import History
from ekn_core.trainer.interrupts import Interrupts
from ekn_core.trainer.model_setup import ModelSetup
from ekn_core.trainer.monitoring import Monitoring, worst_score
from ekn_core.trainer.nan_rollback import NanRollback
from ekn_core.trainer.outputs import RunOutputs
from ekn_core.trainer.rundir import RunDir
from ekn_core.trainer.run_setup import RunSetup, check_resume_precision, log_kept, run_precision
from ekn_core.trainer.training_state import TrainingState

log = logging.getLogger("ekn.trainer")


class Trainer(RunSetup, ModelSetup, BatchFeeding, BatchPictureWriter, Monitoring, RunOutputs, TrainingState,
              NanRollback, Interrupts):
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
        self.best_valid = worst_score(self.monitored[1])
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

        self._precision_before: str | None = None  # the precision policy before the run's, restored by close()
        self._precision_set = False
        if resume and not self.run_dir.exists():
            raise ConfigError(f"cannot resume: {self.run_dir.path} is not a run directory")
        parse_device_spec(device)  # a bad --gpu fails before the run directory exists (the config's: in validation)
        config.precision, self._precision_source = run_precision(config.precision)  # run.json records it
        #: The descriptor holding the run directory's lock (``run.lock``) until :meth:`close`.
        self._run_lock: int | None = None
        if resume:
            self._resume_set_up(device)
        else:
            self._new_run_set_up(device)

    def _resume_set_up(self, device: Any) -> None:
        """Under the run's lock: the log, the precision check, then the set-up (with the check of
        the data files) and the checkpoint. A refused resume (precision, data files) leaves the
        run's status as it was; another set-up error marks it ``error``."""
        self._run_lock = self.run_dir.acquire_lock()
        self._start_log()
        try:
            check_resume_precision(self.run_dir, self.config, self._precision_source)
        except BaseException:
            self.close()
            raise
        try:
            for path in self.run_dir.remove_stale_temporaries():
                log.info("deleted %s, left by an interrupted write", path)
            self._setup(device)
        except DataFilesRefused:
            self.close()
            raise
        except BaseException as err:
            log.error("could not set up the run: %s: %s", type(err).__name__, err)
            self.run_dir.update_run_json(status="error")
            self.close()
            raise

    def _new_run_set_up(self, device: Any) -> None:
        """Under the run's lock, taken first (a second trainer of the run directory fails at once):
        the check that no run is there, the set-up (model, data, previews), then the directory's
        first files and the log. If anything fails, a directory this trainer made is deleted again
        (before the lock is released), so a set-up error leaves no run directory."""
        self._run_lock, made = self.run_dir.lock_new()
        try:
            self.run_dir.check_new(overwrite=bool(self.config.overwrite))
            with log_kept() as kept:
                try:
                    self._setup(device)
                except BaseException as err:
                    log.error("could not set up the run: %s: %s", type(err).__name__, err)
                    raise
                restarted = self.run_dir.create(overwrite=bool(self.config.overwrite))
                self._write_initial_files()
                self._start_log(kept)
        except BaseException:
            self.run_dir.remove_made(made)
            self.close()
            raise
        if restarted:
            log.warning("%s held a run that failed (status 'error') before its first checkpoint: it starts afresh "
                        "with the config %s", self.run_dir.path, self.config.path)

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

    def _finish_step(self) -> None:
        """What is due after a finite step: monitoring, a step model file, a checkpoint, previews."""
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

    def _progress(self) -> Any:
        """The progress bar (shown only on a terminal)."""
        from tqdm.auto import tqdm

        return tqdm(total=int(self.config.n_steps), initial=self.step, unit="step", dynamic_ncols=True,
                    disable=not sys.stderr.isatty(), file=sys.stderr, desc=self.run_dir.name[:24])

    def _stop_reason(self) -> str | None:
        """The status the run ends with now (``"finished"``, ``"killed"``, ``"nan"``), None to go on."""
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
        self.run_dir.update_run_json(status="running", step=self.step, overrides=self.config.overrides,
                                     precision=self.config.precision, data_files=self.data_files_record)
        hooks = host()
        bar = self._progress()
        status = "error"
        try:
            with logging_redirect_tqdm(loggers=[logging.getLogger("ekn")]) if not bar.disable else \
                    contextlib.nullcontext():
                hooks.train_begin(self)
                if latest_checkpoint(self.run_dir.checkpoints) is None:
                    self.save_checkpoint()
                self._safe_batch_picture()
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
        """Stops the prefetch thread and the background data workers, restores the precision policy
        of before the run, detaches the run's log file and releases the run directory's lock (call
        when done with the trainer in a long-lived process)."""
        self.close_prefetcher()
        self.close_background()
        if self._precision_set:
            from ekn_core.node import set_precision

            set_precision(self._precision_before)
            self._precision_set = False
        if self._run_lock is not None:
            os.close(self._run_lock)
            self._run_lock = None
        if self._log_handler is not None:
            logging.getLogger("ekn").removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None
