"""The trainer's batch picture ``RUN_DIR/Batch_test_image.png`` (ELEKTRONN2's ``debug_getcnnbatch``):
the current step's training batch drawn without touching what training draws, and written with
:mod:`ekn_core.trainer.batch_picture` (panels and rendering) at the start of a run or from the shell.

:class:`BatchPictureWriter` is mixed into :class:`~ekn_core.trainer.loop.Trainer`; it draws through
the trainer's batch streams (:class:`~ekn_core.trainer.batch_feeding.BatchFeeding`) and sets
``last_batch_picture``.
"""

from __future__ import annotations

import logging

import numpy as np

from ekn_core.errors import EknError
from ekn_core.trainer.batch_picture import FILE_NAME

log = logging.getLogger("ekn.trainer")


class BatchPictureWriter:
    """Draws and writes the batch picture (mixed into the trainer)."""

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
        return self._with_class_weights(batch), dense

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
        path = path or self.run_dir.join(FILE_NAME)
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
