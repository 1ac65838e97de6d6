"""Label reconciliation between blocks that were segmented on their own: overlap matching and
the global relabelling by connected components.

Two neighbouring blocks both segment the slab around their common face (each one's halo covers
the other's border). :func:`overlap_matches` pairs the segments of the two segmentations of that
slab that are each other's clear majority (among the segments each block has in its core);
:func:`final_ids` joins all matched pairs of all faces (union-find, as connected components of
the match graph) and numbers the joined segments consecutively.
:mod:`ekn_plugins.evaluation.blockwise_segmentation` drives them block by block.

Example:
    >>> import numpy as np
    >>> a = np.array([[1, 1, 1, 2, 2, 2]])               # block A's segmentation of the slab
    >>> b = np.array([[5, 5, 5, 5, 7, 7]])               # block B's: one voxel disagrees
    >>> overlap_matches(a, b).tolist()                   # 1~5: 3 of 3 and 4; 2~7: 2 of 3 and 2
    [[1, 5], [2, 7]]
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ekn_core.errors import ShapeError


def overlap_matches(seg_a: np.ndarray, seg_b: np.ndarray, allowed_a: np.ndarray | None = None,
                    allowed_b: np.ndarray | None = None) -> np.ndarray:
    """The pairs of segments of two segmentations of one region that are each other's majority.

    Segment ``i`` of ``seg_a`` and ``j`` of ``seg_b`` match when they share more than half of
    the voxels of each of them in the region: ``2 * |i ∩ j| > max(|i|, |j|)``. Every segment
    then has at most one partner per region, so a single face does not chain segments together:
    a segment that one block merged by mistake (two cells, both smaller than half of it)
    matches neither of the other block's two cells. Id 0 (unassigned) matches nothing.

    Across several faces, segments can still chain: a segment that lies only in a block's halo
    (the least reliable part of its segmentation, where it sees least of the map) can match
    different cells on two faces and join them. ``allowed_a`` and ``allowed_b`` restrict the matches
    to segments that a block has in its core (the part it writes to the output): a segment
    that no core holds joins nothing.

    Args:
        seg_a, seg_b: Integer ids of the same region, the same shape.
        allowed_a, allowed_b: The ids of ``seg_a`` (``seg_b``) that may match; None: every id.

    Returns:
        ``(k, 2)`` int64 array of matched ``(id in seg_a, id in seg_b)``, sorted.

    Example:
        >>> a = np.array([1, 1, 1, 1, 0, 0])
        >>> overlap_matches(a, np.array([3, 3, 4, 4, 4, 4])).tolist()   # 2 of 4 voxels: no majority
        []
        >>> overlap_matches(a, np.array([3, 3, 3, 4, 4, 4]), allowed_b=np.array([4])).tolist()  # 3: in no core
        []
    """
    a, b = np.asarray(seg_a).ravel(), np.asarray(seg_b).ravel()
    if np.shape(seg_a) != np.shape(seg_b):
        raise ShapeError(f"the two segmentations of an overlap differ in shape: {np.shape(seg_a)} and "
                         f"{np.shape(seg_b)}")
    keep = (a > 0) & (b > 0)
    ids_a, rank_a, size_a = np.unique(a, return_inverse=True, return_counts=True)
    ids_b, rank_b, size_b = np.unique(b, return_inverse=True, return_counts=True)
    # one int64 key per voxel from the ranks of its two ids (any ids, uint64 too): 1-D unique is fast
    keys, shared = np.unique(rank_a[keep].astype(np.int64) * len(ids_b) + rank_b[keep], return_counts=True)
    first, second = np.divmod(keys, len(ids_b))
    larger = np.maximum(size_a[first], size_b[second])
    match = 2 * shared > larger
    pairs = np.column_stack([ids_a[first[match]], ids_b[second[match]]]).astype(np.int64)
    for column, allowed in enumerate((allowed_a, allowed_b)):
        if allowed is not None:
            pairs = pairs[np.isin(pairs[:, column], allowed)]
    return pairs


def final_ids(n_ids: Sequence[int], matches: np.ndarray,
              written: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive final ids for the segments of all blocks, matched segments joined.

    The segments of block ``k`` (local ids ``1..n_ids[k]``) are the nodes
    ``offsets[k] + id - 1`` of one graph; each match is an edge. The connected components of the
    graph (union-find) are the final segments. Only components with a ``written`` segment (one
    that occurs in a block's core, the part that goes to the output) get an id: ``1, 2, ...`` in
    the order of their first written segment (by block, then local id), so the numbering is the
    same on every run.

    Args:
        n_ids: Number of local ids of every block.
        matches: ``(m, 4)`` rows ``(block, id, other block, other id)`` to join.
        written: Per block, the local ids that occur in its core.

    Returns:
        ``(final, offsets)``: the final id of every node (0 for components never written) and the
        first node of every block.

    Example:
        >>> written = [np.array([1, 2]), np.array([1, 2, 3])]
        >>> final, offsets = final_ids([2, 3], np.array([[0, 2, 1, 1]]), written)
        >>> final.tolist(), offsets.tolist()       # block 0's id 2 is block 1's id 1
        ([1, 2, 2, 3, 4], [0, 2])
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    counts = np.asarray(n_ids, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    n_nodes = int(counts.sum())
    rows = np.asarray(matches, dtype=np.int64).reshape(-1, 4)
    edges = (offsets[rows[:, 0]] + rows[:, 1] - 1, offsets[rows[:, 2]] + rows[:, 3] - 1)
    graph = coo_matrix((np.ones(len(rows), np.int8), edges), shape=(n_nodes, n_nodes))
    component = connected_components(graph, directed=False)[1]
    nodes = np.concatenate([offset + np.asarray(ids, np.int64) - 1 for offset, ids in zip(offsets, written)]
                           + [np.zeros(0, np.int64)])
    final_of_component = np.zeros(component.max(initial=-1) + 1, dtype=np.int64)
    seen, first = np.unique(component[nodes], return_index=True)
    final_of_component[seen[np.argsort(first)]] = np.arange(1, len(seen) + 1)
    return final_of_component[component], offsets
