"""ELEKTRONN2 ``.mdl`` files converted to ekn: each converted net against a numpy/scipy reference
that computes the ELEKTRONN2 way from the same weights (Theano's true convolution, the up-convolution
of its no-cuDNN path as unpooling plus a true convolution, ``(gamma/std)·lin + b - gamma·mean/std``
batch normalisation). The files are written by pickling look-alike classes registered under
ELEKTRONN2's module paths (:mod:`elektronn2_lookalike`), protocol 2.
"""

import logging
import os

import numpy as np
import pytest
from scipy.signal import convolve

import ekn_core.neuromancer as nm
from ekn_core.legacy_mdl import LegacyModelError
from ekn_core.persistence import read_model_file
from elektronn2_lookalike import E2Graph

RNG = np.random.default_rng(7)


pytestmark = pytest.mark.usefixtures("forget_new_models")


def rand(*shape):
    return RNG.normal(size=shape).astype("float32")


# ---------------------------------------------------------------------------------------------
# ELEKTRONN2 computations in numpy/scipy (references)
# ---------------------------------------------------------------------------------------------
def e2_conv(x, w, mode="valid"):
    """Theano conv with ``x`` (b, n_in, *s), ``w`` (n_f, n_in, *k): a true convolution per channel pair
    (``'same'`` is ELEKTRONN2's full convolution cropped by k//2)."""
    full = "full" if mode == "same" else mode
    out = np.stack([np.stack([sum(convolve(xb[c], wo[c], mode=full) for c in range(x.shape[1])) for wo in w])
                    for xb in x])
    if mode == "same":
        crop = tuple(slice(None) for _ in range(2)) + tuple(slice(k // 2, -(k // 2) or None) for k in w.shape[2:])
        out = out[crop]
    return out


def e2_conv_theano(x, w):
    """Theano's conv3d2d with ``x`` (b, z, n_in, x, y) and ``w`` (n_f, kz, n_in, kx, ky)."""
    return np.stack([np.stack([sum(convolve(xb[:, c], wo[:, c], mode="valid") for c in range(x.shape[2]))
                               for wo in w], axis=1) for xb in x])


def maxpool(y, pool, axes):
    for axis, p in zip(axes, pool):
        shape = list(y.shape)
        shape[axis:axis + 1] = [shape[axis] // p, p]
        y = y.reshape(shape).max(axis=axis + 1)
    return y


def unpool(x, pool, axes):
    """ELEKTRONN2's ``unpooling``: size s·p + p - 1, values at p-1, 2p-1, ..."""
    shape = list(x.shape)
    index = [slice(None)] * x.ndim
    for axis, p in zip(axes, pool):
        shape[axis] = x.shape[axis] * p + p - 1
        index[axis] = slice(p - 1, None, p)
    out = np.zeros(shape, x.dtype)
    out[tuple(index)] = x
    return out


def feature(v, f_axis, ndim):
    shape = [1] * ndim
    shape[f_axis] = -1
    return np.reshape(v, shape)


def e2_post(lin, b, f_axis=1, act="relu", bn=None):
    """BN (stored statistics), bias and activation of an ELEKTRONN2 layer on the linear output."""
    nd = lin.ndim
    gamma, mean, std = (feature(v, f_axis, nd) for v in bn) if bn else (1.0, 0.0, 1.0)
    bias = feature(b[:, 0] if act == "prelu" else b, f_axis, nd)
    y = (gamma / std) * lin + bias - gamma * mean / std
    if act == "prelu":
        alpha = feature(b[:, 1], f_axis, nd)
        return (y + abs(y)) / 2 + alpha * (y - abs(y)) / 2
    return {"relu": lambda v: 0.5 * (v + abs(v)), "tanh": np.tanh, "lin": lambda v: v}[act](y)


def softmax(y, axis=1):
    e = np.exp(y - y.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def convert(graph, tmp_path, name="old.mdl", **designated):
    path = graph.save(str(tmp_path / name), **designated)
    return nm.modelload(path)


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode, filt, pool", [("valid", (3, 2), (2, 2)), ("full", (2, 3), (1, 1)),
                                              ("same", (3, 5), (1, 1))])
def test_conv2d_is_theanos_true_convolution(tmp_path, mode, filt, pool):
    w, b = rand(3, 2, *filt), rand(3)
    with E2Graph() as g:
        inp = g.node("Input", (None, 2, 12, 11), "b,f,x,y", name="raw")
        out = g.node("Conv", inp, 3, filt, pool, conv_mode=mode, activation_func="tanh", params={"w": w, "b": b})
        model = convert(g, tmp_path, input_node=inp, prediction_node=out)
    x = rand(2, 2, 12, 11)
    ref = e2_post(maxpool(e2_conv(x, w, mode), pool, (2, 3)), b, act="tanh")
    np.testing.assert_allclose(model.predict(x), ref, rtol=1e-4, atol=1e-4)


def test_conv3d_in_cudnn_order_with_pooling_and_batch_normalisation(tmp_path):
    w, b = rand(4, 2, 2, 3, 3), rand(4)
    bn = (rand(4) + 2, rand(4), abs(rand(4)) + 0.5)
    with E2Graph() as g:
        inp = g.node("Input", (None, 2, 5, 12, 10), "b,f,z,x,y", name="raw")
        out = g.node("Conv", inp, 4, (2, 3, 3), (2, 2, 2), batch_normalisation="train", dropout_rate=0.3,
                     params={"w": w, "b": b, "gamma": bn[0], "mean": bn[1], "std": bn[2],
                             "dropout_rate": np.array([0.3], "float32")})
        model = convert(g, tmp_path, input_node=inp, prediction_node=out)
    x = rand(1, 2, 5, 12, 10)
    ref = e2_post(maxpool(e2_conv(x, w), (2, 2, 2), (2, 3, 4)), b, bn=bn)
    np.testing.assert_allclose(model.predict(x), ref, rtol=1e-4, atol=1e-4)
    assert float(model.nodes["conv"].params["dropout_rate"].get_value()) == pytest.approx(0.3)


def test_conv3d_in_theano_order_with_prelu(tmp_path):
    w, b = rand(3, 2, 4, 3, 2), np.stack([rand(3), rand(3)], axis=1)  # (n_f, kz, n_in, kx, ky)
    with E2Graph() as g:
        inp = g.node("Input", (None, 6, 4, 9, 8), "b,z,f,x,y", name="raw")
        out = g.node("Conv", inp, 3, (2, 3, 2), (1, 1, 1), activation_func="prelu", params={"w": w, "b": b})
        model = convert(g, tmp_path, input_node=inp, prediction_node=out)
    x = rand(2, 6, 4, 9, 8)
    ref = e2_post(e2_conv_theano(x, w), b, f_axis=2, act="prelu")
    np.testing.assert_allclose(model.predict(x), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("flatten", [False, True])
def test_perceptron(tmp_path, flatten):
    n_in = 3 * 4 * 5 if flatten else 3
    w, b = rand(n_in, 6), rand(6)
    with E2Graph() as g:
        inp = g.node("Input", (None, 3, 4, 5), "b,f,x,y", name="raw")
        out = g.node("Perceptron", inp, 6, activation_func="lin", flatten=flatten, params={"w": w, "b": b})
        model = convert(g, tmp_path, input_node=inp, prediction_node=out)
    x = rand(2, 3, 4, 5)
    ref = x.reshape(2, -1) @ w + b if flatten else np.moveaxis(np.tensordot(x, w, axes=[1, 0]), 3, 1) + b[:, None, None]
    np.testing.assert_allclose(model.predict(x), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("tags, pool", [("b,f,x,y", (2, 3)), ("b,f,z,x,y", (1, 2, 2)), ("b,z,f,x,y", (2, 2, 1))])
def test_upconv_is_unpooling_and_true_convolution(tmp_path, tags, pool):
    theano = tags == "b,z,f,x,y"
    shape = (None, 3, 2, 4, 3) if theano else (None, 2, 3, 4) if len(pool) == 2 else (None, 2, 3, 4, 3)
    n_in = 2
    w = rand(5, pool[0], n_in, *pool[1:]) if theano else rand(5, n_in, *pool)
    b = rand(5)
    with E2Graph() as g:
        inp = g.node("Input", shape, tags, name="raw")
        out = g.node("UpConv", inp, 5, pool, activation_func="lin", params={"w": w, "b": b})
        model = convert(g, tmp_path, input_node=inp, prediction_node=out)
    x = rand(2, *shape[1:])
    if theano:
        ref = e2_post(e2_conv_theano(unpool(x, pool, (1, 3, 4)), w), b, f_axis=2, act="lin")
    else:
        ref = e2_post(e2_conv(unpool(x, pool, range(2, x.ndim)), w), b, act="lin")
    np.testing.assert_allclose(model.predict(x), ref, rtol=1e-4, atol=1e-4)


def test_gru_and_lstm_steps_keep_elektronn2s_layout(tmp_path):
    n_in, n = 3, 4
    wg, bg, wl, bl = rand(n + n_in, 3 * n), rand(3 * n), rand(n + n_in, 4 * n), rand(4 * n)
    with E2Graph() as g:
        x_node = g.node("Input", (2, n_in), "b,f", name="x")
        h_node = g.node("Input", (2, n), "b,f", name="h")
        hc_node = g.node("Input", (2, 2 * n), "b,f", name="hc")
        g.node("GRU", x_node, h_node, n, params={"w": wg, "b": bg})
        g.node("LSTM", x_node, hc_node, n, params={"w": wl, "b": bl})
        model = convert(g, tmp_path, input_node=x_node)
    x, h, hc = rand(2, n_in), rand(2, n), rand(2, 2 * n)
    feed = {"x": x, "h": h, "hc": hc}

    def run(name):
        node = model.nodes[name]
        return node(*[feed[i.name] for i in node.input_nodes])

    zr = sigmoid(np.concatenate([h, x], 1) @ wg[:, :2 * n] + bg[:2 * n])
    z, r = zr[:, :n], zr[:, n:]
    cand = np.tanh(np.concatenate([r * h, x], 1) @ wg[:, 2 * n:] + bg[2 * n:])
    np.testing.assert_allclose(run("gru"), (1 - z) * h + z * cand, rtol=1e-4, atol=1e-5)
    lin = np.concatenate([hc[:, :n], x], 1) @ wl + bl
    f, i, o = (sigmoid(lin[:, k * n:(k + 1) * n]) for k in range(3))
    c = f * hc[:, n:] + i * np.tanh(lin[:, 3 * n:])
    np.testing.assert_allclose(run("lstm"), np.concatenate([o * np.tanh(c), c], 1), rtol=1e-4, atol=1e-5)


def test_split_pieces_keep_the_fromtensor_names(tmp_path):
    w1, w2 = rand(2, 2, 1, 1), rand(2, 3, 1, 1)
    with E2Graph() as g:
        inp = g.node("Input", (None, 5, 3, 3), "b,f,x,y", name="raw")
        a, c = g.split(inp, "f", index=2)
        ca = g.node("Conv", a, 2, (1, 1), activation_func="lin", params={"w": w1, "b": np.zeros(2, "float32")})
        cb = g.node("Conv", c, 2, (1, 1), activation_func="lin", params={"w": w2, "b": np.zeros(2, "float32")})
        out = g.node("Concat", [ca, cb], axis="f", print_repr=False)
        model = convert(g, tmp_path, input_node=inp, prediction_node=out)
    assert [n for n in model.nodes if n.startswith("split")] == ["split1", "split2"]
    x = rand(1, 5, 3, 3)
    ref = np.concatenate([e2_conv(x[:, :2], w1), e2_conv(x[:, 2:], w2)], axis=1)
    np.testing.assert_allclose(model.predict(x), ref, rtol=1e-4, atol=1e-4)


def test_positional_arguments_bind_by_elektronn2s_parameter_names(tmp_path):
    """ekn's MultinoulliNLL has ``ignore_label`` where ELEKTRONN2's had ``mask_class_labeled``."""
    with E2Graph() as g:
        inp = g.node("Input", (None, 2, 3, 3), "b,f,x,y", name="raw")
        probs = g.node("Softmax", inp)
        target = g.node("Input", (None, 1, 3, 3), "b,f,x,y", None, None, "int16", name="target")
        mask = g.node("Input", (None, 2), "b,f", name="mask")
        g.node("MultinoulliNLL", probs, target, True, None, None, mask)
        model = convert(g, tmp_path, input_node=inp)
    config = model.descriptors["nll"]["config"]
    assert config["mask_class_labeled"] == {"node": "mask"} and config["ignore_label"] is None
    assert config["target_is_sparse"] is True


# ---------------------------------------------------------------------------------------------
# A whole net, entry points
# ---------------------------------------------------------------------------------------------
def neuro3d_lite_like(g):
    """Input → Conv(1,4,4)/pool(1,2,2) → Conv(3,3,3)/pool(1,2,2) → 1×1×1 Conv → Softmax, with the
    sparse target of ``Input_like`` (strides given positionally), NLL, errors and the total loss."""
    weights = {"conv": {"w": rand(4, 1, 1, 4, 4), "b": rand(4)}, "conv1": {"w": rand(6, 4, 3, 3, 3), "b": rand(6)},
               "conv2": {"w": rand(2, 6, 1, 1, 1), "b": rand(2)}}
    inp = g.node("Input", [None, 1, 9, 31, 31], "b,f,z,x,y", name="raw")
    out = g.node("Conv", inp, 4, (1, 4, 4), (1, 2, 2), params=weights["conv"])
    out = g.node("Conv", out, 6, (3, 3, 3), (1, 2, 2), params=weights["conv1"])
    out = g.node("Conv", out, 2, (1, 1, 1), activation_func="lin", params=weights["conv2"])
    probs = g.node("Softmax", out)
    target = g.node("Input", [None, 1, 7, 6, 6], ["b", "f", "z", "x", "y"], np.array([1, 4, 4]),
                    fov=np.array([3, 15, 15]), dtype="int16", name="target")
    nll = g.node("MultinoulliNLL", probs, target, target_is_sparse=True, class_weights=[0.5, 2.0])
    cls = g.node("Classification", probs, name="cls for errors", print_repr=False)
    errors = g.node("_Errors", cls, target, target_is_sparse=True, name="errors", print_repr=True)
    loss = g.node("AggregateLoss", [nll], params={"mixing_weights": np.ones(1, "float32")})
    roles = dict(input_node=inp, target_node=target, loss_node=loss, prediction_node=probs, error_node=errors,
                 prediction_ext=[loss, errors, probs], debug_outputs=[])
    return weights, roles


def neuro3d_reference(x, weights):
    y = x
    for name, pool, act in (("conv", (1, 2, 2), "relu"), ("conv1", (1, 2, 2), "relu"), ("conv2", (1, 1, 1), "lin")):
        y = e2_post(maxpool(e2_conv(y, weights[name]["w"]), pool, (2, 3, 4)), weights[name]["b"], act=act)
    return softmax(y)


def test_neuro3d_lite_like_net_and_its_training_graph(tmp_path, caplog):
    with E2Graph() as g:
        weights, roles = neuro3d_lite_like(g)
        path = g.save(str(tmp_path / "neuro.mdl"), compress=True, **roles)
    with caplog.at_level(logging.INFO, logger="ekn.persistence"):
        model = nm.modelload(path)
    assert "ELEKTRONN2 model file: converted it" in caplog.text
    x = rand(1, 1, 9, 31, 31)
    np.testing.assert_allclose(model.predict(x), neuro3d_reference(x, weights), rtol=1e-4, atol=1e-5)
    assert (model.target_node.name, model.loss_node.name, model.error_node.name) == ("target", "total_loss", "errors")
    assert model.nodes["target"].shape.strides == (1, 4, 4)
    labels = RNG.integers(0, 2, size=(1, 1, 7, 6, 6)).astype("int16")
    error = model.nodes["errors"](x, labels)
    ref = np.mean(neuro3d_reference(x, weights).argmax(1) != labels[:, 0])
    assert float(np.ravel(error)[0]) == pytest.approx(ref)
    np.testing.assert_allclose(model.nodes["nll"].params["class_weights"].get_value(), [0.5, 2.0])


def test_convert_command_writes_an_ekn_model_file(tmp_path, capsys):
    from ekn_core.cli import main

    with E2Graph() as g:
        weights, roles = neuro3d_lite_like(g)
        old = g.save(str(tmp_path / "neuro.mdl"), **roles)
    new = str(tmp_path / "neuro.h5")
    assert main(["convert", old, new]) == 0
    assert "converted" in capsys.readouterr().out
    assert read_model_file(new).required_plugins  # an HDF5 ekn model file
    model = nm.modelload(new)
    x = rand(1, 1, 9, 31, 31)
    np.testing.assert_allclose(model.predict(x), neuro3d_reference(x, weights), rtol=1e-4, atol=1e-5)
    assert main(["convert", old, new]) == 2  # NEW exists
    assert "--overwrite" in capsys.readouterr().err
    assert main(["convert", new, str(tmp_path / "again.h5")]) == 2  # not a pickle
    assert main(["convert", old, new, "--overwrite"]) == 0


def test_load_options_apply_to_converted_files(tmp_path):
    with E2Graph() as g:
        weights, roles = neuro3d_lite_like(g)
        path = g.save(str(tmp_path / "neuro.mdl"), **roles)
    model = nm.modelload(path, imposed_batch_size=1, make_weights_constant=True)
    assert model.input_node.shape["b"] == 1
    assert all(p.constant for p in model.nodes["conv"].params.values())


# ---------------------------------------------------------------------------------------------
# Refused pieces
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls_name, kwargs, message", [
    ("Conv", {"activation_func": "maxout 2"}, "maxout"),
    ("Conv", {"batch_normalisation": "fadeout"}, "fadeout"),
    ("Conv", {"gradnet_mode": True}, "gradnet_mode"),
    ("FaithlessMerge", {}, "no ekn counterpart"),
    ("ScanN", {}, "Scan loops"),
])
def test_unsupported_nodes_are_named(tmp_path, cls_name, kwargs, message):
    with E2Graph() as g:
        inp = g.node("Input", (None, 2, 5, 5), "b,f,x,y", name="raw")
        args = (4, (3, 3)) if cls_name == "Conv" else ()
        g.node(cls_name, inp, *args, name="bad", **kwargs)
        path = g.save(str(tmp_path / "bad.mdl"), input_node=inp)
    with pytest.raises(LegacyModelError, match=message) as info:
        nm.modelload(path)
    assert "'bad'" in str(info.value) and cls_name in str(info.value)


def test_unsaveable_arguments_and_misfit_weights_are_named(tmp_path):
    with E2Graph() as g:
        inp = g.node("Input", (None, 2, 5, 5), "b,f,x,y", name="raw")
        g.node("Perceptron", inp, 3, name="dual", w="TensorVariable not found")
        path = g.save(str(tmp_path / "shared.mdl"), input_node=inp)
    with pytest.raises(LegacyModelError, match="'dual'.*cannot be converted"):
        nm.modelload(path)
    with E2Graph() as g:
        inp = g.node("Input", (None, 2, 5, 5), "b,f,x,y", name="raw")
        g.node("Conv", inp, 3, (3, 3), name="c", params={"w": rand(3, 2, 2, 2), "b": rand(3)})
        path = g.save(str(tmp_path / "misfit.mdl"), input_node=inp)
    with pytest.raises(LegacyModelError, match="'c'.*stored parameter 'w' of shape \\(3, 2, 2, 2\\)"):
        nm.modelload(path)


def test_lookalike_modules_are_gone_after_writing(tmp_path):
    import sys

    with E2Graph() as g:
        g.node("Input", (None, 1, 4, 4), "b,f,x,y")
        g.save(str(tmp_path / "x.mdl"))
    assert not any(m == "elektronn2" or m.startswith("elektronn2.") for m in sys.modules)
    assert os.path.getsize(tmp_path / "x.mdl") > 0
