"""Grid search of the segmentation parameters that segment a net's prediction best (ELEKTRONN2's
``optimise_segmentation``, which wrote ``<name>-Seg_Params.txt``; ekn writes JSON and a markdown table).

The segmenter is the type of the parameters (``base``, :data:`SEGMENTERS`):
:class:`~ekn_plugins.evaluation.segmentation.WatershedParams` (default) segments a boundary
probability map with :func:`~ekn_plugins.evaluation.segmentation.watershed_segmentation`;
:class:`~ekn_plugins.evaluation.segmentation.AffinityParams` (connected components),
:class:`~ekn_plugins.evaluation.agglomeration.WaterzParams` and
:class:`~ekn_plugins.evaluation.agglomeration.MutexParams` segment an affinity graph. Every grid
point is segmented and scored with :func:`~ekn_plugins.evaluation.segmentation.segmentation_scores`
(waterz: the points that differ only in ``threshold`` from one agglomeration); the best point has
the lowest ``metric``, ties going to a segmentation with segments before an empty one, then to the first in
grid order.

Example:
    >>> import numpy as np
    >>> true = np.ones((2, 4, 8), np.uint32); true[..., 4:] = 2
    >>> prob = np.full(true.shape, 0.1); prob[..., 3:5] = 0.6       # a faint membrane
    >>> search = search_segmentation(prob, true, grid={"threshold": [0.8, 0.5]})
    >>> search.best_params.threshold, search.best_scores["vi"], [s["n_pred"] for _, s in search.rows]
    (0.5, 0.0, [1, 2])
    >>> print(search.table())
    | rank | threshold | vi | vi_split | vi_merge | adapted_rand_error | rand_precision | rand_recall | n_pred |
    |---|---|---|---|---|---|---|---|---|
    | 2 | 0.8 | 1.0000 | 0.0000 | 1.0000 | 0.3404 | 0.4921 | 1.0000 | 1 |
    | 1 | 0.5 | 0.0000 | 0.0000 | 0.0000 | 0.0000 | 1.0000 | 1.0000 | 2 |
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ekn_core.errors import ConfigError, ShapeError
from ekn_plugins.evaluation.agglomeration import MutexParams, WaterzParams
from ekn_plugins.evaluation.segmentation import AffinityParams, AffinitySegmenter, WatershedParams, segmentation_scores

#: The parameters of a segmenter (one of :data:`SEGMENTERS`).
Params = WatershedParams | AffinitySegmenter
#: The segmenters' parameter classes by :attr:`~WatershedParams.kind`.
SEGMENTERS: dict[str, type] = {cls.kind: cls for cls in (WatershedParams, AffinityParams, WaterzParams, MutexParams)}

#: The default grid of the watershed. The threshold is the main knob (low: small, separated seeds, splits; high:
#: seeds leak across weak membranes, merges); eroding the seeds separates cells joined through gaps in the
#: predicted membrane; merging segments below 50 voxels removes fragments from noisy interiors.
#: 5 x 3 x 2 = 30 segmentations.
DEFAULT_GRID: dict[str, list[Any]] = {"threshold": [0.1, 0.2, 0.3, 0.5, 0.7], "seed_erosion": [0.0, 1.0, 2.0],
                                      "min_size": [1, 50]}
#: The default grid of affinity segmentations: the threshold splits (high) or merges (low) along
#: uncertain edges; components below 50 voxels become unassigned. 6 x 2 = 12 segmentations.
DEFAULT_AFFINITY_GRID: dict[str, list[Any]] = {"threshold": [0.2, 0.4, 0.5, 0.6, 0.8, 0.9], "min_size": [1, 50]}
#: The default grid of waterz: the merge threshold (higher merges more), 0.1 to 0.9 in steps of 0.05, with
#: mean-affinity scoring: 17 segmentations from one agglomeration. (Quantile scoring, e.g.
#: ``"scoring": ["mean", "hist_quant_75"]``, can segment noisy affinities better, but keeps a 1 KiB histogram
#: per contact of two fragments: some 1 KB per voxel on noisy affinities, against 0.1 KB for the mean.)
DEFAULT_WATERZ_GRID: dict[str, list[Any]] = {"threshold": [round(0.05 * k, 2) for k in range(2, 19)]}
#: The default grid of the mutex watershed: where the nearest-neighbour edges turn from repulsive to attractive
#: x the same for long-range edges (1: only repulsive); 3 x 3 = 9 segmentations. Without long-range edges in
#: the nhood, :data:`DEFAULT_MUTEX_SHORT_GRID`: the threshold alone, finer around 0.5, where the result changes
#: fastest (7).
DEFAULT_MUTEX_GRID: dict[str, list[Any]] = {"threshold": [0.3, 0.5, 0.7], "long_range_threshold": [0.5, 0.8, 1.0]}
DEFAULT_MUTEX_SHORT_GRID: dict[str, list[Any]] = {"threshold": [0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7]}
#: The default grid by segmenter (:attr:`WatershedParams.kind`); see :func:`default_grid`.
DEFAULT_GRIDS = {"watershed": DEFAULT_GRID, "affinity": DEFAULT_AFFINITY_GRID, "waterz": DEFAULT_WATERZ_GRID,
                 "mutex": DEFAULT_MUTEX_GRID}
#: Metrics the search can minimise.
METRICS = ("vi", "adapted_rand_error")
_TABLE_SCORES = ("vi", "vi_split", "vi_merge", "adapted_rand_error", "rand_precision", "rand_recall", "n_pred")


@dataclass
class SegmentationSearch:
    """The result of :func:`search_segmentation`.

    Attributes:
        metric: The minimised score (one of :data:`METRICS`).
        rows: ``(params, scores)`` of every grid point, in grid order (the params of one segmenter).
        channel: The net's output channel that was segmented (``ekn evaluate`` records it; None:
            not recorded, or affinities). ``ekn segment --params`` uses it.
        interior: The channel was the interior (cell) probability, segmented as ``1 - p`` (None:
            not recorded). ``ekn segment --params`` uses it.
    """

    metric: str
    rows: list[tuple[Params, dict[str, float]]]
    channel: int | None = None
    interior: bool | None = None

    def _rank_key(self, i: int) -> tuple[float, bool, int]:
        """Lowest ``metric`` first; on ties a segmentation with segments before an empty one (an empty
        segmentation can score as well as one segment over everything), then grid order."""
        scores = self.rows[i][1]
        return scores[self.metric], scores.get("n_pred", 1) == 0, i

    @property
    def best_index(self) -> int:
        """Index of the best row: lowest ``metric``; on ties, one with segments, else the first."""
        return min(range(len(self.rows)), key=self._rank_key)

    @property
    def segmenter(self) -> str:
        """The :attr:`~WatershedParams.kind` of the parameters (a :data:`SEGMENTERS` key)."""
        return self.rows[0][0].kind

    @property
    def best_params(self) -> Params:
        """The parameters of the best row."""
        return self.rows[self.best_index][0]

    @property
    def best_scores(self) -> dict[str, float]:
        """The scores of the best row."""
        return self.rows[self.best_index][1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record: ``segmenter``, ``metric``, ``channel``, ``interior``, ``best`` and ``rows``
        (each ``{"params", "scores"}``)."""
        rows = [{"params": params.to_dict(), "scores": dict(scores)} for params, scores in self.rows]
        return {"segmenter": self.segmenter, "metric": self.metric, "channel": self.channel,
                "interior": self.interior, "best": rows[self.best_index], "rows": rows}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> SegmentationSearch:
        """Rebuilds a search from :meth:`to_dict`'s record."""
        params = SEGMENTERS[record.get("segmenter", "watershed")]
        rows = [(params(**row["params"]), {k: math.nan if v is None else v for k, v in row["scores"].items()})
                for row in record["rows"]]  # null: a score that was NaN (strict JSON)
        channel, interior = record.get("channel"), record.get("interior")
        if not (channel is None or (isinstance(channel, int) and not isinstance(channel, bool) and channel >= 0)) \
                or not (interior is None or isinstance(interior, bool)):
            raise ValueError(f"channel must be a channel number or null and interior true, false or null, got "
                             f"{channel!r} and {interior!r}")
        return cls(record["metric"], rows, channel, interior)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SegmentationSearch:
        """Reads the JSON file :meth:`save` wrote."""
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def table(self) -> str:
        """Markdown table of the rows: rank by ``metric`` (1 = best), the parameters that differ
        between rows, and the main scores."""
        params = [p.to_dict() for p, _ in self.rows]
        varied = [name for name in params[0] if any(p[name] != params[0][name] for p in params)] or ["threshold"]
        order = sorted(range(len(self.rows)), key=self._rank_key)
        rank = {row: position + 1 for position, row in enumerate(order)}

        lines = ["| " + " | ".join(["rank", *varied, *_TABLE_SCORES]) + " |",
                 "|" + "---|" * (1 + len(varied) + len(_TABLE_SCORES))]
        for i, (p, (_, scores)) in enumerate(zip(params, self.rows)):
            cells = [str(rank[i])] + [str(p[name]) for name in varied]
            cells += [f"{scores[name]:.4f}" if isinstance(scores[name], float) else str(scores[name])
                      for name in _TABLE_SCORES]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def save(self, prefix: str | os.PathLike) -> tuple[str, str]:
        """Writes ``<prefix>-seg_params.json`` (:meth:`to_dict`; strict JSON, NaN scores as null) and ``<prefix>-seg_params.md``
        (:meth:`table`) atomically; for a directory, ``seg_params.json`` and ``seg_params.md`` in it.

        Returns:
            The paths of the JSON and the markdown file.
        """
        from ekn_core.atomic import write_json, write_text

        prefix = os.fspath(prefix)
        stem = (os.path.join(prefix, "seg_params") if os.path.isdir(prefix) or prefix.endswith(os.sep)
                else prefix + "-seg_params")
        write_json(stem + ".json", self.to_dict(), strict=True)
        write_text(stem + ".md", f"Segmentation search, best by {self.metric}\n\n{self.table()}\n")
        return stem + ".json", stem + ".md"


def default_grid(base: Params) -> dict[str, list[Any]]:
    """The default grid of ``base``'s segmenter (:data:`DEFAULT_GRIDS`); for the mutex watershed of
    a nhood without long-range edges, :data:`DEFAULT_MUTEX_SHORT_GRID`.

    Example:
        >>> list(default_grid(MutexParams())), list(default_grid(MutexParams(nhood=[[0, 0, -1], [0, 0, -3]])))
        (['threshold'], ['threshold', 'long_range_threshold'])
    """
    if isinstance(base, MutexParams) and not base.long_range:
        return DEFAULT_MUTEX_SHORT_GRID
    return DEFAULT_GRIDS[base.kind]


def grid_points(grid: dict[str, Sequence[Any]] | None = None, base: Params | None = None) -> list[Params]:
    """The parameters of every grid point, in grid order (the last key varies fastest).

    Args:
        grid: Lists of values by searchable field of ``base``'s class (default:
            :func:`default_grid`).
        base: Values of the fields not in ``grid``, and the segmenter (default
            :class:`WatershedParams()`).

    Example:
        >>> [p.threshold for p in grid_points({"threshold": [0.2, 0.4], "min_size": [1, 9]})]
        [0.2, 0.2, 0.4, 0.4]
        >>> len(grid_points(base=AffinityParams())), len(grid_points(base=WaterzParams()))
        (12, 17)
    """
    base = base or WatershedParams()
    grid = default_grid(base) if grid is None else grid
    fields = [f.name for f in dataclasses.fields(base) if f.metadata.get("searchable", True)]
    for name, values in grid.items():
        if name not in fields:
            raise ConfigError(f"the grid has {name!r}, which is no {base.kind} parameter; use {', '.join(fields)}")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
            raise ConfigError(f"grid[{name!r}] must be a non-empty list of values, got {values!r}")
    points = []
    for combination in itertools.product(*grid.values()):
        values = dict(zip(grid, combination))
        try:
            points.append(dataclasses.replace(base, **values))
        except ConfigError as err:
            raise ConfigError(f"grid point {values}: {err}") from None
    return points


def start_method(reads_volumes: bool = False) -> str:
    """How to start worker processes: ``fork`` where the platform has it and the process is safe to
    fork; ``forkserver`` (else ``spawn``) once TensorFlow was imported, whose thread pools make forked
    children hang or crash, and, for workers that read volumes (``reads_volumes``), once tensorstore
    (ekn's zarr, N5 and precomputed reader) was imported: it aborts a forked child that reads a
    volume after the parent read one. Workers that read no volume are forked with tensorstore
    imported: they share the parent's arrays instead of receiving a copy each. A worker from a fork
    server or spawned imports the main module again, so a script that starts such workers needs
    ``if __name__ == "__main__":``.

    Example:
        >>> import multiprocessing
        >>> context = multiprocessing.get_context(start_method(reads_volumes=True))  # workers that read volumes
    """
    methods = multiprocessing.get_all_start_methods()
    unsafe = {"tensorflow", "tensorstore"} if reads_volumes else {"tensorflow"}
    if not unsafe & set(sys.modules) and "fork" in methods:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


# the volumes of a worker process, set once by _start_worker
_WORKER: dict[str, Any] = {}


def _start_worker(prediction: np.ndarray, seg_true: np.ndarray, ignore_labels: Sequence[int]) -> None:
    _WORKER.update(prediction=prediction, seg_true=seg_true, ignore_labels=ignore_labels)


def _runs(points: list[Params]) -> list[list[Params]]:
    """The grid points grouped into segmenter runs: waterz's points that differ only in
    ``threshold`` share one agglomeration; any other point is a run of its own.

    Example:
        >>> [len(run) for run in _runs(grid_points({"threshold": [0.2, 0.4], "scoring": ["mean", "hist_quant_50"]},
        ...                                        WaterzParams()))]
        [2, 2]
    """
    if not isinstance(points[0], WaterzParams):
        return [[p] for p in points]
    runs: dict[WaterzParams, list[Params]] = {}
    for p in points:
        runs.setdefault(dataclasses.replace(p, threshold=0.0), []).append(p)
    return list(runs.values())


def _score(run: list[Params]) -> list[dict[str, float]]:
    """The scores of the points of one run (:func:`_runs`), in its order."""
    def score(seg: np.ndarray) -> dict[str, float]:
        return segmentation_scores(_WORKER["seg_true"], seg, _WORKER["ignore_labels"])

    if len(run) == 1:
        return [score(run[0].segment(_WORKER["prediction"]))]
    by_threshold = {t: score(seg) for t, seg in run[0].segment_thresholds(_WORKER["prediction"],
                                                                          [p.threshold for p in run])}
    return [by_threshold[p.threshold] for p in run]


def search_segmentation(prediction: Any, seg_true: Any, grid: dict[str, Sequence[Any]] | None = None,
                        metric: str = "vi", n_proc: int = 1, base: Params | None = None,
                        ignore_labels: Sequence[int] = (0,)) -> SegmentationSearch:
    """Segments ``prediction`` at every grid point and scores each against ``seg_true``.

    Args:
        prediction: With :class:`WatershedParams` (the default ``base``), ``(z, y, x)``
            boundary probabilities (see :func:`~ekn_plugins.evaluation.segmentation.watershed_segmentation`);
            with the affinity segmenters, ``(n_edges, z, y, x)`` affinities (P(connected) per edge
            of their ``nhood``).
        seg_true: Ground-truth ids ``(z, y, x)``.
        grid: Lists of values by field of ``base``'s class; default :func:`default_grid`
            (watershed: threshold x seed erosion x min_size, 30 points; connected components:
            threshold x min_size, 12; waterz: threshold, 17; mutex: threshold x
            long-range threshold, 9, or threshold, 7, without long-range edges).
        metric: ``'vi'`` or ``'adapted_rand_error'``: the score to minimise.
        n_proc: Worker processes (each takes a segmenter run: a point, or waterz's thresholds of
            one agglomeration); 1 runs in this process. Workers are forked where the platform
            allows (the volumes are shared copy-on-write, never pickled), else, and after
            TensorFlow was imported (:func:`start_method`), started from a fork server or spawned
            (each receives the volumes once; a calling script needs ``if __name__ == "__main__":``);
            only the parameters and scores travel per grid point.
        base: The segmenter and the values of the fields not in ``grid`` (e.g. ``per_slice``,
            ``anisotropy`` of the watershed; ``nhood`` of the affinity segmenters).
        ignore_labels: True ids not scored (see
            :func:`~ekn_plugins.evaluation.segmentation.segmentation_scores`).

    Returns:
        A :class:`SegmentationSearch`.
    """
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {METRICS}, got {metric!r}")
    if isinstance(n_proc, bool) or not isinstance(n_proc, (int, np.integer)) or n_proc < 1:
        raise ConfigError(f"n_proc must be a number of processes >= 1, got {n_proc!r}")
    base = base or WatershedParams()
    prob, true = base.check(prediction), np.asarray(seg_true)
    if true.shape != prob.shape[prob.ndim - true.ndim:]:
        raise ShapeError(f"seg_true {true.shape} and the prediction {prob.shape} differ in shape; crop them to the "
                         "same region first (e.g. ekn_plugins.data.image.center_cubes)")
    points = grid_points(grid, base)
    runs = _runs(points)
    if n_proc == 1 or len(runs) == 1:
        _start_worker(prob, true, ignore_labels)
        try:
            scores = [_score(run) for run in runs]
        finally:
            _WORKER.clear()
    else:
        with ProcessPoolExecutor(min(int(n_proc), len(runs)), multiprocessing.get_context(start_method()),
                                 _start_worker, (prob, true, tuple(ignore_labels))) as pool:
            scores = list(pool.map(_score, runs))
    scored = {id(p): s for run, run_scores in zip(runs, scores) for p, s in zip(run, run_scores)}
    return SegmentationSearch(metric, [(p, scored[id(p)]) for p in points])
