"""The ground truth of a labelled volume for evaluation: its raw, labels and ids opened (labels
checked to be one channel), ids read for a box with a halo, and binary labels derived from ids
(ELEKTRONN2's ``ids2barriers`` with :data:`BARRIER_OPTIONS`).

Example:
    >>> ids = np.array([[[[1, 1, 2]]]])                                 # (1, z, y, x)
    >>> block, inner = read_ids(ids, ((0, 0, 1), (1, 1, 2)), (0, 0, 0), halo=1)
    >>> block.tolist(), block[inner].tolist()
    ([[[1, 1, 2]]], [[[1]]])
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from ekn_core.errors import ConfigError
from ekn_core.prediction.tiling import Shape
from ekn_plugins.evaluation.prediction_reading import read_window
from ekn_plugins.validation.evaluate import open_volumes
from ekn_plugins.validation.spec import ValidationVolume

#: ``ids2barriers`` options for binary labels derived from ids: 2-voxel boundaries between
#: different ids along every axis, extracellular space (id 0) counted as boundary.
BARRIER_OPTIONS = {"dilute": False, "connectivity": True, "ecs_as_barr": True}


@contextlib.contextmanager
def open_labelled_volume(volume: ValidationVolume) -> Iterator[dict[str, Any]]:
    """The volume's raw, labels and ids (those given), channels first; labels one channel."""
    with open_volumes(volume) as views:
        if "labels" in views and views["labels"].shape[0] != 1:
            raise ConfigError(f"volume {volume.name!r}: labels {volume.labels!r} has {views['labels'].shape[0]} "
                              "channels; give one (z, y, x) labels volume")
        yield views


def read_ids(ids: Any, box: tuple[Shape, Shape], offset: Shape, halo: int = 0) -> tuple[np.ndarray, tuple[slice, ...]]:
    """The ids of ``box`` with up to ``halo`` voxels more on each side (as far as the ids reach),
    and the slices that cut the box out of them."""
    extent = ids.shape[1:]
    lo = tuple(max(a - o - halo, 0) for a, o in zip(box[0], offset))
    hi = tuple(min(b - o + halo, s) for b, o, s in zip(box[1], offset, extent))
    inner = tuple(slice(a - o - l, b - o - l) for a, b, o, l in zip(*box, offset, lo))
    return read_window(ids, tuple(slice(a, b) for a, b in zip(lo, hi))), inner


def labels_from_ids(ids: Any, box: tuple[Shape, Shape], offset: Shape, interior: bool = False) -> np.ndarray:
    """Binary labels of ``box`` (raw coordinates) from ground-truth ids ``(1, z, y, x)`` at
    ``offset``: ``ids2barriers`` with :data:`BARRIER_OPTIONS`, read with one voxel more on each
    side so that boundaries on the box's faces are the same as in the whole volume.

    Args:
        interior: Label the interior (1 - boundary) instead.

    Example:
        >>> ids = np.array([[[[1, 1, 1, 2, 0]]]])                          # (1, z, y, x)
        >>> labels_from_ids(ids, ((0, 0, 1), (1, 1, 3)), (0, 0, 0)).tolist()  # x 1..3: ids 1, 1
        [[[0, 1]]]
    """
    from ekn_plugins.data.image import ids2barriers

    block, inner = read_ids(ids, box, offset, halo=1)
    barrier = ids2barriers(block, **BARRIER_OPTIONS)[inner]
    return 1 - barrier if interior else barrier
