"""Volume metrics summed block by block: a confusion matrix for class metrics, squared errors for MSE.

Class metrics compare predicted class ids (argmax over each group of class channels, or channel >
``threshold`` for sigmoid outputs) with integer labels; labels < 0 and ``ignore_label`` are
unlabelled and not counted. With several label channels (groups, e.g. affinities) every
(voxel, channel) pair counts once in one pooled confusion matrix.

* ``pixel_error``: misclassified / labelled elements;
* ``f1`` (= Dice of the binary masks), ``iou``, ``precision``, ``recall``: per class
  (``volume_<metric>_c<k>``) and their mean over the foreground classes 1 .. n-1 (``volume_<metric>``;
  for two classes the score of class 1, scikit-learn's binary default); a class absent from labels
  and prediction is NaN and left out of the mean;
* ``mse``: mean squared difference of prediction and label values;
* segmentation scores (``vi``, ``adapted_rand_error``, ...), one value per volume: pooled as their
  mean over the volumes weighted by each volume's scored voxels (VI and the adapted Rand error are
  not sums over voxels, so the scores of all voxels together cannot be had block by block).

Example:
    >>> sums = MetricSums(n_class=2)
    >>> sums.add_classes(np.array([1, 1, 0, 0]), np.array([1, 0, 0, -1]))
    >>> r = sums.result(("pixel_error", "f1"))
    >>> round(r["volume_pixel_error"], 4), round(r["volume_f1"], 4), round(r["volume_f1_c0"], 4)
    (0.3333, 0.6667, 0.6667)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ekn_core.errors import ShapeError
from ekn_plugins.losses.functional import scores_from_confusion
from ekn_plugins.validation.spec import PER_CLASS, SEGMENTATION_METRICS


def predicted_classes(pred: np.ndarray, groups: int, threshold: float | None = None) -> np.ndarray:
    """Class ids ``(groups, *spatial)`` of a prediction ``(channels, *spatial)``.

    Args:
        pred: Probabilities: ``groups * n_class`` channels (softmax groups, consecutive) or, with
            ``threshold``, one channel per group.
        groups: Label channels.
        threshold: None: argmax per group; a number: 1 where the channel exceeds it.

    Example:
        >>> pred = np.array([[0.2, 0.9], [0.8, 0.1]])      # 2 classes, 2 voxels
        >>> predicted_classes(pred, 1).tolist(), predicted_classes(pred[1:], 1, 0.5).tolist()
        ([[1, 0]], [[1, 0]])
    """
    if threshold is not None:
        return (pred > threshold).astype(np.int64)
    return np.argmax(pred.reshape(groups, pred.shape[0] // groups, *pred.shape[1:]), axis=1)


def label_ids(labels: np.ndarray, ignore_label: int | None = None) -> np.ndarray:
    """Integer class ids with -1 for unlabelled voxels (< 0 or ``ignore_label``).

    Float labels must hold whole numbers (class ids stored as floats); a fractional value (soft
    labels) is an error rather than being truncated to a class.

    Raises:
        ShapeError: A fractional label value, or labels that are no numbers.

    Example:
        >>> label_ids(np.array([0, 1, 255, -3]), ignore_label=255).tolist()
        [0, 1, -1, -1]
        >>> label_ids(np.array([0.0, 1.0, 0.3]))
        Traceback (most recent call last):
        ekn_core.errors.ShapeError: labels must be integer class ids, found the value 0.3; threshold or round ...
    """
    labels = np.asarray(labels)
    if labels.dtype.kind == "f":
        fractional = labels[labels != np.round(labels)]
        if fractional.size:
            raise ShapeError(f"labels must be integer class ids, found the value {float(fractional[0])}; "
                             "threshold or round soft labels first")
    elif labels.dtype.kind not in "iub":
        raise ShapeError(f"labels must be integer class ids, not of dtype {labels.dtype}; cast them to integers")
    ids = labels.astype(np.int64)
    if ignore_label is not None:
        ids[ids == ignore_label] = -1
    return np.where(ids < 0, -1, ids)


class MetricSums:
    """What the metrics of a volume (or of several) are computed from, summed block by block.

    Args:
        n_class: Classes per group of the class metrics (None: value metrics only).
    """

    def __init__(self, n_class: int | None = None):
        self.n_class = n_class
        self.confusion = np.zeros((n_class, n_class), np.int64) if n_class else None
        self.squared_error = 0.0
        self.n_values = 0
        self.segmentation: dict[str, float] = {}  # score name → sum of score × scored voxels
        self.n_segmented = 0

    def add_classes(self, predicted: np.ndarray, target: np.ndarray) -> None:
        """Counts predicted class ids against target ids (same shape; target -1: unlabelled).

        Raises:
            ShapeError: A label is not a class of the net.
        """
        n = int(self.n_class or 0)
        t, p = np.ravel(target), np.ravel(predicted)
        keep = t >= 0
        t, p = t[keep], p[keep]
        if t.size and t.max() >= n:
            raise ShapeError(f"the labels hold the value {int(t.max())}, but the net predicts {n} classes "
                             f"(0 .. {n - 1}); set ignore_label for a value that marks unlabelled voxels")
        self.confusion += np.bincount(t * n + p, minlength=n * n).reshape(n, n)

    def add_values(self, predicted: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Adds squared differences (where ``mask`` is True, if given)."""
        diff = np.asarray(predicted, np.float64) - np.asarray(target, np.float64)
        if mask is not None:
            diff = diff[mask]
        self.squared_error += float(np.square(diff).sum())
        self.n_values += int(diff.size)

    def add_segmentation(self, scores: dict[str, float], n_voxels: int) -> None:
        """Adds one volume's segmentation scores, weighted by its ``n_voxels`` scored voxels.

        Example:
            >>> sums = MetricSums()
            >>> sums.add_segmentation({"vi": 1.0}, 300); sums.add_segmentation({"vi": 2.0}, 100)
            >>> sums.result(("vi",))
            {'volume_vi': 1.25}
        """
        for name, value in scores.items():
            self.segmentation[name] = self.segmentation.get(name, 0.0) + float(value) * n_voxels
        self.n_segmented += int(n_voxels)

    def result(self, metrics: Sequence[str]) -> dict[str, float]:
        """``{'volume_<metric>': value}`` (and ``volume_<metric>_c<k>`` per class); NaN where nothing
        was counted."""
        out: dict[str, float] = {}
        if self.confusion is not None:
            labelled = int(self.confusion.sum())
            if "pixel_error" in metrics:
                out["volume_pixel_error"] = 1.0 - np.trace(self.confusion) / labelled if labelled else np.nan
            scores = scores_from_confusion(self.confusion)
            for name in PER_CLASS:
                if name not in metrics:
                    continue
                per_class = scores[name]
                out.update({f"volume_{name}_c{k}": float(v) for k, v in enumerate(per_class)})
                foreground = per_class[1:][np.isfinite(per_class[1:])]
                out[f"volume_{name}"] = float(foreground.mean()) if foreground.size else np.nan
        if "mse" in metrics:
            out["volume_mse"] = self.squared_error / self.n_values if self.n_values else np.nan
        for name in SEGMENTATION_METRICS:
            if name in metrics:
                out[f"volume_{name}"] = self.segmentation[name] / self.n_segmented if self.n_segmented else np.nan
        return {k: float(v) for k, v in out.items()}
