"""Segmentation scores by voxel-pair counting: Rand index, false splits and false merges, adapted
Rand error; from sparse contingency tables (memory grows with the voxels, not with ids x ids).

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


def _sizes(*segs: np.ndarray) -> np.ndarray:
    """Voxel counts of each id of one segmentation, or of each id combination of several that
    occurs at a voxel (the non-zero cells of their contingency table, never the dense table)."""
    key = np.zeros(segs[0].size, dtype=np.int64)
    for seg in segs:
        index = np.unique(seg, return_inverse=True)[1].reshape(-1)
        key = key * (int(index.max(initial=-1)) + 1) + index
    return np.unique(key, return_counts=True)[1]


def _pairs(sizes: np.ndarray) -> int:
    """Unordered pairs of distinct voxels within segments of these sizes."""
    return int((sizes * (sizes - 1) // 2).sum())


class PairCounts(NamedTuple):
    """Unordered pairs of distinct voxels with a true id (not 0), counted by :func:`pair_counts`.

    The properties are the pair-counting scores: the Rand index (counts :func:`rand_index` returns)
    and the adapted Rand error of SNEMI3D (Arganda-Carreras et al., 2015), as scikit-image's
    ``adapted_rand_error`` computes it, but with precision and recall the right way round.
    """

    #: Pairs that the truth and the prediction both put in one segment.
    both: int
    #: Pairs with the same true id.
    same_true: int
    #: Pairs with the same predicted id (never an unassigned one).
    same_pred: int
    #: All pairs.
    n_pairs: int

    @property
    def false_splits(self) -> int:
        """Pairs with the same true id that the prediction separates."""
        return self.same_true - self.both

    @property
    def false_merges(self) -> int:
        """Pairs with different true ids that the prediction joins."""
        return self.same_pred - self.both

    @property
    def rand_index(self) -> float:
        """Fraction of the pairs on which truth and prediction agree (1.0 with fewer than 2 voxels)."""
        return 1.0 - (self.false_splits + self.false_merges) / self.n_pairs if self.n_pairs else 1.0

    @property
    def precision(self) -> float:
        """``both / same_pred``: 1 = no false merges (1.0 when the prediction joins no pair)."""
        return self.both / self.same_pred if self.same_pred else 1.0

    @property
    def recall(self) -> float:
        """``both / same_true``: 1 = no false splits (1.0 when the truth joins no pair)."""
        return self.both / self.same_true if self.same_true else 1.0

    @property
    def adapted_rand_error(self) -> float:
        """``1 - F1`` of precision and recall, ``1 - 2 both / (same_true + same_pred)`` (0.0 when
        neither joins a pair)."""
        joined = self.same_true + self.same_pred
        return 1.0 - 2 * self.both / joined if joined else 0.0


def pair_counts(seg_true: np.ndarray, seg_pred: np.ndarray) -> PairCounts:
    """Counts the voxel pairs that ``seg_true`` and ``seg_pred`` put in one segment.

    Voxels with true id 0 are not counted. A voxel with predicted id 0 is unassigned: it is joined
    to no other voxel (MALIS semantics: background connects to nothing; SNEMI3D's and CREMI's
    adapted Rand error). Memory and time grow with the number of voxels only: the contingency
    table is kept sparse.

    Args:
        seg_true: True ids.
        seg_pred: Predicted ids, same size.

    Returns:
        :class:`PairCounts`.

    Example:
        >>> counts = pair_counts(np.array([1, 1, 1, 2]), np.array([3, 3, 0, 3]))
        >>> counts, counts.false_splits, counts.false_merges, round(counts.adapted_rand_error, 4)
        (PairCounts(both=1, same_true=3, same_pred=3, n_pairs=6), 2, 2, 0.6667)
    """
    seg_true, seg_pred = np.ravel(seg_true), np.ravel(seg_pred)
    if seg_true.shape != seg_pred.shape:
        raise ValueError(f"the segmentations differ in size: {seg_true.size} and {seg_pred.size}")
    keep = seg_true != 0
    seg_true, seg_pred = seg_true[keep], seg_pred[keep]
    assigned = seg_pred != 0  # an unassigned voxel is a segment of its own: no pairs
    n = seg_true.size
    return PairCounts(both=_pairs(_sizes(seg_true[assigned], seg_pred[assigned])), same_true=_pairs(_sizes(seg_true)),
                      same_pred=_pairs(_sizes(seg_pred[assigned])), n_pairs=n * (n - 1) // 2)


def rand_index(seg_true: np.ndarray, seg_pred: np.ndarray) -> RandScores:
    """Rand index of ``seg_pred`` against ``seg_true`` over the voxels labelled in ``seg_true``.

    Voxels with true id 0 are not counted. A voxel with predicted id 0 is unassigned: it is joined
    to no other voxel (MALIS semantics: background connects to nothing). See :func:`pair_counts`.

    Args:
        seg_true: True ids.
        seg_pred: Predicted ids, same shape.

    Returns:
        :class:`RandScores`; ``rand_index = 1 - (false_splits + false_merges) / n_pairs``
        (1.0 when there are fewer than 2 labelled voxels).
    """
    counts = pair_counts(seg_true, seg_pred)
    return RandScores(counts.rand_index, counts.false_splits, counts.false_merges, counts.n_pairs)


def compute_V_rand_N2(seg_true: np.ndarray, seg_pred: np.ndarray) -> tuple[float, float, float]:  # noqa: N802
    """ELEKTRONN2's ``compute_V_rand_N2``: the Rand F-score and its split and merge parts.

    Voxels with true id 0 are dropped; predicted id 0 counts as one more segment. With the joint
    distribution ``P[i, j]`` of (true, predicted) ids, ``t`` and ``s`` its marginals over the
    predicted and the true ids: ``V_split = ΣP² / Σt²``, ``V_merge = ΣP² / Σs²`` and
    ``V_rand = 2ΣP² / (Σt² + Σs²)`` (1 is perfect; all lie in (0, 1]).

    It is kept as ELEKTRONN2 computed it, so that its numbers compare with ELEKTRONN2's: ordered
    pairs with self-pairs, and predicted 0 one ordinary segment. :func:`pair_counts` (and the
    ``rand_precision``, ``rand_recall`` and ``adapted_rand_error`` of
    :func:`~ekn_plugins.evaluation.segmentation.segmentation_scores`) follow SNEMI3D and CREMI
    instead: distinct pairs only, and a voxel with predicted id 0 joined to no other voxel.

    Args:
        seg_true: True ids.
        seg_pred: Predicted ids, same shape.

    Returns:
        ``(V_rand, V_rand_split, V_rand_merge)``.
    """
    seg_true, seg_pred = np.ravel(seg_true), np.ravel(seg_pred)
    keep = seg_true != 0
    seg_true, seg_pred = seg_true[keep], seg_pred[keep]
    # the normalisation of P by the voxel count cancels in every ratio
    p2, s2, t2 = ((_sizes(*segs).astype(np.float64) ** 2).sum()
                  for segs in ((seg_true, seg_pred), (seg_true,), (seg_pred,)))
    return float(2 * p2 / (t2 + s2)), float(p2 / t2), float(p2 / s2)
