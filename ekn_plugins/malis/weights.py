"""MALIS weights: how many voxel pairs each edge is the maximin edge for (Turaga et al., 2009).

For two voxels, the maximin edge is the weakest edge of the strongest path between them; it
decides whether a segmentation by thresholding the affinities joins them. Kruskal's algorithm on
the edges sorted by affinity (descending) finds it: the edge that merges two components is the
maximin edge of every pair with one voxel in each.

:func:`malis_weights` counts, for every edge, such pairs with equal non-zero true ids (``pos``)
and with different non-zero true ids (``neg``), in two passes as ELEKTRONN2 (constrained MALIS):

* positive pass on ``min(aff_pred, aff_gt)``: edges the ground truth cuts count as 0;
* negative pass on ``max(aff_pred, aff_gt)``, or on ``aff_pred`` with ``unrestrict_neg=True``.

Voxels with true id 0 (background) are in no pair. Edges of equal weight are taken in the order of
their flat index in ``(n_edges, *spatial)`` (a stable sort), so the result is deterministic.
The Kruskal loop is compiled by numba on first use (numba is imported then).

Example:
    >>> import numpy as np
    >>> seg = np.array([[1, 1, 2]])
    >>> nhood = np.array([[0, -1]])
    >>> from ekn_plugins.malis.affgraph import seg_to_affgraph
    >>> pred = np.array([[[0.0, 0.9, 0.8]]], 'float32')
    >>> pos, neg = malis_weights(pred, seg_to_affgraph(seg, nhood), seg, nhood, unrestrict_neg=True)
    >>> pos.tolist(), neg.tolist()
    ([[[0, 1, 0]]], [[[0, 0, 2]]])
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ekn_plugins.malis.affgraph import nodelist_from_shape


@functools.lru_cache(maxsize=None)
def _kruskal_kernel() -> Any:
    """The numba-compiled Kruskal loop (numba is imported here, on first use).

    ``kernel(order, node1, node2, seg, n_vert, pos, counts)`` takes the edges in ``order`` and
    joins their components (union-find with path halving). Each component keeps a dict
    ``id -> voxels`` of its non-zero ids and their total; joining A and B adds
    ``Σ_id A[id]·B[id]`` (``pos``) or ``|A|·|B| - Σ_id A[id]·B[id]`` (negative pass) to
    ``counts[e]``. The smaller dict is merged into the larger one.
    """
    import numba
    from numba import types
    from numba.typed import Dict, List

    @numba.njit(cache=False, nogil=True)
    def kernel(order, node1, node2, seg, n_vert, pos, counts):
        parent = np.arange(n_vert)
        total = np.zeros(n_vert, np.int64)
        bags = List()
        for i in range(n_vert):
            d = Dict.empty(key_type=types.int64, value_type=types.int64)
            if seg[i] != 0:
                d[seg[i]] = 1
                total[i] = 1
            bags.append(d)
        for e in order:
            a = node1[e]
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            b = node2[e]
            while parent[b] != b:
                parent[b] = parent[parent[b]]
                b = parent[b]
            if a == b:
                continue
            if len(bags[a]) > len(bags[b]):
                a, b = b, a
            small, large = bags[a], bags[b]
            same = 0
            for k, v in small.items():
                if k in large:
                    same += v * large[k]
            if pos:
                counts[e] += same
            else:
                counts[e] += total[a] * total[b] - same
            for k, v in small.items():
                if k in large:
                    large[k] += v
                else:
                    large[k] = v
            small.clear()
            total[b] += total[a]
            parent[a] = b
        return counts

    return kernel


@functools.lru_cache(maxsize=16)
def _edges(shape: tuple[int, ...], nhood_bytes: bytes, n_dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    nhood = np.frombuffer(nhood_bytes, dtype=np.int64).reshape(-1, n_dim)
    node1, node2 = nodelist_from_shape(shape, nhood)
    node1, node2 = node1.ravel(), node2.ravel()
    valid = np.flatnonzero(node2 >= 0)
    return node1, node2, valid


def _counts(weights: np.ndarray, node1: np.ndarray, node2: np.ndarray, valid: np.ndarray, seg: np.ndarray,
            pos: bool) -> np.ndarray:
    order = valid[np.argsort(-weights[valid], kind="stable")]
    counts = np.zeros(weights.size, np.int64)
    return _kruskal_kernel()(order, node1, node2, seg, seg.size, bool(pos), counts)


def malis_weights(aff_pred: np.ndarray, aff_gt: np.ndarray, seg_gt: np.ndarray, nhood: np.ndarray,
                  unrestrict_neg: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """MALIS pair counts of every edge (ELEKTRONN2 ``malis_weights``; see the module text).

    Args:
        aff_pred: Predicted affinities ``(n_edges, *spatial)`` (probability of "connected").
        aff_gt: True affinities, same shape (e.g. ``seg_to_affgraph(seg_gt, nhood)``).
        seg_gt: True ids ``(*spatial)``; 0 is background (in no pair).
        nhood: ``(n_edges, len(spatial))`` offsets.
        unrestrict_neg: Negative pass on ``aff_pred`` instead of ``max(aff_pred, aff_gt)``.

    Returns:
        ``(pos, neg)``: int64 arrays of ``aff_pred``'s shape. ``pos[e]``: pairs with equal true
        ids whose maximin edge (positive pass) is ``e``; ``neg[e]``: pairs with different true
        ids whose maximin edge (negative pass) is ``e``.
    """
    aff_pred = np.asarray(aff_pred, dtype=np.float64)
    aff_gt = np.asarray(aff_gt, dtype=np.float64)
    seg = np.ascontiguousarray(np.asarray(seg_gt).astype(np.int64).ravel())
    shape = tuple(aff_pred.shape[1:])
    nhood = np.ascontiguousarray(nhood, dtype=np.int64)
    if aff_gt.shape != aff_pred.shape or seg.size != int(np.prod(shape)) or nhood.shape != (aff_pred.shape[0],
                                                                                          len(shape)):
        raise ValueError(f"malis_weights: aff_pred {aff_pred.shape}, aff_gt {aff_gt.shape}, seg_gt "
                         f"{np.shape(seg_gt)} and nhood {nhood.shape} do not fit together (want "
                         "(n_edges, *spatial), the same, (*spatial) and (n_edges, len(spatial)))")
    node1, node2, valid = _edges(shape, nhood.tobytes(), len(shape))
    pred = aff_pred.ravel()
    gt = aff_gt.ravel()
    pos = _counts(np.minimum(pred, gt), node1, node2, valid, seg, True)
    neg = _counts(pred if unrestrict_neg else np.maximum(pred, gt), node1, node2, valid, seg, False)
    return pos.reshape(aff_pred.shape), neg.reshape(aff_pred.shape)


def malis_errors(aff_pred: np.ndarray, pos: np.ndarray, neg: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """ELEKTRONN2's MALIS monitoring numbers from the counts of :func:`malis_weights`.

    Args:
        aff_pred: Predicted affinities.
        pos, neg: The counts.
        threshold: Affinities above it connect.

    Returns:
        ``false_splits`` (pairs to join whose maximin edge is below the threshold),
        ``false_merges`` (pairs to separate whose maximin edge is above it) and ``rand_error``
        ``= (false_splits + false_merges) / (Σpos + Σneg)`` (ELEKTRONN2 called it ``rand_index``).

    Example:
        >>> malis_errors(np.array([0.2, 0.7]), np.array([3, 1]), np.array([0, 4]))
        {'false_splits': 3.0, 'false_merges': 4.0, 'rand_error': 0.875}
    """
    aff_pred = np.asarray(aff_pred)
    fs = float(np.sum((aff_pred < threshold) * pos))
    fm = float(np.sum((aff_pred > threshold) * neg))
    n = float(np.sum(pos) + np.sum(neg))
    return {"false_splits": fs, "false_merges": fm, "rand_error": (fs + fm) / n if n else 0.0}
