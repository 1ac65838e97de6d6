"""TensorBoard event files of a run: scalars and preview images through ``tf.summary``.

View them with ``tensorboard --logdir <run dir>/tensorboard``. The events are written with
``tf.summary.write`` and the scalars/images plugin metadata that TensorBoard reads, so writing
them does not need the ``tensorboard`` package (only viewing does).

Example:
    >>> import tempfile, numpy as np
    >>> folder = tempfile.mkdtemp()
    >>> tb = TensorBoardWriter(folder)
    >>> tb.scalars({"train/loss": 0.5, "lr": 0.01}, step=1)
    >>> tb.image("preview/raw", np.zeros((4, 5)), step=1)
    >>> tb.close()
    >>> sorted(read_scalars(folder)), read_scalars(folder)["lr"]
    (['lr', 'train/loss'], [(1, 0.009999999776482582)])
    >>> read_images(folder)["preview/raw"][0][1][:4]
    b'\\x89PNG'

"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Mapping

import numpy as np


def _metadata(plugin: str) -> bytes:
    """Serialised ``SummaryMetadata`` naming a TensorBoard plugin (``'scalars'`` or ``'images'``)."""
    from tensorflow.core.framework import summary_pb2

    meta = summary_pb2.SummaryMetadata()
    meta.plugin_data.plugin_name = plugin
    return meta.SerializeToString()


class TensorBoardWriter:
    """A ``tf.summary`` file writer for one run folder.

    Args:
        folder: Where the event files go.
    """

    def __init__(self, folder: str):
        import tensorflow as tf

        os.makedirs(folder, exist_ok=True)
        self.folder = folder
        self._writer = tf.summary.create_file_writer(folder)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """Writes finite scalar values (NaN/Inf are skipped)."""
        import tensorflow as tf

        with self._writer.as_default(step=int(step)):
            for name, value in values.items():
                if value is not None and math.isfinite(float(value)):
                    tf.summary.write(name, tf.constant(float(value), tf.float32), metadata=_metadata("scalars"))

    def image(self, name: str, image: np.ndarray, step: int) -> None:
        """Writes one image: 2-D grey (values in [0, 1] or uint8) or ``(y, x, 3)`` RGB."""
        import tensorflow as tf

        from ekn_core.trainer.preview import png_bytes

        image = np.asarray(image)
        tensor = tf.constant([str(image.shape[1]).encode(), str(image.shape[0]).encode(), png_bytes(image)])
        with self._writer.as_default(step=int(step)):
            tf.summary.write(name, tensor, metadata=_metadata("images"))

    def flush(self) -> None:
        """Flushes pending events to disk."""
        self._writer.flush()

    def close(self) -> None:
        """Flushes and closes the event file."""
        self._writer.close()


def read_scalars(folder: str) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value)]}`` of every scalar in the event files of ``folder`` (for tests and tools)."""
    import tensorflow as tf

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    out.setdefault(value.tag, []).append((event.step, float(tf.make_ndarray(value.tensor))))
    return out


def read_images(folder: str) -> dict[str, list[tuple[int, bytes]]]:
    """``{tag: [(step, png bytes)]}`` of every image in the event files of ``folder``."""
    import tensorflow as tf

    out: dict[str, list[tuple[int, bytes]]] = {}
    for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "images":
                    out.setdefault(value.tag, []).append((event.step, bytes(tf.make_ndarray(value.tensor)[2])))
    return out
