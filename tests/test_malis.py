"""MALIS: neighbourhoods, affinity graphs, Rand scores, maximin weights (against brute force) and
the ``MalisNLL`` node (value, gradient, training, saving, compile-mode fallback)."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest
from scipy import ndimage

from ekn_plugins.malis import (affgraph_to_seg, compute_V_rand_N2, malis_errors, malis_weights, mknhood2d, mknhood3d,
                               mknhood3d_aniso, rand_index, seg_to_affgraph)

RNG = np.random.default_rng(5)


# --------------------------------------------------------------------------------- references
def edges_brute(shape, nhood):
    """Every existing edge as (flat edge index in (n_edges, *shape), voxel u, voxel v), by loops."""
    out = []
    for e, d in enumerate(np.asarray(nhood)):
        for p in itertools.product(*[range(s) for s in shape]):
            q = tuple(int(a + b) for a, b in zip(p, d))
            if all(0 <= c < s for c, s in zip(q, shape)):
                out.append((np.ravel_multi_index((e,) + p, (len(nhood),) + tuple(shape)),
                            np.ravel_multi_index(p, shape), np.ravel_multi_index(q, shape)))
    return out


def maximin_edges(weights, edges, n_vert):
    """``M[u, v]`` = flat index of the maximin edge of voxels u, v (-1: no path), by a minimax-path
    Floyd–Warshall. Edges are totally ordered by (weight descending, flat index ascending)."""
    ranked = sorted(edges, key=lambda t: (-weights[t[0]], t[0]))
    strength = {t[0]: len(ranked) - r for r, t in enumerate(ranked)}  # higher = stronger
    by_strength = {s: e for e, s in strength.items()}
    best = np.zeros((n_vert, n_vert), np.int64)  # 0: no path
    for e, u, v in edges:
        best[u, v] = best[v, u] = max(best[u, v], strength[e])
    for k in range(n_vert):
        best = np.maximum(best, np.minimum(best[:, k:k + 1], best[k:k + 1, :]))
    return np.vectorize(lambda s: by_strength.get(s, -1))(best)


def malis_brute(pred, gt, seg, nhood, unrestrict_neg):
    shape = seg.shape
    n = seg.size
    edges = edges_brute(shape, nhood)
    flat_seg = seg.ravel()
    pos = np.zeros(pred.size, np.int64)
    neg = np.zeros(pred.size, np.int64)
    m_pos = maximin_edges(np.minimum(pred, gt).ravel(), edges, n)
    m_neg = maximin_edges((pred if unrestrict_neg else np.maximum(pred, gt)).ravel(), edges, n)
    for u in range(n):
        for v in range(u + 1, n):
            a, b = flat_seg[u], flat_seg[v]
            if a == 0 or b == 0:
                continue
            if a == b and m_pos[u, v] >= 0:
                pos[m_pos[u, v]] += 1
            if a != b and m_neg[u, v] >= 0:
                neg[m_neg[u, v]] += 1
    return pos.reshape(pred.shape), neg.reshape(pred.shape)


def random_seg(shape, n_ids=3, p_background=0.2):
    seg = RNG.integers(1, n_ids + 1, shape)
    seg = ndimage.median_filter(seg, size=2)  # some larger blobs
    seg[RNG.random(shape) < p_background] = 0
    return seg


# --------------------------------------------------------------------------------- neighbourhoods
def test_neighbourhoods_match_elektronn2():
    np.testing.assert_array_equal(mknhood3d(1), [[-1, 0, 0], [0, -1, 0], [0, 0, -1]])
    np.testing.assert_array_equal(mknhood2d(1), [[-1, 0], [0, -1]])
    # ELEKTRONN2's order: the ball enumerated with the last coordinate slowest, before the centre, backwards
    np.testing.assert_array_equal(mknhood2d(1.8), [[-1, 0], [1, -1], [0, -1], [-1, -1]])
    aniso = mknhood3d_aniso(1, 1.8)
    assert aniso.dtype == np.int32 and aniso.shape == (11, 3)
    np.testing.assert_array_equal(aniso[:3], mknhood3d(1))
    assert (aniso[3:, 0] == -1).all()
    np.testing.assert_array_equal(aniso[3:7, 1:], mknhood2d(1.8))
    np.testing.assert_array_equal(aniso[7:, 1:], -mknhood2d(1.8))
    for radius in (1, 1.5, 2, 2.5):
        for nh, ndim in ((mknhood2d(radius), 2), (mknhood3d(radius), 3)):
            ball = [d for d in itertools.product(range(-3, 4), repeat=ndim) if 0 < sum(x * x for x in d) <= radius ** 2]
            got = {tuple(d) for d in nh}
            assert len(got) == len(nh) == len(ball) // 2  # one of each ±d, no zero offset
            assert all(tuple(-x for x in d) in set(ball) - got for d in got)


# --------------------------------------------------------------------------------- affinity graphs
@pytest.mark.parametrize("shape,nhood", [((4, 5), mknhood2d(1)), ((4, 5), mknhood2d(1.5)),
                                         ((3, 4, 4), mknhood3d(1)), ((3, 4, 4), mknhood3d_aniso())])
def test_seg_to_affgraph_definition(shape, nhood):
    seg = random_seg(shape)
    aff = seg_to_affgraph(seg, nhood)
    assert aff.shape == (len(nhood),) + shape and aff.dtype == np.int16
    expected = np.zeros(aff.shape, np.int16)
    for e, u, v in edges_brute(shape, nhood):
        a, b = seg.ravel()[u], seg.ravel()[v]
        expected.ravel()[e] = a == b and a != 0
    np.testing.assert_array_equal(aff, expected)


def _same_partition(a, b):
    """Equal up to a one-to-one relabelling that keeps 0."""
    pairs = set(zip(a.ravel().tolist(), b.ravel().tolist()))
    return (len({p[0] for p in pairs}) == len(pairs) == len({p[1] for p in pairs})
            and all((x == 0) == (y == 0) for x, y in pairs))


@pytest.mark.parametrize("ndim", [2, 3])
def test_affgraph_round_trip(ndim):
    shape = (6, 7) if ndim == 2 else (4, 6, 5)
    nhood = mknhood2d(1) if ndim == 2 else mknhood3d(1)
    for _ in range(5):
        raw = random_seg(shape, n_ids=4)
        # the segmentation that an affinity graph can express: face-connected pieces of >= 2 voxels
        seg = np.zeros(shape, np.int64)
        next_id = 1
        for i in np.unique(raw[raw > 0]):
            lab, n = ndimage.label(raw == i)
            for j in range(1, n + 1):
                if (lab == j).sum() >= 2:
                    seg[lab == j] = next_id
                    next_id += 1
        back = affgraph_to_seg(seg_to_affgraph(seg, nhood), nhood)
        assert back.dtype == np.int32 and _same_partition(seg, back)
        assert sorted(np.unique(back[back > 0])) == list(range(1, next_id))
    # probabilities: only edges above 0.5 connect; isolated voxels are background
    aff = np.array([[[0.0, 0.9, 0.4, 0.6]]], "float32")
    np.testing.assert_array_equal(affgraph_to_seg(aff, [[0, -1]]), [[1, 1, 2, 2]])
    np.testing.assert_array_equal(affgraph_to_seg(aff * 0.5, [[0, -1]]), [[0, 0, 0, 0]])
    np.testing.assert_array_equal(affgraph_to_seg(aff * 0.5, [[0, -1]], size_thresh=0), [[1, 2, 3, 4]])


# --------------------------------------------------------------------------------- Rand scores
def test_rand_index_against_pair_counting():
    for _ in range(20):
        true = RNG.integers(0, 4, 30)
        pred = RNG.integers(0, 5, 30)
        splits = merges = n_pairs = 0
        for u, v in itertools.combinations(range(30), 2):
            if true[u] == 0 or true[v] == 0:
                continue
            n_pairs += 1
            same_t = true[u] == true[v]
            same_p = pred[u] == pred[v] and pred[u] != 0
            splits += same_t and not same_p
            merges += same_p and not same_t
        got = rand_index(true, pred)
        assert (got.false_splits, got.false_merges, got.n_pairs) == (splits, merges, n_pairs)
        assert got.rand_index == pytest.approx(1 - (splits + merges) / n_pairs)
        # V_rand: ordered pairs (self-pairs included) of labelled voxels, predicted 0 = one segment
        lab = true != 0
        t, p = true[lab], pred[lab]
        both = sum((t[i] == t[j]) and (p[i] == p[j]) for i in range(t.size) for j in range(t.size))
        same_t = sum(t[i] == t[j] for i in range(t.size) for j in range(t.size))
        same_p = sum(p[i] == p[j] for i in range(t.size) for j in range(t.size))
        np.testing.assert_allclose(compute_V_rand_N2(true, pred),
                                   (2 * both / (same_t + same_p), both / same_p, both / same_t))
    assert rand_index(true, true).rand_index == 1.0


def test_pair_scores_keep_memory_linear_in_the_voxels():
    import tracemalloc

    true = RNG.integers(1, 501, 100_000)
    pred = np.arange(1, true.size + 1)  # every voxel its own segment: no pair joined
    pred[::2] = 0  # half of them unassigned
    tracemalloc.start()
    try:
        scores, v_rand = rand_index(true, pred), compute_V_rand_N2(true, pred)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # a dense contingency table of true x predicted ids takes 200 MB
    assert peak < 30e6, f"peak {peak / 1e6:.0f} MB"
    same_true = sum(c * (c - 1) // 2 for c in np.bincount(true))
    assert (scores.false_splits, scores.false_merges) == (same_true, 0)
    # V_rand_merge = ΣP² / Σs²; predicted 0 is one segment here: the odd voxels alone, the even ones together
    squares = np.sum(np.bincount(true[::2]).astype(float) ** 2) + true.size // 2
    assert v_rand[2] == pytest.approx(squares / np.sum(np.bincount(true).astype(float) ** 2), rel=1e-12)


# --------------------------------------------------------------------------------- MALIS weights
CASES = [((3, 4), mknhood2d(1)), ((4, 4), mknhood2d(1.5)), ((2, 3, 3), mknhood3d(1)), ((3, 3, 2), mknhood3d_aniso())]


@pytest.mark.parametrize("shape,nhood", CASES)
@pytest.mark.parametrize("unrestrict_neg", [False, True])
def test_malis_weights_equal_brute_force_maximin(shape, nhood, unrestrict_neg):
    for trial in range(4):
        seg = random_seg(shape, n_ids=3)
        gt = seg_to_affgraph(seg, nhood)
        pred = RNG.random(gt.shape).astype("float32")
        if trial == 3:  # many ties
            pred = np.round(pred * 2) / 2
        pos, neg = malis_weights(pred, gt, seg, nhood, unrestrict_neg=unrestrict_neg)
        ref_pos, ref_neg = malis_brute(pred, gt, seg, nhood, unrestrict_neg)
        np.testing.assert_array_equal(pos, ref_pos)
        np.testing.assert_array_equal(neg, ref_neg)
        # every labelled pair is counted once (the graphs are connected)
        ids, sizes = np.unique(seg[seg > 0], return_counts=True)
        n_lab = sizes.sum()
        assert pos.sum() == (sizes * (sizes - 1) // 2).sum()
        assert neg.sum() == n_lab * (n_lab - 1) // 2 - (sizes * (sizes - 1) // 2).sum()


def test_malis_weights_small_example_by_hand():
    # 1 x 4 line, ids 1 1 2 2, edges to the left neighbour (the first one leaves the volume)
    seg = np.array([[1, 1, 2, 2]])
    nhood = np.array([[0, -1]])
    gt = seg_to_affgraph(seg, nhood)
    pred = np.array([[[0.5, 0.9, 0.7, 0.2]]], "float32")
    pos, neg = malis_weights(pred, gt, seg, nhood, unrestrict_neg=True)
    # pair (0,1): edge 1; pair (2,3): edge 3 (weak, 0.2); cross pairs (0,2), (1,2): edge 2 (0.7),
    # (0,3), (1,3): edge 3 (the path 0-1-2-3 is the only one, its weakest edge is 3)
    assert pos.tolist() == [[[0, 1, 0, 1]]] and neg.tolist() == [[[0, 0, 2, 2]]]
    # negative pass on max(pred, gt): edge 3 counts as 1 (gt connects 2 and 3), so edge 2 is the
    # weakest edge between the objects for all 4 cross pairs
    pos, neg = malis_weights(pred, gt, seg, nhood, unrestrict_neg=False)
    assert pos.tolist() == [[[0, 1, 0, 1]]] and neg.tolist() == [[[0, 0, 4, 0]]]
    assert malis_errors(pred, pos, neg) == {"false_splits": 1.0, "false_merges": 4.0, "rand_error": 5 / 6}


def test_malis_weights_checks_shapes():
    with pytest.raises(ValueError, match="do not fit"):
        malis_weights(np.zeros((2, 3, 3)), np.zeros((2, 3, 3)), np.zeros((3, 4)), mknhood2d(1))


# --------------------------------------------------------------------------------- MalisNLL node
tf = pytest.importorskip("tensorflow")
import ekn_core.neuromancer as nm  # noqa: E402
from ekn_core.node import set_compile_mode  # noqa: E402


@pytest.fixture(autouse=True)
def _cleanup():
    before = set(nm.model_manager.models)
    yield
    set_compile_mode(None)
    for name in set(nm.model_manager.models) - before:
        nm.model_manager.remove(name)


def _np_log_softmax_pairs(logits):
    """Canonical logits (b, *sp, 2E) → (log p_disconnect, log p_connect), each (b, *sp, E)."""
    g = logits.reshape(logits.shape[:-1] + (-1, 2)).astype(np.float64)
    g = g - np.logaddexp(g[..., :1], g[..., 1:])
    return g[..., 0], g[..., 1]


def np_malis_nll(logits, aff_gt, seg, nhood, unrestrict_neg=True, class_weights=(1.0, 1.0), ew=None, counts=None):
    """numpy MalisNLL map (b, *sp, 1) from canonical arrays; ``counts`` fixes the weights."""
    lneg, lpos = _np_log_softmax_pairs(logits)
    if counts is None:
        pos, neg = np.zeros(lpos.shape), np.zeros(lpos.shape)
        for i in range(len(logits)):
            p, n = malis_weights(np.moveaxis(np.exp(lpos[i]), -1, 0), np.moveaxis(aff_gt[i], -1, 0), seg[i], nhood,
                                 unrestrict_neg=unrestrict_neg)
            pos[i], neg[i] = np.moveaxis(p, 0, -1), np.moveaxis(n, 0, -1)
    else:
        pos, neg = counts
    loss = -(class_weights[1] * pos * lpos + class_weights[0] * neg * lneg).sum(-1, keepdims=True)
    if ew is not None:
        loss = loss * ew[..., None]
    return loss * loss.size / max(pos.sum() + neg.sum(), 1), (pos, neg)


def _affinity_model(name, shape=(6, 7), batch=2, class_weights=None, example_weights=False, unrestrict_neg=True):
    """Logits input → Softmax pairs → MalisNLL over mknhood2d(1.5) (4 edges), tags b,f,x,y."""
    model = nm.model_manager.newmodel(name)
    nhood = mknhood2d(1.5)
    logits = nm.Input((batch, 2 * len(nhood)) + shape, "b,f,x,y", name="logits")
    aff_gt = nm.Input((batch, len(nhood)) + shape, "b,f,x,y", dtype="int16", name="aff_gt")
    seg_gt = nm.Input((batch, 1) + shape, "b,f,x,y", dtype="int32", name="seg_gt")
    ew = nm.Input((batch,) + shape, "b,x,y", name="ew") if example_weights else None
    loss = nm.MalisNLL(nm.Softmax(logits, n_indep=len(nhood)), aff_gt, seg_gt, nhood, unrestrict_neg=unrestrict_neg,
                       class_weights=class_weights, example_weights=ew)
    return model, loss, nhood


def _batch(shape, nhood, batch=2):
    segs = np.stack([random_seg(shape, n_ids=3) for _ in range(batch)]).astype("int32")
    affs = np.stack([seg_to_affgraph(s, nhood) for s in segs])
    logits = RNG.normal(0, 2, (batch, 2 * len(nhood)) + shape).astype("float32")
    return logits, affs, segs


@pytest.mark.parametrize("weighted", [False, True])
def test_malis_nll_value_against_numpy(weighted):
    shape = (6, 7)
    model, loss, nhood = _affinity_model(f"malis_value_{weighted}", class_weights=(0.5, 2.0) if weighted else None,
                                         example_weights=weighted, unrestrict_neg=not weighted)
    assert loss.shape.shape == (2, 1, 6, 7) and nm.MalisNLL.xla_compatible is False
    logits, affs, segs = _batch(shape, nhood)
    ew = RNG.random((2,) + shape).astype("float32") + 0.5
    args = [logits, affs, segs[:, None]] + ([ew] if weighted else [])
    got = loss(*args)
    canon = np.moveaxis(logits, 1, -1)
    want, _ = np_malis_nll(canon, np.moveaxis(affs, 1, -1), segs, nhood, unrestrict_neg=not weighted,
                           class_weights=(0.5, 2.0) if weighted else (1.0, 1.0), ew=ew if weighted else None)
    np.testing.assert_allclose(got, np.moveaxis(want, -1, 1), rtol=2e-5, atol=1e-6)
    # background only: no pairs, loss 0
    assert not np.any(loss(*([logits, affs * 0, segs[:, None] * 0] + args[3:])))


def test_malis_nll_gradient_finite_differences():
    shape = (5, 5)
    _, loss, nhood = _affinity_model("malis_grad", shape=shape, batch=1, class_weights=(0.7, 1.3))
    logits, affs, segs = _batch(shape, nhood, batch=1)
    canon = np.moveaxis(logits, 1, -1)
    aff_c, seg_c = np.moveaxis(affs, 1, -1), segs[..., None]
    x = tf.Variable(canon)
    with tf.GradientTape() as tape:
        value = tf.reduce_mean(loss._forward([x, tf.constant(aff_c), tf.constant(seg_c)], False))
    grad = tape.gradient(value, x).numpy()
    base, counts = np_malis_nll(canon, aff_c, segs, nhood, class_weights=(0.7, 1.3))
    assert float(value) == pytest.approx(base.mean(), rel=1e-5)

    def f(z):  # the weights stay those of the base point
        return np_malis_nll(z, aff_c, segs, nhood, class_weights=(0.7, 1.3), counts=counts)[0].mean()

    eps = 1e-4
    for idx in [tuple(RNG.integers(0, s) for s in canon.shape) for _ in range(25)]:
        up, down = canon.astype(np.float64), canon.astype(np.float64)
        up[idx] += eps
        down[idx] -= eps
        np.testing.assert_allclose(grad[idx], (f(up) - f(down)) / (2 * eps), rtol=1e-3, atol=1e-6)
    assert np.abs(grad).sum() > 0


def _tiny_net(name, shape=(10, 10), class_weights=None):
    model = nm.model_manager.newmodel(name)
    nhood = mknhood2d(1)
    inp = nm.Input((1, 1) + shape, "b,f,x,y", name="raw")
    hid = nm.Conv(inp, 6, (3, 3), conv_mode="same", activation_func="tanh")
    out = nm.Conv(hid, 2 * len(nhood), (1, 1), activation_func="lin", name="aff_logits")
    probs = nm.Softmax(out, n_indep=len(nhood))
    aff_gt = nm.Input_like(probs, override_f=len(nhood), dtype="int16", name="aff_gt")
    seg_gt = nm.Input_like(probs, override_f=1, dtype="int32", name="seg_gt")
    loss = nm.AggregateLoss(nm.MalisNLL(probs, aff_gt, seg_gt, nhood, class_weights=class_weights))
    model.designate_nodes(input_node=inp, target_node=aff_gt, loss_node=loss, prediction_node=probs)
    # a segmentation of 4 blocks with 1-voxel membranes; the raw image shows the membranes, noisily
    seg = np.zeros(shape, "int32")
    seg[:4, :4], seg[:4, 5:], seg[5:, :4], seg[5:, 5:] = 1, 2, 3, 4
    raw = ((seg == 0) + 0.3 * RNG.normal(size=shape)).astype("float32")
    batch = (raw[None, None], seg_to_affgraph(seg, nhood)[None], seg[None, None])
    return model, batch


def test_training_lowers_malis_loss_and_xla_falls_back_to_plain(caplog):
    set_compile_mode("xla")
    model, batch = _tiny_net("malis_train")
    model.lr, model.mom = 0.05, 0.9
    before = model.loss(*batch)
    with caplog.at_level(logging.INFO, logger="ekn"):
        for _ in range(40):
            model.trainingstep(*batch, optimiser="Adam")
    after = model.loss(*batch)
    assert after < 0.7 * before
    step = model.train_function("Adam")
    assert step.last_mode == "plain" and step.xla_blockers == ["nll"]
    assert model._functions["loss"].last_mode == "plain"
    fallbacks = [r for r in caplog.records if "instead of XLA" in r.getMessage() and r.levelno == logging.INFO]
    assert len(fallbacks) == 1 and "nll" in fallbacks[0].getMessage()  # once per function
    # functions without such a node keep XLA
    assert model._function("predict", [model.prediction_node]).usable_mode("xla") == "xla"


def test_auto_compile_mode_measures_only_plain(tmp_path):
    from ekn_core.compile_choice import tune_training_step

    model, batch = _tiny_net("malis_tune")
    result = tune_training_step(model, batch, optimiser="SGD", modes=("plain", "xla"), steps=1,
                                cache=str(tmp_path / "modes.json"))
    assert "xla" not in result and result["choice"] == "plain"


def test_save_and_load_model_with_malis_nll(tmp_path):
    model, batch = _tiny_net("malis_save", class_weights=(0.8, 1.5))
    model["nll"].params["class_weights"].set_value(np.array([0.6, 1.7], "float32"))
    path = model.save(str(tmp_path / "malis.h5"))
    loaded = nm.modelload(path, name="malis_loaded")
    assert type(loaded["nll"]).__name__ == "MalisNLL" and loaded["nll"].unrestrict_neg
    np.testing.assert_array_equal(loaded["nll"].nhood, model["nll"].nhood)
    np.testing.assert_array_equal(loaded["nll"].params["class_weights"].get_value(), np.float32([0.6, 1.7]))
    assert loaded.loss(*batch) == pytest.approx(model.loss(*batch), rel=1e-6)


def test_malis_nll_config_errors():
    from ekn_core.errors import ConfigError, ShapeError

    nm.model_manager.newmodel("malis_errors")
    logits = nm.Input((1, 4, 5, 5), "b,f,x,y")
    aff = nm.Input((1, 2, 5, 5), "b,f,x,y", dtype="int16")
    seg = nm.Input((1, 1, 5, 5), "b,f,x,y", dtype="int32")
    with pytest.raises(ConfigError, match="Softmax"):
        nm.MalisNLL(logits, aff, seg, mknhood2d(1))
    with pytest.raises(ConfigError, match="2 classes"):
        nm.MalisNLL(nm.Softmax(logits, n_indep=1), aff, seg, mknhood2d(1))
    with pytest.raises(ConfigError, match="nhood"):
        nm.MalisNLL(nm.Softmax(logits, n_indep=2), aff, seg, mknhood3d(1))
    with pytest.raises(ShapeError, match="aff_gt"):
        nm.MalisNLL(nm.Softmax(logits, n_indep=2), seg, seg, mknhood2d(1))


# --------------------------------------------------------------------------------- data option
def _id_volumes(tmp_path, shape=(8, 20, 22)):
    """A label volume of blocks and a raw volume that shows the same ids as grey values."""
    import h5py

    ids = np.zeros(shape, np.int16)
    z, y, x = np.indices(shape)
    ids[:] = 1 + (y // 5) * 5 + (x // 6) + 20 * (z // 4)
    ids[RNG.random(shape) < 0.1] = 0
    with h5py.File(tmp_path / "raw.h5", "w") as f:
        f["raw"] = ids.astype(np.uint8)
    with h5py.File(tmp_path / "lab.h5", "w") as f:
        f["lab"] = ids
    return dict(d_path=str(tmp_path), l_path=str(tmp_path), d_files=[("raw.h5", "raw")], l_files=[("lab.h5", "lab")])


@pytest.mark.parametrize("ndim", [3, 2])
def test_patch_source_malis_targets_align_with_images(tmp_path, ndim):
    from ekn_plugins.data.patches import PatchSource

    files = _id_volumes(tmp_path)
    if ndim == 3:
        src = PatchSource(patch_size=(4, 12, 12), offsets=(1, 2, 3), affinities="malis", seed=1,
                          augmenters=[{"type": "flip"}], **files)
        nhood = mknhood3d(1)
    else:
        nhood = mknhood2d(1.5)
        src = PatchSource(patch_size=(12, 12), offsets=(2, 3), affinities="malis", nhood=nhood, seed=1, **files)
    img, aff, seg = src.getbatch(3)
    assert [a.dtype for a in (img, aff, seg)] == [np.float32, np.int16, np.int32]
    assert aff.shape[1] == len(nhood) and seg.shape[1] == 1
    assert [(a.shape, a.dtype) for a in (img, aff, seg)] == src.batch_spec(3)
    lo = (1, 2, 3) if ndim == 3 else (2, 3)
    for b in range(3):
        ids = np.rint(img[b, 0] * 255).astype(np.int64)  # the ids under the image patch
        ids = ids[tuple(slice(o, s - o) for o, s in zip(lo, ids.shape))]  # the output region
        assert seg.shape[2:] == ids.shape
        # edge e at p connects p and p + nhood[e]: 1 exactly where both have the same non-zero id
        for e, d in enumerate(nhood):
            for p in itertools.product(*[range(s) for s in ids.shape]):
                q = tuple(a + b_ for a, b_ in zip(p, d))
                inside = all(0 <= c < s for c, s in zip(q, ids.shape))
                want = inside and ids[p] != 0 and ids[p] == ids[q]
                assert aff[b, e][p] == want
        back = affgraph_to_seg(aff[b], nhood)
        np.testing.assert_array_equal(seg[b, 0], back)
        for label in np.unique(seg[b, 0][seg[b, 0] > 0]):  # one segment: one non-zero id
            assert len(np.unique(ids[seg[b, 0] == label])) == 1 and ids[seg[b, 0] == label][0] != 0
        assert seg[b, 0].max() >= 2
    assert src.getbatch(1)[1].shape == aff[:1].shape
    with pytest.raises(Exception, match="strides"):
        PatchSource(patch_size=(4, 12, 12), offsets=(1, 2, 2), strides=(1, 2, 2), affinities="malis", **files)
    only_aff = PatchSource(patch_size=(4, 12, 12), affinities="affinity", **files).getbatch(2)
    assert len(only_aff) == 2 and only_aff[1].shape == (2, 3, 4, 12, 12)
