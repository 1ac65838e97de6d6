"""Core layers against independent numpy/scipy references, MFP against the stride loop, conformance."""

import numpy as np
import pytest
from scipy import signal

import ekn_core.neuromancer as nm
from ekn_core.errors import ConfigError, ShapeError
from ekn_core.node import model_manager
from ekn_core.testing import check_node, measure_field

RNG = np.random.default_rng(42)


@pytest.fixture(autouse=True)
def _model():
    before = set(model_manager.models)
    model_manager.newmodel()
    yield
    for name in set(model_manager.models) - before:
        model_manager.remove(name)


def _maxpool(a, p):
    """Non-overlapping max pooling of the trailing len(p) axes (numpy reference)."""
    shape = []
    for s, k in zip(a.shape[-len(p):], p):
        shape += [s // k, k]
    b = a.reshape(a.shape[:-len(p)] + tuple(shape))
    return b.max(axis=tuple(range(a.ndim - len(p) + 1, b.ndim, 2)))


def _conv_ref(x, w, b, mode="valid", dilation=None):
    """x (f_in, *sp), w (*k, f_in, f_out) → (f_out, *sp') by scipy correlation in float64."""
    if dilation is not None:
        k = np.zeros([(s - 1) * d + 1 for s, d in zip(w.shape[:-2], dilation)] + list(w.shape[-2:]))
        k[tuple(slice(None, None, d) for d in dilation)] = w
        w = k
    out = []
    for fo in range(w.shape[-1]):
        acc = sum(signal.correlate(x[fi].astype("float64"), w[..., fi, fo].astype("float64"), mode=mode)
                  for fi in range(w.shape[-2]))
        out.append(acc + b[fo])
    return np.stack(out)


def test_conv3d_valid_with_max_pool_matches_scipy():
    inp = nm.Input((None, 2, 5, 8, 7), "b,f,z,y,x")
    conv = nm.Conv(inp, 3, (2, 3, 2), (2, 2, 2))
    x = RNG.normal(size=(2, 2, 5, 8, 7)).astype("float32")
    w, b = conv.params["w"].get_value(), conv.params["b"].get_value()
    ref = np.stack([np.maximum(_maxpool(_conv_ref(xi, w, b), (2, 2, 2)), 0) for xi in x])
    assert conv.shape.shape == (None, 3, 2, 3, 3)
    np.testing.assert_allclose(conv(x), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode,dilation", [("same", None), ("full", None), ("valid", (2, 1))])
def test_conv2d_modes_and_dilation_match_scipy(mode, dilation):
    inp = nm.Input((None, 2, 9, 8), "b,f,x,y")
    conv = nm.Conv(inp, 2, (3, 3), conv_mode=mode, activation_func="lin", dilation=dilation)
    x = RNG.normal(size=(1, 2, 9, 8)).astype("float32")
    ref = _conv_ref(x[0], conv.params["w"].get_value(), conv.params["b"].get_value(), mode, dilation)
    out = conv(x)[0]
    assert out.shape == ref.shape == conv.shape.shape[1:]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_pool_modes_and_stride_match_brute_force():
    inp = nm.Input((None, 2, 9, 7), "b,f,x,y")
    x = RNG.normal(size=(1, 2, 9, 7)).astype("float32")
    for mode, reduce in [("max", np.max), ("average", np.mean), ("sum", np.sum)]:
        pool = nm.Pool(inp, (3, 3), stride=(2, 2), mode=mode)
        ref = np.array([[[reduce(x[0, f, i * 2:i * 2 + 3, j * 2:j * 2 + 3]) for j in range(3)] for i in range(4)]
                        for f in range(2)])
        assert pool.shape.spatial_shape == (4, 3) and pool.shape.strides == (2, 2) and pool.shape.fov == (3, 3)
        np.testing.assert_allclose(pool(x)[0], ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ShapeError, match="does not fit pooling window"):
        nm.Pool(inp, (2, 2))


def test_upconv_identity_weights_repeat_pixels():
    inp = nm.Input((None, 2, 3, 4), "b,f,x,y")
    w = np.zeros((2, 3, 2, 2), "float32")
    w[..., 0, 0] = w[..., 1, 1] = 1.0
    up = nm.UpConv(inp, 2, (2, 3), activation_func="lin", w=w, b=np.zeros(2, "float32"))
    x = RNG.normal(size=(2, 2, 3, 4)).astype("float32")
    np.testing.assert_allclose(up(x), np.repeat(np.repeat(x, 2, axis=2), 3, axis=3), rtol=1e-6)
    assert up.shape.spatial_shape == (6, 12) and up.shape.fov == (-1, -1)
    default = nm.UpConv(inp, 2, 2, activation_func="lin")
    np.testing.assert_allclose(default(x), np.repeat(np.repeat(x, 2, axis=2), 2, axis=3), atol=0.5)


def test_mfp_dense_output_equals_stride_loop():
    model = model_manager.current
    inp = nm.Input((None, 1, 12, 12), "b,f,x,y")
    out = nm.Conv(nm.Conv(inp, 3, (3, 3), (2, 2)), 4, (2, 2), (2, 2))
    pred = nm.Conv(out, 2, (1, 1), activation_func="lin")
    model.designate_nodes(input_node=inp, prediction_node=pred)
    assert pred.shape.strides == (4, 4) and pred.shape.spatial_shape == (2, 2)
    mfp = nm.rebuild_model(model, override_mfp_to_active=True, imposed_patch_size=(15, 15))
    assert mfp.input_node.shape.shape == (1, 1, 15, 15)
    assert [n.name for n in mfp.prediction_node.parents] == ["to_dense"]
    x = RNG.normal(size=(1, 1, 15, 15)).astype("float32")
    dense = mfp.predict(x)
    assert dense.shape == (1, 2, 8, 8)
    for ox in range(4):
        for oy in range(4):
            np.testing.assert_allclose(dense[:, :, ox::4, oy::4], pred(x[:, :, ox:ox + 12, oy:oy + 12]),
                                       rtol=1e-5, atol=1e-5)


def test_perceptron_matches_numpy():
    inp = nm.Input((None, 3, 2, 4), "b,f,y,x")
    flat = nm.Perceptron(inp, 5, activation_func="tanh", flatten=True)
    per_pos = nm.Perceptron(inp, 6, activation_func="lin")
    x = RNG.normal(size=(2, 3, 2, 4)).astype("float32")
    canonical = x.transpose(0, 2, 3, 1).reshape(2, -1)  # flatten order is channels-last
    np.testing.assert_allclose(flat(x), np.tanh(canonical @ flat.params["w"].get_value()
                                                + flat.params["b"].get_value()), rtol=1e-5, atol=1e-6)
    ref = np.einsum("bfyx,fg->bgyx", x, per_pos.params["w"].get_value()) + per_pos.params["b"].get_value()[:, None,
                                                                                                            None]
    np.testing.assert_allclose(per_pos(x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,ref", [
    ("relu", lambda v: np.maximum(v, 0)), ("tanh", np.tanh), ("sig", lambda v: 1 / (1 + np.exp(-v))),
    ("abs", np.abs), ("soft+", lambda v: np.log1p(np.exp(v))), ("lin", lambda v: v),
    ("elu", lambda v: np.where(v > 0, v, np.exp(v) - 1)),
    ("selu", lambda v: 1.0507009873554805 * np.where(v > 0, v, 1.6732632423543772 * (np.exp(v) - 1))),
    ("concentration", lambda v: 7 * np.log1p(np.exp(v)) + 2), ("radius", lambda v: 3 + 15 * np.exp(0.15 * v)),
])
def test_activations_match_numpy(name, ref):
    inp = nm.Input((None, 3), "b,f")
    eye = np.eye(3, dtype="float32")
    node = nm.Perceptron(inp, 3, activation_func=name, w=eye, b=np.zeros(3, "float32"))
    x = RNG.normal(size=(4, 3)).astype("float32")
    np.testing.assert_allclose(node(x), ref(x.astype("float64")), rtol=1e-5, atol=1e-6)


def test_prelu_and_maxout():
    inp = nm.Input((None, 4), "b,f")
    b = np.stack([np.zeros(4), [0.1, 0.2, 0.3, 0.4]], axis=1).astype("float32")
    prelu = nm.Perceptron(inp, 4, activation_func="prelu", w=np.eye(4, dtype="float32"), b=b)
    x = RNG.normal(size=(5, 4)).astype("float32")
    np.testing.assert_allclose(prelu(x), np.where(x > 0, x, x * b[:, 1]), rtol=1e-6)
    maxout = nm.Perceptron(inp, 2, activation_func="maxout 2", w=np.eye(4, dtype="float32"),
                           b=np.zeros(4, "float32"))
    assert maxout.shape["f"] == 2
    np.testing.assert_allclose(maxout(x), x.reshape(5, 2, 2).max(axis=2), rtol=1e-6)
    with pytest.raises(ConfigError, match="unknown activation_func"):
        nm.Perceptron(inp, 2, activation_func="swish")


def test_concat_and_crop_match_numpy():
    a = nm.Input((None, 2, 6, 5), "b,f,x,y", name="a")
    b = nm.Input((None, 3, 4, 3), "b,f,x,y", name="b")
    cropped = nm.Crop(a, reference=b)
    cat = nm.Concat([cropped, b])
    xa, xb = RNG.normal(size=(2, 2, 6, 5)).astype("float32"), RNG.normal(size=(2, 3, 4, 3)).astype("float32")
    np.testing.assert_array_equal(cat(xa, xb), np.concatenate([xa[:, :, 1:5, 1:4], xb], axis=1))
    with pytest.raises(ShapeError, match="cannot be aligned"):
        nm.Crop(a, reference=nm.Input((None, 1, 3, 3), "b,f,x,y"))
    with pytest.raises(ShapeError, match="axis 'x' of 'a'"):
        nm.Concat([b, a])


@pytest.mark.parametrize("node_type,args,kwargs,shape,tags", [
    ("conv", (3, (2, 3, 3), (1, 2, 2)), {}, (1, 2, 5, 10, 10), "b,f,z,y,x"),
    ("conv", (2, (3, 3)), {"conv_mode": "same", "batch_normalisation": "train"}, (1, 7, 7, 2), "b,x,y,f"),
    ("pool", ((2, 3),), {"stride": (1, 2)}, (1, 2, 7, 9), "b,f,x,y"),
    ("perceptron", (4,), {"activation_func": "prelu"}, (1, 3, 5), "b,f,x"),
    ("upconv", (3, (2, 2)), {}, (1, 2, 3, 3), "b,f,x,y"),
    ("crop", ((1, 2),), {}, (1, 2, 5, 6), "b,f,x,y"),
    # layers that move the output grid: the measured field must start where field_start says
    ("conv", (2, (5, 3)), {"conv_mode": "same", "dilation": (1, 2), "pool_shape": (2, 1)}, (1, 2, 12, 11),
     "b,f,x,y"),
    ("conv", (2, (3, 5)), {"conv_mode": "full", "activation_func": "lin"}, (1, 1, 6, 7), "b,f,y,x"),
    ("pad", ((2, 1),), {}, (1, 2, 5, 6), "b,f,x,y"),
    ("lrn", ((3, 5),), {"alpha": 0.5}, (1, 2, 7, 8), "b,f,x,y"),
    ("split_node", ("x", 2, 5), {}, (1, 2, 7, 6), "b,f,x,y"),
])
def test_conformance(node_type, args, kwargs, shape, tags):
    report = check_node(node_type, *args, input_shape=shape, tags=tags, **kwargs)
    if min(report["fov"]) > 0:
        assert report["measured_fov"] == report["fov"]


def test_measured_fov_of_a_stack_with_pooling():
    inp = nm.Input((None, 1, 9), "b,f,x")
    conv = nm.Conv(nm.Conv(inp, 2, 3), 2, 2, (2,))
    x = RNG.random((1, 1, 9)).astype("float32")
    assert conv.shape.fov == (5,) and measure_field(conv, x).size == (5,)
