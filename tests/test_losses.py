"""Loss kernels: numpy references of each formula (masked and weighted), finite differences, extremes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp

tf = pytest.importorskip("tensorflow")

from ekn_core.errors import ConfigError, ShapeError  # noqa: E402
from ekn_plugins.losses import functional as F  # noqa: E402

RNG = np.random.default_rng(11)
SHAPE = (2, 3, 4)  # b, y, x
N_CLASS, N_INDEP = 3, 2
N_F = N_CLASS * N_INDEP


def sparse_ids(ignore_fraction=0.25, n_indep=N_INDEP, n_class=N_CLASS):
    ids = RNG.integers(0, n_class, SHAPE + (n_indep,))
    ids[RNG.random(ids.shape) < ignore_fraction] = -1
    return ids


def np_log_softmax(x, n_indep):
    g = x.reshape(x.shape[:-1] + (n_indep, -1))
    return (g - logsumexp(g, axis=-1, keepdims=True)).reshape(x.shape)


def np_one_hot(ids, n_class):
    out = (ids[..., None] == np.arange(n_class)).astype(float)
    return out.reshape(ids.shape[:-1] + (-1,))


def np_multinoulli(logits, onehot, n_indep, class_weights=None, example_weights=None, gamma=0.0):
    logp = np_log_softmax(logits, n_indep)
    cw = np.ones(onehot.shape[-1]) if class_weights is None else np.tile(class_weights, n_indep)
    per_voxel = -(onehot * cw * (1 - np.exp(logp)) ** gamma * logp).sum(-1, keepdims=True)
    if example_weights is not None:
        per_voxel = per_voxel * example_weights[..., None]
    return per_voxel * per_voxel.size / max(onehot.sum(), 1)


def np_softplus(x):
    return np.logaddexp(0.0, x)


def np_bernoulli(logits, target, w=(1.0, 1.0), example_weights=None):
    lab = target >= 0
    t = np.where(lab, target, 0)
    loss = w[1] * t * np_softplus(-logits) + w[0] * (1 - t) * np_softplus(logits)
    if example_weights is not None:
        loss = loss * example_weights[..., None]
    loss = np.where(lab, loss, 0)
    return loss * loss.size / max(lab.sum(), 1)


def assert_close(a, b, tol=1e-6):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


# ---- values against numpy ------------------------------------------------------------------------


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_multinoulli_matches_numpy(sparse, weighted):
    logits = RNG.normal(size=SHAPE + (N_F,)) * 3
    ids = sparse_ids()
    onehot = np_one_hot(ids, N_CLASS)
    cw = np.array([0.5, 2.0, 1.5]) if weighted else None
    ew = RNG.random(SHAPE) if weighted else None
    got = F.multinoulli_nll(logits, ids if sparse else onehot, n_indep=N_INDEP, target_is_sparse=sparse,
                            class_weights=cw, example_weights=ew)
    want = np_multinoulli(logits, onehot, N_INDEP, cw, ew)
    assert got.shape == SHAPE + (1,)
    assert_close(got, want)
    # the mean of the map is the NLL per labelled (voxel, group)
    plain = F.multinoulli_nll(logits, ids, n_indep=N_INDEP, target_is_sparse=True)
    labelled = ids >= 0
    picked = np.take_along_axis(np_log_softmax(logits, N_INDEP).reshape(SHAPE + (N_INDEP, N_CLASS)),
                                np.maximum(ids, 0)[..., None], -1)[..., 0]
    assert_close(np.mean(plain), -picked[labelled].mean())


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_multinoulli_matches_numpy(gamma):
    logits = RNG.normal(size=SHAPE + (N_F,)) * 3
    ids = sparse_ids()
    cw, ew = np.array([0.5, 2.0, 1.5]), RNG.random(SHAPE)
    got = F.multinoulli_nll(logits, ids, n_indep=N_INDEP, target_is_sparse=True, class_weights=cw,
                            example_weights=ew, focal_gamma=gamma)
    assert_close(got, np_multinoulli(logits, np_one_hot(ids, N_CLASS), N_INDEP, cw, ew, gamma=gamma))
    plain = F.multinoulli_nll(logits, ids, n_indep=N_INDEP, target_is_sparse=True, class_weights=cw,
                              example_weights=ew)
    assert np.all(got.numpy() <= plain.numpy() + 1e-12) and np.any(got.numpy() < plain.numpy())


def test_multinoulli_ignore_label_and_probabilities():
    logits = RNG.normal(size=SHAPE + (N_CLASS,))
    ids = RNG.integers(0, N_CLASS, SHAPE + (1,))
    got = F.multinoulli_nll(logits, ids, target_is_sparse=True, ignore_label=2)
    want = np_multinoulli(logits, np_one_hot(np.where(ids == 2, -1, ids), N_CLASS), 1)
    assert_close(got, want)
    probs = np.exp(np_log_softmax(logits, 1))
    assert_close(F.multinoulli_nll(probs, ids[..., 0], target_is_sparse=True, from_logits=False, ignore_label=2), want)


def test_multinoulli_extreme_logits_are_finite_and_exact():
    logits = np.array([[[1e4, -1e4, 0.0], [-5e3, 5e3, 1.0]]], dtype=np.float32)
    ids = np.array([[[1], [1]]])
    got = F.multinoulli_nll(logits, ids, target_is_sparse=True).numpy()
    want = np_multinoulli(logits.astype(float), np_one_hot(ids, 3), 1)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    with tf.GradientTape() as tape:
        x = tf.constant(logits)
        tape.watch(x)
        loss = tf.reduce_mean(F.multinoulli_nll(x, ids, target_is_sparse=True))
    assert np.all(np.isfinite(tape.gradient(loss, x).numpy()))


def test_all_unlabelled_gives_zero_loss():
    logits = RNG.normal(size=SHAPE + (N_CLASS,))
    assert np.all(F.multinoulli_nll(logits, -np.ones(SHAPE, int), target_is_sparse=True).numpy() == 0)
    assert np.all(F.bernoulli_nll(logits, -666 * np.ones(logits.shape)).numpy() == 0)


@pytest.mark.parametrize("weighted", [False, True])
def test_bernoulli_matches_numpy(weighted):
    logits = RNG.normal(size=SHAPE + (2,)) * 4
    target = RNG.random(logits.shape)
    target[RNG.random(target.shape) < 0.3] = -666
    w = (0.3, 2.0) if weighted else (1.0, 1.0)
    ew = RNG.random(SHAPE) if weighted else None
    got = F.bernoulli_nll(logits, target, class_weights=w if weighted else None, example_weights=ew)
    assert_close(got, np_bernoulli(logits, target, w, ew))
    probs = 1 / (1 + np.exp(-logits))
    assert_close(F.bernoulli_nll(probs, target, class_weights=w if weighted else None, example_weights=ew,
                                 from_logits=False), np_bernoulli(logits, target, w, ew))


def test_bernoulli_label_entropy_and_extremes():
    logits = np.array([[-800.0, 800.0, 0.0, 30.0]])
    target = np.array([[0.0, 1.0, 0.25, 1.0]])
    got = F.bernoulli_nll(logits, target, subtract_label_entropy=True).numpy()
    ent = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75))
    want = np_bernoulli(logits, target) - np.array([[0, 0, ent, 0]])
    assert np.all(np.isfinite(got))
    assert_close(got, want)
    logits32 = tf.constant([[-800.0, 800.0]], tf.float32)
    assert np.all(np.isfinite(F.bernoulli_nll(logits32, tf.constant([[1.0, 0.0]])).numpy()))


def test_gaussian_nll_matches_numpy():
    mu, t = RNG.normal(size=SHAPE + (2,)), RNG.normal(size=SHAPE + (2,))
    log_sig = RNG.normal(size=mu.shape) * 0.5
    t[0, 0, 0, 0] = -666
    sig = np.exp(log_sig)
    want = 0.5 * np.log(2 * np.pi) + log_sig + 0.5 * ((t - mu) / sig) ** 2
    lab = t != -666
    want = np.where(lab, want, 0) * want.size / lab.sum()
    assert_close(F.gaussian_nll(mu, sig, t, ignore_value=-666), want)
    assert_close(F.gaussian_nll(mu, log_sig, t, sig_is_log=True, ignore_value=-666), want)


@pytest.mark.parametrize("margin", [None, 0.3])
@pytest.mark.parametrize("sc", [None, 0.7])
def test_squared_and_abs_loss_match_numpy(margin, sc):
    pred, t = RNG.normal(size=SHAPE + (3,)), RNG.normal(size=SHAPE + (3,))
    t[RNG.random(t.shape) < 0.2] = -666
    lab = t != -666
    dev = np.abs(t - pred)
    if margin is not None:
        dev = np.maximum(dev - margin, 0)
    sq, ab = 0.5 * dev**2, dev.copy()
    if sc is not None:
        sq, ab = sq * sc / (np.abs(t) + sc), ab * (sc * np.abs(t) + 1)
    for got, want in ((F.squared_loss(pred, t, margin=margin, scale_correction=sc, ignore_value=-666), sq),
                      (F.abs_loss(pred, t, margin=margin, scale_correction=sc, ignore_value=-666), ab)):
        want = (np.where(lab, want, 0) * lab.size / lab.sum()).mean(-1, keepdims=True)
        assert got.shape == SHAPE + (1,)
        assert_close(got, want)
    assert_close(np.mean(F.squared_loss(pred, t, ignore_value=-666)), np.mean(0.5 * (t - pred)[lab] ** 2))


@pytest.mark.parametrize("per_example", [False, True])
def test_soft_dice_matches_numpy(per_example):
    logits = RNG.normal(size=SHAPE + (N_F,))
    ids = sparse_ids()
    probs = np.exp(np_log_softmax(logits, N_INDEP))
    onehot = np_one_hot(ids, N_CLASS)
    lab = np.repeat(ids >= 0, N_CLASS, axis=-1)
    p = probs * lab
    axes = (1, 2) if per_example else (0, 1, 2)
    inter, sizes = (p * onehot).sum(axes), p.sum(axes) + onehot.sum(axes)
    cw = np.array([1.0, 2.0, 0.5])
    per_class = 1 - (2 * inter + 1.0) / (sizes + 1.0)
    got = F.soft_dice(logits, ids, n_indep=N_INDEP, target_is_sparse=True, from_logits=True, per_example=per_example)
    assert_close(got, per_class.mean(-1))
    got_w = F.soft_dice(probs, onehot, n_indep=N_INDEP, class_weights=cw, per_example=per_example)
    w = np.tile(cw, N_INDEP)
    assert_close(got_w, (per_class * w).sum(-1) / w.sum())


def test_classification_error_and_metrics():
    probs = RNG.random(SHAPE + (N_F,))
    ids = sparse_ids()
    cls = F.classify(probs, n_indep=N_INDEP).numpy()
    want_cls = probs.reshape(SHAPE + (N_INDEP, N_CLASS)).argmax(-1)
    assert np.array_equal(cls, want_cls)
    lab = ids >= 0
    assert_close(F.classification_error(cls, ids), (cls != ids)[lab].mean())
    onehot = np_one_hot(ids, N_CLASS)
    assert np.array_equal(F.target_ids(onehot, N_CLASS, N_INDEP).numpy(), ids)
    assert np.array_equal(F.target_ids(np.where(ids == 1, 7, ids), N_CLASS, target_is_sparse=True, ignore_label=7),
                          np.where(ids == 1, -1, ids))
    cm = F.confusion_matrix(cls, ids, N_CLASS).numpy()
    brute = np.zeros((N_CLASS, N_CLASS), int)
    for a, b in zip(ids[lab], cls[lab]):
        brute[a, b] += 1
    assert np.array_equal(cm, brute)
    scores = F.scores_from_confusion(cm)
    assert_close(scores["accuracy"], 1 - (cls != ids)[lab].mean())
    sig = RNG.random(SHAPE + (2,))
    assert np.array_equal(F.classify(sig, threshold=0.5).numpy(), (sig > 0.5).astype(int))


# ---- gradients against finite differences (float64) ----------------------------------------------

def finite_difference_check(fn, x, h=1e-6, tol=1e-6):
    """Compares d sum(fn(x) * R)/dx from the tape with central differences."""
    weights = RNG.random(np.shape(fn(x)))

    def scalar(v):
        return float(tf.reduce_sum(fn(tf.constant(v)) * weights))

    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        value = tf.reduce_sum(fn(xt) * weights)
    grad = tape.gradient(value, xt).numpy()
    fd = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[idx] = h
        fd[idx] = (scalar(x + step) - scalar(x - step)) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=tol, atol=tol)
    assert np.abs(grad).max() > 1e-3


GRAD_SHAPE = (1, 2, 3)
G_IDS = RNG.integers(-1, N_CLASS, GRAD_SHAPE + (N_INDEP,))
G_EW = RNG.random(GRAD_SHAPE)
G_T = RNG.normal(size=GRAD_SHAPE + (2,))
G_T[0, 0, 0, 0] = -666
G_T01 = np.where(G_T == -666, -666, RNG.random(G_T.shape))

GRAD_CASES = {
    "multinoulli": (lambda x: F.multinoulli_nll(x, G_IDS, n_indep=N_INDEP, target_is_sparse=True,
                                                class_weights=[0.5, 1.0, 2.0], example_weights=G_EW), N_F),
    "multinoulli_focal": (lambda x: F.multinoulli_nll(x, G_IDS, n_indep=N_INDEP, target_is_sparse=True,
                                                      class_weights=[0.5, 1.0, 2.0], focal_gamma=2.0), N_F),
    "multinoulli_probs": (lambda x: F.multinoulli_nll(tf.nn.sigmoid(x), G_IDS, n_indep=N_INDEP,
                                                      target_is_sparse=True, from_logits=False), N_F),
    "bernoulli": (lambda x: F.bernoulli_nll(x, G_T01, class_weights=(0.5, 2.0), example_weights=G_EW), 2),
    "gaussian_mu": (lambda x: F.gaussian_nll(x, np.full(x.shape, 0.7), G_T, ignore_value=-666), 2),
    "gaussian_logsig": (lambda x: F.gaussian_nll(tf.zeros_like(x), x, G_T, sig_is_log=True, ignore_value=-666), 2),
    "squared": (lambda x: F.squared_loss(x, G_T, margin=0.1, scale_correction=0.5, ignore_value=-666), 2),
    "abs": (lambda x: F.abs_loss(x, G_T, scale_correction=0.5, ignore_value=-666), 2),
    "soft_dice": (lambda x: F.soft_dice(x, G_IDS, n_indep=N_INDEP, target_is_sparse=True, from_logits=True), N_F),
}


@pytest.mark.parametrize("name", list(GRAD_CASES))
def test_gradients_equal_finite_differences(name):
    fn, n_f = GRAD_CASES[name]
    finite_difference_check(fn, RNG.normal(size=GRAD_SHAPE + (n_f,)))


def test_shape_errors_are_clear():
    logits = np.zeros(SHAPE + (N_F,))
    with pytest.raises(ShapeError, match="n_indep=2"):
        F.multinoulli_nll(logits, np.zeros(SHAPE + (3,), int), n_indep=2, target_is_sparse=True)
    with pytest.raises(ShapeError, match="target_is_sparse=True"):
        F.multinoulli_nll(logits, np.zeros(SHAPE + (1,)), n_indep=2)
    with pytest.raises(ShapeError, match="class_weights"):
        F.multinoulli_nll(logits, np.zeros(SHAPE + (2,), int), n_indep=2, target_is_sparse=True,
                          class_weights=[1, 2])
    with pytest.raises(ShapeError, match="independent groups"):
        F.softmax(np.zeros((2, 5)), n_indep=2)


# ---- loss nodes ----------------------------------------------------------------------------------


@pytest.fixture
def nodes():
    """A fresh model, the Input node class and the loss node modules."""
    from ekn_core.node import model_manager
    from ekn_plugins.layers.basic import Input
    from ekn_plugins.losses import nodes as N
    from ekn_plugins.losses import outputs as O

    model = model_manager.newmodel()
    yield model, Input, N, O
    model_manager.remove(model.name)


def to_canonical(a):
    """'b,f,x,y' → 'b,x,y,f'."""
    return np.moveaxis(a, 1, -1)


def test_multinoulli_node_in_elektronn2_layout(nodes):
    model, Input, N, O = nodes
    logits = Input((2, N_F, 3, 4), "b,f,x,y")
    labels = Input((2, N_INDEP, 3, 4), "b,f,x,y", dtype="int16", name="labels")
    weights = Input((2, 3, 4), "b,x,y", name="weights")
    nll = N.MultinoulliNLL(O.Softmax(logits, n_indep=N_INDEP), labels, target_is_sparse=True,
                           class_weights=[0.5, 2.0, 1.0], example_weights=weights)
    x = RNG.normal(size=(2, N_F, 3, 4)).astype("float32")
    y = RNG.integers(-1, N_CLASS, (2, N_INDEP, 3, 4)).astype("int16")
    w = RNG.random((2, 3, 4)).astype("float32")
    got = nll(x, y, w)
    want = np_multinoulli(to_canonical(x).astype(float), np_one_hot(to_canonical(y), N_CLASS), N_INDEP,
                          np.array([0.5, 2.0, 1.0]), w)
    assert got.shape == (2, 1, 3, 4)
    np.testing.assert_allclose(to_canonical(got), want, rtol=1e-5, atol=1e-5)
    assert nll.params["class_weights"].trainable is False  # saved with the model, never trained
    assert [n.name for n in nll.input_nodes] == ["input", "labels", "weights"]
    focal = N.MultinoulliNLL(O.Softmax(logits, n_indep=N_INDEP), labels, target_is_sparse=True, focal_gamma=2.0,
                             name="focal")
    want = np_multinoulli(to_canonical(x).astype(float), np_one_hot(to_canonical(y), N_CLASS), N_INDEP, gamma=2.0)
    np.testing.assert_allclose(to_canonical(focal(x, y)), want, rtol=1e-5, atol=1e-5)
    assert model.descriptors["focal"]["config"]["focal_gamma"] == 2.0  # saved with the model


def test_softmax_classification_errors_onehot(nodes):
    model, Input, N, O = nodes
    logits = Input((2, 4, N_F), "b,x,f")
    labels = Input((2, 4, N_INDEP), "b,x,f", dtype="int16", name="labels")
    sm = O.Softmax(logits, n_indep=N_INDEP)
    x = RNG.normal(size=(2, 4, N_F)).astype("float32")
    y = RNG.integers(-1, N_CLASS, (2, 4, N_INDEP)).astype("int16")
    np.testing.assert_allclose(sm(x), np.exp(np_log_softmax(x.astype(float), N_INDEP)), rtol=1e-5, atol=1e-7)
    cls = O.Classification(sm)(x)
    assert np.array_equal(cls, x.reshape(2, 4, N_INDEP, N_CLASS).argmax(-1))
    lab = y >= 0
    np.testing.assert_allclose(O.Errors(sm, labels, target_is_sparse=True)(x, y), [(cls != y)[lab].mean()], rtol=1e-6)
    onehot = O.OneHot(labels, N_CLASS)
    assert np.array_equal(onehot(y), np_one_hot(y.astype(int), N_CLASS))
    dense_err = O.Errors(O.Classification(sm), onehot)
    np.testing.assert_allclose(dense_err(x, y), [(cls != y)[lab].mean()], rtol=1e-6)


def test_aggregate_loss_mixing_is_live(nodes):
    model, Input, N, O = nodes
    pred = Input((2, 5, 3), "b,x,f")
    target = Input((2, 5, 3), "b,x,f", name="target")
    se, ab = N.SquaredLoss(pred, target), N.AbsLoss(pred, target, margin=0.2)
    total = N.AggregateLoss([se, ab], mixing_weights=[1.0, 0.5])
    p, t = RNG.normal(size=(2, 5, 3)).astype("float32"), RNG.normal(size=(2, 5, 3)).astype("float32")
    d = np.abs(t.astype(float) - p)
    mean_se, mean_ab = np.mean(0.5 * d**2), np.mean(np.maximum(d - 0.2, 0))
    np.testing.assert_allclose(total(p, t), [(mean_se + 0.5 * mean_ab) / 2], rtol=1e-5)
    total.params["mixing_weights"].set_value(np.array([0.0, 2.0], "float32"), force=True)
    ab.params["margin"].set_value(np.array(0.0, "float32"))
    np.testing.assert_allclose(total(p, t), [2.0 * np.mean(d) / 2], rtol=1e-5)
    assert total.function().traces == 1


def test_regression_nodes_mask_and_match_functional(nodes):
    model, Input, N, O = nodes
    mu = Input((2, 4, 2), "b,x,f", name="mu")
    log_sig = Input((2, 4, 2), "b,x,f", name="log_sig")
    target = Input((2, 4, 2), "b,x,f", name="target")
    g = N.GaussianNLL(mu, log_sig, target, sig_is_log=True, ignore_value=-666)
    m, s, t = (RNG.normal(size=(2, 4, 2)).astype("float32") for _ in range(3))
    t[0, 0, 0] = -666
    lab = t != -666
    want = 0.5 * np.log(2 * np.pi) + s + 0.5 * ((t - m) / np.exp(s)) ** 2
    np.testing.assert_allclose(g(m, s, t), np.where(lab, want, 0) * lab.size / lab.sum(), rtol=1e-5, atol=1e-6)
    sq = N.SquaredLoss(mu, target, scale_correction=0.5, ignore_value=-666)
    w = 0.5 / (np.abs(t) + 0.5)
    want_sq = (np.where(lab, 0.5 * (t - m) ** 2 * w, 0) * lab.size / lab.sum()).mean(-1, keepdims=True)
    np.testing.assert_allclose(sq(m, t), want_sq, rtol=1e-5, atol=1e-6)


def test_binary_nll_node_and_soft_dice_node(nodes):
    model, Input, N, O = nodes
    probs_in = Input((2, 4, 2), "b,x,f")
    target = Input((2, 4, 2), "b,x,f", name="target")
    bnll = N.BinaryNLL(probs_in, target, class_weights=(1.0, 3.0))
    assert bnll.from_logits is False  # an input carries probabilities, as in ELEKTRONN2
    logits = RNG.normal(size=(2, 4, 2))
    probs = (1 / (1 + np.exp(-logits))).astype("float32")
    t = RNG.random((2, 4, 2)).astype("float32")
    t[1, 1, 1] = -666
    np.testing.assert_allclose(bnll(probs, t), np_bernoulli(logits, t, (1.0, 3.0)), rtol=1e-4, atol=1e-5)

    labels = Input((2, 4), "b,x", dtype="int16", name="labels")
    sm = O.Softmax(probs_in)
    dice = N.SoftDice(sm, labels, target_is_sparse=True, per_example=True)
    y = RNG.integers(-1, 2, (2, 4)).astype("int16")
    want = F.soft_dice(np.exp(np_log_softmax(probs.astype(float), 1)), y, target_is_sparse=True, per_example=True)
    assert dice(probs, y).shape == (2, 1)
    np.testing.assert_allclose(dice(probs, y)[:, 0], want.numpy(), rtol=1e-5)


def test_node_errors_are_clear(nodes):
    from ekn_core.errors import ConfigError

    model, Input, N, O = nodes
    logits = Input((2, 4, 6), "b,x,f")
    with pytest.raises(ConfigError, match="must be a Softmax node"):
        N.MultinoulliNLL(logits, logits)
    with pytest.raises(ShapeError, match="expected 2"):
        N.MultinoulliNLL(O.Softmax(logits, n_indep=2), Input((2, 4, 3), "b,x,f", name="lab"), target_is_sparse=True)
    with pytest.raises(ShapeError, match="spatial shape"):
        N.MultinoulliNLL(O.Softmax(logits), Input((2, 5, 6), "b,x,f", name="lab2"))
    with pytest.raises(ShapeError, match="softmax group"):
        O.Softmax(logits, n_indep=4)
    with pytest.raises(ConfigError, match="2 components but 3"):
        N.AggregateLoss([logits, logits], mixing_weights=[1, 2, 3])


def test_elektronn2_names_resolve_through_the_registry():
    import ekn_core.neuromancer as nm
    from ekn_plugins.losses import nodes as N
    from ekn_plugins.losses import outputs as O

    assert nm.MultinoulliNLL is N.MultinoulliNLL and nm.BinaryNLL is N.BinaryNLL
    assert nm.AggregateLoss is N.AggregateLoss and nm.Softmax is O.Softmax and nm.Errors is O.Errors
    assert nm.GaussianNLL is N.GaussianNLL and nm.SquaredLoss is N.SquaredLoss and nm.AbsLoss is N.AbsLoss
    assert nm.OneHot is O.OneHot and nm.Classification is O.Classification and nm.SoftDice is N.SoftDice


# ---- focal loss with γ < 1 and confident predictions ---------------------------------------------


@pytest.mark.parametrize("gamma", [0.25, 0.5, 2.0])
def test_focal_loss_is_exact_with_finite_gradients_at_confident_logits(gamma):
    # the target class has p → 1 ((1 - p)^γ has an infinite slope at γ < 1); absent classes p → 0 (p^γ)
    logits = np.array([[[60.0, -60.0, -60.0]], [[-12.0, 12.0, 0.0]], [[0.3, -0.2, 0.1]]])  # float32: e^-120 = 0
    ids, absent = np.array([[[0]], [[1]], [[2]]]), np.array([0, 0, 1])
    for dtype in ("float32", "float64"):
        x = tf.constant(logits.astype(dtype))
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = F.multinoulli_nll(x, ids, target_is_sparse=True, focal_gamma=gamma, mask_class_not_present=absent)
            total = tf.reduce_sum(loss)
        assert np.all(np.isfinite(tape.gradient(total, x).numpy())), dtype
        # numpy, float64, stable for p → 1: with r_c = Σ_{j≠c} exp(x_j - x_c), log p_c = -log1p(r_c)
        # and log(1 - p_c) = log r_c + log p_c
        r = (np.exp(logits[..., None, :] - logits[..., :, None]) * (1 - np.eye(3))).sum(-1)
        logp, log_q = -np.log1p(r), np.log(r) - np.log1p(r)
        t, m = np_one_hot(ids, 3), absent * np.ones_like(logits)
        want = -(t * np.exp(gamma * log_q) * logp).sum(-1, keepdims=True) \
            - (m * np.exp(gamma * logp) * log_q).sum(-1, keepdims=True)
        want = want * want.size / (t.sum() + m.sum())
        # the log-softmax's own rounding limits -log p of p ≈ 1 - 6e-6 (float32: to a few %)
        np.testing.assert_allclose(loss.numpy(), want, rtol=5e-2 if dtype == "float32" else 1e-8, atol=1e-30)
    finite_difference_check(lambda v: F.multinoulli_nll(v, G_IDS, n_indep=N_INDEP, target_is_sparse=True,
                                                        focal_gamma=gamma, mask_class_not_present=[1, 0, 0]),
                            RNG.normal(size=GRAD_SHAPE + (N_F,)) * 4)


# ---- class ids outside the prediction's classes ----------------------------------------------------


def test_class_ids_outside_the_classes_are_one_clear_error():
    logits = tf.constant(RNG.normal(size=(1, 3, 2)))
    for fn in (lambda ids: F.multinoulli_nll(logits, ids, target_is_sparse=True),
               lambda ids: F.target_ids(ids, 2, 1, target_is_sparse=True),
               lambda ids: F.soft_dice(logits, ids, target_is_sparse=True, from_logits=True)):
        with pytest.raises(ConfigError, match=r"holds class id 5, but the prediction has n_class=2 classes .* "
                                              r"ignore_label=5\."):
            fn(np.array([[[0], [5], [-1]]]))
        fn(np.array([[[0], [1], [-1]]]))  # ids in 0..n_class-1 and unlabelled ids pass
    want = np_multinoulli(logits.numpy(), np_one_hot(np.array([[[0], [-1], [1]]]), 2), 1)
    assert_close(F.multinoulli_nll(logits, np.array([[[0], [255], [1]]]), target_is_sparse=True, ignore_label=255),
                 want)
    with pytest.raises(ConfigError, match="class ids 3, 7, but"):
        F.check_class_ids(np.array([0, 7, 3, 255, 3]), 2, ignore_label=255)


def test_loss_and_error_nodes_refuse_class_ids_outside_their_classes_before_the_step(nodes):
    import ekn_core.neuromancer as nm

    model, Input, N, O = nodes
    inp = Input((3, 4), "b,f", name="x")
    probs = O.Softmax(nm.Perceptron(inp, 2, activation_func="lin"))
    target = Input((3, 1), "b,f", dtype="int16", name="target")
    loss = N.AggregateLoss(N.MultinoulliNLL(probs, target, target_is_sparse=True, name="nll"))
    errors = O.Errors(probs, target, target_is_sparse=True)
    model.designate_nodes(input_node=inp, target_node=target, loss_node=loss, prediction_node=probs,
                          error_node=errors)
    x, good, bad = np.ones((3, 4), "float32"), np.array([[0], [1], [-1]], "int16"), np.array([[0], [5], [1]], "int16")
    weights = {k: p.get_value() for k, p in model.all_params.items()}
    with pytest.raises(ConfigError, match="MultinoulliNLL 'nll': its target 'target' holds class id 5"):
        model.trainingstep(x, bad, optimiser="SGD")
    with pytest.raises(ConfigError, match="Errors 'errors': its target 'target' holds class id 5"):
        errors(x, bad)
    assert model.iterations == 0 and all(np.array_equal(p.get_value(), weights[k]) for k, p in model.all_params.items())
    model.trainingstep(x, good, optimiser="SGD")
    assert model.iterations == 1 and float(errors(x, good)[0]) in (0.0, 0.5, 1.0)


TARGET_PATHS = {  # fed label shape → the (2, 1, 10, 10) target the loss reads
    "crop": ((2, 1, 12, 12), lambda nm, lab: nm.Crop(lab, 1)),
    "pad": ((2, 1, 8, 8), lambda nm, lab: nm.Pad(lab, 1, value=-1)),
    "split": ((2, 3, 10, 10), lambda nm, lab: nm.split(lab, "f", index=1)[0]),
    "reshape": ((2, 100), lambda nm, lab: nm.Reshape(lab, (2, 1, 10, 10), "b,f,x,y")),
    "crop+split": ((2, 2, 12, 12), lambda nm, lab: nm.Crop(nm.split(lab, "f", index=1)[1], 1)),
    "computed": ((2, 1, 10, 10), lambda nm, lab: nm.ApplyFunc(lab, "neg")),  # ids -7 are unlabelled
}


def _sparse_target_model(nodes, lab_shape, target_of, **loss_kwargs):
    """A 2-class net on (2, 1, 12, 12) whose MultinoulliNLL 'nll' reads ``target_of(nm, lab)`` of the
    int16 source 'lab' of ``lab_shape``; returns the model and an input batch."""
    import ekn_core.neuromancer as nm

    model, Input, N, O = nodes
    inp = Input((2, 1, 12, 12), "b,f,x,y", name="x")
    probs = O.Softmax(nm.Conv(inp, 2, (3, 3), activation_func="lin"))
    lab = Input(lab_shape, "b,f" if len(lab_shape) == 2 else "b,f,x,y", dtype="int16", name="lab")
    loss = N.AggregateLoss(N.MultinoulliNLL(probs, target_of(nm, lab), target_is_sparse=True, name="nll",
                                            **loss_kwargs))
    model.designate_nodes(input_node=inp, target_node=lab, loss_node=loss, prediction_node=probs)
    return model, RNG.random((2, 1, 12, 12)).astype("float32")


@pytest.mark.parametrize("path", sorted(TARGET_PATHS))
def test_class_ids_are_checked_through_nodes_that_only_move_the_target(nodes, path):
    shape, build = TARGET_PATHS[path]
    model, x = _sparse_target_model(nodes, shape, build)
    bad = np.full(shape, 7, "int16")
    if path == "computed":  # values a node computed are the loss's own check (no false error here)
        model.trainingstep(x, bad)
        assert model.iterations == 1
        return
    with pytest.raises(ConfigError, match=r"MultinoulliNLL 'nll': its target '\w+' \(fed as 'lab'\) holds class "
                                          r"id 7, but the prediction has n_class=2"):
        model.trainingstep(x, bad)
    model.trainingstep(x, RNG.integers(0, 2, shape).astype("int16"))
    assert model.iterations == 1


def test_each_head_of_a_split_target_is_checked_against_its_own_classes(nodes):
    """ELEKTRONN2's unet_2d layout: one int16 target (Input_like, override_f) split into heads with
    3 and 2 classes; id 2 is valid for the first head, not for the second."""
    import ekn_core.neuromancer as nm

    model, Input, N, O = nodes
    inp = Input((2, 1, 12, 12), "b,f,x,y", name="x")
    feat = nm.Conv(inp, 4, (3, 3))
    heads = {n_class: O.Softmax(nm.Conv(feat, n_class, (1, 1), activation_func="lin")) for n_class in (3, 2)}
    target = nm.Input_like(feat, dtype="int16", override_f=2, name="target")
    t_barr, t_obj = nm.split(target, "f", n_out=2, name=["t_barr", "t_obj"])
    loss = N.AggregateLoss([N.MultinoulliNLL(heads[3], t_barr, target_is_sparse=True, name="nll_barr"),
                            N.MultinoulliNLL(heads[2], t_obj, target_is_sparse=True, name="nll_obj")])
    errors = O.Errors(heads[2], t_obj, target_is_sparse=True, name="err_obj")
    model.designate_nodes(input_node=inp, target_node=target, loss_node=loss, prediction_node=heads[3],
                          error_node=errors)
    x = RNG.random((2, 1, 12, 12)).astype("float32")
    ids = np.stack([RNG.integers(-1, 3, (2, 10, 10)), RNG.integers(-1, 2, (2, 10, 10))], 1).astype("int16")
    ids[0, 0, 0, 0] = 2  # the first head's highest class
    model.trainingstep(x, ids, optimiser="SGD")
    assert model.iterations == 1
    for head, bad, loss_name in ((1, 2, "nll_obj"), (0, 3, "nll_barr")):
        wrong = ids.copy()
        wrong[1, head, 4, 5] = bad
        with pytest.raises(ConfigError, match=rf"MultinoulliNLL '{loss_name}': its target 't_\w+' \(fed as 'target'\) "
                                              rf"holds class id {bad}, but the prediction has n_class={3 - head}"):
            model.trainingstep(x, wrong, optimiser="SGD")
    with pytest.raises(ConfigError, match=r"Errors 'err_obj': its target 't_obj' .* holds class id 2, but"):
        errors(x, np.ascontiguousarray(ids[:, ::-1]))  # the first head's ids read as the second's
    assert model.iterations == 1


@pytest.mark.parametrize("value, ok", [(-1, True), (1, True), (255, True), (7, False)])
def test_a_target_padded_with_an_id_outside_the_classes_is_refused(nodes, value, ok):
    """Pad's constant joins the target's ids: 7 with n_class=2 is refused (the fed ids are fine),
    ids < 0, < n_class and the ignore_label pass."""
    def padded(nm, lab):
        return nm.Crop(nm.Pad(lab, 2, value=value, name="border"), 1)

    model, x = _sparse_target_model(nodes, (2, 1, 8, 8), padded, ignore_label=255)
    ids = RNG.integers(0, 2, (2, 1, 8, 8)).astype("int16")
    if ok:
        model.trainingstep(x, ids)
        assert model.iterations == 1
        return
    with pytest.raises(ConfigError, match=r"MultinoulliNLL 'nll': its target '\w+' \(padded with 7 by 'border'; .*\) "
                                          r"holds class id 7, but the prediction has n_class=2"):
        model.trainingstep(x, ids)
    assert model.iterations == 0
