"""Segmentations of affinity graphs by agglomeration, the connectomics practice beyond connected
components: waterz (funkelab) and the mutex watershed (mwatershed).

* :class:`WaterzParams` / :func:`waterz_segmentations`: waterz cuts the volume into fragments (a
  watershed of the affinity graph), then merges neighbouring regions in the order of their score
  (``1 -`` the mean affinity of the edges between them, or a quantile of them) until the lowest
  score reaches ``threshold``. One agglomeration gives the segmentations of several thresholds
  (each merges further than the one before), which the search uses.
* :class:`MutexParams` / :func:`mutex_segmentation`: the mutex watershed takes every edge of the
  nhood, long-range ones included. Edges with affinity above their threshold attract, those
  below repel; in the order of ``|affinity - threshold|``, an attractive edge joins its two
  clusters unless a repulsive edge between them came first, a repulsive one forbids that they
  are ever joined.

Conventions. ekn's channel ``e`` is P(connected) of the edge between voxel ``p`` and
``p + nhood[e]`` (:mod:`~ekn_plugins.evaluation.affinities`). waterz reads exactly three channels:
channel ``d`` at ``p`` is the edge between ``p`` and the previous voxel along axis ``d`` of
``(z, y, x)``, i.e. the offsets ``(-1, 0, 0), (0, -1, 0), (0, 0, -1)`` of ``mknhood3d(1)``
(its ``basic_watershed.hpp`` and ``region_graph.hpp``); :func:`waterz_affinities` picks these
edges from any nhood that has them and refuses others. A 2-D net's nhood (no z offsets: slices
predicted on their own) gets a z channel of 0, so no segment crosses slices. mwatershed takes
signed weights: ``affinities[e, p]`` joins ``p`` and ``p + offsets[e]``, the same as ekn, and a
weight above 0 attracts, one at or below 0 repels; ekn passes ``affinity - threshold``
(mwatershed's bias is ``-threshold``). ``threshold=0`` for the nearest-neighbour edges and
``long_range_threshold=1`` give the original mutex watershed of Wolf et al. (2018): short edges
only attract (weight ``p``), long ones only repel (weight ``-(1 - p)``).

Both libraries ship as binary wheels. waterz compiles a scoring function with the system's C++
compiler and the Boost headers when its wheel has no prebuilt variant of it; ekn offers only the
prebuilt ones (:data:`WATERZ_SCORINGS`), so nothing is compiled. waterz prints its progress to
the standard output from C++; ekn silences the process's standard output while it runs
(:func:`quiet_stdout`).

Example:
    >>> import numpy as np
    >>> from ekn_plugins.malis import mknhood3d, seg_to_affgraph
    >>> true = np.array([[[1, 1, 1, 2, 2], [1, 1, 1, 2, 2]]])             # (z, y, x)
    >>> aff = 0.1 + 0.8 * seg_to_affgraph(true, mknhood3d(1)).astype(np.float32)
    >>> aff[2, 0, 0, 3] = 0.6                         # one of the two edges between the cells is strong
    >>> [WaterzParams(threshold=t).segment(aff)[0].tolist() for t in (0.6, 0.7)]  # their score: 1 - 0.35
    [[[1, 1, 1, 2, 2], [1, 1, 1, 2, 2]], [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]]
    >>> MutexParams(threshold=0.5).segment(aff)[0].tolist()    # the repulsive edge (0.1) comes first
    [[1, 1, 1, 2, 2], [1, 1, 1, 2, 2]]
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ekn_core.errors import ConfigError
from ekn_plugins.evaluation.segmentation import AffinitySegmenter, id_array, unit_value

#: The waterz scoring functions ekn offers: those its wheel ships compiled (C++ types of waterz's
#: ``MergeFunctions.hpp``). ``mean``: 1 - the mean affinity of the edges between two regions;
#: ``hist_quant_Q``: 1 - their Q-th percentile (a 256-bin histogram), Q = 10, 15, ..., 95.
WATERZ_SCORINGS = {"mean": "OneMinus<MeanAffinity<RegionGraphType, ScoreValue>>",
                   **{f"hist_quant_{q}": f"OneMinus<HistogramQuantileAffinity<RegionGraphType, {q}, ScoreValue, 256>>"
                      for q in range(10, 100, 5)}}


class _QuietStdout:
    """The redirection that :func:`quiet_stdout` shares between threads: the first user starts
    it, the last one ends it (so overlapping users in threads restore the output only once)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.saved_fd = -1
        self.saved_stdout: Any = None

    def enter(self) -> None:
        with self.lock:
            if self.users == 0:
                sys.stdout.flush()
                self.saved_fd = os.dup(1)
                with open(os.devnull, "w") as null:
                    os.dup2(null.fileno(), 1)
                self.saved_stdout, sys.stdout = sys.stdout, io.StringIO()
            self.users += 1

    def exit(self) -> None:
        import ctypes

        with self.lock:
            self.users -= 1
            if self.users == 0:
                ctypes.CDLL(None).fflush(None)  # C stdio buffers, before fd 1 is restored
                os.dup2(self.saved_fd, 1)
                os.close(self.saved_fd)
                sys.stdout, self.saved_stdout = self.saved_stdout, None


_QUIET = _QuietStdout()


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Sends the process's standard output (file descriptor 1, what C++ ``std::cout`` writes to,
    and ``sys.stdout``) to the null device for the block; other threads' output to it is lost
    meanwhile. Threads may use it at the same time (Dask workers with several threads): the
    output stays silenced until the last of them leaves, then is restored.

    Example:
        >>> with quiet_stdout():
        ...     print("not shown")
        >>> print("shown")
        shown
    """
    _QUIET.enter()
    try:
        yield
    finally:
        _QUIET.exit()


def _nearest(offset: Sequence[int]) -> bool:
    """An offset to a face neighbour (one voxel along one axis)."""
    return sum(abs(int(v)) for v in offset) == 1


def waterz_affinities(affinities: np.ndarray, nhood: Sequence[Sequence[int]]) -> np.ndarray:
    """waterz's three channels, C-contiguous float32 ``(3, z, y, x)``: the edges to the previous
    voxel along z, y and x, taken from ``affinities`` of ``nhood``.

    A nhood without z offsets (a 2-D net's) gets a z channel of 0: slices stay apart.

    Raises:
        ConfigError: An edge waterz needs is not in ``nhood``.

    Example:
        >>> aff = np.arange(8, dtype=np.float32).reshape(2, 1, 2, 2) / 8
        >>> waterz_affinities(aff, [[0, 0, -1], [0, -1, 0]])[:, 0].tolist()    # x, y -> z, y, x
        [[[0.0, 0.0], [0.0, 0.0]], [[0.5, 0.625], [0.75, 0.875]], [[0.0, 0.125], [0.25, 0.375]]]
    """
    rows = [tuple(int(v) for v in row) for row in nhood]
    planar = all(row[0] == 0 for row in rows)
    out = np.zeros((3, *affinities.shape[1:]), np.float32)
    for axis, name in enumerate("zyx"):
        previous = tuple(-1 if a == axis else 0 for a in range(3))
        if previous in rows:
            out[axis] = affinities[rows.index(previous)]
        elif not (axis == 0 and planar):
            raise ConfigError(f"waterz needs the edges to the previous voxel along z, y and x (offsets (-1, 0, 0), "
                              f"(0, -1, 0), (0, 0, -1)); the nhood {[list(r) for r in rows]} lacks {list(previous)} "
                              f"(along {name}): segment it with the mutex or affinity segmenter")
    return out


def _numbered(seg: np.ndarray, min_size: int) -> np.ndarray:
    """``seg`` (0 = unassigned) with ids 1, 2, ... in C order of each segment's first voxel;
    segments of fewer than ``min_size`` voxels become 0."""
    flat = seg.reshape(-1)
    ids, first, inverse, sizes = np.unique(flat, return_index=True, return_inverse=True, return_counts=True)
    keep = (ids != 0) & (sizes >= min_size)
    order = np.argsort(np.where(keep, first, flat.size), kind="stable")
    new_id = np.zeros(len(ids), np.int64)
    new_id[order[:int(keep.sum())]] = np.arange(1, int(keep.sum()) + 1)
    return id_array(new_id[inverse].reshape(seg.shape))


def waterz_segmentations(affinities: np.ndarray, nhood: Sequence[Sequence[int]], thresholds: Sequence[float],
                         scoring: str = "mean", aff_threshold_low: float = 0.0001,
                         aff_threshold_high: float = 0.9999, min_size: int = 1) -> Iterator[tuple[float, np.ndarray]]:
    """waterz's segmentations of one agglomeration at several thresholds.

    Args:
        affinities: ``(n_edges, z, y, x)`` P(connected) of ``nhood`` (see :func:`waterz_affinities`).
        nhood: Its offsets.
        thresholds: Merge scores at which a segmentation is taken; higher ones merge more.
        scoring: A :data:`WATERZ_SCORINGS` name.
        aff_threshold_low, aff_threshold_high: The fragments' watershed: a voxel whose edges are
            all at most ``low`` stays unassigned (0); edges of at least ``high`` always join.
        min_size: Segments of fewer voxels become unassigned (0).

    Yields:
        ``(threshold, ids)`` in increasing order of the thresholds: uint32 ids (uint64 if they
        do not fit), 1..n in C order of each segment's first voxel, 0 unassigned; each array is
        the caller's own.
    """
    import waterz

    aff = waterz_affinities(affinities, nhood)
    values = sorted({float(t) for t in thresholds})
    runs = waterz.agglomerate(aff, values, aff_threshold_low=aff_threshold_low, aff_threshold_high=aff_threshold_high,
                              scoring_function=WATERZ_SCORINGS[scoring])
    for threshold in values:
        with quiet_stdout():  # waterz works (and prints) when asked for the next one
            seg = next(runs)
        yield threshold, _numbered(seg, min_size)  # a new array: waterz overwrites seg in place


@dataclass(frozen=True)
class WaterzParams(AffinitySegmenter):
    """How :func:`waterz_segmentations` agglomerates affinities (see the module).

    Attributes:
        threshold: The score up to which regions are merged, in [0, 1]: with ``mean`` scoring,
            neighbouring regions whose mean edge affinity is above ``1 - threshold`` end up
            joined (merging in the order of the score). 0 keeps the fragments; higher values
            merge more.
        scoring: A :data:`WATERZ_SCORINGS` name: ``mean`` (default) or ``hist_quant_Q``.
        aff_threshold_low, aff_threshold_high: Of the fragments' watershed (waterz's defaults):
            voxels whose edges are all at most ``low`` stay unassigned (0), edges of at least
            ``high`` always join.
        min_size: Segments of fewer voxels become unassigned (0).
        nhood: ``(n_edges, 3)`` offsets of the affinity channels (default ``mknhood3d(1)``); it
            must contain the edges to the previous voxel along z, y and x (or, for a 2-D net,
            along y and x); not searched.

    Example:
        >>> WaterzParams(threshold=0.3, scoring="hist_quant_75").to_dict()["scoring"]
        'hist_quant_75'
        >>> WaterzParams(scoring="median")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ekn_core.errors.ConfigError: scoring must be one of the scoring functions waterz ships compiled: mean, hist_quant_10, ...
    """

    threshold: float = 0.5
    scoring: str = "mean"
    aff_threshold_low: float = 0.0001
    aff_threshold_high: float = 0.9999
    min_size: int = 1
    nhood: tuple[tuple[int, int, int], ...] | None = dataclasses.field(default=None,
                                                                        metadata={"searchable": False})

    #: The segmenter's name (in search records and reports).
    kind: ClassVar[str] = "waterz"

    def __post_init__(self) -> None:
        set_ = functools.partial(object.__setattr__, self)
        set_("threshold", unit_value(self.threshold, "threshold", "a merge score in [0, 1]"))
        if self.scoring not in WATERZ_SCORINGS:
            raise ConfigError(f"scoring must be one of the scoring functions waterz ships compiled: "
                              f"{', '.join(WATERZ_SCORINGS)}; got {self.scoring!r}")
        for name in ("aff_threshold_low", "aff_threshold_high"):
            set_(name, unit_value(getattr(self, name), name, "an affinity in [0, 1]"))
        if not self.aff_threshold_low < self.aff_threshold_high:
            raise ConfigError(f"aff_threshold_low ({self.aff_threshold_low}) must be below aff_threshold_high "
                              f"({self.aff_threshold_high})")
        self._check_shared()
        waterz_affinities(np.zeros((len(self.nhood), 1, 1, 1), np.float32), self.nhood)  # refuses a nhood early

    def segment(self, affinities: Any) -> np.ndarray:
        """The segmentation at ``threshold``."""
        return next(self.segment_thresholds(affinities, [self.threshold]))[1]

    def segment_thresholds(self, affinities: Any, thresholds: Sequence[float]) -> Iterator[tuple[float, np.ndarray]]:
        """:func:`waterz_segmentations` of one agglomeration with these parameters at ``thresholds``
        (``threshold`` itself is not used).

        Raises:
            ShapeError, ConfigError: ``affinities`` are not ``(n_edges, z, y, x)`` floats in [0, 1]
                with one channel per edge of ``nhood`` (:meth:`check`).
        """
        return waterz_segmentations(self.check(affinities), self.nhood, thresholds, self.scoring,
                                    self.aff_threshold_low, self.aff_threshold_high, self.min_size)


def mutex_segmentation(affinities: np.ndarray, nhood: Sequence[Sequence[int]], threshold: float = 0.5,
                       long_range_threshold: float = 0.5, min_size: int = 1) -> np.ndarray:
    """Mutex watershed (mwatershed) of an affinity graph.

    Args:
        affinities: ``(n_edges, z, y, x)`` P(connected) of ``nhood``, any offsets.
        nhood: Its offsets.
        threshold: Edges to face neighbours with affinity above it attract, the others repel;
            edges are taken in the order of ``|affinity - threshold|``.
        long_range_threshold: The same for the longer edges.
        min_size: Segments of fewer voxels become unassigned (0).

    Returns:
        uint32 ids (uint64 if they do not fit), 1..n in C order of each segment's first voxel; a
        voxel that no attractive edge joins to another is a segment of its own.
    """
    import mwatershed

    offsets = [[int(v) for v in row] for row in nhood]
    bias = np.array([-threshold if _nearest(row) else -long_range_threshold for row in offsets])
    weights = np.asarray(affinities, np.float64) + bias.reshape(-1, 1, 1, 1)
    seg = mwatershed.agglom(weights, offsets).astype(np.int64)
    singles = seg == 0  # mwatershed labels the voxels it joined to nothing 0
    seg[singles] = seg.max(initial=0) + 1 + np.arange(int(singles.sum()))
    return _numbered(seg, min_size)


@dataclass(frozen=True)
class MutexParams(AffinitySegmenter):
    """How :func:`mutex_segmentation` segments affinities (see the module).

    Attributes:
        threshold: Edges to face neighbours (offsets of one voxel along one axis) with affinity
            above it attract, the others repel; in [0, 1]. Higher values split more.
        long_range_threshold: The same for the other (long-range) edges of the nhood; no effect
            without them. 1 makes them purely repulsive.
        min_size: Segments of fewer voxels become unassigned (0).
        nhood: ``(n_edges, 3)`` offsets of the affinity channels (default ``mknhood3d(1)``); not
            searched.

    Example:
        >>> MutexParams(long_range_threshold=0.8, nhood=[[-1, 0, 0], [0, -1, 0], [0, 0, -1], [0, 0, -3]]).to_dict()
        {'threshold': 0.5, 'long_range_threshold': 0.8, 'min_size': 1, 'nhood': [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [0, 0, -3]]}
    """

    threshold: float = 0.5
    long_range_threshold: float = 0.5
    min_size: int = 1
    nhood: tuple[tuple[int, int, int], ...] | None = dataclasses.field(default=None,
                                                                        metadata={"searchable": False})

    #: The segmenter's name (in search records and reports).
    kind: ClassVar[str] = "mutex"

    def __post_init__(self) -> None:
        set_ = functools.partial(object.__setattr__, self)
        for name in ("threshold", "long_range_threshold"):
            set_(name, unit_value(getattr(self, name), name, "an affinity in [0, 1]"))
        self._check_shared()

    @property
    def long_range(self) -> bool:
        """Whether the nhood has long-range edges (for which ``long_range_threshold`` is)."""
        return not all(_nearest(row) for row in self.nhood)

    def segment(self, affinities: Any) -> np.ndarray:
        """:func:`mutex_segmentation` with these parameters.

        Raises:
            ShapeError, ConfigError: ``affinities`` are not ``(n_edges, z, y, x)`` floats in [0, 1]
                with one channel per edge of ``nhood`` (:meth:`check`).
        """
        return mutex_segmentation(self.check(affinities), self.nhood, self.threshold, self.long_range_threshold,
                                  self.min_size)
