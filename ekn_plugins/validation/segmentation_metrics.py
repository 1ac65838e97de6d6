"""Segmentation metrics of validation on whole volumes: the net's boundary channel is copied block
by block into one array of the evaluated box, segmented by watershed and scored against the
volume's ground-truth object ids with :mod:`ekn_plugins.evaluation.segmentation`.

Example:
    >>> boundary_channel(n_lab=2, configured=None), boundary_channel(n_lab=1, configured=None)
    (1, 0)
    >>> box = BoundaryBox(origin=(0, 4, 0), end=(2, 6, 8), channel=1)
    >>> pred = np.zeros((2, 2, 2, 8), np.float32); pred[1, ..., 3:5] = 1.0  # channel 1: membrane at x = 3, 4
    >>> for lo in (0, 4):                                                  # two blocks along x
    ...     box.add((0, 4, lo), (2, 6, lo + 4), pred[..., lo:lo + 4])
    >>> ids = np.ones((2, 2, 8), np.uint32); ids[..., 4:] = 2
    >>> scores, voxels = box.score(ids, WatershedParams())
    >>> scores, voxels
    ({'vi': 0.0, 'vi_split': 0.0, 'vi_merge': 0.0, 'adapted_rand_error': 0.0}, 32)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ekn_core.errors import ConfigError
from ekn_core.prediction.tiling import Shape
from ekn_plugins.evaluation.segmentation import WatershedParams, segmentation_scores, watershed_segmentation
from ekn_plugins.validation.spec import SEGMENTATION_METRICS

#: Peak bytes per voxel of the evaluated box while a volume is segmented and scored: the boundary
#: channel (float32), the ids, the watershed's seeds and segments and the scores' working copies.
#: Measured about 100 with scikit-image 0.2x (peak RSS and tracemalloc on 0.5 M and 3 M voxels);
#: rounded up.
BYTES_PER_VOXEL = 128


def boundary_channel(n_lab: int, configured: int | None) -> int:
    """The output channel that holds the boundary probability.

    Args:
        n_lab: The net's output channels.
        configured: The setting's ``boundary_channel``; None: 1 for a 2-channel softmax, 0 for one
            sigmoid channel.

    Raises:
        ConfigError: None with another number of channels, or a channel the net does not have.
    """
    if configured is None:
        if n_lab in (1, 2):
            return n_lab - 1
        raise ConfigError(f"volume_validation boundary_channel: the net has {n_lab} output channels; set "
                          "'boundary_channel' to the one that holds the boundary (membrane) probability")
    if configured >= n_lab:
        raise ConfigError(f"volume_validation boundary_channel {configured} does not exist: the net has {n_lab} "
                          f"output channel(s), 0 .. {n_lab - 1}")
    return configured


def check_memory(box: Shape) -> None:
    """Raises a ConfigError when segmenting a box of shape ``box`` needs more memory than is
    available (:data:`BYTES_PER_VOXEL` per voxel)."""
    import psutil

    need = BYTES_PER_VOXEL * int(np.prod(box))
    available = psutil.virtual_memory().available
    if need > available:
        raise ConfigError(f"segmenting its evaluated box {tuple(box)} needs about {need / 2**30:.3g} GiB, but "
                          f"{available / 2**30:.3g} GiB of memory are available; evaluate a part with 'region': "
                          "((z0, y0, x0), (z1, y1, x1))")


class BoundaryBox:
    """The boundary channel of a volume's evaluated box, filled block by block.

    Args:
        origin, end: The box in raw coordinates (:class:`~ekn_core.prediction.blockwise.Plan`'s).
        channel: Output channel with the boundary probability (:func:`boundary_channel`).
    """

    def __init__(self, origin: Shape, end: Shape, channel: int):
        self.origin, self.channel = tuple(origin), channel
        self.prob = np.full([e - o for o, e in zip(origin, end)], np.nan, np.float32)  # NaN: not predicted

    def add(self, lo: Shape, hi: Shape, pred: np.ndarray) -> None:
        """Copies the boundary channel of a predicted block ``(n_lab, *(hi - lo))``."""
        self.prob[tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, self.origin))] = pred[self.channel]

    def score(self, ids: Any, params: WatershedParams) -> tuple[dict[str, float], int]:
        """The watershed segmentation's :data:`~ekn_plugins.validation.spec.SEGMENTATION_METRICS`
        against ``ids`` (the box's ground truth; id 0 is not scored) and the number of scored voxels
        (0 and no scores when every id is 0)."""
        ids = np.asarray(ids)
        scored = int(np.count_nonzero(ids))
        if not scored:
            return {}, 0
        scores = segmentation_scores(ids, watershed_segmentation(self.prob, params))
        return {name: scores[name] for name in SEGMENTATION_METRICS}, scored
