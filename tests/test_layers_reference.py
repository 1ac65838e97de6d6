"""Every built-in layer against an independent reference (numpy / scipy), plus float64 gradient checks.

Forward passes must equal the reference to 1e-5; gradients (inputs and trainable parameters)
must equal central finite differences of the same graph evaluated in float64
(:func:`gradient_check`). Inputs are tiny.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest
from scipy import ndimage, signal

import ekn_core.neuromancer as nm
from ekn_core.errors import ConfigError
from ekn_core.lazy import tf
from ekn_core.node import Node, evaluate, model_manager

ATOL = 1e-5


# ---------------------------------------------------------------------------------------------
# helpers (also used by tests/test_recurrent.py)
# ---------------------------------------------------------------------------------------------
def fresh_model(prefix: str = "t") -> Any:
    """A new current model with a unique name."""
    return model_manager.newmodel(f"{prefix}-{uuid.uuid4().hex[:8]}")


def gradient_check(out: Node, feeds: dict[Node, np.ndarray], training: bool = False, probes: int = 5,
                   eps: float = 1e-6, tol: float = 1e-6, seed: int = 0, dtype: str = "float64") -> int:
    """Asserts that autodiff gradients of ``sum(out * R)`` equal central finite differences.

    Every parameter of the graph is temporarily replaced by a float64 variable and the graph is
    evaluated in float64 (``dtype='float32'`` with a larger ``eps`` for ops TensorFlow has only in
    float32 on CPU, such as 3-D max pooling: piecewise linear, so still exact). Probes ``probes`` random coordinates of every input and every
    trainable parameter; returns the number of probes.
    """
    rng = np.random.default_rng(seed)
    every = list(out.all_params.values())
    params = [p for p in every if p.trainable]
    saved = [p.variable for p in every]
    for p in every:
        p.variable = tf.Variable(p.get_value().astype(dtype))
    try:
        inputs = {n.name: tf.Variable(np.asarray(n.shape.to_canonical(np.asarray(a)), dtype))
                  for n, a in feeds.items()}
        proj = tf.constant(rng.standard_normal(evaluate([out], dict(inputs), training)[0].shape).astype(dtype))

        variables = list(inputs.values()) + [p.variable for p in params]

        @tf.function  # graph mode: eager gradients of some ops (Conv3D) are broken in TF 2.21
        def loss() -> Any:
            return tf.reduce_sum(evaluate([out], dict(inputs), training)[0] * proj)

        @tf.function
        def gradients() -> Any:
            with tf.GradientTape() as tape:
                value = tf.reduce_sum(evaluate([out], dict(inputs), training)[0] * proj)
            grads = tape.gradient(value, variables, unconnected_gradients="zero")
            return [tf.convert_to_tensor(g) for g in grads]  # IndexedSlices (gather) → dense

        grads = gradients()
        count = 0
        for var, grad in zip(variables, grads):
            base = var.numpy()
            for idx in rng.choice(base.size, size=min(probes, base.size), replace=False):
                values = []
                for step in (eps, -eps):
                    shifted = base.copy().reshape(-1)
                    shifted[idx] += step
                    var.assign(shifted.reshape(base.shape))
                    values.append(float(loss()))
                var.assign(base)
                numeric = (values[0] - values[1]) / (2 * eps)
                analytic = float(np.asarray(grad).reshape(-1)[idx])
                assert abs(numeric - analytic) <= tol * max(1.0, abs(numeric)), (
                    f"gradient of {var.name}[{idx}]: autodiff {analytic} vs finite difference {numeric}")
                count += 1
        assert count > 0
        return count
    finally:
        for p, v in zip(every, saved):
            p.variable = v


@pytest.fixture(autouse=True)
def _model():
    model = fresh_model("ref")
    yield model
    model_manager.remove(model.name)


RNG = np.random.default_rng(1)


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype("float32")


# ---------------------------------------------------------------------------------------------
# numpy / scipy references
# ---------------------------------------------------------------------------------------------
def ref_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, mode: str, dilation: tuple[int, ...]) -> np.ndarray:
    """Correlation of canonical ``x (B, *S, Cin)`` with ``w (*K, Cin, Cout)`` via scipy.signal."""
    kernel = np.zeros([d * (k - 1) + 1 for k, d in zip(w.shape[:-2], dilation)] + list(w.shape[-2:]), w.dtype)
    kernel[tuple(slice(None, None, d) for d in dilation)] = w
    outs = []
    for xb in x:
        maps = []
        for o in range(w.shape[-1]):
            acc = sum(signal.correlate(xb[..., c].astype("float64"), kernel[..., c, o].astype("float64"), mode=mode)
                      for c in range(w.shape[-2]))
            maps.append(acc + b[o])
        outs.append(np.stack(maps, -1))
    return np.stack(outs)


def ref_pool(x: np.ndarray, pool: tuple[int, ...], stride: tuple[int, ...], mode: str) -> np.ndarray:
    """VALID pooling of canonical ``x (B, *S, C)`` with a sliding-window view."""
    nd = len(pool)
    win = np.lib.stride_tricks.sliding_window_view(x, pool, axis=tuple(range(1, nd + 1)))
    win = win[(slice(None), *[slice(None, None, s) for s in stride])]
    axes = tuple(range(-nd, 0))
    return win.max(axis=axes) if mode == "max" else win.mean(axis=axes)


# ---------------------------------------------------------------------------------------------
# Conv / Pool / UpConv / Perceptron / MFP
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tags,shape,filt,mode,dil", [
    ("b,f,x", (2, 2, 9), (3,), "valid", (1,)),
    ("b,f,x,y", (1, 2, 7, 6), (3, 2), "valid", (1, 2)),
    ("b,f,x,y", (1, 2, 6, 6), (3, 3), "same", (1, 1)),
    ("b,f,x,y", (1, 1, 5, 4), (2, 3), "full", (1, 1)),
    ("b,f,z,y,x", (1, 2, 4, 5, 5), (2, 3, 3), "valid", (1, 1, 1)),
    ("b,z,y,x,f", (2, 3, 4, 4, 2), (1, 3, 3), "valid", (1, 1, 1)),
    ("b,f,z,y,x", (1, 3, 3, 4, 4), (1, 1, 1), "valid", (1, 1, 1)),
    ("b,f,y,z,x", (2, 2, 6, 3, 5), (3, 1, 2), "valid", (2, 1, 1)),  # z not first: replacement transposes
    ("b,f,x,y,z", (1, 2, 5, 5, 2), (3, 3, 1), "same", (1, 1, 1)),
])
@pytest.mark.parametrize("z_as_batch", [False, True], ids=["conv3d", "z_as_batch"])
def test_conv_equals_scipy(tags, shape, filt, mode, dil, z_as_batch, monkeypatch):
    from ekn_plugins.layers import conv as conv_module

    monkeypatch.setattr(conv_module, "z_as_batch_pays", lambda: z_as_batch)  # both paths, on any device
    inp = nm.Input(shape, tags)
    conv = nm.Conv(inp, 3, filt, conv_mode=mode, activation_func="lin", dilation=dil)
    x = rand(*shape)
    got = inp.shape.to_canonical(x)
    want = ref_conv(got, conv.params["w"].get_value(), conv.params["b"].get_value(), mode, dil)
    out = conv.shape.to_canonical(conv(x))
    assert out.shape == want.shape
    np.testing.assert_allclose(out, want, atol=ATOL, rtol=1e-5)
    gradient_check(conv, {inp: x})


@pytest.mark.parametrize("mode", ["max", "average"])
@pytest.mark.parametrize("tags,shape,pool,stride", [
    ("b,f,x", (2, 2, 8), (2,), None),
    ("b,f,x,y", (1, 2, 7, 6), (3, 2), (2, 2)),
    ("b,f,z,y,x", (1, 2, 4, 6, 6), (1, 2, 2), None),
])
def test_pool_equals_numpy(mode, tags, shape, pool, stride):
    inp = nm.Input(shape, tags)
    node = nm.Pool(inp, pool, stride=stride, mode=mode)
    x = rand(*shape)
    want = ref_pool(inp.shape.to_canonical(x), pool, stride or pool, mode)
    np.testing.assert_allclose(node.shape.to_canonical(node(x)), want, atol=ATOL)
    if len(pool) == 3:  # 3-D pooling exists only in float32 on CPU
        gradient_check(node, {inp: x}, dtype="float32", eps=1e-2, tol=1e-3)
    else:
        gradient_check(node, {inp: x})


def test_conv_with_pooling_equals_reference():
    inp = nm.Input((1, 2, 8, 7), "b,f,x,y")
    conv = nm.Conv(inp, 2, (3, 2), (2, 3), activation_func="tanh")
    x = rand(1, 2, 8, 7)
    lin = ref_conv(inp.shape.to_canonical(x), conv.params["w"].get_value(), conv.params["b"].get_value() * 0,
                   "valid", (1, 1))
    want = np.tanh(ref_pool(lin, (2, 3), (2, 3), "max") + conv.params["b"].get_value())
    np.testing.assert_allclose(conv.shape.to_canonical(conv(x)), want, atol=ATOL)
    gradient_check(conv, {inp: x})


@pytest.mark.parametrize("tags,shape,pool", [("b,f,x", (2, 2, 3), (2,)), ("b,f,x,y", (1, 3, 2, 3), (2, 3)),
                                             ("b,f,z,y,x", (1, 2, 2, 2, 2), (1, 2, 2))])
def test_upconv_equals_numpy(tags, shape, pool):
    inp = nm.Input(shape, tags)
    up = nm.UpConv(inp, 2, pool, activation_func="lin", identity_init=False)
    x = rand(*shape)
    xc = inp.shape.to_canonical(x)
    w, b = up.params["w"].get_value(), up.params["b"].get_value()  # (*pool, n_out, n_in)
    nd = len(pool)
    want = np.zeros((xc.shape[0], *[s * p for s, p in zip(xc.shape[1:-1], pool)], 2))
    for offset in np.ndindex(*pool):
        target = (slice(None), *[slice(o, None, p) for o, p in zip(offset, pool)])
        want[target] = np.tensordot(xc, w[offset], axes=[[nd + 1], [1]])
    np.testing.assert_allclose(up.shape.to_canonical(up(x)), want + b, atol=ATOL)
    gradient_check(up, {inp: x})


@pytest.mark.parametrize("flatten", [False, True])
def test_perceptron_equals_numpy(flatten):
    inp = nm.Input((2, 3, 4), "b,f,x")
    dot = nm.Perceptron(inp, 3, "sig", flatten=flatten)
    x = rand(2, 3, 4)
    w, b = dot.params["w"].get_value(), dot.params["b"].get_value()
    xc = inp.shape.to_canonical(x)
    lin = xc.reshape(2, -1) @ w if flatten else xc @ w
    np.testing.assert_allclose(dot.shape.to_canonical(dot(x)), 1 / (1 + np.exp(-(lin + b))), atol=ATOL)
    gradient_check(dot, {inp: x})


def test_mfp_fragments_to_dense_equals_sliding_net():
    """Dense MFP output at q equals the plain net applied to the input shifted by q."""
    x = rand(1, 1, 10, 9)
    inp = nm.Input((1, 1, 10, 9), "b,f,x,y")
    conv = nm.Conv(inp, 2, (2, 3), (2, 2), mfp=True, activation_func="lin")
    dense = nm.FragmentsToDense(conv)
    out = dense.shape.to_canonical(dense(x))[0]
    small = nm.Input((1, 1, 3, 4), "b,f,x,y", name="patch")
    plain = nm.Conv(small, 2, (2, 3), (2, 2), activation_func="lin", w=conv.params["w"], b=conv.params["b"])
    assert out.shape == (8, 6, 2)
    for q in np.ndindex(*out.shape[:-1]):
        patch = x[:, :, q[0]:q[0] + 3, q[1]:q[1] + 4]
        np.testing.assert_allclose(out[q], plain(patch)[0, :, 0, 0], atol=ATOL)


# ---------------------------------------------------------------------------------------------
# Batch normalisation
# ---------------------------------------------------------------------------------------------
def test_batchnorm_training_output_and_whole_dataset_statistics():
    inp = nm.Input((None, 3, 4), "b,f,x")
    bn = nm.BatchNorm(inp, bn_momentum=1.0)  # 1: every voxel since the last reset, equally weighted
    gamma = np.array([1.0, 2.0, 0.5], "float32")
    beta = np.array([0.1, -0.2, 0.3], "float32")
    bn.params["gamma"].set_value(gamma)
    bn.params["b"].set_value(beta)
    batches = [rand(2, 3, 4) * 3 + 1, rand(5, 3, 4), rand(1, 3, 4) - 2]
    for x in batches:
        xc = inp.shape.to_canonical(x).reshape(-1, 3).astype("float64")
        want = (xc - xc.mean(0)) / np.sqrt(xc.var(0) + 1e-5) * gamma + beta
        got = bn.shape.to_canonical(bn(x, training=True)).reshape(-1, 3)
        np.testing.assert_allclose(got, want, atol=ATOL)
    everything = np.concatenate([inp.shape.to_canonical(x).reshape(-1, 3) for x in batches]).astype("float64")
    np.testing.assert_allclose(bn.params["mean"].get_value(), everything.mean(0), atol=1e-6)
    np.testing.assert_allclose(bn.params["std"].get_value(), np.sqrt(everything.var(0) + 1e-5), atol=1e-6)
    assert float(bn.params["bn_count"].get_value()) == len(everything)
    x = rand(3, 3, 4)
    xc = inp.shape.to_canonical(x)
    want = (xc - everything.mean(0)) / np.sqrt(everything.var(0) + 1e-5) * gamma + beta
    np.testing.assert_allclose(bn.shape.to_canonical(bn(x)), want, atol=ATOL)  # inference: stored statistics
    gradient_check(bn, {inp: rand(3, 3, 4)}, training=True)


@pytest.mark.parametrize("momentum", [0.9, 0.5])
def test_batchnorm_moving_average_weights_each_batch_by_momentum_powers(momentum):
    inp = nm.Input((None, 2, 3), "b,f,x")
    bn = nm.BatchNorm(inp, bn_momentum=momentum)
    assert float(bn.params["bn_momentum"].get_value()) == momentum and not bn.params["bn_momentum"].trainable
    batches = [rand(2, 2, 3) * (1 + k) + k for k in range(6)]  # drifting statistics
    for x in batches:
        bn(x, training=True)
    # numpy: every voxel of batch k weighted by momentum ** (steps since batch k)
    voxels = [inp.shape.to_canonical(x).reshape(-1, 2).astype("float64") for x in batches]
    weights = np.concatenate([np.full(len(v), momentum ** (len(voxels) - 1 - k)) for k, v in enumerate(voxels)])
    everything = np.concatenate(voxels)
    mean = np.average(everything, axis=0, weights=weights)
    var = np.average((everything - mean) ** 2, axis=0, weights=weights)
    np.testing.assert_allclose(bn.params["mean"].get_value(), mean, rtol=1e-6)
    np.testing.assert_allclose(bn.params["std"].get_value(), np.sqrt(var + 1e-5), rtol=1e-6)
    np.testing.assert_allclose(float(bn.params["bn_count"].get_value()), weights.sum(), rtol=1e-12)
    # long runs: a plain moving average (the newest batch weighs 1 - momentum)
    last = inp.shape.to_canonical(batches[-1]).reshape(-1, 2).mean(0)
    before = bn.params["mean"].get_value().astype("float64")
    for _ in range(200):
        bn(batches[-1], training=True)
    after = bn.params["mean"].get_value().astype("float64")
    bn(batches[0], training=True)
    first = inp.shape.to_canonical(batches[0]).reshape(-1, 2).mean(0)
    np.testing.assert_allclose(bn.params["mean"].get_value(), momentum * after + (1 - momentum) * first, rtol=1e-5)
    assert not np.allclose(before, last) and np.allclose(after, last, atol=1e-4)


def test_batchnorm_momentum_is_checked_and_set_on_every_layer():
    from ekn_plugins.layers.normalisation import BN_MOMENTUM, set_momentum

    inp = nm.Input((None, 1, 6, 6), "b,f,x,y")
    conv = nm.Conv(inp, 2, (3, 3), batch_normalisation="train")
    assert float(conv.params["bn_momentum"].get_value()) == BN_MOMENTUM
    with pytest.raises(ConfigError, match=r"bn_momentum of 'bn' must be in \[0, 1\]"):
        nm.BatchNorm(conv, bn_momentum=1.5, name="bn")
    assert set_momentum(model_manager.current.nodes.values(), 0.9995) == 1
    assert float(conv.params["bn_momentum"].get_value()) == 0.9995
    with pytest.raises(ConfigError, match="must be in"):
        set_momentum([conv], -0.1)


def test_batchnorm_modes_reset_and_collect():
    from ekn_plugins.layers.normalisation import collect_statistics, reset_statistics

    inp = nm.Input((4, 2), "b,f")
    frozen = nm.BatchNorm(inp, "predict", mean=np.array([1.0, 2.0]), std=np.array([2.0, 4.0]))
    x = rand(4, 2)
    want = (x - [1.0, 2.0]) / [2.0, 4.0]
    np.testing.assert_allclose(frozen(x, training=True), want, atol=ATOL)
    np.testing.assert_allclose(frozen.params["mean"].get_value(), [1.0, 2.0])  # not updated
    assert frozen.params["gamma"].trainable
    const = nm.BatchNorm(inp, "const")
    assert all(p.constant for p in const.params.values())
    fade = nm.BatchNorm(inp, "fadeout", mean=np.array([1.0, 2.0]), std=np.array([2.0, 4.0]))
    fade.params["bn_fade"].set_value(np.float32(0.0))
    np.testing.assert_allclose(fade(x, training=True), want, atol=ATOL)  # fade 0: stored statistics
    off = nm.BatchNorm(inp, False)
    assert off.params == {} and np.array_equal(off(x), x)
    train = nm.BatchNorm(nm.Dropout(inp, 0.5))
    assert collect_statistics(train, [[x], [x + 1]]) == 2
    both = np.concatenate([x, x + 1]).astype("float64")
    np.testing.assert_allclose(train.params["mean"].get_value(), both.mean(0), atol=1e-6)  # dropout off
    np.testing.assert_allclose(train.params["std"].get_value(), np.sqrt(both.var(0) + 1e-5), rtol=1e-6)  # pooled
    assert float(train.params["bn_momentum"].get_value()) == 0.99  # restored after the pass
    assert reset_statistics(model_manager.current.nodes.values()) == 2  # train and fadeout nodes
    assert float(train.params["bn_count"].get_value()) == 0.0


# ---------------------------------------------------------------------------------------------
# LRN
# ---------------------------------------------------------------------------------------------
def test_lrn_spatial_equals_scipy():
    inp = nm.Input((2, 3, 5, 6), "b,f,y,x")
    node = nm.LRN(inp, (3, 5), mode="spatial", alpha=0.5, k=1.5, beta=0.75)
    x = rand(2, 3, 5, 6)
    mean_sq = ndimage.uniform_filter(x.astype("float64") ** 2, size=(1, 1, 3, 5), mode="constant")
    np.testing.assert_allclose(node(x), x / (1.5 + 0.5 * mean_sq) ** 0.75, atol=ATOL)
    assert node.shape.fov == (3, 5)
    gradient_check(node, {inp: x})


def test_lrn_channel_equals_scipy():
    inp = nm.Input((2, 6, 4), "b,f,x")
    node = nm.LRN(inp, 3, mode="channel", alpha=0.3, k=1.0, beta=0.5)
    x = rand(2, 6, 4)
    mean_sq = ndimage.uniform_filter1d(x.astype("float64") ** 2, 3, axis=1, mode="nearest")
    np.testing.assert_allclose(node(x), x / (1.0 + 0.3 * mean_sq) ** 0.5, atol=ATOL)
    gradient_check(node, {inp: x})


@pytest.mark.parametrize("n_groups", [1, 2, 4])  # layer, group and instance normalisation
def test_group_norm_equals_numpy(n_groups):
    inp = nm.Input((2, 4, 3, 5, 5), "b,f,z,y,x")
    node = nm.GroupNorm(inp, n_groups=n_groups, eps=1e-3)
    node.params["gamma"].set_value(np.array([0.5, 1.0, 2.0, -1.0], "float32"))
    node.params["beta"].set_value(np.array([0.0, 0.1, -0.2, 0.3], "float32"))
    x = rand(2, 4, 3, 5, 5) * 3 + 1
    g = x.astype("float64").reshape(2, n_groups, 4 // n_groups, 3, 5, 5)
    mean, var = g.mean(axis=(2, 3, 4, 5), keepdims=True), g.var(axis=(2, 3, 4, 5), keepdims=True)
    want = ((g - mean) / np.sqrt(var + 1e-3)).reshape(x.shape)
    want = want * np.array([0.5, 1.0, 2.0, -1.0])[:, None, None, None] + np.array([0.0, 0.1, -0.2, 0.3])[:, None, None, None]
    np.testing.assert_allclose(node(x), want, atol=1e-4)
    np.testing.assert_allclose(node(x, training=True), node(x), atol=1e-6)  # no batch statistics
    gradient_check(node, {inp: x})


def test_group_norm_refuses_groups_that_do_not_divide_the_features():
    inp = nm.Input((1, 6, 4, 4), "b,f,y,x")
    with pytest.raises(ConfigError, match=r"divisors: \[1, 2, 3, 6\]"):
        nm.GroupNorm(inp, n_groups=4)


# ---------------------------------------------------------------------------------------------
# Dropout, noise, GaussianRV
# ---------------------------------------------------------------------------------------------
def test_dropout_masks_are_per_example_and_inverted():
    inp = nm.Input((64, 50), "b,f")
    node = nm.Dropout(inp, 0.25)
    x = np.ones((64, 50), "float32")
    y = node(x, training=True)
    assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.75)}
    assert 0.2 < (y == 0).mean() < 0.3
    assert len({tuple(row) for row in (y == 0)}) > 60  # masks differ between examples
    assert np.array_equal(node(x), x)
    model_manager.current.dropout_rates = [0.0]
    assert np.array_equal(node(x, training=True), x)  # rate changed without a rebuild
    spatial = nm.Dropout(nm.Input((8, 4, 10), "b,f,x", name="maps"), 0.5, per_feature=True)
    z = spatial(np.ones((8, 4, 10), "float32"), training=True)
    assert (z.min(axis=2) == z.max(axis=2)).all()  # whole maps dropped
    assert len({tuple(r) for r in (z[:, :, 0] == 0)}) > 1


def test_gaussian_noise_statistics():
    inp = nm.Input((200, 50), "b,f")
    node = nm.GaussianNoise(inp, 0.5)
    x = np.zeros((200, 50), "float32")
    assert np.array_equal(node(x), x)
    noise = node(x, training=True)
    assert abs(noise.mean()) < 0.02 and abs(noise.std() - 0.5) < 0.02


def test_gaussian_rv_reparameterisation():
    mu_in, ls_in = nm.Input((300, 4), "b,f", name="mu"), nm.Input((300, 4), "b,f", name="ls")
    z = nm.GaussianRV(mu_in, ls_in)
    mu = rand(300, 4)
    log_sig = np.tile(np.array([-1.0, 0.0, 0.5, 1.0], "float32"), (300, 1))
    eps = (z(mu, log_sig) - mu) / np.exp(log_sig)
    assert abs(eps.mean()) < 0.1 and abs(eps.std() - 1) < 0.1
    # gradients of the same sample: d z / d mu = 1, d z / d log_sig = z - mu
    m, s = tf.Variable(mu), tf.Variable(log_sig)
    with tf.GradientTape(persistent=True) as tape:
        sample = evaluate([z], {"mu": m, "ls": s}, False)[0]
    np.testing.assert_allclose(tape.gradient(sample, m), np.ones_like(mu))
    np.testing.assert_allclose(tape.gradient(sample, s), sample.numpy() - mu, atol=ATOL)
    kl = z.make_priorlayer()
    want = 0.5 * (mu ** 2 + np.exp(2 * log_sig) - 1) - log_sig
    np.testing.assert_allclose(kl(mu[:, :], log_sig), want, atol=ATOL)
    gradient_check(kl, {mu_in: mu[:300], ls_in: log_sig})


# ---------------------------------------------------------------------------------------------
# merges, reshapes, values
# ---------------------------------------------------------------------------------------------
def test_add_mult_align_layouts():
    a, b = nm.Input((2, 3, 4), "b,f,x", name="a"), nm.Input((4, 2, 3), "x,b,f", name="b")
    xa, xb = rand(2, 3, 4), rand(4, 2, 3)
    xb_as_a = xb.transpose(1, 2, 0)
    np.testing.assert_allclose(nm.Add(a, b)(xa, xb), xa + xb_as_a, atol=ATOL)
    mult = nm.MultMerge(a, b)
    np.testing.assert_allclose(mult(xa, xb), xa * xb_as_a, atol=ATOL)
    gradient_check(mult, {a: xa, b: xb})
    with pytest.raises(Exception, match="size"):
        nm.Add(a, nm.Input((2, 3, 5), "b,f,x"))


def test_split_pad_reshape_equal_numpy():
    inp = nm.Input((3, 2, 7, 4), "r,b,f,x")
    x = rand(3, 2, 7, 4)
    pieces = nm.split(inp, "f", index=[2, 5])
    for node, sl in zip(pieces, [slice(0, 2), slice(2, 5), slice(5, 7)]):
        np.testing.assert_array_equal(node(x), x[:, :, sl])
    first, rest = nm.split(inp, "r", index=1, strip_singleton_dims=True)
    np.testing.assert_array_equal(first(x), x[0])
    assert first.shape.tags == ("b", "f", "x") and rest.shape["r"] == 2
    halves = nm.split(inp, "x", n_out=2)
    np.testing.assert_array_equal(halves[1](x), x[..., 2:])
    pad = nm.Pad(inp, 2, value=1.5)
    np.testing.assert_array_equal(pad(x), np.pad(x, [(0, 0)] * 3 + [(2, 2)], constant_values=1.5))
    reshaped = nm.Reshape(inp, (6, None, 2), "b,f,x")
    np.testing.assert_array_equal(reshaped(x), x.reshape(6, -1, 2))
    assert reshaped.shape.shape == (6, 14, 2)
    gradient_check(reshaped, {inp: x})
    gradient_check(pad, {inp: x})
    gradient_check(pieces[1], {inp: x})


@pytest.mark.parametrize("name,args,ref", [
    ("exp", (), np.exp), ("square", (), np.square), ("clip", (-0.5, 0.5), lambda v: np.clip(v, -0.5, 0.5)),
    ("scale", (3.0,), lambda v: 3 * v), ("softplus", (), lambda v: np.log1p(np.exp(v))),
    ("tanh", (), np.tanh), ("pow", (2.0,), lambda v: np.abs(v) ** 2),
])
def test_apply_func_equals_numpy(name, args, ref):
    inp = nm.Input((2, 5), "b,f")
    node = nm.ApplyFunc(inp, name, args)
    x = rand(2, 5) if name != "pow" else np.abs(rand(2, 5)) + 0.5
    np.testing.assert_allclose(node(x), ref(x.astype("float64")), atol=ATOL, rtol=1e-5)
    if name != "clip":
        gradient_check(node, {inp: x})


def test_apply_func_refuses_callables():
    with pytest.raises(Exception, match="callables"):
        nm.ApplyFunc(nm.Input((2, 5), "b,f"), np.exp)


def test_value_node_and_initial_state():
    inp = nm.Input((3, 2), "b,f")
    value = nm.ValueNode((2, 2), "b,f", apply_train=True, value=np.array([[1.0, 2.0], [3.0, 4.0]]))
    np.testing.assert_array_equal(value(), [[1, 2], [3, 4]])
    assert value.params["value"].trainable and value.input_nodes == []
    state = nm.InitialState_like(inp, 4, init_kwargs={"mode": "fix-uni", "scale": 0.1})
    v = state.params["value"].get_value()
    assert np.abs(v).max() <= 0.1 and np.array_equal(state(rand(3, 2)), np.tile(v, (3, 1)))
    total = nm.Add(nm.ApplyFunc(state, "square"), nm.Perceptron(inp, 4, "lin"))
    gradient_check(total, {inp: rand(3, 2)})


# ---------------------------------------------------------------------------------------------
# BN and dropout as options of the neural layers
# ---------------------------------------------------------------------------------------------
def test_conv_batch_normalisation_option_equals_reference():
    inp = nm.Input((None, 2, 6, 5), "b,f,x,y")
    conv = nm.Conv(inp, 3, (3, 2), activation_func="tanh", batch_normalisation="train")
    gamma = np.array([1.5, 0.5, 2.0], "float32")
    conv.params["gamma"].set_value(gamma)
    x = rand(2, 2, 6, 5)
    lin = ref_conv(inp.shape.to_canonical(x), conv.params["w"].get_value(), np.zeros(3), "valid", (1, 1))
    flat = lin.reshape(-1, 3)
    bias = conv.params["b"].get_value()
    want = np.tanh((lin - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5) * gamma + bias)
    np.testing.assert_allclose(conv.shape.to_canonical(conv(x, training=True)), want, atol=ATOL)
    np.testing.assert_allclose(conv.params["mean"].get_value(), flat.mean(0), atol=1e-5)
    infer = np.tanh((lin - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5) * gamma + bias)
    np.testing.assert_allclose(conv.shape.to_canonical(conv(x)), infer, atol=ATOL)  # one batch seen: same stats
    gradient_check(conv, {inp: x}, training=True)
    assert model_manager.current.batch_normalisation_active


def test_perceptron_dropout_mask_per_example():
    inp = nm.Input((32, 4), "b,f")
    dot = nm.Perceptron(inp, 40, "lin", dropout_rate=0.5, b=np.ones(40, "float32"))
    out = dot(np.zeros((32, 4), "float32"), training=True)
    assert set(np.unique(out)) == {0.0, 2.0}
    assert len({tuple(row) for row in out == 0}) > 30  # ELEKTRONN2 shared one mask over the batch
    assert np.array_equal(dot(np.zeros((32, 4), "float32")), np.ones((32, 40), "float32"))
