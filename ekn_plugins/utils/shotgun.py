"""Shotgun tracing: many seeds, an occupancy registry, merged neurons (ELEKTRONN2's ``ShotgunRegistry``).

Seeds are local maxima of a probability map (:func:`seeds_from_probability`, ordered by
:func:`sort_seeds`: highest probability first). Each seed's initial direction is the principal
axis of the probability mass around it (:func:`principal_axes`): for a tube that is its long
axis, and the tracer follows it both ways. :class:`ShotgunRegistry` takes the seeds in order and
skips every seed that lies in the territory of an earlier trace (the cells of a grid downsampled
by ``downsample`` that contain its points or lie within ``radius`` of them); a trace that enters
another one's territory stops there (``"registry overlap"``) and leaves a :class:`Link` between
the two, so that linked traces are exported as one tree, one neuron
(:meth:`ShotgunResult.to_skeleton`, KNOSSOS NML).

Positions are (z, y, x) voxel indices; directions and distances (``radius``) are physical, in
the units of the tracer's ``voxel_size`` (pass the same ``voxel_size`` to :func:`principal_axes`).

Example:
    >>> import numpy as np
    >>> from ekn_plugins.utils.tracing import Tracer
    >>> prob = np.zeros((12, 12, 40), np.float32)
    >>> prob[5:8, 5:8, 2:38] = 1.0                     # a straight bar along x
    >>> prob[6, 6, 20] = 1.1                           # its strongest voxel
    >>> seeds, values = seeds_from_probability(prob, threshold=0.5, min_distance=6)
    >>> seeds[0].tolist(), np.round(principal_axes(prob, seeds[:1], radius=4.0), 3).tolist()
    ([6, 6, 20], [[0.0, 0.0, 1.0]])
    >>> ahead = lambda patches: np.tile([1.0, 0.0, 0.0], (len(patches), 1))
    >>> registry = ShotgunRegistry(Tracer(ahead, prob, (1, 3, 3)), radius=3.0)
    >>> result = registry.run(seeds, principal_axes(prob, seeds, radius=4.0))
    >>> len(result.traces), result.traces[0].ends, len(result.skipped) == len(seeds) - 1
    (1, ('left the volume', 'left the volume'), True)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from ekn_core.errors import ConfigError, ShapeError
from ekn_plugins.utils.skeleton import trace_to_tree
from ekn_plugins.utils.tracing import Tracer


def sort_seeds(seeds: Any, values: Any, bbox: Any = None, border: Any = None,
               first_value: float | None = None) -> np.ndarray:
    """The order in which to trace seeds (ELEKTRONN2's ``sort_seeds``), as indices into ``seeds``.

    Seeds outside ``bbox`` (strictly inside ``lo < seed < hi`` is kept) are dropped; the rest go by
    descending value (ties keep their order). With ``first_value``, seeds with a value of at
    least that come before the others; with ``border`` ``(dz, dy, dx)``, within each of these two
    groups the seeds in the border zone of ``bbox`` come before the inner ones.

    Example:
        >>> seeds = [[5, 5, 5], [1, 5, 5], [5, 5, 6], [50, 5, 5]]   # [1, 5, 5] is in the border zone
        >>> sort_seeds(seeds, [0.2, 0.5, 0.9, 1.0], bbox=[[0, 0, 0], [10, 10, 10]]).tolist()
        [2, 1, 0]
        >>> sort_seeds(seeds, [0.2, 0.5, 0.9, 1.0], bbox=[[0, 0, 0], [10, 10, 10]], border=[2, 2, 2]).tolist()
        [1, 2, 0]
    """
    seeds = np.asarray(seeds, dtype=np.float64).reshape(-1, 3)
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(values) != len(seeds):
        raise ShapeError(f"sort_seeds needs one value per seed, got {len(values)} values for {len(seeds)} seeds")
    if border is not None and bbox is None:
        raise ConfigError("sort_seeds: border needs the bbox whose border zone it is")
    keep = np.ones(len(seeds), bool)
    if bbox is not None:
        bbox = np.asarray(bbox, dtype=np.float64)
        keep = np.all(seeds > bbox[0], axis=1) & np.all(seeds < bbox[1], axis=1)
    order = np.flatnonzero(keep)[np.argsort(-values[keep], kind="stable")]
    first = np.ones(len(order), bool) if first_value is None else values[order] >= first_value
    inner = np.zeros(len(order), bool)
    if border is not None:
        inner = (np.all(seeds[order] > bbox[0] + border, axis=1) & np.all(seeds[order] < bbox[1] - border, axis=1))
    groups = [first & ~inner, first & inner, ~first & ~inner, ~first & inner]
    return np.concatenate([order[g] for g in groups]).astype(np.int64)


def seeds_from_probability(prob: Any, threshold: float, min_distance: int,
                           bbox: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Seeds at the local maxima of a probability map, highest first.

    Local maxima above ``threshold`` at least ``min_distance`` voxels apart (scikit-image's
    ``peak_local_max``, maximum-norm distances), ordered by :func:`sort_seeds`.

    Args:
        prob: ``(z, y, x)`` probability (or any score) map.
        threshold: Smallest value of a seed (exclusive).
        min_distance: Smallest distance between seeds (voxels).
        bbox: Optional ``((z0, y0, x0), (z1, y1, x1))`` for :func:`sort_seeds`.

    Returns:
        ``(seeds (n, 3) int, values (n,))``.
    """
    from skimage.feature import peak_local_max

    prob = np.asarray(prob)
    if prob.ndim != 3:
        raise ShapeError(f"seeds_from_probability needs a (z, y, x) map, got shape {prob.shape}")
    if not isinstance(min_distance, (int, np.integer)) or min_distance < 1:
        raise ConfigError(f"min_distance must be a positive int (voxels), got {min_distance!r}")
    peaks = peak_local_max(prob, min_distance=int(min_distance), threshold_abs=threshold, exclude_border=False)
    values = prob[tuple(peaks.T)]
    order = sort_seeds(peaks, values, bbox)
    return peaks[order].astype(np.int64), values[order]


def principal_axes(prob: Any, positions: Any, radius: float,
                   voxel_size: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Unit principal axis of the probability mass within ``radius`` of each position.

    The eigenvector of the largest eigenvalue of the probability-weighted covariance of the
    physical voxel coordinates (indices times ``voxel_size``) in the ball (negative values count
    as 0): the direction along which the mass spreads, i.e. a tube's axis when ``radius`` exceeds
    the tube's radius (2-3 times is good). The sign is fixed by making the first clearly non-zero
    component positive.

    Args:
        prob: ``(z, y, x)`` probability map.
        positions: ``(n, 3)`` voxel positions (z, y, x).
        radius: Radius of the ball, in the physical units of ``voxel_size`` (voxels when isotropic).
        voxel_size: Size of a voxel (z, y, x), the tracer's (:class:`~.tracing.Tracer`), so that the
            axes are physical directions as the tracer reads them.

    Returns:
        ``(n, 3)`` physical unit vectors (z, y, x).

    Example:
        >>> iso = np.zeros((40, 9, 40), np.float32)
        >>> for t in range(40):
        ...     iso[t, 3:6, t] = 1.0                       # a bar at 45 degrees in z-x
        >>> np.round(principal_axes(iso[::2], [[10, 4, 20]], radius=8.0, voxel_size=(2, 1, 1)), 2).tolist()
        [[0.71, 0.0, 0.71]]
    """
    prob = np.asarray(prob)
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    if not radius > 0:
        raise ConfigError(f"radius must be > 0 (physical units of voxel_size), got {radius}")
    size = np.asarray(voxel_size, dtype=np.float64)
    if size.shape != (3,) or not np.all(size > 0):
        raise ConfigError(f"voxel_size must be 3 positive sizes (z, y, x), got {voxel_size!r}")
    reach = radius / size  # the radius in voxels per axis
    axes = np.empty((len(positions), 3))
    for i, p in enumerate(positions):
        lo = np.maximum(np.floor(p - reach).astype(int), 0)
        hi = np.minimum(np.ceil(p + reach).astype(int) + 1, prob.shape)
        grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1).reshape(-1, 3)
        grid = grid * size
        weight = np.clip(prob[tuple(slice(a, b) for a, b in zip(lo, hi))].reshape(-1), 0, None).astype(np.float64)
        weight[np.sum((grid - p * size) ** 2, axis=1) > radius ** 2] = 0.0
        if not weight.sum() > 0:
            raise ValueError(f"no probability mass within {radius} of {p.tolist()}: no direction there")
        centred = grid - weight @ grid / weight.sum()
        _, vectors = np.linalg.eigh((centred * weight[:, None]).T @ centred)
        axis = vectors[:, -1]
        axes[i] = axis if axis[np.flatnonzero(np.abs(axis) > 1e-6)[0]] > 0 else -axis
    return axes


@dataclasses.dataclass
class ShotgunTrace:
    """One trace of a shotgun run: both halves from its seed joined into one chain.

    Attributes:
        points: ``(n, 3)`` positions (z, y, x) from one end to the other through the seed.
        seed: Index of the seed (into the seeds given to :meth:`ShotgunRegistry.run`).
        seed_point: Index of the seed in ``points``.
        ends: Why each end stopped: ``(at points[0], at points[-1])`` (:class:`~.tracing.Tracer`).
        radii: Radius per point (voxels) when the predictor gives radii, else None.
    """

    points: np.ndarray
    seed: int
    seed_point: int
    ends: tuple[str, str]
    radii: np.ndarray | None = None


@dataclasses.dataclass
class Link:
    """Trace ``trace`` ran into the territory of trace ``other``: its end ``point`` joins ``other_point``."""

    trace: int
    point: int
    other: int
    other_point: int


@dataclasses.dataclass
class ShotgunResult:
    """Traces, the links between them and the seeds skipped because they were already covered."""

    traces: list[ShotgunTrace]
    links: list[Link]
    skipped: list[int]

    def groups(self) -> list[list[int]]:
        """Trace ids joined by links (one list per neuron), ordered by their first trace.

        Example:
            >>> t = ShotgunTrace(np.zeros((2, 3)), 0, 0, ('max steps', 'max steps'))
            >>> ShotgunResult([t, t, t], [Link(2, 0, 0, 1)], []).groups()
            [[0, 2], [1]]
        """
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        n = len(self.traces)
        pairs = np.array([(link.trace, link.other) for link in self.links], dtype=np.int64).reshape(-1, 2)
        graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
        _, labels = connected_components(graph, directed=False)
        found: dict[int, list[int]] = {}
        for trace, label in enumerate(labels):
            found.setdefault(int(label), []).append(trace)
        return list(found.values())

    def to_skeleton(self, skeleton: Any = None, radius: float = 1.0) -> Any:
        """Adds one NML tree per group of linked traces (a neuron) to ``skeleton`` (a new one if None).

        Every trace is a chain of nodes (:func:`~.skeleton.trace_to_tree`, radii from the trace or
        ``radius``); every link is an edge between the two joined points. Write it with
        ``skeleton.write('neurons.nml')``.
        """
        from ekn_plugins.readers.knossos.nml import Skeleton

        skeleton = Skeleton() if skeleton is None else skeleton
        for number, group in enumerate(self.groups()):
            tree = skeleton.add_tree(comment=f"neuron {number}")
            ids = {}
            for t in group:
                trace = self.traces[t]
                trace_to_tree(trace.points, skeleton, radius=trace.radii if trace.radii is not None else radius,
                              tree=tree)
                ids[t] = list(tree.nodes)[-len(trace.points):]
            for link in self.links:
                if link.trace in ids:
                    tree.add_edge(ids[link.trace][link.point], ids[link.other][link.other_point])
        return skeleton


class ShotgunRegistry:
    """Traces seeds one after another and keeps track of the territory already traced.

    Args:
        tracer: The :class:`~.tracing.Tracer` that traces each seed (both ways).
        radius: A trace claims the grid cells that contain its points and those whose centres lie
            within this distance of its points (e.g. the neurites' radius), in the tracer's
            physical units (its ``voxel_size``; voxels for isotropic data).
        downsample: Grid cell size in voxels (one int, or per axis (z, y, x)).
        shape: Volume shape (z, y, x) the grid covers (default: the tracer's volume).

    Attributes:
        occupancy: int32 grid: the id of the trace owning each cell, -1 where free. Cell ``k``
            covers voxels ``k * downsample`` to ``(k + 1) * downsample - 1``; its centre is
            ``k * downsample + (downsample - 1) / 2``.
    """

    def __init__(self, tracer: Tracer, radius: float, downsample: int | Sequence[int] = 1,
                 shape: Sequence[int] | None = None):
        if not radius > 0:
            raise ConfigError(f"radius must be > 0 voxels, got {radius}")
        factors = np.broadcast_to(np.asarray(downsample), (3,))
        if not np.issubdtype(factors.dtype, np.integer) or np.any(factors < 1):
            raise ConfigError(f"downsample must be a positive int or three of them (z, y, x), got {downsample!r}")
        shape = tuple(int(s) for s in (tracer.volume.shape[-3:] if shape is None else shape))
        if len(shape) != 3:
            raise ShapeError(f"shape must be (z, y, x), got {shape}")
        self.tracer, self.radius, self.downsample = tracer, float(radius), factors.astype(np.int64)
        self.occupancy = np.full(tuple(-(-np.asarray(shape) // self.downsample)), -1, dtype=np.int32)

    def _cell_index(self, position: np.ndarray) -> np.ndarray:
        """Index of the cell containing ``position`` (z, y, x), unclipped: outside the grid for outside points."""
        return np.floor((np.asarray(position, dtype=np.float64) + 0.5) / self.downsample).astype(np.int64)

    def _cell(self, position: np.ndarray) -> tuple[int, ...]:
        return tuple(np.clip(self._cell_index(position), 0, np.asarray(self.occupancy.shape) - 1))

    def owner(self, position: Any) -> int:
        """Id of the trace owning the cell that contains ``position`` (z, y, x), or -1."""
        return int(self.occupancy[self._cell(position)])

    def register(self, points: Any, trace_id: int) -> None:
        """Claims the free cells that contain one of ``points`` or whose centres lie within ``radius`` of one.

        Cells already claimed keep their owner (the first trace wins). The cell containing a point is
        claimed even when its centre is farther than ``radius`` (a small ``radius`` on a coarse grid),
        so that every registered point inside the volume has an owner.
        """
        half = (self.downsample - 1) / 2.0
        top = np.asarray(self.occupancy.shape) - 1
        size = self.tracer.voxel_size
        reach = self.radius / size  # the radius in voxels per axis
        for p in np.asarray(points, dtype=np.float64).reshape(-1, 3):
            cell = self._cell_index(p)
            if np.all((cell >= 0) & (cell <= top)) and self.occupancy[tuple(cell)] < 0:
                self.occupancy[tuple(cell)] = trace_id
            lo = np.clip(np.ceil((p - reach - half) / self.downsample).astype(np.int64), 0, top)
            hi = np.clip(np.floor((p + reach - half) / self.downsample).astype(np.int64), -1, top)
            if np.any(hi < lo):
                continue
            axes = [(np.arange(a, b + 1) * f + h - c) * v
                    for a, b, f, h, c, v in zip(lo, hi, self.downsample, half, p, size)]
            near = (axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
                    <= self.radius ** 2)
            block = self.occupancy[tuple(slice(a, b + 1) for a, b in zip(lo, hi))]
            block[near & (block < 0)] = trace_id

    def run(self, seeds: Any, directions: Any, max_traces: int | None = None) -> ShotgunResult:
        """Traces the seeds in order (see the module docs), each both ways: first against its
        direction, then from the seed opposite to the first half's first step (about the
        direction itself where that runs along the neurite; not the way the first half went
        where it runs across), with the first half as the second's ``history``, so that the
        second half stops where it would run into the first.

        Args:
            seeds: ``(n, 3)`` positions (z, y, x), e.g. from :func:`seeds_from_probability`.
            directions: ``(n, 3)`` initial physical directions (the tracer's), e.g. from
                :func:`principal_axes` with the tracer's ``voxel_size``.
            max_traces: Stop after this many traces.
        """
        seeds = np.asarray(seeds, dtype=np.float64).reshape(-1, 3)
        directions = np.asarray(directions, dtype=np.float64)
        if directions.shape != seeds.shape:
            raise ShapeError(f"give one direction (z, y, x) per seed: {len(seeds)} seeds but directions of shape "
                             f"{directions.shape}")
        traces: list[ShotgunTrace] = []
        links: list[Link] = []
        skipped: list[int] = []
        for index, (seed, direction) in enumerate(zip(seeds, directions)):
            if max_traces is not None and len(traces) >= max_traces:
                break
            if self.owner(seed) >= 0:
                skipped.append(index)
                continue
            trace_id = len(traces)
            back = self.tracer.trace(seed, -direction, owner=self.owner)
            # the second half sets off opposite to where the first one went (not the same way, when
            # the direction was across the neurite) and stops where it would run into it
            onward = -back.directions[1] if len(back.points) > 1 else direction
            ahead = self.tracer.trace(seed, onward, owner=self.owner, history=back.points[:0:-1])
            points = np.concatenate([back.points[::-1], ahead.points[1:]])
            radii = None
            if back.radii is not None and ahead.radii is not None:
                radii = np.concatenate([back.radii[::-1], ahead.radii[1:]])
            for half, end in ((back, 0), (ahead, len(points) - 1)):
                if half.met is not None:
                    other = traces[half.met].points
                    nearest = int(np.argmin(np.sum((other - points[end]) ** 2, axis=1)))
                    links.append(Link(trace_id, end, half.met, nearest))
            self.register(points, trace_id)
            traces.append(ShotgunTrace(points, index, len(back.points) - 1, (back.reason, ahead.reason), radii))
        return ShotgunResult(traces, links, skipped)
