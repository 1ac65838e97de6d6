"""Affinity graphs from segmentations and back (ELEKTRONN2 ``seg_to_affgraph``, ``affgraph_to_seg``).

An affinity graph has the layout ``(n_edges, *spatial)``; ``aff[e, p]`` is the edge between voxel
``p`` and voxel ``p + nhood[e]``. Edges whose second voxel lies outside the volume do not exist
(value 0 in graphs made here; ignored in graphs given here).

Example:
    >>> import numpy as np
    >>> seg = np.array([[1, 1, 2]])
    >>> seg_to_affgraph(seg, np.array([[0, -1]]))      # edge to the left neighbour
    array([[[0, 1, 0]]], dtype=int16)
    >>> node1, node2 = nodelist_from_shape((1, 3), np.array([[0, -1]]))
    >>> node2.tolist()
    [[[-1, 0, 1]]]
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _slices(shape: Sequence[int], offset: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """``(here, there)``: the voxels ``p`` whose ``p + offset`` is inside, and those ``p + offset``."""
    here = tuple(slice(max(0, -d), min(s, s - d)) for s, d in zip(shape, offset))
    there = tuple(slice(max(0, d), min(s, s + d)) for s, d in zip(shape, offset))
    return here, there


def _check_nhood(nhood: np.ndarray, ndim: int) -> np.ndarray:
    nhood = np.asarray(nhood, dtype=np.int64)
    if nhood.ndim != 2 or nhood.shape[1] != ndim:
        raise ValueError(f"nhood must have shape (n_edges, {ndim}) for a {ndim}-D volume, got {nhood.shape}")
    return nhood


def nodelist_from_shape(shape: Sequence[int], nhood: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two end voxels (flat C-order indices) of every edge of a volume of ``shape``.

    Args:
        shape: Spatial shape of the volume.
        nhood: ``(n_edges, len(shape))`` offsets.

    Returns:
        ``(node1, node2)``, int64 arrays ``(n_edges, *shape)``; ``node2`` is -1 where the edge
        leaves the volume.
    """
    shape = tuple(int(s) for s in shape)
    nhood = _check_nhood(nhood, len(shape))
    nodes = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    node1 = np.broadcast_to(nodes, (len(nhood),) + shape).copy()
    node2 = np.full(node1.shape, -1, dtype=np.int64)
    for e, offset in enumerate(nhood):
        here, there = _slices(shape, offset)
        node2[(e,) + here] = nodes[there]
    return node1, node2


def seg_to_affgraph(seg: np.ndarray, nhood: np.ndarray) -> np.ndarray:
    """Affinity graph of a segmentation: 1 where both voxels of an edge have the same non-zero id.

    Id 0 is background: its voxels are connected to nothing.

    Args:
        seg: Integer ids, any number of spatial axes.
        nhood: ``(n_edges, seg.ndim)`` offsets.

    Returns:
        int16 array ``(n_edges, *seg.shape)`` of 0/1.
    """
    seg = np.asarray(seg)
    nhood = _check_nhood(nhood, seg.ndim)
    aff = np.zeros((len(nhood),) + seg.shape, dtype=np.int16)
    for e, offset in enumerate(nhood):
        here, there = _slices(seg.shape, offset)
        a, b = seg[here], seg[there]
        aff[(e,) + here] = (a == b) & (a != 0)
    return aff


def affgraph_to_seg(aff: np.ndarray, nhood: np.ndarray, size_thresh: int = 1) -> np.ndarray:
    """Connected components of the edges with affinity > 0.5.

    Args:
        aff: ``(n_edges, *spatial)`` affinities (binary or probabilities).
        nhood: ``(n_edges, aff.ndim - 1)`` offsets.
        size_thresh: Components of at most this many voxels become background 0 (ELEKTRONN2's
            default 1: isolated voxels are background).

    Returns:
        int32 ids ``(*spatial)``: 0 for background, then 1, 2, ... in C order of each
        component's first voxel. (ELEKTRONN2 also returned the component sizes and counted
        any non-zero affinity as an edge.)
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    aff = np.asarray(aff)
    shape = aff.shape[1:]
    node1, node2 = nodelist_from_shape(shape, nhood)
    use = (node2 >= 0) & (aff > 0.5)
    n = int(np.prod(shape))
    graph = coo_matrix((np.ones(int(use.sum()), np.int8), (node1[use], node2[use])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels)
    keep = sizes > size_thresh
    # renumber kept components by their first voxel
    first = np.full(len(sizes), n, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(n))
    order = np.argsort(np.where(keep, first, n + 1), kind="stable")
    new_id = np.zeros(len(sizes), dtype=np.int32)
    n_keep = int(keep.sum())
    new_id[order[:n_keep]] = np.arange(1, n_keep + 1, dtype=np.int32)
    return new_id[labels].reshape(shape)
