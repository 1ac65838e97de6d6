"""Threshold sweeps summed block by block (ekn_plugins.evaluation.binary) against scikit-learn and
brute force: exact on the bin grid, bounded off it; blockwise == one-shot; labels; errors; figures."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import (accuracy_score, average_precision_score, balanced_accuracy_score, confusion_matrix,
                             f1_score, precision_recall_curve, precision_score, recall_score, roc_auc_score,
                             roc_curve)

from ekn_core.errors import ConfigError, ShapeError
from ekn_plugins.evaluation.binary import (ThresholdCurves, bin_edges, plot_error_histogram,
                                           plot_performance)


def _scored_labels(rng, n, bins=None):
    """Binary labels and probabilities that separate them partly; on the grid k/bins if given."""
    labels = (rng.random(n) < 0.3).astype(np.int64)
    prob = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0.0, 1.0)
    if bins is not None:
        prob = np.rint(prob * bins) / bins
    return prob, labels


def test_quantised_probabilities_match_scikit_learn_exactly():
    bins = 200
    rng = np.random.default_rng(1)
    prob, labels = _scored_labels(rng, 4000, bins)
    curves = ThresholdCurves(bins)
    curves.add(prob, labels)
    ev = curves.result(bin_edges(bins))
    assert ev.roc_auc == pytest.approx(roc_auc_score(labels, prob), abs=1e-12)
    assert ev.average_precision == pytest.approx(average_precision_score(labels, prob), abs=1e-12)
    np.testing.assert_array_equal(ev.thresholds, bin_edges(bins))
    # scikit-learn's curves pass through distinct scores only; ours through every bin boundary
    ours = set(zip(np.round(ev.roc_fpr, 12), np.round(ev.roc_tpr, 12)))
    fpr, tpr, _ = roc_curve(labels, prob, drop_intermediate=False)
    assert set(zip(np.round(fpr, 12), np.round(tpr, 12))) <= ours
    ours = set(zip(np.round(ev.pr_recall, 12), np.round(ev.pr_precision, 12)))
    precision, recall, _ = precision_recall_curve(labels, prob)
    assert set(zip(np.round(recall, 12), np.round(precision, 12))) <= ours
    for i, t in enumerate(ev.thresholds):
        (tn, fp), (fn, tp) = confusion_matrix(labels, prob > t, labels=[0, 1])
        assert (ev.tn[i], ev.fp[i], ev.fn[i], ev.tp[i]) == (tn, fp, fn, tp), t
    for i in range(0, bins + 1, 17):
        pred = prob > ev.thresholds[i]
        kw = dict(zero_division=np.nan)
        for ours, ref in ((ev.precision, precision_score(labels, pred, **kw)), (ev.recall, recall_score(labels, pred)),
                          (ev.f1, f1_score(labels, pred)), (ev.accuracy, accuracy_score(labels, pred)),
                          (ev.balanced_accuracy, balanced_accuracy_score(labels, pred)),
                          (ev.fpr, np.mean(pred[labels == 0]))):
            np.testing.assert_allclose(ours[i], ref, rtol=0, atol=1e-12)
    f1_ref = np.array([f1_score(labels, prob > t) for t in bin_edges(bins)])
    assert ev.best_f1 == pytest.approx(f1_ref.max(), abs=1e-12)
    assert ev.best_threshold == bin_edges(bins)[np.argmax(f1_ref)]
    assert ev.accuracy_at_half == pytest.approx(accuracy_score(labels, prob > 0.5), abs=1e-12)
    assert ev.pixel_error_at_half == pytest.approx(np.mean((prob > 0.5) != labels), abs=1e-12)
    assert (ev.n_positive, ev.n_negative) == (labels.sum(), (labels == 0).sum())


def test_unquantised_probabilities_are_exact_at_grid_thresholds_and_bounded_otherwise():
    bins = 100
    rng = np.random.default_rng(2)
    prob, labels = _scored_labels(rng, 6000)
    prob[rng.random(prob.size) < 0.2 * labels] = 1.0  # saturated: exact ones get their own bin
    prob = prob.astype(np.float32)
    curves = ThresholdCurves(bins)
    curves.add(prob, labels)
    assert curves.positive_counts[-1] == np.sum((prob == 1) & (labels == 1))
    ev = curves.result(bin_edges(bins))
    p64 = prob.astype(np.float64)
    np.testing.assert_array_equal(ev.tp, [np.sum((p64 > t) & (labels == 1)) for t in bin_edges(bins)])
    np.testing.assert_array_equal(ev.fp, [np.sum((p64 > t) & (labels == 0)) for t in bin_edges(bins)])
    # binning ties voxels within a bin: the stated bounds hold, the errors are real, and the bounds
    # are of the order of 1/bins
    auc_err = abs(ev.roc_auc - roc_auc_score(labels, prob))
    ap_err = abs(ev.average_precision - average_precision_score(labels, prob))
    assert 0 < auc_err <= ev.roc_auc_error_bound < 1 / bins
    assert 0 < ap_err <= ev.average_precision_error_bound < 5 / bins


@pytest.mark.parametrize("positives_on_top", [True, False])
def test_error_bounds_hold_where_binning_errs_most(positives_on_top):
    """Within every bin all positives lie above (or below) all negatives: the AUC error reaches
    its bound exactly."""
    bins = 20
    rng = np.random.default_rng(7)
    k = rng.integers(1, bins + 1, 3000)
    labels = (rng.random(k.size) < 0.4).astype(int)
    offset = np.where(labels == positives_on_top, 0.1, 0.9)
    prob = (k - offset) / bins
    curves = ThresholdCurves(bins)
    curves.add(prob, labels)
    ev = curves.result()
    sign = 1 if positives_on_top else -1
    assert sign * (roc_auc_score(labels, prob) - ev.roc_auc) == pytest.approx(ev.roc_auc_error_bound, rel=1e-9)
    assert abs(average_precision_score(labels, prob) - ev.average_precision) <= ev.average_precision_error_bound


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_error_bounds_are_zero_where_every_bin_holds_one_probability(dtype):
    """8-bit probabilities (k / 255) with bins=510: every bin holds one probability, AUC and AP equal
    scikit-learn's, and the bounds say so (0); a second probability in one bin makes them positive,
    also when it comes from another block merged in."""
    rng = np.random.default_rng(8)
    prob = (rng.integers(0, 256, 3000) / 255.0).astype(dtype)
    labels = (rng.random(prob.size) < 0.8 * prob + 0.1).astype(int)
    curves = ThresholdCurves(510)
    curves.add(prob, labels)
    ev = curves.result()
    assert ev.roc_auc == pytest.approx(roc_auc_score(labels, prob), abs=1e-12)
    assert ev.average_precision == pytest.approx(average_precision_score(labels, prob), abs=1e-12)
    assert (ev.roc_auc_error_bound, ev.average_precision_error_bound) == (0.0, 0.0)
    close = np.full(40, float(dtype(100 / 255)) - 1e-9)  # in the bin of 100/255 (as stored)
    other = ThresholdCurves(510)
    other.add(close, np.arange(40) % 2)
    curves.merge(other)
    ev = curves.result()
    assert ev.roc_auc_error_bound > 0 and ev.average_precision_error_bound > 0
    both = np.concatenate([prob, close]), np.concatenate([labels, np.arange(40) % 2])
    assert abs(ev.roc_auc - roc_auc_score(*both[::-1])) <= ev.roc_auc_error_bound


def test_thresholds_off_the_grid_are_rounded_and_default_to_elektronn2s_64():
    curves = ThresholdCurves(1000)
    prob, labels = _scored_labels(np.random.default_rng(3), 500)
    curves.add(prob, labels)
    ev = curves.result()
    assert len(ev.thresholds) == 64
    np.testing.assert_array_equal(ev.thresholds * 1000, np.rint(ev.thresholds * 1000))
    assert np.max(np.abs(ev.thresholds - np.linspace(0, 1, 64))) <= 0.5 / 1000
    rounded = curves.result([0.2504, 0.7496, 0.25])
    np.testing.assert_array_equal(rounded.thresholds, [0.25, 0.75])
    np.testing.assert_array_equal(rounded.tp, [np.sum((prob > t) & (labels == 1)) for t in (0.25, 0.75)])


def test_blocks_and_merged_workers_equal_one_shot():
    rng = np.random.default_rng(4)
    shape = (9, 13, 11)
    prob = rng.random(shape)
    labels = rng.integers(-1, 2, shape)
    one_shot = ThresholdCurves(50)
    one_shot.add(prob, labels)
    workers = [ThresholdCurves(50) for _ in range(3)]
    cuts = [np.unique(np.r_[0, rng.integers(1, n, 2), n]) for n in shape]
    i = 0
    for z0, z1 in zip(cuts[0][:-1], cuts[0][1:]):
        for y0, y1 in zip(cuts[1][:-1], cuts[1][1:]):
            for x0, x1 in zip(cuts[2][:-1], cuts[2][1:]):
                block = np.s_[z0:z1, y0:y1, x0:x1]
                workers[i % 3].add(prob[block], labels[block])
                i += 1
    assert i > 8
    merged = ThresholdCurves(50)
    for w in workers:
        merged.merge(w)
    np.testing.assert_array_equal(merged.positive_counts, one_shot.positive_counts)
    np.testing.assert_array_equal(merged.negative_counts, one_shot.negative_counts)
    assert json.dumps(merged.result().to_dict()) == json.dumps(one_shot.result().to_dict())


def test_unlabelled_voxels_and_one_class_against_the_rest():
    rng = np.random.default_rng(5)
    prob = rng.random(400)
    classes = rng.integers(0, 4, 400)
    labels = np.where(rng.random(400) < 0.2, 255, classes)
    labels[:30] = -2
    labelled = (labels >= 0) & (labels != 255)
    ev = ThresholdCurves(20, positive=2)
    ev.add(prob, labels, ignore_label=255)
    ref = ThresholdCurves(20)
    ref.add(prob[labelled], (labels[labelled] == 2).astype(np.int8))
    np.testing.assert_array_equal(ev.positive_counts, ref.positive_counts)
    np.testing.assert_array_equal(ev.negative_counts, ref.negative_counts)
    assert ev.positive_counts.sum() == np.sum(labels == 2)
    assert ev.negative_counts.sum() == np.sum(labelled) - np.sum(labels == 2)
    # float labels with integer values are class ids; NaN/out-of-range probabilities of unlabelled
    # voxels are not looked at
    floats = ThresholdCurves(20)
    floats.add(np.where(labelled, prob, np.nan), np.where(labelled, labels == 2, -1).astype(np.float32))
    np.testing.assert_array_equal(floats.positive_counts, ref.positive_counts)


def test_bad_input_gets_one_clear_error():
    curves = ThresholdCurves(10)
    with pytest.raises(ShapeError, match=r"found the classes \[0, 1, 2\]; evaluate one class against the rest "
                                         r"with positive=<class> \(ekn evaluate --positive K\)"):
        curves.add(np.full(3, 0.5), np.array([0, 1, 2]))
    with pytest.raises(ShapeError, match=r"found the classes \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, \.\.\.\]"):
        curves.add(np.full(12, 0.5), np.arange(12))
    with pytest.raises(ShapeError, match="must lie in \\[0, 1\\], found NaN"):
        curves.add(np.array([0.5, np.nan]), np.array([0, 1]))
    with pytest.raises(ShapeError, match="found values from -0.5 to 3"):
        curves.add(np.array([-0.5, 3.0]), np.array([0, 1]))
    with pytest.raises(ShapeError, match="integer class ids, found the value 0.5"):
        curves.add(np.array([0.2, 0.3]), np.array([0.5, 1.0]))
    with pytest.raises(ShapeError, match=r"shape \(2, 3\) but the labels \(3, 2\)"):
        curves.add(np.full((2, 3), 0.5), np.zeros((3, 2), int))
    assert curves.positive_counts.sum() + curves.negative_counts.sum() == 0  # nothing half-counted
    with pytest.raises(ShapeError, match="no labelled voxels"):
        curves.result()
    with pytest.raises(ConfigError, match="even number"):
        ThresholdCurves(101)
    with pytest.raises(ConfigError, match="positive must be a class id >= 0"):
        ThresholdCurves(10, positive=-1)
    with pytest.raises(ConfigError, match="cannot merge .* bins=20"):
        curves.merge(ThresholdCurves(20))
    with pytest.raises(ConfigError, match="positive=3"):
        curves.merge(ThresholdCurves(10, positive=3))
    curves.add(np.array([0.2, 0.9]), np.array([1, 1]))
    with pytest.raises(ConfigError, match=r"in \[0, 1\], got \[1.5\]"):
        curves.result([1.5])
    only_positive = curves.result()  # no negatives: AUC undefined, the rest works
    assert np.isnan(only_positive.roc_auc) and only_positive.average_precision == 1.0
    assert "(best F1)" in only_positive.summary()


def test_figures_are_full_size_pngs_with_every_voxel_in_the_histograms(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    rng = np.random.default_rng(6)
    curves = ThresholdCurves(1000)
    prob, labels = _scored_labels(rng, 3000)  # with exact zeros and ones
    curves.add(prob, labels)
    ev = curves.result()
    drawn, stairs = {}, Axes.stairs

    def recording_stairs(self, values, edges, label, **kwargs):  # voxels per drawn histogram
        drawn[label.split(" (")[0]] = np.sum(values)
        return stairs(self, values, edges, label=label, **kwargs)

    monkeypatch.setattr(Axes, "stairs", recording_stairs)
    paths = [plot_performance(ev, str(tmp_path / "run.performance.png"), title="valid cube 0"),
             plot_error_histogram(ev, str(tmp_path / "run.error_histogram.png")),
             plot_error_histogram(curves, str(tmp_path / "sub" / "curves.error_histogram.png"), threshold=0.5)]
    assert sorted(os.listdir(tmp_path)) == ["run.error_histogram.png", "run.performance.png", "sub"]
    assert os.listdir(tmp_path / "sub") == ["curves.error_histogram.png"]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 600 and image.height > 300
        assert os.path.getsize(path) > 10_000
    assert drawn == {"all labelled": 3000, "label positive": labels.sum(), "label negative": 3000 - labels.sum()}


def test_a_failed_figure_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    curves = ThresholdCurves(10)
    curves.add(np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 0, 1, 0]))
    (tmp_path / "old.png").write_bytes(b"old")

    def broken_savefig(self, fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    for plot, name in ((plot_performance, "old.png"), (plot_error_histogram, "new.png")):
        with pytest.raises(OSError, match="disk full"):
            plot(curves.result(), str(tmp_path / name))
    assert os.listdir(tmp_path) == ["old.png"] and (tmp_path / "old.png").read_bytes() == b"old"
