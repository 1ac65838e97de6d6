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
from ekn_core.prediction.tiling import Shape, box_window
from ekn_plugins.evaluation.segmentation import WatershedParams, segmentation_scores, watershed_segmentation
from ekn_plugins.validation.spec import SEGMENTATION_METRICS

#: Memory per voxel of the box held for the segmentation: ids, boundary probability, the best segmentation.
BOX_BYTES_PER_VOXEL = 24
#: Memory per voxel of one segmentation process (watershed, seeds, distances, the scores' working
#: copies): about 100 measured with scikit-image 0.2x (peak RSS and tracemalloc on 0.5 M and 3 M
#: voxels); rounded up.
SEARCH_BYTES_PER_VOXEL = 128


def boundary_channel(n_lab: int, configured: int | None, *, name: str = "volume_validation boundary_channel",
                     source: str = "the net has",
                     ask: str = "set 'boundary_channel' to the one that holds the boundary (membrane) probability") -> int:
    """The output channel that holds the boundary (or the evaluated) probability: ``configured``
    if given, else 1 of a 2-channel softmax, 0 of one sigmoid channel.

    Args:
        n_lab: The net's output channels (the input's, for a given map).
        configured: The chosen channel, or None.
        name, source, ask: The setting or option named in errors, what has the channels, and how
            to choose one (each command words them for its users).

    Raises:
        ConfigError: None with another number of channels, or a channel that does not exist.
    """
    channels = ", ".join(str(c) for c in range(n_lab))
    if configured is None:
        if n_lab in (1, 2):
            return n_lab - 1
        raise ConfigError(f"{name}: {source} {n_lab} channels ({channels}); {ask}")
    if isinstance(configured, bool) or not isinstance(configured, (int, np.integer)) or not 0 <= configured < n_lab:
        raise ConfigError(f"{name} {configured!r} does not exist: {source} {n_lab} channel(s) ({channels})")
    return int(configured)


def check_memory(box_shape: Shape, workers: int = 1, box_bytes: int | None = None,
                 search_bytes: int | None = None, *, fix: str) -> None:
    """Checks that the box of a volume, held in memory with its ids, and its segmentation in
    ``workers`` processes (0: none) fit into the available memory (``box_bytes`` per voxel of the
    box, ``search_bytes`` per voxel and process; default :data:`BOX_BYTES_PER_VOXEL` and
    :data:`SEARCH_BYTES_PER_VOXEL`).

    Raises:
        ConfigError: They do not, with ``fix`` (what to do instead).
    """
    import psutil

    voxels = int(np.prod(box_shape))
    per_voxel = (BOX_BYTES_PER_VOXEL if box_bytes is None else box_bytes) + workers * (
        SEARCH_BYTES_PER_VOXEL if search_bytes is None else search_bytes)
    need = voxels * per_voxel
    available = psutil.virtual_memory().available
    if need > available:
        search = f" and a segmentation search in {workers} process(es)" if workers else ""
        raise ConfigError(f"holding its labelled box {tuple(box_shape)} ({voxels} voxels) in memory for the "
                          f"ids{search} needs about {need / 2**20:,.0f} MiB, but {available / 2**20:,.0f} MiB are "
                          f"available; {fix}")


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
        self.prob[box_window(lo, hi, self.origin)] = pred[self.channel]

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
