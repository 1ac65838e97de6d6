"""A KD-tree that supports appending points: a scikit-learn tree plus a brute-force buffer.

New points go into a small buffer that is searched by brute force; when the buffer outgrows
``rebuild_threshold`` the tree is rebuilt over all points (amortised, like ELEKTRONN2's
``DynamicKDT``). Answers are exactly those of a brute-force search over all points appended so
far; indices refer to insertion order. Unlike the original, radius queries are implemented and
``k`` larger than the number of points is an error instead of a crash deep in scikit-learn.

Example:
    >>> import numpy as np
    >>> tree = AppendableKDTree(np.array([[0.0, 0.0], [10.0, 0.0]]))
    >>> tree.append([1.0, 1.0])
    >>> dist, idx = tree.query([[0.9, 0.9]], k=2)
    >>> idx.tolist(), np.round(dist, 3).tolist()
    ([[2, 0]], [[0.141, 1.273]])
    >>> [i.tolist() for i in tree.query_radius([[0.0, 0.0]], r=2.0)[0]]
    [0, 2]
    >>> len(tree)
    3
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


class AppendableKDTree:
    """Nearest-neighbour search over a growing point set.

    Args:
        points: Initial points, shape ``(n, d)``; may be None if ``dim`` is given.
        dim: Number of coordinates (needed only when starting empty).
        rebuild_threshold: Buffer size that triggers a rebuild. ``"auto"`` (default) uses
            ``max(64, 4 * sqrt(n))``, which balances the brute-force query cost (buffer size) against
            the amortised rebuild cost per append (``n log n / buffer size``).
        scale: Per-axis factors applied before distances (anisotropic data, e.g. ``(2, 1, 1)``
            for z voxels twice as large as x/y voxels). Coordinates are stored and returned unscaled.
        leaf_size: Leaf size of the scikit-learn KD-tree.
    """

    def __init__(self, points: Any = None, dim: int | None = None, rebuild_threshold: int | str = "auto",
                 scale: Any = None, leaf_size: int = 40):
        if points is None and dim is None:
            raise ValueError("AppendableKDTree needs initial points or dim=number of coordinates")
        if rebuild_threshold != "auto" and (not isinstance(rebuild_threshold, int) or rebuild_threshold < 1):
            raise ValueError(f"rebuild_threshold must be 'auto' or a positive int, got {rebuild_threshold!r}")
        if points is not None:
            points = np.asarray(points, dtype=np.float64)
            if points.ndim != 2:
                raise ValueError(f"points must have shape (n, d), got {points.shape}")
            if dim is not None and points.shape[1] != dim:
                raise ValueError(f"points have {points.shape[1]} coordinates but dim={dim}")
            dim = points.shape[1]
        self.dim = int(dim)
        self.scale = np.ones(self.dim) if scale is None else np.asarray(scale, dtype=np.float64)
        if self.scale.shape != (self.dim,) or np.any(self.scale <= 0):
            raise ValueError(f"scale must be {self.dim} positive factors, got {scale!r}")
        self.rebuild_threshold = rebuild_threshold
        self.leaf_size = leaf_size
        self._data = np.empty((16, self.dim))
        self._n = 0
        self._n_tree = 0
        self._tree = None
        self.rebuilds = 0
        if points is not None and len(points):
            self._extend(points)
            self._rebuild()

    def __len__(self) -> int:
        return self._n

    @property
    def points(self) -> np.ndarray:
        """All points in insertion order (a read-only view), shape ``(n, d)``."""
        view = self._data[:self._n]
        view.flags.writeable = False
        return view

    @property
    def buffer_size(self) -> int:
        """Number of points appended since the last rebuild (searched by brute force)."""
        return self._n - self._n_tree

    def _threshold(self) -> int:
        if self.rebuild_threshold == "auto":
            return max(64, int(4 * math.sqrt(self._n)))
        return int(self.rebuild_threshold)

    def _extend(self, points: np.ndarray) -> None:
        need = self._n + len(points)
        if need > len(self._data):
            grown = np.empty((max(need, 2 * len(self._data)), self.dim))
            grown[:self._n] = self._data[:self._n]
            self._data = grown
        self._data[self._n:need] = points
        self._n = need

    def _rebuild(self) -> None:
        from sklearn.neighbors import KDTree

        self._tree = KDTree(self._data[:self._n] * self.scale, leaf_size=self.leaf_size)
        self._n_tree = self._n
        self.rebuilds += 1

    def append(self, points: Any) -> None:
        """Appends one point ``(d,)`` or several ``(m, d)``; rebuilds the tree when the buffer is full."""
        points = np.asarray(points, dtype=np.float64)
        if points.ndim == 1:
            points = points[None]
        if points.ndim != 2 or points.shape[1] != self.dim:
            raise ValueError(f"append expects points of shape ({self.dim},) or (m, {self.dim}), got {points.shape}")
        if not np.all(np.isfinite(points)):
            raise ValueError("append: points must be finite (no NaN or inf)")
        self._extend(points)
        if self.buffer_size >= self._threshold():
            self._rebuild()

    def _queries(self, x: Any) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"query points must have shape (m, {self.dim}), got {x.shape}")
        return x * self.scale

    def _buffer_distances(self, xs: np.ndarray) -> np.ndarray:
        buf = self._data[self._n_tree:self._n] * self.scale
        return np.sqrt(((xs[:, None, :] - buf[None, :, :]) ** 2).sum(-1))

    def query(self, x: Any, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest points of each query point.

        Args:
            x: Query points, shape ``(m, d)``.
            k: Number of neighbours (1 ≤ k ≤ len(self)).

        Returns:
            ``(distances, indices)``, each of shape ``(m, k)``, nearest first; indices refer to
            insertion order (use :attr:`points` for coordinates).
        """
        xs = self._queries(x)
        if not 1 <= k <= self._n:
            raise ValueError(f"k must be between 1 and the number of points ({self._n}), got {k}")
        parts_d, parts_i = [], []
        if self._n_tree:
            d, i = self._tree.query(xs, k=min(k, self._n_tree))
            parts_d.append(d)
            parts_i.append(i)
        if self.buffer_size:
            d = self._buffer_distances(xs)
            kb = min(k, d.shape[1])
            part = np.argpartition(d, kb - 1, axis=1)[:, :kb] if kb < d.shape[1] else np.broadcast_to(
                np.arange(d.shape[1]), d.shape)
            parts_d.append(np.take_along_axis(d, part, axis=1))
            parts_i.append(part + self._n_tree)
        dist = np.concatenate(parts_d, axis=1)
        idx = np.concatenate(parts_i, axis=1)
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(dist, order, axis=1), np.take_along_axis(idx, order, axis=1)

    def query_radius(self, x: Any, r: float, return_distance: bool = False) -> list:
        """All points within distance ``r`` (inclusive) of each query point, nearest first.

        Args:
            x: Query points, shape ``(m, d)``.
            r: Radius in scaled units.
            return_distance: Also return the distances.

        Returns:
            A list of ``m`` index arrays, or of ``(indices, distances)`` pairs.
        """
        xs = self._queries(x)
        if not r >= 0:
            raise ValueError(f"radius must be >= 0, got {r}")
        if self._n_tree:
            t_idx, t_dist = self._tree.query_radius(xs, r, return_distance=True)
        else:
            t_idx = t_dist = [np.empty(0, dtype=np.intp)] * len(xs)
        b_dist = self._buffer_distances(xs) if self.buffer_size else np.empty((len(xs), 0))
        out = []
        for q in range(len(xs)):
            hit = np.flatnonzero(b_dist[q] <= r)
            idx = np.concatenate([t_idx[q], hit + self._n_tree]).astype(np.intp)
            dist = np.concatenate([t_dist[q], b_dist[q, hit]])
            order = np.argsort(dist, kind="stable")
            out.append((idx[order], dist[order]) if return_distance else idx[order])
        return out
