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
    assert pred.shape[1:] == tuple(s - (f - 1) for s, f in zip(raw.shape, out.shape.fov))  # docs' size rule
    np.testing.assert_allclose(pred, reference, atol=1e-5)


def test_unet_tta_equals_flipped_plain_predictions():
    model = nm.model_manager.newmodel("pred_unet_tta")
    inp = nm.Input((None, 1, 14, 14, 16), "b,f,z,y,x", name="raw")
    c1 = nm.Conv(inp, 3, (3, 3, 3))
    merged = nm.AutoMerge(c1, nm.Conv(nm.Pool(c1, (2, 2, 2)), 4, (3, 3, 3)), 3)
    out = nm.Conv(merged, 2, (3, 3, 3), activation_func="sigmoid", name="probs")
    model.designate_nodes(input_node=inp, prediction_node=out)
    raw = np.random.default_rng(3).random((18, 20, 22)).astype(np.float32)  # raw - patch even: same pooling phases
    expected = np.mean([np.flip(model.predict_dense(np.flip(raw, axes)), [a + 1 for a in axes])
                        for n in range(4) for axes in itertools.combinations((0, 1, 2), n)], axis=0)
    np.testing.assert_allclose(model.predict_dense(raw, tta="flips"), expected, atol=1e-5)


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


def test_memory_estimate_of_mfp_counts_the_fragments(strided):
    """An MFP net keeps all pooling fragments of a sample as batch entries: its maps hold as many
    values as the strided net's maps before pooling, at every stride phase at once."""
    from ekn_core.prediction.net import activation_bytes_per_voxel, graph_nodes

    model, path = strided
    mfp = nm.modelload(path, override_mfp_to_active=True, imposed_patch_size=(6, 23, 23)).prediction_node

    def bytes_per_input_voxel(node):  # every node's output, all its batch entries, per voxel of one input sample
        in_shape = node.input_nodes[0].shape
        total = sum(4.0 * np.prod([d for d in n.shape.shape if d]) for n in graph_nodes(node))
        return total / ((in_shape["b"] or 1) * np.prod(in_shape.spatial_shape))

    assert mfp.input_nodes[0].shape["b"] == 1 and max(n.shape["b"] for n in graph_nodes(mfp)) == 32
    assert activation_bytes_per_voxel(mfp) >= 1.5 * bytes_per_input_voxel(mfp)
    # per voxel the MFP pass holds more than the strided pass, which keeps one phase after each pooling
    assert activation_bytes_per_voxel(mfp) > activation_bytes_per_voxel(model.prediction_node)


def test_predict_volume_loads_an_mfp_net_once_at_the_patch_it_predicts_with(strided, tmp_path, monkeypatch, caplog):
    """The model's own patch 5x19x19 is not valid with MFP: no warning for what ekn chooses itself
    (tile 'auto', or the model's own patch snapped), one for a tile the user asked for; weights are
    loaded once each time."""
    import h5py

    from ekn_core import persistence
    from ekn_core.node import is_shape_only
    from ekn_core.prediction.blockwise import predict_volume

    _, path = strided
    with h5py.File(str(tmp_path / "raw.h5"), "w") as f:
        f["raw"] = (np.random.default_rng(3).random((9, 40, 36)) * 255).astype(np.uint8)
    loads, modelload = [], persistence.modelload

    def counted(*args, **kwargs):
        model = modelload(*args, **kwargs)
        if not is_shape_only():
            loads.append(model.input_node.shape.spatial_shape)
        return model

    monkeypatch.setattr(persistence, "modelload", counted)
    run = {"mfp": True, "memory_budget": "64M", "progress": False}
    with caplog.at_level("INFO", logger="ekn"):
        predict_volume(path, str(tmp_path / "raw.h5:raw"), str(tmp_path / "auto.zarr"), tile="auto", **run)
    assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text
    assert len(loads) == 1 and loads[0] != (5, 19, 19)
    summaries = [r for r in caplog.records if r.getMessage().startswith("prediction 'probs'")]
    assert len(summaries) == 1 and summaries[0].levelname == "INFO"  # of the net loaded, not of the plan's build
    caplog.clear()
    predict_volume(path, str(tmp_path / "raw.h5:raw"), str(tmp_path / "asked.zarr"), tile=(5, 19, 19), **run)
    assert "patch size 5x19x19 is not valid for this net with MFP; using the nearest valid size 4x18x18" in [
        r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert loads[1:] == [(4, 18, 18)]
    caplog.clear()
    predict_volume(path, str(tmp_path / "raw.h5:raw"), str(tmp_path / "own.zarr"), tile=None, **run)
    assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text
    assert loads[2:] == [(4, 18, 18)]
