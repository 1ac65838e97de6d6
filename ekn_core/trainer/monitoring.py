"""The trainer's monitoring every ``history_freq`` steps: the loss and error on train/valid monitor
batches, the metrics of the ``ekn_validation_metrics`` hooks (e.g. validation on whole volumes),
a history row, ``models/latest.mdl`` and ``models/best.mdl`` by the monitored metric, the
early-stopping count, and ELEKTRONN2's status line.

:class:`Monitoring` is mixed into :class:`~ekn_core.trainer.loop.Trainer`; it draws the monitor
batches through :meth:`~ekn_core.trainer.batch_feeding.BatchFeeding.get_batch` and saves models
through :meth:`~ekn_core.trainer.outputs.RunOutputs.save_model`.

Example:
    >>> is_improvement(0.5, worst_score("min"), "min"), is_improvement(0.5, 0.4, "min")
    (True, False)
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from ekn_core.errors import ConfigError, EknError, NoValidationData
from ekn_core.hooks import host

log = logging.getLogger("ekn.trainer")


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


def worst_score(mode: str) -> float:
    """The best value before any evaluation: every finite score improves on it.

    Example:
        >>> worst_score("min"), worst_score("max")
        (inf, -inf)
    """
    return math.inf if mode == "min" else -math.inf


class Monitoring:
    """Monitor batches, history rows, the best model and the status line (mixed into the trainer)."""

    def _monitor_function(self) -> Any:
        """The loss (and, where it needs no other inputs, the error) in inference mode, built once;
        a warning when the model has no error node."""
        if self._monitor_fn is None:
            from ekn_core.node import GraphFunction, union_inputs

            loss = self.model.loss_node
            outputs = [loss]
            err = self.model.error_node
            if err is not None and set(n.name for n in union_inputs([err])) <= {n.name for n in loss.input_nodes}:
                outputs.append(err)
            elif err is None:
                log.warning("the model has no error node, so the train/valid error rates are not measured ('--' in "
                            "the status line, NaN in history.csv); to measure them, designate one: "
                            "model.designate_nodes(..., error_node=nm.Errors(probs, target, target_is_sparse=True)) "
                            "or ELEKTRONN2's prediction_ext=[loss, errors, probs]")
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
        with self.random_state_kept():
            return {k: float(v) for k, v in host().validation_metrics(self, self.step).items()}

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
