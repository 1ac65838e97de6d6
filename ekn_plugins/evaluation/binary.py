"""Threshold sweeps of a binary probability against labels, summed block by block (ELEKTRONN2's
``trainutils.evaluate`` and ``error_hist``, for volumes larger than memory).

:class:`ThresholdCurves` keeps two histograms of the predicted probability of the positive class,
one over voxels labelled positive and one over voxels labelled negative; blocks are added one by
one and never kept. :meth:`ThresholdCurves.result` turns the histograms into a
:class:`BinaryEvaluation`: confusion counts, precision, recall, F1, accuracy, ... per threshold,
the ROC and precision-recall curves, ROC AUC and average precision. :func:`plot_performance` and
:func:`plot_error_histogram` draw them.

Thresholds and exactness:

* a voxel is predicted positive when its probability ``p > t`` (as
  :func:`~ekn_plugins.validation.metrics.predicted_classes` with a threshold; ELEKTRONN2 used
  ``p >= t``); ``p`` and ``t`` are compared as float64;
* the histograms have ``bins + 2`` bins: bin 0 holds ``p == 0``, bin ``k`` (1 .. ``bins``) holds
  ``(k - 1)/bins < p <= k/bins`` without ``p == 1``, and bin ``bins + 1`` holds ``p == 1``
  (saturated sigmoids and softmaxes). So every count at a threshold on the grid ``k / bins``
  (``k = 0 .. bins``) is exact. Other thresholds are rounded to the nearest grid threshold, and
  the evaluation reports the grid thresholds it used;
* ROC AUC and average precision are exact when no bin holds two different probabilities (e.g.
  probabilities stored as 8-bit values ``k / 255`` with ``bins >= 255``). Otherwise the voxels in
  one bin count as tied, and the evaluation states how far that can move each number at most
  (``roc_auc_error_bound``, ``average_precision_error_bound``): the sweep keeps the smallest and
  largest probability of every bin, and only bins holding different probabilities add to the
  bounds, so exact results report 0. For probabilities spread over [0, 1], the ROC AUC bound is
  below ``1 / bins`` and the average precision bound a few times ``1 / bins`` (about ``4 / bins``).

Example:
    >>> curves = ThresholdCurves(bins=10)
    >>> curves.add(np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 0, 1, 0]))
    >>> ev = curves.result()
    >>> ev.roc_auc, ev.best_threshold, ev.best_f1, ev.accuracy_at_half
    (0.75, 0.1, 0.8, 0.5)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ekn_core.atomic import atomic_write
from ekn_core.errors import ConfigError, ShapeError
from ekn_plugins.losses.functional import scores_from_confusion
from ekn_plugins.validation.metrics import label_ids

#: The thresholds of ELEKTRONN2's ``evaluate``; :meth:`ThresholdCurves.result` rounds them to the bin grid.
ELEKTRONN2_THRESHOLDS = np.linspace(0.0, 1.0, 64)


def bin_edges(bins: int) -> np.ndarray:
    """The grid thresholds ``k / bins``, ``k = 0 .. bins`` (float64), on which results are exact.

    Example:
        >>> bin_edges(4).tolist()
        [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    return np.arange(bins + 1) / bins


@dataclasses.dataclass(frozen=True, eq=False)
class BinaryEvaluation:
    """Binary scores of a probability map against labels (from :meth:`ThresholdCurves.result`).

    Per threshold (arrays along ``thresholds``; a voxel is positive where ``p > threshold``):
    ``tp``, ``fp``, ``tn``, ``fn`` and ``precision``, ``recall`` (= true-positive rate), ``fpr``,
    ``f1``, ``accuracy``, ``balanced_accuracy`` (mean of the true-positive and true-negative
    rates). A score whose denominator is 0 is NaN (e.g. precision where nothing is predicted
    positive).

    Curves through every bin boundary (``bins + 3`` points): nothing positive (threshold 1),
    only ``p == 1``, the grid thresholds from ``1 - 1/bins`` down to 0, everything positive:
    ``roc_fpr``, ``roc_tpr``, ``pr_recall``, ``pr_precision`` (1 where nothing is predicted
    positive, as scikit-learn's curve).

    Scalars: ``roc_auc`` (trapezoids under the ROC curve, = scikit-learn's ``roc_auc_score``),
    ``average_precision`` (``sum_n (R_n - R_{n-1}) P_n`` along the PR curve, =
    scikit-learn's ``average_precision_score``), their ``*_error_bound`` (the most binning can
    have moved them; 0 means exact), ``best_threshold`` and ``best_f1`` (F1 is maximised over all
    grid thresholds; the lowest of equally good thresholds), ``accuracy_at_half`` and
    ``pixel_error_at_half`` (threshold 0.5), ``n_positive`` and ``n_negative`` (labelled voxels).
    ``positive_counts`` and ``negative_counts`` are the histograms (see :class:`ThresholdCurves`).
    """

    bins: int
    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    tn: np.ndarray
    fn: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    fpr: np.ndarray
    f1: np.ndarray
    accuracy: np.ndarray
    balanced_accuracy: np.ndarray
    roc_fpr: np.ndarray
    roc_tpr: np.ndarray
    pr_recall: np.ndarray
    pr_precision: np.ndarray
    roc_auc: float
    roc_auc_error_bound: float
    average_precision: float
    average_precision_error_bound: float
    best_threshold: float
    best_f1: float
    accuracy_at_half: float
    pixel_error_at_half: float
    n_positive: int
    n_negative: int
    positive_counts: np.ndarray
    negative_counts: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """Every field as Python numbers and lists (for JSON; NaN stays NaN).

        Example:
            >>> curves = ThresholdCurves(bins=2)
            >>> curves.add(np.array([0.2, 0.7]), np.array([0, 1]))
            >>> d = curves.result([0.5]).to_dict()
            >>> d["thresholds"], d["tp"], d["roc_auc"], d["pr_precision"]
            ([0.5], [1], 1.0, [1.0, 1.0, 1.0, 0.5, 0.5])
        """
        return {f.name: np.asarray(getattr(self, f.name)).tolist() for f in dataclasses.fields(self)}

    def summary(self) -> str:
        """A short text table of the main numbers (for reports and logs).

        Example:
            >>> curves = ThresholdCurves(bins=10)
            >>> curves.add(np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 0, 1, 0]))
            >>> print(curves.result().summary())
            2 positive and 2 negative labelled voxels; thresholds on a grid of 1/10
            ROC AUC            0.7500  (binning error <= 0.0000)
            average precision  0.8333  (binning error <= 0.0000)
            threshold  precision  recall  F1      accuracy
            0.5000     0.5000     0.5000  0.5000  0.5000
            0.1000     0.6667     1.0000  0.8000  0.7500    (best F1)
        """
        lines = [
            f"{self.n_positive} positive and {self.n_negative} negative labelled voxels; "
            f"thresholds on a grid of 1/{self.bins}",
            f"ROC AUC            {self.roc_auc:.4f}  (binning error <= {self.roc_auc_error_bound:.4f})",
            f"average precision  {self.average_precision:.4f}  "
            f"(binning error <= {self.average_precision_error_bound:.4f})",
            "threshold  precision  recall  F1      accuracy",
        ]
        rows = ((0.5, ""), (self.best_threshold, "    (best F1)")) if self.n_positive else ((0.5, ""),)
        for threshold, note in rows:
            row = _sweep(self.positive_counts, self.negative_counts, self.bins, [threshold])
            lines.append(f"{threshold:<9.4f}  {row.precision[0]:<9.4f}  {row.recall[0]:<6.4f}  "
                         f"{row.f1[0]:<6.4f}  {row.accuracy[0]:.4f}{note}")
        return "\n".join(lines)


class ThresholdCurves:
    """Histograms of a predicted probability over positive and negative voxels, summed block by
    block, from which :meth:`result` computes every threshold-dependent score.

    Args:
        bins: Histogram bins over [0, 1] (an even number, so that 0.5 is a grid threshold);
            results are exact at the thresholds ``k / bins``.
        positive: None: binary labels, 1 positive and 0 negative (any other class is an error);
            a class id: that class against all other classes (multi-class labels).

    Attributes:
        positive_counts: ``bins + 2`` counts of positive voxels: bin 0 holds ``p == 0``, bin
            ``k`` holds ``(k - 1)/bins < p <= k/bins`` without ``p == 1``, bin ``bins + 1``
            holds ``p == 1``.
        negative_counts: The same for negative voxels.
        bin_min, bin_max: The smallest and largest probability of the labelled voxels in each bin
            (inf and -inf for an empty bin): a bin whose voxels all have one probability adds
            nothing to the error bounds.

    Example:
        >>> curves = ThresholdCurves(bins=4)
        >>> curves.add(np.array([0.0, 0.3, 0.5, 1.0, 0.7]), np.array([0, 0, 1, 1, 255]), ignore_label=255)
        >>> curves.positive_counts.tolist(), curves.negative_counts.tolist()
        ([0, 0, 1, 0, 0, 1], [1, 0, 1, 0, 0, 0])
    """

    def __init__(self, bins: int = 1000, positive: int | None = None):
        if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2 or bins % 2:
            raise ConfigError(f"bins must be an even number >= 2 (so that 0.5 is a grid threshold), not {bins!r}")
        if positive is not None and (not isinstance(positive, (int, np.integer)) or positive < 0):
            raise ConfigError(f"positive must be a class id >= 0 (or None for binary labels), not {positive!r}")
        self.bins = int(bins)
        self.positive = positive
        self.positive_counts = np.zeros(self.bins + 2, np.int64)
        self.negative_counts = np.zeros(self.bins + 2, np.int64)
        self.bin_min = np.full(self.bins + 2, np.inf)
        self.bin_max = np.full(self.bins + 2, -np.inf)

    def add(self, prob: np.ndarray, labels: np.ndarray, ignore_label: int | None = None) -> None:
        """Counts one block.

        Args:
            prob: Probability of the positive class, in [0, 1].
            labels: Integer labels of the same shape; values < 0 and ``ignore_label`` are
                unlabelled and not counted.
            ignore_label: A label value that marks unlabelled voxels.

        Raises:
            ShapeError: Shapes differ, labels are not binary (without ``positive``) or not
                integers, or a labelled voxel's probability is NaN or outside [0, 1].
        """
        prob, labels = np.asarray(prob), np.asarray(labels)
        if prob.shape != labels.shape:
            raise ShapeError(f"the probabilities have the shape {prob.shape} but the labels {labels.shape}; pass "
                             "the probability of the positive class (one channel) for the labelled region")
        target = self._binary_target(labels, ignore_label)
        labelled = target >= 0
        p, target = np.asarray(prob, np.float64).ravel()[labelled], target[labelled]
        if p.size and not (p.min() >= 0.0 and p.max() <= 1.0):
            found = "NaN" if np.isnan(p).any() else f"values from {p.min():g} to {p.max():g}"
            raise ShapeError(f"probabilities must lie in [0, 1], found {found}; pass the softmax or sigmoid "
                             "output (not logits, and 8-bit predictions divided by 255)")
        index = np.searchsorted(bin_edges(self.bins), p, side="left")
        index[p == 1.0] = self.bins + 1
        self.positive_counts += np.bincount(index[target == 1], minlength=self.bins + 2)
        self.negative_counts += np.bincount(index[target == 0], minlength=self.bins + 2)
        np.minimum.at(self.bin_min, index, p)
        np.maximum.at(self.bin_max, index, p)

    def _binary_target(self, labels: np.ndarray, ignore_label: int | None) -> np.ndarray:
        """1 positive, 0 negative, -1 unlabelled (flat)."""
        ids = label_ids(labels, ignore_label).ravel()
        if self.positive is not None:
            return np.where(ids < 0, -1, ids == self.positive).astype(np.int64)
        if ids.size and ids.max() > 1:
            classes = np.unique(ids[ids >= 0])
            shown = ", ".join(str(c) for c in classes[:10]) + (", ..." if classes.size > 10 else "")
            raise ShapeError(f"binary labels must be 0 (negative) or 1 (positive), found the classes [{shown}]; "
                             "evaluate one class against the rest with positive=<class> (ekn evaluate --positive K), "
                             "or mark unlabelled voxels with ignore_label (--ignore-label V)")
        return ids

    def merge(self, other: ThresholdCurves) -> None:
        """Adds the counts of ``other`` (another block set, volume or worker) to these.

        Raises:
            ConfigError: ``other`` has other bins or another positive class.
        """
        if (other.bins, other.positive) != (self.bins, self.positive):
            raise ConfigError(f"cannot merge threshold curves with bins={other.bins}, positive={other.positive} "
                              f"into ones with bins={self.bins}, positive={self.positive}; create both alike")
        self.positive_counts += other.positive_counts
        self.negative_counts += other.negative_counts
        np.minimum(self.bin_min, other.bin_min, out=self.bin_min)
        np.maximum(self.bin_max, other.bin_max, out=self.bin_max)

    def result(self, thresholds: Any = None) -> BinaryEvaluation:
        """Scores at ``thresholds``, the curves and the summary numbers.

        Args:
            thresholds: Thresholds in [0, 1], rounded to the nearest grid threshold ``k / bins``
                (duplicates dropped, sorted). None: ELEKTRONN2's 64 thresholds
                ``linspace(0, 1, 64)``, so rounded.

        Raises:
            ShapeError: No labelled voxel was added.
            ConfigError: A threshold is outside [0, 1].
        """
        pos, neg = self.positive_counts, self.negative_counts
        n_pos, n_neg = int(pos.sum()), int(neg.sum())
        if n_pos + n_neg == 0:
            raise ShapeError("no labelled voxels were added; check the labels and ignore_label")
        grid = _sweep(pos, neg, self.bins, bin_edges(self.bins))
        chosen = _sweep(pos, neg, self.bins, ELEKTRONN2_THRESHOLDS if thresholds is None else thresholds)
        # curves from "nothing positive" down through every bin to "everything positive"
        above_pos, above_neg = _above(pos), _above(neg)
        tp_curve, fp_curve = above_pos[::-1], above_neg[::-1]
        with np.errstate(invalid="ignore", divide="ignore"):
            roc_tpr, roc_fpr = tp_curve / n_pos, fp_curve / n_neg
            pr_precision = np.where(tp_curve + fp_curve > 0, tp_curve / np.maximum(tp_curve + fp_curve, 1), 1.0)
            roc_auc = float(np.sum(np.diff(roc_fpr) * (roc_tpr[1:] + roc_tpr[:-1]) / 2))
            average_precision = float(np.sum(np.diff(roc_tpr) * pr_precision[1:]))
            # voxels sharing one of the bins 1 .. bins count as tied: at most half their pairs, or
            # their recall step times the spread of precision inside the bin, can be misplaced;
            # not in a bin whose voxels all have one probability (tied in truth too)
            inner = slice(1, self.bins + 1)
            spread = self.bin_max[inner] > self.bin_min[inner]
            p_in, n_in = np.where(spread, pos[inner], 0), np.where(spread, neg[inner], 0).astype(np.float64)
            roc_bound = 0.5 * np.sum(p_in * n_in) / np.float64(n_pos * n_neg)
            tp_above, fp_above = above_pos[2:self.bins + 2], above_neg[2:self.bins + 2]
            precision_high = (tp_above + p_in) / (tp_above + p_in + fp_above)
            precision_low = (tp_above + 1) / (tp_above + 1 + fp_above + n_in)
            ap_spread = np.where(p_in > 0, p_in / n_pos * (precision_high - precision_low), 0.0)
            ap_bound = float(np.sum(ap_spread)) if n_pos else np.nan
        best = int(np.argmax(grid.f1)) if n_pos else None
        half = self.bins // 2
        return dataclasses.replace(
            chosen, roc_fpr=roc_fpr, roc_tpr=roc_tpr, pr_recall=roc_tpr, pr_precision=pr_precision,
            roc_auc=roc_auc, roc_auc_error_bound=float(roc_bound),
            average_precision=average_precision, average_precision_error_bound=ap_bound,
            best_threshold=float(grid.thresholds[best]) if best is not None else np.nan,
            best_f1=float(grid.f1[best]) if best is not None else np.nan,
            accuracy_at_half=float(grid.accuracy[half]), pixel_error_at_half=1.0 - float(grid.accuracy[half]),
            n_positive=n_pos, n_negative=n_neg)


def _sweep(pos: np.ndarray, neg: np.ndarray, bins: int, thresholds: Any) -> BinaryEvaluation:
    """Per-threshold counts and scores from the histograms (thresholds rounded to the grid); the
    scalars and curves are left NaN / empty for :meth:`ThresholdCurves.result` to fill in."""
    t = np.asarray(thresholds, np.float64).ravel()
    if not t.size or not np.all((t >= 0) & (t <= 1)):
        raise ConfigError(f"thresholds must be numbers in [0, 1], got {t.tolist()[:10]}")
    k = np.unique(np.rint(t * bins).astype(np.int64))
    above_pos, above_neg = _above(pos), _above(neg)
    split = np.where(k < bins, k + 1, bins + 2)  # first bin above threshold k / bins
    tp, fp = above_pos[split], above_neg[split]
    fn, tn = above_pos[0] - tp, above_neg[0] - fp
    scores = scores_from_confusion(np.stack([np.stack([tn, fp], -1), np.stack([fn, tp], -1)], -2))
    empty = np.zeros(0)
    return BinaryEvaluation(
        bins=bins, thresholds=k / bins, tp=tp, fp=fp, tn=tn, fn=fn,
        precision=scores["precision"][:, 1], recall=scores["recall"][:, 1], fpr=1.0 - scores["recall"][:, 0],
        f1=scores["f1"][:, 1], accuracy=scores["accuracy"], balanced_accuracy=scores["recall"].mean(-1),
        roc_fpr=empty, roc_tpr=empty, pr_recall=empty, pr_precision=empty,
        roc_auc=np.nan, roc_auc_error_bound=np.nan, average_precision=np.nan,
        average_precision_error_bound=np.nan, best_threshold=np.nan, best_f1=np.nan,
        accuracy_at_half=np.nan, pixel_error_at_half=np.nan, n_positive=int(above_pos[0]),
        n_negative=int(above_neg[0]), positive_counts=pos.copy(), negative_counts=neg.copy())


def _above(counts: np.ndarray) -> np.ndarray:
    """``above[i]``: voxels in bins >= i, for ``i = 0 .. len(counts)``."""
    return np.append(np.cumsum(counts[::-1])[::-1], 0)


def _save_png(fig: Any, path: str) -> str:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    return path


def plot_performance(evaluation: BinaryEvaluation, path: str, title: str | None = None) -> str:
    """ELEKTRONN2's ``<name>.performance.png``: F1, accuracy, precision and recall against the
    threshold (with the best F1 marked), the precision-recall curve (with average precision) and
    the ROC curve (with its AUC), in one PNG written atomically.

    Returns:
        ``path``.

    Example:
        >>> import os, tempfile
        >>> curves = ThresholdCurves(bins=10)
        >>> curves.add(np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 0, 1, 0]))
        >>> path = plot_performance(curves.result(), os.path.join(tempfile.mkdtemp(), "a.performance.png"))
        >>> open(path, "rb").read(8) == b"\\x89PNG\\r\\n\\x1a\\n"
        True
    """
    from matplotlib.figure import Figure

    ev = evaluation
    fig = Figure(figsize=(14, 4.2), layout="constrained")
    sweep, pr, roc = fig.subplots(1, 3)
    for name in ("f1", "accuracy", "precision", "recall"):
        sweep.plot(ev.thresholds, getattr(ev, name), label=name)
    sweep.axvline(ev.best_threshold, color="gray", lw=0.8)
    sweep.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="threshold (positive: p > threshold)",
              title=f"F1 max = {ev.best_f1:.4f} at {ev.best_threshold:.4f}")
    sweep.legend(loc="lower center")
    pr.plot(ev.pr_recall, ev.pr_precision)
    pr.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
           title=f"precision-recall, AP = {ev.average_precision:.4f}")
    roc.plot(ev.roc_fpr, ev.roc_tpr)
    roc.plot([0, 1], [0, 1], color="gray", lw=0.8, ls="--")
    roc.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="false positive rate", ylabel="true positive rate",
            title=f"ROC, AUC = {ev.roc_auc:.4f}")
    if title:
        fig.suptitle(title)
    return _save_png(fig, path)


def plot_error_histogram(curves_or_evaluation: ThresholdCurves | BinaryEvaluation, path: str,
                         threshold: float | None = None) -> str:
    """ELEKTRONN2's ``<name>.error_histogram.png``: how the predicted probability is distributed
    over voxels labelled positive and negative, and over all (log counts). Negative voxels right
    of the threshold are false positives, positive voxels left of it false negatives. Exact zeros
    and ones are drawn in the first and last bin. Written atomically.

    Args:
        curves_or_evaluation: The histograms' owner.
        threshold: Marked by a vertical line; None: the best-F1 threshold of an evaluation (none
            for curves).

    Returns:
        ``path``.

    Example:
        >>> import os, tempfile
        >>> curves = ThresholdCurves(bins=10)
        >>> curves.add(np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 0, 1, 0]))
        >>> path = os.path.join(tempfile.mkdtemp(), "a.error_histogram.png")
        >>> plot_error_histogram(curves, path, threshold=0.5) == path and os.path.getsize(path) > 0
        True
    """
    from matplotlib.figure import Figure

    source = curves_or_evaluation
    if threshold is None:
        threshold = getattr(source, "best_threshold", None)
    counts = {}
    for name in ("positive", "negative"):
        c = np.asarray(getattr(source, f"{name}_counts"))
        counts[name] = np.concatenate([[c[0] + c[1]], c[2:-2], [c[-2] + c[-1]]])
    fig = Figure(figsize=(9, 4.5), layout="constrained")
    ax = fig.subplots()
    edges = bin_edges(source.bins)
    ax.stairs(counts["positive"] + counts["negative"], edges, color="k", label="all labelled")
    ax.stairs(counts["positive"], edges, color="g", label=f"label positive ({int(counts['positive'].sum())})")
    ax.stairs(counts["negative"], edges, color="r", label=f"label negative ({int(counts['negative'].sum())})")
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(threshold, color="gray", lw=0.8, label=f"threshold {threshold:.4f}")
    ax.set_yscale("log")
    ax.set(xlim=(0, 1), xlabel="predicted probability", ylabel="voxels", title="error histogram")
    ax.legend(loc="upper center")
    return _save_png(fig, path)
