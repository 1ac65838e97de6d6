"""The trainer's answer to a non-finite loss (or parameters): log what was wrong with the batch,
fire ``ekn_on_nan_detected``, roll the whole state back to the last checkpoint, then apply
``nan_response``: ``lower_lr`` multiplies lr by ``nan_lr_factor`` per rollback since the last
checkpoint (and every lr the schedules set from then on by the checkpointed ``lr_factor``) and
continues, ``stop`` (or more than ``nan_max_retries`` rollbacks without progress) stops the run
with status ``"nan"``.

:class:`NanRollback` is mixed into :class:`~ekn_core.trainer.loop.Trainer`; it restores through
:meth:`~ekn_core.trainer.training_state.TrainingState.restore`.
"""

from __future__ import annotations

import logging

import numpy as np

from ekn_core.errors import EknError
from ekn_core.hooks import host
from ekn_core.trainer.checkpoint import latest_checkpoint, read_checkpoint

log = logging.getLogger("ekn.trainer")


class NanRollback:
    """Rollback after a non-finite step (mixed into the trainer)."""

    def _handle_nan(self, loss: float, batch: tuple[np.ndarray, ...]) -> None:
        """Rolls back after the step on ``batch`` gave the non-finite ``loss`` (NaN: non-finite parameters)."""
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
