"""The trainer's outputs in the run directory besides checkpoints: model files
(``models/<which>.mdl``), the history plots (``plots/``) and the previews, with the times previews
are due (``preview_freq`` steps, else every ``prev_save_h`` hours of training from
``initial_prev_h``).

:class:`RunOutputs` is mixed into :class:`~ekn_core.trainer.loop.Trainer`; it reads ``model``,
``config``, ``run_dir``, ``history``, ``previewer``, ``step`` and ``elapsed``, and fires the hooks
``ekn_before_model_file``, ``ekn_on_checkpoint_saved``, ``ekn_on_preview_written`` and ``ekn_on_preview``.
"""

from __future__ import annotations

import logging
import time

from ekn_core.hooks import host
from ekn_core.trainer.config import MONITORABLE

log = logging.getLogger("ekn.trainer")


class RunOutputs:
    """Model files, plots and previews (mixed into the trainer)."""

    def save_model(self, which: str) -> str:
        """Writes ``models/<which>.mdl`` atomically and fires ``ekn_on_checkpoint_saved``.

        The ``ekn_before_model_file`` hooks may change the parameters for the file first (the
        built-in ``ekn_trainer_bn_statistics`` recomputes batch-normalisation statistics for
        ``final`` and ``best``); every parameter and random-generator state is restored after the
        file is written, so the training that continues is unchanged."""
        live = {key: param.get_value() for key, param in self.model.all_params.items()}
        changed = True  # until the hooks said otherwise (a failed one may have changed some)
        try:
            with self.random_state_kept():
                changed = host().before_model_file(self, which)
            path = self.model.save(self.run_dir.model_path(which))
        finally:
            if changed:
                for key, param in self.model.all_params.items():
                    param.set_value(live[key], force=True)
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

    def _previews_due(self) -> bool:
        """Whether the previews are due after this step (moves the next time-based one on)."""
        if self.previewer is None:
            return False
        freq = self.config.preview_freq
        if freq and self.step % int(freq) == 0:
            return True
        if self.elapsed / 3600.0 >= self.next_preview_h:
            self.next_preview_h += max(float(self.config.prev_save_h), 1e-9)
            return True
        return False

    def _safe_preview(self) -> None:
        """:meth:`preview`, with a failure logged instead of ending the run."""
        try:
            self.preview()
        except Exception as err:  # a failed preview must not end a long run
            log.error("preview failed: %s: %s", type(err).__name__, err)
