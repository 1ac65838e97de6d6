"""Grid search of the segmentation parameters that segment a net's prediction best (ELEKTRONN2's
``optimise_segmentation``, which wrote ``<name>-Seg_Params.txt``; ekn writes JSON and a markdown table).

The segmenter is the type of the parameters (``base``): :class:`~ekn_plugins.evaluation.segmentation.WatershedParams`
(default) segments a boundary probability map with
:func:`~ekn_plugins.evaluation.segmentation.watershed_segmentation`,
:class:`~ekn_plugins.evaluation.segmentation.AffinityParams` an affinity graph with
:func:`~ekn_plugins.evaluation.segmentation.affinity_segmentation`. Every grid point is segmented
and scored with :func:`~ekn_plugins.evaluation.segmentation.segmentation_scores`; the best point
has the lowest ``metric``, ties going to the first in grid order.

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
from ekn_plugins.evaluation.segmentation import SEGMENTERS, AffinityParams, WatershedParams, segmentation_scores

#: The default grid of the watershed. The threshold is the main knob (low: small, separated seeds, splits; high:
#: seeds leak across weak membranes, merges); eroding the seeds separates cells joined through gaps in the
#: predicted membrane; merging segments below 50 voxels removes fragments from noisy interiors.
#: 5 x 3 x 2 = 30 segmentations.
DEFAULT_GRID: dict[str, list[Any]] = {"threshold": [0.1, 0.2, 0.3, 0.5, 0.7], "seed_erosion": [0.0, 1.0, 2.0],
                                      "min_size": [1, 50]}
#: The default grid of affinity segmentations: the threshold splits (high) or merges (low) along
#: uncertain edges; components below 50 voxels become unassigned. 6 x 2 = 12 segmentations.
DEFAULT_AFFINITY_GRID: dict[str, list[Any]] = {"threshold": [0.2, 0.4, 0.5, 0.6, 0.8, 0.9], "min_size": [1, 50]}
#: The default grid by segmenter (:attr:`WatershedParams.kind`).
DEFAULT_GRIDS = {"watershed": DEFAULT_GRID, "affinity": DEFAULT_AFFINITY_GRID}
#: Metrics the search can minimise.
METRICS = ("vi", "adapted_rand_error")
_TABLE_SCORES = ("vi", "vi_split", "vi_merge", "adapted_rand_error", "rand_precision", "rand_recall", "n_pred")


@dataclass
class SegmentationSearch:
    """The result of :func:`search_segmentation`.

    Attributes:
        metric: The minimised score (one of :data:`METRICS`).
        rows: ``(params, scores)`` of every grid point, in grid order (the params of one segmenter).
    """

    metric: str
    rows: list[tuple[WatershedParams | AffinityParams, dict[str, float]]]

    @property
    def best_index(self) -> int:
        """Index of the best row: lowest ``metric``, the first one on ties."""
        return min(range(len(self.rows)), key=lambda i: (self.rows[i][1][self.metric], i))

    @property
    def segmenter(self) -> str:
        """``'watershed'`` or ``'affinity'``: the :attr:`~WatershedParams.kind` of the parameters."""
        return self.rows[0][0].kind

    @property
    def best_params(self) -> WatershedParams | AffinityParams:
        """The parameters of the best row."""
        return self.rows[self.best_index][0]

    @property
    def best_scores(self) -> dict[str, float]:
        """The scores of the best row."""
        return self.rows[self.best_index][1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record: ``segmenter``, ``metric``, ``best`` and ``rows`` (each ``{"params", "scores"}``)."""
        rows = [{"params": params.to_dict(), "scores": dict(scores)} for params, scores in self.rows]
        return {"segmenter": self.segmenter, "metric": self.metric, "best": rows[self.best_index], "rows": rows}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> SegmentationSearch:
        """Rebuilds a search from :meth:`to_dict`'s record."""
        params = SEGMENTERS[record.get("segmenter", "watershed")]
        rows = [(params(**row["params"]), {k: math.nan if v is None else v for k, v in row["scores"].items()})
                for row in record["rows"]]  # null: a score that was NaN (strict JSON)
        return cls(record["metric"], rows)

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
        order = sorted(range(len(self.rows)), key=lambda i: (self.rows[i][1][self.metric], i))
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


def grid_points(grid: dict[str, Sequence[Any]] | None = None,
                base: WatershedParams | AffinityParams | None = None) -> list[WatershedParams | AffinityParams]:
    """The parameters of every grid point, in grid order (the last key varies fastest).

    Args:
        grid: Lists of values by searchable field of ``base``'s class (default: its
            :data:`DEFAULT_GRIDS` entry).
        base: Values of the fields not in ``grid``, and the segmenter (default
            :class:`WatershedParams()`).

    Example:
        >>> [p.threshold for p in grid_points({"threshold": [0.2, 0.4], "min_size": [1, 9]})]
        [0.2, 0.2, 0.4, 0.4]
        >>> len(grid_points(base=AffinityParams()))
        12
    """
    base = base or WatershedParams()
    grid = DEFAULT_GRIDS[base.kind] if grid is None else grid
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


def start_method() -> str:
    """``fork`` where the platform has it and the process is safe to fork; ``forkserver`` (else
    ``spawn``) once TensorFlow was imported: its thread pools make forked children hang or crash."""
    methods = multiprocessing.get_all_start_methods()
    if "tensorflow" not in sys.modules and "fork" in methods:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


# the volumes of a worker process, set once by _start_worker
_WORKER: dict[str, Any] = {}


def _start_worker(prediction: np.ndarray, seg_true: np.ndarray, ignore_labels: Sequence[int]) -> None:
    _WORKER.update(prediction=prediction, seg_true=seg_true, ignore_labels=ignore_labels)


def _score(params: WatershedParams | AffinityParams) -> dict[str, float]:
    return segmentation_scores(_WORKER["seg_true"], params.segment(_WORKER["prediction"]), _WORKER["ignore_labels"])


def search_segmentation(prediction: Any, seg_true: Any, grid: dict[str, Sequence[Any]] | None = None,
                        metric: str = "vi", n_proc: int = 1, base: WatershedParams | AffinityParams | None = None,
                        ignore_labels: Sequence[int] = (0,)) -> SegmentationSearch:
    """Segments ``prediction`` at every grid point and scores each against ``seg_true``.

    Args:
        prediction: With :class:`WatershedParams` (the default ``base``), ``(z, y, x)``
            boundary probabilities (see :func:`~ekn_plugins.evaluation.segmentation.watershed_segmentation`);
            with :class:`AffinityParams`, ``(n_edges, z, y, x)`` affinities (P(connected) per edge
            of its ``nhood``).
        seg_true: Ground-truth ids ``(z, y, x)``.
        grid: Lists of values by field of ``base``'s class; default its :data:`DEFAULT_GRIDS`
            entry (watershed: threshold x seed erosion x min_size, 30 points; affinities:
            threshold x min_size, 12 points).
        metric: ``'vi'`` or ``'adapted_rand_error'``: the score to minimise.
        n_proc: Worker processes; 1 runs in this process. Workers are forked where the platform
            allows (the volumes are shared copy-on-write, never pickled), else, and after
            TensorFlow was imported (forking it is unsafe), started from a fork server or spawned
            (each receives the volumes once); only the parameters and scores travel per grid point.
        base: The segmenter and the values of the fields not in ``grid`` (e.g. ``per_slice``,
            ``anisotropy`` of the watershed; ``nhood`` of affinities).
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
    if n_proc == 1 or len(points) == 1:
        _start_worker(prob, true, ignore_labels)
        try:
            scores = [_score(p) for p in points]
        finally:
            _WORKER.clear()
    else:
        with ProcessPoolExecutor(min(int(n_proc), len(points)), multiprocessing.get_context(start_method()),
                                 _start_worker, (prob, true, tuple(ignore_labels))) as pool:
            scores = list(pool.map(_score, points))
    return SegmentationSearch(metric, list(zip(points, scores)))
