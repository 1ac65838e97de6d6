"""Segmentation scores by voxel-pair counting: Rand index, false splits and false merges.

Example:
    >>> import numpy as np
    >>> true = np.array([1, 1, 2, 2, 0])
    >>> pred = np.array([5, 5, 5, 7, 9])
    >>> rand_index(true, pred)
    RandScores(rand_index=0.5, false_splits=1, false_merges=2, n_pairs=6)
    >>> [round(v, 4) for v in compute_V_rand_N2(true, pred)]
    [0.6667, 0.6, 0.75]
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class RandScores(NamedTuple):
    """Result of :func:`rand_index`."""

    #: Fraction of voxel pairs on which the segmentations agree (1 = identical up to relabelling).
    rand_index: float
    #: Pairs with the same true id that the prediction separates.
    false_splits: int
    #: Pairs with different true ids that the prediction joins.
    false_merges: int
    #: Unordered pairs of distinct labelled voxels.
    n_pairs: int


def _contingency(seg_true: np.ndarray, seg_pred: np.ndarray) -> np.ndarray:
    """Counts ``n[i, j]`` of voxels with true id ``i`` and predicted id ``j`` (compact ids)."""
    _, t = np.unique(np.ravel(seg_true), return_inverse=True)
    _, p = np.unique(np.ravel(seg_pred), return_inverse=True)
    table = np.zeros((t.max() + 1, p.max() + 1), dtype=np.int64)
    np.add.at(table, (t, p), 1)
    return table


def rand_index(seg_true: np.ndarray, seg_pred: np.ndarray) -> RandScores:
    """Rand index of ``seg_pred`` against ``seg_true`` over the voxels labelled in ``seg_true``.

    Voxels with true id 0 are not counted. A voxel with predicted id 0 is unassigned: it is joined
    to no other voxel (MALIS semantics: background connects to nothing).

    Args:
        seg_true: True ids.
        seg_pred: Predicted ids, same shape.

    Returns:
        :class:`RandScores`; ``rand_index = 1 - (false_splits + false_merges) / n_pairs``
        (1.0 when there are fewer than 2 labelled voxels).
    """
    seg_true, seg_pred = np.ravel(seg_true), np.ravel(seg_pred)
    if seg_true.shape != seg_pred.shape:
        raise ValueError(f"the segmentations differ in size: {seg_true.size} and {seg_pred.size}")
    keep = seg_true != 0
    seg_true, seg_pred = seg_true[keep], seg_pred[keep]
    n = seg_true.size
    # unassigned predicted voxels become singletons with ids beyond every real one
    seg_pred = np.where(seg_pred == 0, -1 - np.arange(n), seg_pred)

    def pairs(x: np.ndarray) -> int:
        return int((x * (x - 1) // 2).sum())

    table = _contingency(seg_true, seg_pred)
    both = pairs(table)
    same_true, same_pred = pairs(table.sum(1)), pairs(table.sum(0))
    n_pairs = n * (n - 1) // 2
    splits, merges = same_true - both, same_pred - both
    score = 1.0 - (splits + merges) / n_pairs if n_pairs else 1.0
    return RandScores(float(score), int(splits), int(merges), int(n_pairs))


def compute_V_rand_N2(seg_true: np.ndarray, seg_pred: np.ndarray) -> tuple[float, float, float]:  # noqa: N802
    """ELEKTRONN2's ``compute_V_rand_N2``: the Rand F-score and its split and merge parts.

    Voxels with true id 0 are dropped; predicted id 0 counts as one more segment. With the joint
    distribution ``P[i, j]`` of (true, predicted) ids, ``t`` and ``s`` its marginals over the
    predicted and the true ids: ``V_split = ΣP² / Σt²``, ``V_merge = ΣP² / Σs²`` and
    ``V_rand = 2ΣP² / (Σt² + Σs²)`` (1 is perfect; all lie in (0, 1]).

    Args:
        seg_true: True ids.
        seg_pred: Predicted ids, same shape.

    Returns:
        ``(V_rand, V_rand_split, V_rand_merge)``.
    """
    seg_true, seg_pred = np.ravel(seg_true), np.ravel(seg_pred)
    keep = seg_true != 0
    table = _contingency(seg_true[keep], seg_pred[keep]).astype(np.float64)
    p = table / table.sum()
    t, s = p.sum(0), p.sum(1)
    p2 = (p ** 2).sum()
    return float(2 * p2 / ((t ** 2).sum() + (s ** 2).sum())), float(p2 / (t ** 2).sum()), float(p2 / (s ** 2).sum())
