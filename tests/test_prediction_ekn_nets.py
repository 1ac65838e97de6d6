"""Oracle tests on real ekn nets (TensorFlow): MFP = stride loop = naive per-voxel window; U-Net
tiles = whole-image evaluation; Node/Model.predict_dense delegate to the engine; test-time augmentation of
the stride loop and of MFP = plain predictions of flipped images, flipped back."""


import itertools

import numpy as np
import pytest

from ekn_core.prediction import predict_dense

nm = pytest.importorskip("ekn_core.neuromancer")


def naive(node, raw):
    """Each output voxel from the net run on its own window (first output of the patch)."""
    patch = node.input_nodes[0].shape.spatial_shape
    fov = node.shape.fov
    out_shape = tuple(s - f + 1 for s, f in zip(raw.shape, fov))
    padded = np.pad(raw, [(0, p) for p in patch])
    windows = np.stack([padded[tuple(slice(c, c + p) for c, p in zip(idx, patch))]
                        for idx in np.ndindex(*out_shape)])[:, None]
    out = node(windows)[(slice(None), slice(None), *(0,) * len(patch))]
    return out.T.reshape(-1, *out_shape)


@pytest.fixture(scope="module")
def strided(tmp_path_factory):
    model = nm.model_manager.newmodel("pred_strided")
    inp = nm.Input((None, 1, 5, 19, 19), "b,f,z,y,x", name="raw")
    c = nm.Conv(inp, 3, (1, 4, 4), (1, 2, 2))
    c = nm.Conv(c, 4, (2, 3, 3), (2, 2, 2))
    c = nm.Conv(c, 4, (1, 2, 2))
    out = nm.Conv(c, 2, (1, 1, 1), activation_func="sigmoid", name="probs")
    model.designate_nodes(input_node=inp, prediction_node=out)
    path = model.save(str(tmp_path_factory.mktemp("m") / "strided.h5"))
    return model, path


def test_mfp_equals_stride_loop_equals_naive(strided):
    model, path = strided
    node = model.prediction_node
    assert node.shape.strides == (2, 4, 4) and node.shape.fov == (3, 15, 15)
    raw = np.random.default_rng(0).random((7, 22, 21)).astype(np.float32)
    expected = naive(node, raw)
    loop = predict_dense(node, raw)
    assert loop.shape == (2, *(s - 2 * o for s, o in zip(raw.shape, node.shape.offsets)))
    np.testing.assert_allclose(loop, expected, atol=1e-5)
    mfp = nm.modelload(path, override_mfp_to_active=True, imposed_patch_size=(6, 23, 23))
    assert mfp.prediction_node.shape.strides == (1, 1, 1)
    np.testing.assert_allclose(mfp.predict_dense(raw), expected, atol=1e-5)
    padded = model.predict_dense(raw, pad_raw=True)
    assert padded.shape == (2, *raw.shape)
    np.testing.assert_allclose(mfp.predict_dense(raw, pad_raw=True), padded, atol=1e-5)
    as8 = node.predict_dense(raw, as_uint8=True)
    assert as8.dtype == np.uint8 and np.abs(as8.astype(int) - np.rint(loop * 255)).max() <= 1


def test_tta_of_stride_loop_and_mfp_equals_flipped_plain_predictions(strided):
    model, path = strided
    raw = np.random.default_rng(2).random((7, 22, 21)).astype(np.float32)
    expected = []
    for flips in itertools.product((False, True), repeat=3):
        for swap in (False, True):
            axes = [a for a, on in zip((0, 1, 2), flips) if on]
            image = np.flip(raw, axes).swapaxes(1, 2) if swap else np.flip(raw, axes)
            pred = model.predict_dense(image)
            expected.append(np.flip(pred.swapaxes(2, 3) if swap else pred, [a + 1 for a in axes]))
    expected = np.mean(expected, axis=0)
    np.testing.assert_allclose(model.predict_dense(raw, tta="flips+transpose"), expected, atol=1e-5)
    mfp = nm.modelload(path, override_mfp_to_active=True, imposed_patch_size=(6, 22, 22))
    np.testing.assert_allclose(mfp.predict_dense(raw, tta="flips+transpose"), expected, atol=1e-5)


def test_unet_tiles_equal_whole_image(tmp_path):
    model = nm.model_manager.newmodel("pred_unet")
    inp = nm.Input((None, 1, 14, 14, 16), "b,f,z,y,x", name="raw")
    c1 = nm.Conv(inp, 3, (3, 3, 3))
    c2 = nm.Conv(nm.Pool(c1, (2, 2, 2)), 4, (3, 3, 3))
    merged = nm.AutoMerge(c1, c2, 3)
    out = nm.Conv(merged, 2, (3, 3, 3), activation_func="sigmoid", name="probs")
    model.designate_nodes(input_node=inp, prediction_node=out)
    assert out.shape.spatial_shape == (6, 6, 8)
    path = model.save(str(tmp_path / "unet.h5"))
    raw = np.random.default_rng(1).random((24, 20, 30)).astype(np.float32)
    whole = nm.modelload(path, imposed_patch_size=raw.shape)
    assert whole.input_node.shape.spatial_shape == raw.shape
    reference = whole.prediction_node(raw[None, None])[0]
    pred = predict_dense(out, raw)
    assert pred.shape == reference.shape
    np.testing.assert_allclose(pred, reference, atol=1e-5)


def test_predict_volume_with_saved_model(strided, tmp_path):
    import h5py

    from ekn_core.prediction.blockwise import predict_volume
    from ekn_core.volumes import open_volume

    model, path = strided
    raw = (np.random.default_rng(2).random((9, 40, 36)) * 255).astype(np.uint8)
    with h5py.File(str(tmp_path / "raw.h5"), "w") as f:
        f["raw"] = raw
    out = str(tmp_path / "pred.zarr")
    predict_volume(path, str(tmp_path / "raw.h5:raw"), out, mfp=True, tile="auto", memory_budget="64M",
                   progress=False)
    with open_volume(out) as vol:
        np.testing.assert_allclose(np.asarray(vol[...]), model.predict_dense(raw, pad_raw=True), atol=1e-5)
