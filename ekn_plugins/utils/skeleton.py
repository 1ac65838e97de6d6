"""Skeletons for tracing: densely sampled centre lines, oriented patches and tracing targets.

Coordinates here are ``(z, y, x)`` voxels like the volumes; KNOSSOS NML trees (from
:mod:`ekn_plugins.readers.knossos.nml`, ``(x, y, z)``) are converted by :meth:`TubeSkeleton.from_tree`
and :func:`trace_to_tree`. A :class:`TubeSkeleton` is a graph of nodes with radii, sampled every
``step`` voxels along its edges; each sample has a tangent, and chains (unbranched skeletons)
also an arc-length coordinate. :func:`sample_patch` cuts a patch oriented along a direction with
``scipy.ndimage.map_coordinates``; :func:`tracing_target` gives the direction an agent at a
position should move in (towards the centre line ``lookahead`` voxels ahead), in the patch frame.

Example:
    >>> import numpy as np
    >>> skel = TubeSkeleton.from_path([[5, 5, 2], [5, 5, 12]], radius=2.0, step=1.0)
    >>> len(skel), float(skel.arc[-1])
    (11, 10.0)
    >>> dist, idx = skel.nearest([[6.0, 5.0, 4.0]])
    >>> float(dist[0]), skel.points[idx[0]].tolist(), skel.tangents[idx[0]].tolist()
    (1.0, [5.0, 5.0, 4.0], [0.0, 0.0, 1.0])
    >>> local = tracing_target(skel, [6.0, 5.0, 4.0], [0.0, 0.0, 1.0], lookahead=4.0)
    >>> np.round(local, 3).tolist()   # mostly forward, a little back towards the centre line
    [0.97, -0.243, 0.0]
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ekn_core.errors import ConfigError, ShapeError
from ekn_plugins.utils.kdtree import AppendableKDTree


def frame(direction: Any) -> np.ndarray:
    """Right-handed orthonormal frame ``(3, 3)`` whose first row is ``direction`` (normalised).

    The other two rows depend only on the direction (a fixed reference axis is projected out), so
    patches cut for the same direction always have the same orientation.

    Example:
        >>> f = frame([0.0, 0.0, 2.0])
        >>> f.tolist()
        [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    """
    d = np.asarray(direction, dtype=np.float64)
    norm = np.linalg.norm(d)
    if d.shape != (3,) or not norm > 0 or not np.isfinite(norm):
        raise ValueError(f"direction must be a non-zero finite 3-vector (z, y, x), got {direction!r}")
    d = d / norm
    ref = np.array([1.0, 0.0, 0.0]) if abs(d[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = ref - d * (ref @ d)
    u /= np.linalg.norm(u)
    return np.stack([d, u, np.cross(d, u)])


class TubeSkeleton:
    """A skeleton graph with radii, densely sampled for nearest-point queries.

    Args:
        nodes: Node positions ``(n, 3)`` in (z, y, x) voxels.
        edges: Index pairs ``(m, 2)`` into ``nodes``.
        radii: Radius per node (voxels, >= 0), or one number.
        step: Sampling distance along the edges (voxels).
        chain: True when ``nodes`` is one unbranched path in order; enables :attr:`arc`.

    Edges of zero length (duplicated nodes, common in hand tracings) are skipped.

    Raises:
        ShapeError: Fewer than 2 nodes or no edge of non-zero length, edges to missing nodes,
            positions that are not finite, radii that are negative or not finite.
    """

    def __init__(self, nodes: Any, edges: Any, radii: Any = 1.0, step: float = 1.0, chain: bool = False):
        self.nodes = np.asarray(nodes, dtype=np.float64).reshape(-1, 3)
        self.edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
        self.node_radii = np.broadcast_to(np.asarray(radii, dtype=np.float64), (len(self.nodes),)).copy()
        if len(self.nodes) < 2 or len(self.edges) == 0:
            raise ShapeError(f"a skeleton needs at least 2 nodes and 1 edge, got {len(self.nodes)} and {len(self.edges)}")
        if self.edges.min() < 0 or self.edges.max() >= len(self.nodes):
            raise ShapeError("skeleton edges refer to nodes that do not exist")
        bad = np.flatnonzero(~np.all(np.isfinite(self.nodes), axis=1) | ~np.isfinite(self.node_radii)
                             | (self.node_radii < 0))
        if len(bad):
            first = bad[0]
            raise ShapeError(f"skeleton nodes need finite positions and radii >= 0; {len(bad)} node(s) do not, the "
                             f"first is node {first} at {self.nodes[first].tolist()} with radius "
                             f"{self.node_radii[first]}")
        if not step > 0:
            raise ConfigError(f"step must be > 0 voxels, got {step}")
        lengths = np.linalg.norm(self.nodes[self.edges[:, 1]] - self.nodes[self.edges[:, 0]], axis=1)
        kept = np.flatnonzero(lengths > 0)  # edges between duplicated nodes add no samples
        if not len(kept):
            raise ShapeError("all skeleton edges have zero length")
        points, tangents, radii_out, arc = [], [], [], []
        offset = 0.0
        for k in kept:
            a, b = self.edges[k]
            pa, pb, length = self.nodes[a], self.nodes[b], float(lengths[k])
            n = max(1, int(np.ceil(length / step)))
            whole = not chain or k == kept[-1]  # chains share each joint with the next edge
            t = np.arange(n + 1 if whole else n) / n
            points.append(pa + t[:, None] * (pb - pa))
            tangents.append(np.broadcast_to((pb - pa) / length, (len(t), 3)))
            radii_out.append(self.node_radii[a] + t * (self.node_radii[b] - self.node_radii[a]))
            arc.append(offset + t * length)
            offset += length
        self.points = np.concatenate(points)
        self.tangents = np.concatenate(tangents)
        self.radii = np.concatenate(radii_out)
        self.arc = np.concatenate(arc) if chain else None
        self._tree = AppendableKDTree(self.points)

    def __len__(self) -> int:
        return len(self.points)

    @classmethod
    def from_path(cls, points: Any, radius: Any = 1.0, step: float = 1.0) -> "TubeSkeleton":
        """A chain through ``points`` ``(n, 3)`` (z, y, x) in order."""
        points = np.asarray(points, dtype=np.float64)
        edges = np.stack([np.arange(len(points) - 1), np.arange(1, len(points))], axis=1)
        return cls(points, edges, radius, step, chain=True)

    @classmethod
    def from_tree(cls, tree: Any, step: float = 1.0) -> "TubeSkeleton":
        """From a KNOSSOS :class:`~ekn_plugins.readers.knossos.nml.Tree` (positions (x, y, z)).

        An unbranched tree becomes a chain (with arc lengths) ordered from one end to the other.
        """
        ids = list(tree.nodes)
        index = {nid: i for i, nid in enumerate(ids)}
        zyx = np.array([tree.nodes[n].position[::-1] for n in ids], dtype=np.float64)
        radii = np.array([tree.nodes[n].radius for n in ids], dtype=np.float64)
        degree = {n: len(tree.neighbours(n)) for n in ids}
        ends = [n for n in ids if degree[n] == 1]
        if len(ends) == 2 and all(d <= 2 for d in degree.values()) and len(tree.edges) == len(ids) - 1:
            order, previous = [ends[0]], None
            while len(order) < len(ids):
                following = [n for n in tree.neighbours(order[-1]) if n != previous]
                previous = order[-1]
                order.append(following[0])
            sel = [index[n] for n in order]
            return cls(zyx[sel], np.stack([np.arange(len(sel) - 1), np.arange(1, len(sel))], axis=1), radii[sel],
                       step, chain=True)
        edges = [(index[s], index[t]) for s, t in tree.edges]
        return cls(zyx, edges, radii, step)

    def nearest(self, positions: Any) -> tuple[np.ndarray, np.ndarray]:
        """Distance to the nearest sample and its index, for positions ``(m, 3)``."""
        dist, idx = self._tree.query(np.asarray(positions, dtype=np.float64).reshape(-1, 3), k=1)
        return dist[:, 0], idx[:, 0]


def sample_patch(volume: Any, center: Any, direction: Any, shape: Sequence[int], spacing: float = 1.0,
                 voxel_size: Sequence[float] = (1.0, 1.0, 1.0), order: int = 1, cval: float = 0.0) -> np.ndarray:
    """Cuts a patch of ``shape`` (along, across 1, across 2) centred on ``center``, its first axis
    along ``direction`` (axes of :func:`frame`); samples are ``spacing`` apart in physical units.

    Args:
        volume: ``(z, y, x)`` array (only the needed bounding box is read from a lazy volume).
        center: Patch centre (z, y, x) in voxels.
        direction: Direction of the patch's first axis (z, y, x), physical units.
        shape: Patch shape, e.g. ``(5, 15, 15)``; ``(1, h, w)`` is an oriented slice.
        spacing: Distance between patch samples in physical units.
        voxel_size: Physical size of a voxel (z, y, x), for anisotropic data.
        order: Interpolation: 1 trilinear, 0 nearest voxel. Both equal ``map_coordinates`` of the
            whole volume; higher spline orders are refused, since their prefilter would see only
            the cut box.
        cval: Value outside the volume.

    Returns:
        float32 array of ``shape``.
    """
    from scipy.ndimage import map_coordinates

    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ShapeError(f"patch shape must be 3 positive sizes (along, across, across), got {shape}")
    if len(volume.shape) != 3:
        raise ShapeError(f"patches are cut from a (z, y, x) volume, got one of shape {tuple(volume.shape)}; pick "
                         "one channel of a (c, z, y, x) volume (volume[c])")
    if order not in (0, 1):
        raise ConfigError(f"order must be 0 (nearest voxel) or 1 (trilinear), got {order!r}")
    axes = frame(direction)
    grids = np.meshgrid(*[(np.arange(s) - (s - 1) / 2.0) * spacing for s in shape], indexing="ij")
    offsets = np.einsum("i...,ij->...j", np.stack(grids), axes) / np.asarray(voxel_size, dtype=np.float64)
    coords = offsets + np.asarray(center, dtype=np.float64)
    lo = np.maximum(np.floor(coords.reshape(-1, 3).min(0)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(coords.reshape(-1, 3).max(0)).astype(int) + 2, np.asarray(volume.shape))
    if np.any(hi <= lo):
        return np.full(shape, cval, dtype=np.float32)
    box = np.asarray(volume[tuple(slice(a, b) for a, b in zip(lo, hi))], dtype=np.float32)
    local = np.moveaxis(coords - lo, -1, 0)
    return map_coordinates(box, local, order=order, mode="grid-constant", cval=cval).astype(np.float32)


def tracing_target(skeleton: TubeSkeleton, position: Any, direction: Any, lookahead: float = 4.0) -> np.ndarray:
    """Where an agent at ``position`` heading ``direction`` should go, in its patch frame.

    The target is the unit vector towards the point ``lookahead`` voxels ahead of the nearest
    skeleton sample along its tangent (oriented to agree with ``direction``): it moves along the
    skeleton and back towards its centre line.

    Returns:
        Unit 3-vector in the coordinates of ``frame(direction)``.
    """
    position = np.asarray(position, dtype=np.float64)
    _, idx = skeleton.nearest(position[None])
    tangent = skeleton.tangents[idx[0]]
    if tangent @ np.asarray(direction, dtype=np.float64) < 0:
        tangent = -tangent
    goal = skeleton.points[idx[0]] + lookahead * tangent - position
    goal /= np.linalg.norm(goal)
    return frame(direction) @ goal


def trace_to_tree(points: Any, skeleton: Any, comment: str = "trace", radius: Any = 1.0, tree: Any = None) -> Any:
    """Adds a trace (``(n, 3)`` z, y, x) as a chain of nodes to an NML :class:`Skeleton`; returns the tree.

    Args:
        points: The trace.
        skeleton: NML skeleton (:class:`~ekn_plugins.readers.knossos.nml.Skeleton`).
        comment: Comment of the new tree.
        radius: Node radius, one for all or one per point.
        tree: Add the chain to this tree of ``skeleton`` instead of a new one.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    radii = np.broadcast_to(np.asarray(radius, dtype=np.float64), (len(points),))
    tree = skeleton.add_tree(comment=comment) if tree is None else tree
    previous = None
    for p, r in zip(points, radii):
        node = tree.add_node(tuple(float(v) for v in p[::-1]), radius=float(r))
        if previous is not None:
            tree.add_edge(previous.id, node.id)
        previous = node
    return tree
