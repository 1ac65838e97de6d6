"""The ELEKTRONN2 losses added later: BetaNLL, RampLoss, EuclideanDistance, SobelizedLoss and the
lazy-label masks of MultinoulliNLL. Float64 numpy/scipy references, finite differences, masks,
NaN handling, save/load, and the conformance battery over every registered loss."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
from scipy import ndimage, stats

tf = pytest.importorskip("tensorflow")

import ekn_core.neuromancer as nm  # noqa: E402
from ekn_core.errors import ConfigError, ShapeError  # noqa: E402
from ekn_core.node import model_manager  # noqa: E402
from ekn_core.plugins import registry  # noqa: E402
from ekn_plugins.losses import functional as F  # noqa: E402
from ekn_plugins.losses import nodes as N  # noqa: E402
from test_layers_conformance import check_graph  # noqa: E402
from test_losses import finite_difference_check, np_log_softmax, np_one_hot  # noqa: E402

RNG = np.random.default_rng(23)
SHAPE = (2, 3, 4)  # b, y, x (canonical, features last)
N_CLASS, N_INDEP = 3, 2


def assert_close(a, b, tol=1e-6):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


@pytest.fixture(autouse=True)
def _model(scratch_model):
    return scratch_model


# ---- BetaNLL -------------------------------------------------------------------------------------


def beta_params(shape):
    mode = RNG.uniform(0.05, 0.95, shape)
    k = 2.0 + RNG.uniform(0.1, 30.0, shape)
    t = RNG.uniform(0.01, 0.99, shape)
    return mode, k, t


def test_beta_nll_matches_scipy():
    mode, k, t = beta_params(SHAPE + (2,))
    alpha, beta = mode * (k - 2) + 1, (1 - mode) * (k - 2) + 1
    want = -stats.beta.logpdf(t, alpha, beta)
    got = F.beta_nll(mode, k, t)
    assert got.dtype == tf.float64 and got.shape == SHAPE + (2,)
    assert_close(got, want)
    t[0, 0, 0, 1] = -666  # unlabelled: 0, the rest rescaled so the mean is over labelled elements
    lab = t != -666
    got = F.beta_nll(mode, k, t, ignore_value=-666).numpy()
    assert got[0, 0, 0, 1] == 0
    assert_close(got, np.where(lab, want, 0) * lab.size / lab.sum())
    assert_close(got.mean(), want[lab].mean())


def test_beta_nll_is_smallest_at_the_mode_and_finite_at_the_ends():
    mode, k = np.full(201, 0.3), np.full(201, 12.0)
    t = np.linspace(0.0, 1.0, 201)
    got = F.beta_nll(mode, k, t).numpy()
    assert np.all(np.isfinite(got))
    assert t[np.argmin(got)] == pytest.approx(0.3)


def test_beta_nll_node_with_concentration_activation():
    raw = nm.Input((2, 3, 4), "b,f,x", name="raw")
    mode = nm.Perceptron(raw, 2, "sig", name="mode")
    conc = nm.Perceptron(raw, 2, "concentration", name="conc")
    target = nm.Input_like(mode, name="target")
    nll = nm.BetaNLL(mode, conc, target, ignore_value=-666)
    assert isinstance(nll, N.BetaNLL) and nll.shape.shape == mode.shape.shape
    x = RNG.normal(size=(2, 3, 4)).astype("float32")
    t = RNG.uniform(0.05, 0.95, mode.shape.shape).astype("float32")
    m, k = mode(x).astype(float), conc(x).astype(float)
    assert np.all(k > 2)
    want = -stats.beta.logpdf(t, m * (k - 2) + 1, (1 - m) * (k - 2) + 1)
    np.testing.assert_allclose(nll(x, t), want, rtol=2e-5, atol=2e-5)  # float32 graph
    with pytest.raises(ShapeError, match="concentration has shape"):
        nm.BetaNLL(mode, raw, target)


# ---- RampLoss and EuclideanDistance --------------------------------------------------------------


@pytest.mark.parametrize("margin", [None, 0.4])
def test_ramp_loss_matches_numpy(margin):
    low, big = RNG.normal(size=SHAPE + (3,)), RNG.normal(size=SHAPE + (3,))
    want = np.maximum(low - big + (margin or 0.0), 0).mean(-1, keepdims=True)
    got = F.ramp_loss(low, big, margin=margin)
    assert got.shape == SHAPE + (1,)
    assert_close(got, want)
    assert 0 < np.count_nonzero(want) < want.size  # both sides of the hinge are exercised


def test_ramp_loss_node_margin_is_live():
    low = nm.Input((2, 3, 5), "b,f,x", name="low")
    big = nm.Input((2, 3, 5), "b,f,x", name="big")
    default, ramp = nm.RampLoss(low, big), nm.RampLoss(low, big, margin=0.5)
    assert "margin" not in default.params  # None: margin 0, as documented
    a, b = RNG.normal(size=(2, 3, 5)).astype("float32"), RNG.normal(size=(2, 3, 5)).astype("float32")
    np.testing.assert_allclose(default(a, b), np.maximum(a - b, 0).mean(1, keepdims=True), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ramp(a, b), np.maximum(a - b + 0.5, 0).mean(1, keepdims=True), rtol=1e-6, atol=1e-6)
    assert ramp.params["margin"].trainable is False
    ramp.params["margin"].set_value(np.array(2.0, "float32"))
    np.testing.assert_allclose(ramp(a, b), np.maximum(a - b + 2.0, 0).mean(1, keepdims=True), rtol=1e-6, atol=1e-6)
    assert ramp.function().traces == 1
    with pytest.raises(ShapeError, match="d_big has shape"):
        nm.RampLoss(low, nm.Input((2, 2, 5), "b,f,x", name="other"))


def test_euclidean_distance_matches_numpy_and_maps_nan_to_zero():
    pred, target = RNG.normal(size=SHAPE + (3,)), RNG.normal(size=SHAPE + (3,))
    want = np.sqrt(((pred - target) ** 2).sum(-1, keepdims=True))
    got = F.euclidean_distance(pred, target)
    assert got.shape == SHAPE + (1,)
    assert_close(got, want)
    target[0, 1, 2, 0] = np.nan
    pred[1, 0, 0, 2] = np.nan
    lab = np.ones(SHAPE + (1,), bool)
    lab[0, 1, 2], lab[1, 0, 0] = False, False
    got = F.euclidean_distance(pred, target).numpy()
    assert not np.any(np.isnan(got))
    assert got[0, 1, 2, 0] == 0 and got[1, 0, 0, 0] == 0
    assert_close(got, np.where(lab, want, 0) * lab.size / lab.sum())
    assert_close(got.mean(), want[lab].mean())


def test_euclidean_distance_gradient_is_finite_at_nan_and_zero():
    target = np.array([[[1.0, 2.0], [np.nan, 0.0], [3.0, -1.0]]])
    pred = tf.constant([[[1.0, 2.0], [5.0, 5.0], [0.0, 3.0]]], tf.float64)  # distance 0, NaN, 5
    with tf.GradientTape() as tape:
        tape.watch(pred)
        loss = tf.reduce_sum(F.euclidean_distance(pred, target))
    grad = tape.gradient(loss, pred).numpy()
    assert np.all(np.isfinite(grad))
    assert np.all(grad[0, :2] == 0)
    assert_close(grad[0, 2], np.array([-3.0, 4.0]) / 5 * 3 / 2)  # d|p-t|/dp, rescaled by 3/2 labelled


def test_euclidean_distance_node():
    pred = nm.Input((2, 3, 4, 5), "b,f,x,y", name="pred")
    target = nm.Input((2, 3, 4, 5), "b,f,x,y", name="target")
    dist = nm.EuclideanDistance(pred, target)
    assert dist.shape.shape == (2, 1, 4, 5)
    p, t = RNG.normal(size=(2, 3, 4, 5)).astype("float32"), RNG.normal(size=(2, 3, 4, 5)).astype("float32")
    t[0, :, 1, 1] = np.nan
    got = dist(p, t)
    want = np.sqrt(((p.astype(float) - t) ** 2).sum(1, keepdims=True))
    lab = ~np.isnan(want)
    np.testing.assert_allclose(got, np.where(lab, want, 0) * lab.size / lab.sum(), rtol=1e-5, atol=1e-6)



def test_cosine_distance_matches_numpy_and_ignores_nan():
    pred, target = RNG.normal(size=SHAPE + (3,)), RNG.normal(size=SHAPE + (3,))
    cos = (pred * target).sum(-1, keepdims=True) / np.linalg.norm(pred, axis=-1, keepdims=True) / np.linalg.norm(
        target, axis=-1, keepdims=True)
    want = 1 - cos
    got = F.cosine_distance(pred * RNG.uniform(0.1, 10, SHAPE + (1,)), target)  # lengths do not count
    assert got.shape == SHAPE + (1,)
    assert_close(got, want)
    assert_close(F.cosine_distance(target, target), np.zeros(SHAPE + (1,)))
    assert_close(F.cosine_distance(-target, target), np.full(SHAPE + (1,), 2.0))
    target[0, 1, 2, 0] = np.nan
    lab = np.ones(SHAPE + (1,), bool)
    lab[0, 1, 2] = False
    got = F.cosine_distance(pred, target).numpy()
    assert got[0, 1, 2, 0] == 0
    assert_close(got.mean(), want[lab].mean())
    zero = F.cosine_distance(np.zeros((1, 3)), np.array([[0.0, 1.0, 0.0]]))
    assert_close(zero, np.ones((1, 1)))  # a zero prediction: distance 1, gradient finite


def test_cosine_distance_node():
    pred = nm.Input((2, 3, 4), "b,f,x", name="pred")
    target = nm.Input((2, 3, 4), "b,f,x", name="target")
    dist = nm.CosineDistance(pred, target)
    assert dist.shape.shape == (2, 1, 4) and registry("losses").info("cosine_distance").builtin
    p, t = RNG.normal(size=(2, 3, 4)).astype("float32"), RNG.normal(size=(2, 3, 4)).astype("float32")
    want = 1 - (p * t).sum(1, keepdims=True) / np.linalg.norm(p, axis=1, keepdims=True) / np.linalg.norm(
        t, axis=1, keepdims=True)
    np.testing.assert_allclose(dist(p, t), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ShapeError, match="target has shape"):
        nm.CosineDistance(pred, nm.Input((2, 2, 4), "b,f,x", name="other"))

# ---- SobelizedLoss -------------------------------------------------------------------------------


def np_sobel(x, n_spatial):
    """Canonical (b, spatial..., f) → (b, spatial..., f*n_spatial) with ndimage.sobel per feature
    and axis (zero padding), in the order feature-major, axis-minor."""
    outs = []
    for i in range(x.shape[-1]):
        for axis in range(n_spatial):
            outs.append(np.stack([ndimage.sobel(x[b, ..., i], axis=axis, mode="constant", cval=0.0)
                                  for b in range(x.shape[0])]))
    return np.stack(outs, axis=-1)


def test_sobel_kernel_correlation_equals_ndimage_sobel():
    x = RNG.normal(size=(5, 6, 7))
    kernel = F.sobel_kernel(3)
    assert kernel.shape == (3, 3, 3, 3)
    for axis in range(3):
        want = ndimage.sobel(x, axis=axis, mode="constant")
        assert_close(ndimage.correlate(x, kernel[..., axis].astype(float), mode="constant"), want)


@pytest.mark.parametrize("loss_type", ["abs", "squared"])
@pytest.mark.parametrize("shape,tags", [((2, 2, 6, 7), "b,f,x,y"), ((1, 3, 4, 5, 6), "b,z,y,x,f")])
def test_sobelized_loss_matches_ndimage(loss_type, shape, tags):
    pred, target = nm.Input(shape, tags, name="pred"), nm.Input(shape, tags, name="target")
    loss = nm.SobelizedLoss(pred, target, loss_type=loss_type)
    assert isinstance(loss, N.AbsLoss if loss_type == "abs" else N.SquaredLoss)
    p = RNG.normal(size=shape).astype("float32")
    t = RNG.normal(size=shape).astype("float32")
    n_spatial = pred.shape.ndim
    pc, tc = (pred.shape.to_canonical(a).astype(float) for a in (p, t))
    dev = np.abs(np_sobel(pc, n_spatial) - np_sobel(tc, n_spatial))
    want = (dev if loss_type == "abs" else 0.5 * dev**2).mean(-1, keepdims=True)
    got = loss.shape.to_canonical(loss(p, t))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    # the filters are constant, not trainable, and not in the model's trainable parameters
    convs = [n for n in loss.parents]
    assert [type(c).__name__ for c in convs] == ["Conv", "Conv"]
    for conv in convs:
        assert all(param.constant and not param.trainable for param in conv.params.values())
    assert not any(p.trainable for n in convs for p in n.params.values())


def test_sobelized_loss_kwargs_and_errors():
    pred = nm.Input((1, 1, 5, 5), "b,f,x,y", name="pred")
    target = nm.Input((1, 1, 5, 5), "b,f,x,y", name="target")
    loss = nm.SobelizedLoss(pred, target, loss_kwargs={"margin": 0.5, "name": "sobel_abs"})
    assert loss.name == "sobel_abs" and float(loss.params["margin"].get_value()) == 0.5
    p = RNG.normal(size=(1, 1, 5, 5)).astype("float32")
    t = RNG.normal(size=(1, 1, 5, 5)).astype("float32")
    dev = np.abs(np_sobel(p[:, 0, ..., None].astype(float), 2) - np_sobel(t[:, 0, ..., None].astype(float), 2))
    want = np.maximum(dev - 0.5, 0).mean(-1)[:, None]
    np.testing.assert_allclose(loss(p, t), want, rtol=1e-5, atol=1e-4)
    with pytest.raises(ConfigError, match="loss_type"):
        nm.SobelizedLoss(pred, target, loss_type="huber")
    with pytest.raises(ShapeError, match="the target has shape"):
        nm.SobelizedLoss(pred, nm.Input((1, 1, 5, 4), "b,f,x,y", name="small"))


# ---- MultinoulliNLL lazy-label masks -------------------------------------------------------------


def np_lazy_multinoulli(logits, ids, n_indep, labeled=None, absent=None, class_weights=None,
                        example_weights=None):
    """Float64 reference of ELEKTRONN2's masked NLL (logits → exact log-probabilities)."""
    n_class = logits.shape[-1] // n_indep
    logp = np_log_softmax(logits, n_indep)
    t = np_one_hot(ids, n_class)
    b = logits.shape[0]
    expand = (b,) + (1,) * (logits.ndim - 2) + (-1,)
    if labeled is not None:
        t = t * np.tile(np.broadcast_to(labeled, (b, n_class)), n_indep).reshape(expand)
    cw = np.ones(logits.shape[-1]) if class_weights is None else np.tile(class_weights, n_indep)
    loss = -(t * cw * logp).sum(-1, keepdims=True)
    n_lab = t.sum()
    if absent is not None:
        m = np.tile(np.broadcast_to(absent, (b, n_class)), n_indep).reshape(expand) * np.ones_like(logits)
        loss = loss - (m * cw * np.log1p(-np.exp(logp))).sum(-1, keepdims=True)
        n_lab = n_lab + m.sum()
    if example_weights is not None:
        loss = loss * example_weights[..., None]
    return loss * loss.size / max(n_lab, 1)


@pytest.mark.parametrize("n_indep", [1, N_INDEP])
@pytest.mark.parametrize("weighted", [False, True])
def test_lazy_label_masks_match_numpy(n_indep, weighted):
    logits = RNG.normal(size=SHAPE + (n_indep * N_CLASS,)) * 2
    ids = RNG.integers(-1, N_CLASS, SHAPE + (n_indep,))
    labeled = np.array([[1, 0, 1], [1, 1, 0]], float)
    absent = np.array([[0, 0, 1], [0, 1, 0]], float)
    cw = np.array([0.5, 2.0, 1.5]) if weighted else None
    ew = RNG.random(SHAPE) if weighted else None
    got = F.multinoulli_nll(logits, ids, n_indep=n_indep, target_is_sparse=True, class_weights=cw,
                            example_weights=ew, mask_class_labeled=labeled, mask_class_not_present=absent)
    assert got.shape == SHAPE + (1,)
    assert_close(got, np_lazy_multinoulli(logits, ids, n_indep, labeled, absent, cw, ew))
    # probabilities instead of logits give the same values
    probs = np.exp(np_log_softmax(logits, n_indep))
    assert_close(F.multinoulli_nll(probs, ids, n_indep=n_indep, target_is_sparse=True, from_logits=False,
                                   class_weights=cw, example_weights=ew, mask_class_labeled=labeled,
                                   mask_class_not_present=absent), got, tol=1e-5)


def test_labelled_mask_equals_relabelling_unlabelled_classes_as_ignored():
    logits = RNG.normal(size=SHAPE + (N_CLASS,))
    ids = RNG.integers(0, N_CLASS, SHAPE + (1,))
    labeled = np.array([[1, 0, 1], [0, 1, 1]])
    got = F.multinoulli_nll(logits, ids, target_is_sparse=True, mask_class_labeled=labeled)
    relabelled = np.where(labeled[np.arange(2)[:, None, None, None], ids] == 1, ids, -1)
    assert np.any(relabelled == -1)
    assert_close(got, F.multinoulli_nll(logits, relabelled, target_is_sparse=True))
    # all ones: the ordinary NLL; the voxels of unlabelled classes do not change the loss
    assert_close(F.multinoulli_nll(logits, ids, target_is_sparse=True, mask_class_labeled=np.ones((2, 3))),
                 F.multinoulli_nll(logits, ids, target_is_sparse=True))
    moved = logits.copy()
    moved[relabelled[..., 0] == -1] += RNG.normal(size=(np.count_nonzero(relabelled == -1), N_CLASS)) * 5
    assert_close(F.multinoulli_nll(moved, ids, target_is_sparse=True, mask_class_labeled=labeled), got)


def test_not_present_mask_pushes_those_probabilities_to_zero():
    logits = tf.constant(RNG.normal(size=SHAPE + (N_CLASS,)))
    ids = -np.ones(SHAPE + (1,), int)  # nothing labelled: only the not-present term acts
    absent = np.array([[0, 0, 1], [0, 0, 0]])
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = tf.reduce_mean(F.multinoulli_nll(logits, ids, target_is_sparse=True, mask_class_not_present=absent))
    grad = tape.gradient(loss, logits).numpy()
    assert np.all(grad[0, ..., 2] > 0) and np.all(grad[0, ..., :2] < 0)  # descent lowers p_2 in example 0
    assert np.all(grad[1] == 0)  # example 1 has no absent class
    p2 = np.exp(np_log_softmax(logits.numpy(), 1))[0, ..., 2]
    assert_close(loss, np.mean(-np.log1p(-p2)))  # mean over the labelled (voxel, absent class) terms
    # extreme logits: finite and exact (p_2 rounds to 1 in float32)
    extreme = np.array([[[0.0, 0.0, 40.0]]], "float32")
    got = F.multinoulli_nll(extreme, -np.ones((1, 1, 1), int), target_is_sparse=True,
                            mask_class_not_present=[[0, 0, 1]]).numpy()
    np.testing.assert_allclose(got, [[[40.0 - np.log(2.0)]]], rtol=1e-5)


def test_lazy_mask_shape_errors():
    logits = np.zeros(SHAPE + (N_CLASS,))
    with pytest.raises(ShapeError, match="lazy-label masks"):
        F.multinoulli_nll(logits, np.zeros(SHAPE, int), target_is_sparse=True, mask_class_labeled=np.ones((2, 4)))


def test_multinoulli_node_with_mask_nodes_and_arrays(tmp_path):
    model = model_manager.current
    logits = nm.Input((2, N_INDEP * N_CLASS, 3, 4), "b,f,x,y", name="logits")
    labels = nm.Input((2, N_INDEP, 3, 4), "b,f,x,y", dtype="int16", name="labels")
    labeled = nm.Input((2, N_CLASS), "b,f", name="labeled")
    absent = nm.Input((2, N_CLASS), "b,f", name="absent")
    sm = nm.Softmax(logits, n_indep=N_INDEP)
    by_node = nm.MultinoulliNLL(sm, labels, target_is_sparse=True, class_weights=[0.5, 2.0, 1.0],
                                mask_class_labeled=labeled, mask_class_not_present=absent, name="by_node")
    m_lab = np.array([[1, 0, 1], [1, 1, 0]], "float32")
    m_abs = np.array([[0, 1, 0], [0, 0, 1]], "float32")
    by_array = nm.MultinoulliNLL(sm, labels, target_is_sparse=True, class_weights=[0.5, 2.0, 1.0],
                                 mask_class_labeled=m_lab, mask_class_not_present=m_abs, name="by_array")
    assert [n.name for n in by_node.input_nodes] == ["logits", "labels", "labeled", "absent"]
    assert by_array.params["mask_class_labeled"].trainable is False
    x = RNG.normal(size=(2, N_INDEP * N_CLASS, 3, 4)).astype("float32")
    y = RNG.integers(-1, N_CLASS, (2, N_INDEP, 3, 4)).astype("int16")
    want = np_lazy_multinoulli(np.moveaxis(x, 1, -1).astype(float), np.moveaxis(y, 1, -1), N_INDEP, m_lab, m_abs,
                               np.array([0.5, 2.0, 1.0]))
    np.testing.assert_allclose(np.moveaxis(by_node(x, y, m_lab, m_abs), 1, -1), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.moveaxis(by_array(x, y), 1, -1), want, rtol=1e-5, atol=1e-5)
    total = nm.AggregateLoss([by_node, by_array])
    model.designate_nodes(input_node=logits, target_node=labels, loss_node=total, prediction_node=sm)
    loaded = nm.modelload(model.save(str(tmp_path / "lazy.h5")), name=f"{model.name}-loaded")
    np.testing.assert_array_equal(loaded["by_node"](x, y, m_lab, m_abs), by_node(x, y, m_lab, m_abs))
    np.testing.assert_array_equal(loaded["by_array"](x, y), by_array(x, y))
    np.testing.assert_array_equal(loaded["by_array"].params["mask_class_not_present"].get_value(), m_abs)
    with pytest.raises(ShapeError, match="mask_class_labeled must be"):
        nm.MultinoulliNLL(sm, labels, target_is_sparse=True, mask_class_labeled=nm.Input((2, 4), "b,f", name="x"))
    with pytest.raises(ConfigError, match="mask_class_not_present must have shape"):
        nm.MultinoulliNLL(sm, labels, target_is_sparse=True, mask_class_not_present=np.ones((2, 5)))


# ---- gradients against finite differences (float64) ----------------------------------------------

GRAD_SHAPE = (1, 2, 3)
G_MODE, G_K, G_T = beta_params(GRAD_SHAPE + (2,))
G_IDS = RNG.integers(-1, N_CLASS, GRAD_SHAPE + (N_INDEP,))
G_LAB = np.array([[1, 0, 1]])
G_ABS = np.array([[0, 1, 0]])
G_OTHER = RNG.normal(size=GRAD_SHAPE + (3,))
G_NAN = G_OTHER.copy()
G_NAN[0, 1, 1, 0] = np.nan

GRAD_CASES = {
    "beta_mode": (lambda x: F.beta_nll(tf.sigmoid(x), G_K, G_T), 2),
    "beta_concentration": (lambda x: F.beta_nll(G_MODE, 2.0 + tf.nn.softplus(x) * 7, G_T), 2),
    "euclidean": (lambda x: F.euclidean_distance(x, G_NAN), 3),
    "cosine": (lambda x: F.cosine_distance(x, G_NAN), 3),
    "ramp": (lambda x: F.ramp_loss(x * 3, G_OTHER, margin=0.25), 3),
    "lazy_multinoulli": (lambda x: F.multinoulli_nll(x, G_IDS, n_indep=N_INDEP, target_is_sparse=True,
                                                     class_weights=[0.5, 1.0, 2.0], mask_class_labeled=G_LAB,
                                                     mask_class_not_present=G_ABS, focal_gamma=1.5),
                         N_INDEP * N_CLASS),
    "lazy_multinoulli_probs": (lambda x: F.multinoulli_nll(tf.nn.sigmoid(x), G_IDS, n_indep=N_INDEP,
                                                           target_is_sparse=True, from_logits=False,
                                                           mask_class_labeled=G_LAB, mask_class_not_present=G_ABS),
                               N_INDEP * N_CLASS),
}


@pytest.mark.parametrize("name", list(GRAD_CASES))
def test_gradients_equal_finite_differences(name):
    fn, n_f = GRAD_CASES[name]
    x = RNG.normal(size=GRAD_SHAPE + (n_f,))
    if name == "ramp":  # stay off the kink of the hinge
        hinge = x * 3 - G_OTHER + 0.25
        x = np.where(np.abs(hinge) < 0.05, x + 0.1, x)
    finite_difference_check(fn, x)


def test_focal_not_present_term_matches_numpy():
    logits = RNG.normal(size=SHAPE + (N_CLASS,))
    ids = RNG.integers(-1, N_CLASS, SHAPE + (1,))
    absent = np.array([[0, 1, 1], [1, 0, 0]])
    got = F.multinoulli_nll(logits, ids, target_is_sparse=True, mask_class_not_present=absent, focal_gamma=2.0)
    logp = np_log_softmax(logits, 1)
    p = np.exp(logp)
    t = np_one_hot(ids, N_CLASS)
    m = absent[:, None, None, :] * np.ones_like(logits)
    loss = -(t * (1 - p) ** 2 * logp).sum(-1, keepdims=True) - (m * p**2 * np.log1p(-p)).sum(-1, keepdims=True)
    assert_close(got, loss * loss.size / (t.sum() + m.sum()))


# ---- names, save/load and conformance over every registered loss ---------------------------------


def test_new_losses_resolve_through_the_registry():
    assert nm.BetaNLL is N.BetaNLL and nm.RampLoss is N.RampLoss and nm.EuclideanDistance is N.EuclideanDistance
    assert nm.SobelizedLoss is N.SobelizedLoss
    for name in ("beta_nll", "ramp_loss", "euclidean_distance", "sobelized_loss"):
        assert registry("losses").info(name).builtin


def test_model_with_every_new_loss_saves_and_loads(tmp_path):
    model = model_manager.current
    raw = nm.Input((1, 2, 6, 7), "b,f,x,y", name="raw")
    mode = nm.Conv(raw, 1, (3, 3), conv_mode="same", activation_func="sig", name="mode")
    conc = nm.Conv(raw, 1, (3, 3), conv_mode="same", activation_func="concentration", name="conc")
    vec = nm.Conv(raw, 2, (3, 3), conv_mode="same", activation_func="lin", name="vec")
    t_beta = nm.Input_like(mode, name="t_beta")
    t_vec = nm.Input_like(vec, name="t_vec")
    losses = [nm.BetaNLL(mode, conc, t_beta), nm.EuclideanDistance(vec, t_vec),
              nm.RampLoss(conc, mode, margin=0.5), nm.SobelizedLoss(vec, raw, loss_type="squared")]
    total = nm.AggregateLoss(losses, mixing_weights=[1.0, 0.5, 0.1, 2.0])
    model.designate_nodes(input_node=raw, loss_node=total, prediction_node=vec)
    x = RNG.normal(size=(1, 2, 6, 7)).astype("float32")
    tb = RNG.uniform(0.05, 0.95, (1, 1, 6, 7)).astype("float32")
    tv = RNG.normal(size=(1, 2, 6, 7)).astype("float32")
    tv[0, :, 0, 0] = np.nan
    loaded = nm.modelload(model.save(str(tmp_path / "m.h5")), name=f"{model.name}-loaded")
    for node in losses:
        feeds = {"raw": x, "t_beta": tb, "t_vec": tv}
        arrays = [feeds[n.name] for n in node.input_nodes]
        assert type(loaded[node.name]) is type(node)
        want = node(*arrays)
        assert np.all(np.isfinite(want)) and np.any(want != 0)
        np.testing.assert_array_equal(loaded[node.name](*arrays), want)
    np.testing.assert_array_equal(loaded["total_loss"](x, tb, tv), total(x, tb, tv))
    assert loaded["sobel_pred"].params["w"].constant and not loaded["sobel_pred"].params["w"].trainable
    np.testing.assert_array_equal(loaded["sobel_target"].params["w"].get_value(),
                                  model["sobel_target"].params["w"].get_value())
    assert float(loaded[losses[2].name].params["margin"].get_value()) == 0.5


VEC = {"a": ((2, 3, 4), "b,f,x"), "b": ((2, 3, 4), "b,f,x")}
CLS = {"a": ((2, 3, 4), "b,f,x"), "b": ((2, 1, 4), "b,f,x")}
TRIPLE = {"a": ((2, 3, 4), "b,f,x"), "b": ((2, 3, 4), "b,f,x"), "c": ((2, 3, 4), "b,f,x")}
LAZY = {"a": ((2, 3, 4), "b,f,x"), "b": ((2, 1, 4), "b,f,x"), "lab": ((2, 3), "b,f"), "absent": ((2, 3), "b,f")}
LOGITS = {"a": ((2, 3, 4), "b,f,x")}
IDS = {"b": ((2, 1, 4), "b,f,x")}
IMAGE = {"a": ((1, 2, 5, 6), "b,f,x,y"), "b": ((1, 2, 5, 6), "b,f,x,y")}
MALIS = {"a": ((1, 4, 3, 4), "b,f,x,y"), "g": ((1, 2, 3, 4), "b,f,x,y"), "s": ((1, 1, 3, 4), "b,f,x,y")}

# registry name → (builder taking the input nodes by name, inputs {name: (shape, tags)}, feed overrides)
LOSS_GRAPHS = {
    "abs_loss": (lambda a, b: nm.AbsLoss(a, b, margin=0.2, scale_correction=0.5), VEC, {}),
    "aggregate_loss": (lambda a, b: nm.AggregateLoss([nm.SquaredLoss(a, b), nm.AbsLoss(a, b)], [1.0, 0.5]),
                       VEC, {}),
    "bernoulli_nll": (lambda a, b: nm.BinaryNLL(nm.Perceptron(a, 3, "sig"), b), VEC, {}),
    "binary_nll": (lambda a, b: nm.BinaryNLL(nm.Perceptron(a, 3, "lin"), b, subtract_label_entropy=True), VEC, {}),
    "beta_nll": (lambda a, b, c: nm.BetaNLL(nm.Perceptron(a, 3, "sig"), nm.Perceptron(b, 3, "concentration"),
                                            nm.Perceptron(c, 3, "sig")), TRIPLE, {}),
    "classification": (lambda a: nm.Classification(nm.Softmax(a)), LOGITS, {}),
    "errors": (lambda a, b: nm.Errors(nm.Softmax(a), b, target_is_sparse=True), CLS, {}),
    "cosine_distance": (lambda a, b: nm.CosineDistance(a, b), VEC, {}),
    "euclidean_distance": (lambda a, b: nm.EuclideanDistance(a, b), VEC, {}),
    "gaussian_nll": (lambda a, b, c: nm.GaussianNLL(a, b, c, sig_is_log=True), TRIPLE, {}),
    # MALIS weights from tf.numpy_function: the 'xla' run falls back to plain (MalisNLL.xla_compatible)
    "malis_nll": (lambda a, g, s: nm.MalisNLL(nm.Softmax(a, n_indep=2), g, s, [[-1, 0], [0, -1]],
                                              class_weights=[0.5, 2.0]), MALIS, {}),
    "multinoulli_nll": (lambda a, b, lab, absent: nm.MultinoulliNLL(
        nm.Softmax(a), b, target_is_sparse=True, class_weights=[1.0, 2.0, 0.5], mask_class_labeled=lab,
        mask_class_not_present=absent), LAZY, {"lab": 1.0}),
    "one_hot": (lambda b: nm.OneHot(b, 3), IDS, {}),
    "ramp_loss": (lambda a, b: nm.RampLoss(a, b, margin=0.3), VEC, {}),
    "sobelized_loss": (lambda a, b: nm.SobelizedLoss(a, b), IMAGE, {}),
    "soft_dice": (lambda a, b: nm.SoftDice(nm.Softmax(a), b, target_is_sparse=True, per_example=True), CLS, {}),
    "softmax": (lambda a: nm.Softmax(a), LOGITS, {}),
    "squared_loss": (lambda a, b: nm.SquaredLoss(a, b, ignore_value=-666), VEC, {}),
}


#: Built-in losses registered while their example here is still to be written (name → why). An
#: entry that gets an example in LOSS_GRAPHS, or is no longer registered, fails the test below.
PENDING: dict[str, str] = {}


def test_every_builtin_loss_has_a_conformance_example():
    builtin = {n for n in registry("losses").names() if registry("losses").info(n).builtin}
    missing = sorted(builtin - set(LOSS_GRAPHS) - set(PENDING))
    assert not missing, f"registered losses without a conformance example in {__file__}: {missing}"
    stale = sorted(n for n in PENDING if n in LOSS_GRAPHS or n not in builtin)
    assert not stale, f"remove {stale} from PENDING in {__file__}"


@pytest.mark.parametrize("name", sorted(registry("losses").names()))
def test_loss_conformance(name):
    """Computed = actual shapes; eager = tf.function = XLA; JSON-stable, registered descriptors;
    save → load gives identical outputs (the battery of ``test_layers_conformance.check_graph``)."""
    if name in PENDING and name not in LOSS_GRAPHS:
        pytest.skip(PENDING[name])
    if name not in LOSS_GRAPHS:
        if registry("losses").info(name).builtin:
            pytest.fail(f"no conformance example for built-in loss {name!r}")
        # losses of other installed distributions (the plugin template's): the (pred, target) form
        check_graph(lambda a, b: registry("losses").get(name)(a, b), VEC, {})
        return
    check_graph(*LOSS_GRAPHS[name])


def test_sobelized_loss_graph_holds_only_registered_types():
    """The loss's graph holds only registered node types (Conv, AbsLoss): its descriptors name them."""
    pred = nm.Input((1, 1, 4, 4), "b,f,x,y", name="pred")
    loss = nm.SobelizedLoss(pred, nm.Input((1, 1, 4, 4), "b,f,x,y", name="target"))
    types = {name: d["type"] for name, d in model_manager.current.descriptors.items()}
    assert types["sobel_pred"] == "conv" and types["sobel_target"] == "conv" and types[loss.name] == "abs_loss"
    with tempfile.TemporaryDirectory() as tmp:
        model_manager.current.designate_nodes(input_node=pred, loss_node=loss)
        path = model_manager.current.save(os.path.join(tmp, "s.h5"))
        loaded = nm.modelload(path, name=f"{model_manager.current.name}-again")
    x = RNG.normal(size=(1, 1, 4, 4)).astype("float32")
    np.testing.assert_array_equal(loaded[loss.name](x, x * 2), loss(x, x * 2))
