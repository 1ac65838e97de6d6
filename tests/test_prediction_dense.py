"""predict_dense on numpy reference nets against brute-force per-voxel sliding windows."""

import numpy as np
import pytest
from scipy.signal.windows import gaussian

from ekn_core.errors import ShapeError
from ekn_core.prediction import predict_dense
from prediction_testnets import NEURO_LIKE, NumpyNet, SamePadConv, UNetLite, random_layers


def naive(net, raw):
    """Every output voxel from its own input window: ``net(window at c - offset)[..., first output]``."""
    patch = net.input_nodes[0].shape.spatial_shape
    if raw.ndim == len(patch):
        raw = raw[None]
    out_shape = tuple(s - f + 1 for s, f in zip(raw.shape[1:], net.shape.fov))
    # windows of the last voxels reach past the image; only their first output is used
    raw = np.pad(raw, [(0, 0)] + [(0, p) for p in patch])
    windows = [raw[(slice(None), *(slice(c, c + p) for c, p in zip(idx, patch)))]
               for idx in np.ndindex(*out_shape)]
    batch = net.input_nodes[0].shape["b"]
    outs = [net(np.stack(windows[i:i + (batch or len(windows))]))
            for i in range(0, len(windows), batch or len(windows))]
    first = np.concatenate(outs)[(slice(None), slice(None), *(0,) * len(patch))]
    return first.T.reshape(-1, *out_shape)


@pytest.mark.parametrize("seed, spec, patch, raw_shape", [
    (0, NEURO_LIKE, (5, 19, 19), (8, 22, 25)),
    (1, [("conv", 3, (3, 3, 3)), ("pool", (2, 2, 2)), ("conv", 2, (2, 2, 2))], (8, 8, 8), (13, 11, 12)),
    (2, [("conv", 2, (2, 3, 3)), ("pool", (1, 3, 2)), ("conv", 3, (1, 2, 3)), ("pool", (2, 1, 2)),
         ("conv", 2, (1, 1, 1))], (7, 11, 14), (9, 14, 17)),
])
def test_stride_loop_and_mfp_equal_naive(seed, spec, patch, raw_shape):
    rng = np.random.default_rng(seed)
    layers = random_layers(rng, spec)
    strided = NumpyNet(layers, patch)
    mfp = NumpyNet(layers, patch, dense=True)
    assert strided.shape.strides != (1, 1, 1) and mfp.shape.strides == (1, 1, 1)
    raw = rng.random(raw_shape).astype(np.float32)
    expected = naive(strided, raw)
    loop = predict_dense(strided, raw)
    one_pass = predict_dense(mfp, raw)
    assert loop.shape == expected.shape == (2, *(s - f + 1 for s, f in zip(raw_shape, strided.shape.fov)))
    np.testing.assert_allclose(loop, expected, atol=1e-5)
    np.testing.assert_allclose(one_pass, expected, atol=1e-5)
    padded = predict_dense(strided, raw, pad_raw=True)
    assert padded.shape == (2, *raw_shape)
    lo = strided.shape.offsets
    mirrored = np.pad(raw, [(o, f - 1 - o) for o, f in zip(lo, strided.shape.fov)], mode="symmetric")
    np.testing.assert_allclose(padded, predict_dense(strided, mirrored), atol=1e-6)
    np.testing.assert_allclose(predict_dense(mfp, raw, pad_raw=True), padded, atol=1e-5)


def test_output_is_raw_minus_two_offsets_for_odd_fov():
    net = NumpyNet(random_layers(np.random.default_rng(3), NEURO_LIKE), (5, 19, 19))
    assert net.shape.fov == (3, 15, 15)
    raw = np.zeros((8, 40, 33), np.uint8)
    assert predict_dense(net, raw).shape == (2, *(s - 2 * o for s, o in zip(raw.shape, net.shape.offsets)))


def test_unet_equals_whole_image_evaluation():
    rng = np.random.default_rng(4)
    net = UNetLite(rng, (14, 14, 16))
    raw = rng.random((24, 20, 30)).astype(np.float32)  # even sizes: the U-Net runs on it at once
    whole = net(raw[None, None])[0]
    pred = predict_dense(net, raw)
    assert pred.shape == whole.shape == (2, 16, 12, 22)
    np.testing.assert_allclose(pred, whole, atol=1e-5)
    np.testing.assert_allclose(predict_dense(net, raw, overlap=4), whole, atol=1e-5)


def test_image_smaller_than_one_tile():
    rng = np.random.default_rng(5)
    layers = random_layers(rng, NEURO_LIKE)
    net = NumpyNet(layers, (7, 27, 27))   # tile out (6, 12, 12)
    raw = rng.random((4, 17, 16)).astype(np.float32)  # smaller than the patch on every axis
    pred = predict_dense(net, raw)
    np.testing.assert_allclose(pred, naive(NumpyNet(layers, (5, 19, 19)), raw), atol=1e-5)
    assert predict_dense(net, raw, pad_raw=True).shape == (2, 4, 17, 16)


def test_batches_fixed_batch_and_channels_last_agree():
    rng = np.random.default_rng(6)
    layers = random_layers(rng, NEURO_LIKE, in_ch=2)
    raw = (rng.random((2, 7, 24, 25)) * 255).astype(np.uint8)
    reference = predict_dense(NumpyNet(layers, (5, 19, 19)), raw, batch_size=1)
    np.testing.assert_allclose(reference, naive(NumpyNet(layers, (5, 19, 19)), raw.astype(np.float32) / 255),
                               atol=1e-5)
    for net, bs in [(NumpyNet(layers, (5, 19, 19)), 7), (NumpyNet(layers, (5, 19, 19), batch=3), None),
                    (NumpyNet(layers, (5, 19, 19), tags=("b", "z", "y", "x", "f")), 5),
                    (NumpyNet(layers, (5, 19, 19), batch=1, dense=True), None)]:
        np.testing.assert_allclose(predict_dense(net, raw, batch_size=bs), reference, atol=1e-5)


def test_2d_net_over_stack_is_slice_by_slice():
    rng = np.random.default_rng(7)
    layers = random_layers(rng, [("conv", 3, (4, 4)), ("pool", (2, 2)), ("conv", 2, (3, 3))])
    net = NumpyNet(layers, (15, 15))
    stack = rng.random((3, 25, 22)).astype(np.float32)
    pred = predict_dense(net, stack)
    assert pred.shape == (2, 3, 25 - 8, 22 - 8)  # fov 9
    for z in range(3):
        single = predict_dense(net, stack[z])
        assert single.shape == (2, 17, 14)
        np.testing.assert_allclose(pred[:, z], single, atol=1e-6)
        np.testing.assert_allclose(single, naive(net, stack[z]), atol=1e-5)


def test_blending_of_overlapping_tiles_matches_weighted_reference():
    rng = np.random.default_rng(8)
    raw = rng.random((1, 1, 20)).astype(np.float32)
    net = SamePadConv(8)
    starts = [0, 4, 8, 12]  # extent 20, tile 8, overlap 4
    for mode, weight in [("gaussian", np.maximum(gaussian(8, 1.0), 1e-3)), ("constant", np.ones(8))]:
        acc, wsum = np.zeros(20), np.zeros(20)
        for s in starts:
            acc[s:s + 8] += net(raw[None, None, :, :, s:s + 8])[0, 0, 0, 0] * weight
            wsum[s:s + 8] += weight
        pred = predict_dense(net, raw, overlap=4, blend=mode)
        np.testing.assert_allclose(pred[0, 0, 0], acc / wsum, atol=1e-6)
    hard = predict_dense(net, raw)  # no overlap: tiles 0, 8 and the last one moved back to 12
    np.testing.assert_allclose(hard[0, 0, 0, :8], net(raw[None, None, :, :, :8])[0, 0, 0, 0], atol=1e-6)


def test_uint8_output_and_errors():
    net = NumpyNet(random_layers(np.random.default_rng(9), NEURO_LIKE), (5, 19, 19))
    raw = np.random.default_rng(9).random((6, 20, 20)).astype(np.float32)
    pred = predict_dense(net, raw)
    as8 = predict_dense(net, raw, as_uint8=True)
    assert as8.dtype == np.uint8
    np.testing.assert_array_equal(as8, np.clip(np.rint(pred * 255), 0, 255).astype(np.uint8))
    with pytest.raises(ShapeError, match="smaller than the net's field of view"):
        predict_dense(net, raw[:, :10])
    with pytest.raises(ShapeError, match="channels"):
        predict_dense(net, np.zeros((3, 6, 20, 20), np.float32))


def test_a_patch_classifier_is_refused_with_the_reason():
    import ekn_core.neuromancer as nm

    nm.model_manager.newmodel(None)
    inp = nm.Input((None, 1, 8, 8), "b,f,y,x", name="digits")
    classes = nm.Perceptron(inp, 3, flatten=True)
    with pytest.raises(ShapeError, match=r"needs a net whose output keeps the spatial axes of its input .*"
                                         r"the input has tags \('b', 'f', 'y', 'x'\) and the output \('b', 'f'\)"):
        predict_dense(classes, np.zeros((8, 8), np.float32))


class CountingNet:
    """A net that records the samples it is called with."""

    def __init__(self, net):
        self.net, self.samples = net, []
        self.input_nodes, self.shape, self.all_parents = net.input_nodes, net.shape, net.all_parents

    def __call__(self, x):
        self.samples.append(len(x))
        return self.net(x)


def test_fixed_batch_nets_get_no_zero_filled_passes():
    layers = random_layers(np.random.default_rng(10), NEURO_LIKE)
    raw = np.random.default_rng(11).random((12, 30, 30)).astype(np.float32)
    one_by_one = CountingNet(NumpyNet(layers, (7, 27, 27), batch=1, dense=True))
    reference = predict_dense(one_by_one, raw, pad_raw=True, batch_size=1)  # one pass per tile: no padding
    for batch, batch_size in [(1, 4), (1, None), (2, 4)]:
        net = CountingNet(NumpyNet(layers, (7, 27, 27), batch=batch, dense=True))
        np.testing.assert_allclose(predict_dense(net, raw, pad_raw=True, batch_size=batch_size), reference, atol=1e-6)
        assert set(net.samples) == {batch}  # always its own batch
        assert len(net.samples) == -(-len(one_by_one.samples) // batch), (batch, batch_size, net.samples)
    free = CountingNet(NumpyNet(layers, (7, 27, 27), dense=True))  # any batch: one shape, the last call filled
    predict_dense(free, raw, pad_raw=True, batch_size=4)
    assert set(free.samples) == {4}


def test_an_overlap_of_a_whole_tile_is_refused():
    net = NumpyNet(random_layers(np.random.default_rng(9), NEURO_LIKE), (7, 27, 27))  # tile out (6, 16, 16)
    raw = np.random.default_rng(9).random((12, 30, 30)).astype(np.float32)
    with pytest.raises(ShapeError, match=r"overlap \(0, 16, 0\) leaves no step .* usable overlap is \(4, 12, 12\)"):
        predict_dense(net, raw, overlap=(0, 16, 0))
    np.testing.assert_allclose(predict_dense(net, raw, overlap=(4, 12, 12)), predict_dense(net, raw), atol=1e-6)
