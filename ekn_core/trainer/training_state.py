"""The trainer's complete state for exact resume: captured into a
:class:`~ekn_core.trainer.checkpoint.CheckpointData` (parameters, optimiser and schedule states,
every random generator, history, counters, the data source's state), written as a checkpoint, and
restored into the live trainer (``--resume`` from the newest checkpoint, NaN rollback).

:class:`TrainingState` is mixed into :class:`~ekn_core.trainer.loop.Trainer`; the file format is
:mod:`ekn_core.trainer.checkpoint`'s.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator

from ekn_core.errors import EknError
from ekn_core.hooks import host
from ekn_core.model import META_PARAMETERS
from ekn_core.trainer.checkpoint import (CheckpointData, capture_host_rng, latest_checkpoint, prune_checkpoints,
                                         read_checkpoint, restore_host_rng, write_checkpoint)
from ekn_core.trainer.monitoring import worst_score

log = logging.getLogger("ekn.trainer")

#: Parameters newer than some checkpoints (``bn_momentum``: batch normalisation's momentum): a
#: checkpoint without them still resumes, and they keep the values the model was built with.
ADDED_PARAMETERS = ("bn_momentum",)


class TrainingState:
    """Checkpoints of the training state and their restore (mixed into the trainer)."""

    def checkpoint_data(self) -> CheckpointData:
        """The complete training state (see :mod:`ekn_core.trainer.checkpoint`)."""
        host_arrays, host_state = capture_host_rng()
        rng = {"tf_generator": self.tf_generator.state.numpy(), **host_arrays}
        state = {
            "step": self.step, "elapsed": self.elapsed, "best_valid": self.best_valid if math.isfinite(
                self.best_valid) else None, "next_preview_h": self.next_preview_h,
            "evaluations_without_improvement": self.evaluations_without_improvement,
            "monitored": list(self.monitored),
            "meta": {k: getattr(self.model, k) for k in META_PARAMETERS}, "meta_overrides": self.model.meta_overrides,
            "iterations": self.model.iterations,
            "model_elapsed": self.model.elapsed_time, "schedules": self.schedules.get_state(),
            "lr_factor": self.lr_factor, "precision": self.config.precision,
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

    @contextlib.contextmanager
    def random_state_kept(self) -> Iterator[None]:
        """Restores every random-generator state after the block (numpy's and Python's global
        generators, the TensorFlow generator), so what runs in it changes neither the training that
        follows nor exact resume."""
        host_arrays, host_state = capture_host_rng()
        tf_state = self.tf_generator.state.numpy()
        try:
            yield
        finally:
            restore_host_rng(host_arrays, host_state)
            self.tf_generator.reset(tf_state)

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
        added = [key for key in missing if key.rsplit("/", 1)[-1] in ADDED_PARAMETERS]
        missing = [key for key in missing if key not in added]
        if missing or extra:
            raise EknError(f"checkpoint does not match the model (missing: {missing[:5]}, unexpected: {extra[:5]}); "
                           "was the config's model changed since the run started?")
        if added:
            log.info("the checkpoint was written before ekn had the parameter(s) %s: %s keep the model's values",
                     ", ".join(sorted({key.rsplit("/", 1)[-1] for key in added})), ", ".join(added))
        for key, param in params.items():
            if key in data.params:
                param.set_value(data.params[key], force=True)
        s = data.state
        self._restore_meta(s)
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
        self.best_valid = worst_score(self.monitored[1]) if s["best_valid"] is None else float(s["best_valid"])
        self.evaluations_without_improvement = int(s.get("evaluations_without_improvement", 0))
        if tuple(s.get("monitored", ("valid_loss", "min"))) != self.monitored:
            log.info("the monitored metric is now %s (%s), not %s: the best value and the early-stopping "
                     "count start afresh", *self.monitored, (s.get("monitored") or ["valid_loss"])[0])
            self.best_valid, self.evaluations_without_improvement = worst_score(self.monitored[1]), 0
        self.next_preview_h = float(s["next_preview_h"])
        self.last_metrics = {"loss": s["last_loss"]} if s.get("last_loss") is not None else {}
        self._drop_prefetched()

    def _restore_meta(self, state: dict) -> None:
        """Restores the meta-parameters set on the model (``meta_overrides``), before the optimisers'
        own, which win. Checkpoints older than that key hold the values in effect: all are set."""
        overrides = state.get("meta_overrides")
        if overrides is None:
            overrides = state["meta"]
        else:
            for key in META_PARAMETERS:
                setattr(self.model, key, None)
        for key, value in overrides.items():
            setattr(self.model, key, value)

    def _resume(self) -> None:
        """Restores the newest checkpoint of the run directory (``--resume``); a run without one
        starts from step 0."""
        path = latest_checkpoint(self.run_dir.checkpoints)
        if path is None:
            log.warning("no checkpoint in %s: starting the run from step 0", self.run_dir.checkpoints)
            return
        self.restore(read_checkpoint(path))
        log.info("resumed %s from %s (step %d)", self.run_dir.name, path, self.step)
        if self.step >= int(self.config.n_steps):
            log.warning("the run has done %d steps and n_steps is %d: nothing to train. n_steps counts "
                        "every step of the run; continue it with e.g. --set n_steps=%d", self.step,
                        int(self.config.n_steps), 2 * self.step)
