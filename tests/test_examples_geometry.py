"""The ELEKTRONN2 example models (inventory §5) build through ``nm`` with the listed geometry."""

import numpy as np
import pytest

import ekn_core.neuromancer as nm


def _loss_head(model, inp, out, target_ref=None, nll_name="nll"):
    probs = nm.Softmax(out)
    target = nm.Input_like(target_ref or probs, override_f=1, name="target")
    loss_pix = nm.MultinoulliNLL(probs, target, target_is_sparse=True, name=nll_name)
    loss = nm.AggregateLoss(loss_pix, name="loss")
    errors = nm.Errors(probs, target, target_is_sparse=True)
    model.designate_nodes(input_node=inp, target_node=target, loss_node=loss, prediction_node=probs,
                          prediction_ext=[loss, errors, probs])
    return probs


def build_neuro3d(name="neuro3d", patch=(23, 185, 185)):
    model = nm.model_manager.newmodel(name)
    inp = nm.Input((None, 1, *patch), "b,f,z,x,y", name="raw")
    out = inp
    for n_f, filt, pool in [(20, (1, 6, 6), (1, 2, 2)), (30, (1, 5, 5), (1, 2, 2)), (40, (1, 5, 5), None),
                            (80, (4, 4, 4), (2, 1, 1)), (100, (3, 4, 4), None), (100, (3, 4, 4), None),
                            (150, (2, 4, 4), None), (200, (1, 4, 4), None), (200, (1, 4, 4), None),
                            (200, (1, 1, 1), None)]:
        out = nm.Conv(out, n_f, filt, pool)
    out = nm.Conv(out, 2, (1, 1, 1), activation_func="lin")
    _loss_head(model, inp, out)
    return model


def build_neuro3d_lite(name="neuro3d_lite"):
    model = nm.model_manager.newmodel(name)
    inp = nm.Input((None, 1, 11, 155, 155), "b,f,z,x,y", name="raw")
    out = inp
    for n_f, filt, pool in [(20, (1, 4, 4), (1, 2, 2)), (40, (3, 3, 3), (1, 2, 2)), (150, (2, 4, 4), (2, 1, 1)),
                            (200, (1, 3, 3), None), (200, (1, 3, 3), None), (200, (1, 1, 1), None)]:
        out = nm.Conv(out, n_f, filt, pool)
    out = nm.Conv(out, 2, (1, 1, 1), activation_func="lin")
    _loss_head(model, inp, out)
    return model


def _decoder(model, inp, out, skips, spec):
    for skip, n_up, n_f, filt in zip(skips, *zip(*spec)):
        out = nm.UpConvMerge(skip, out, n_up)
        out = nm.Conv(out, n_f, filt, name="mconv")
        out = nm.Conv(out, n_f, filt, name="mconv")
    barr = nm.Conv(out, 2, (1, 1, 1), activation_func="lin", name="barr")
    _loss_head(model, inp, barr, out, nll_name="nll_barr")
    return model


def _encoder(inp, n_fs):
    """(1,3,3) conv pairs, each followed by a (1,2,2) max-pool; returns (pooled output, convs)."""
    convs, out = [], inp
    for n_f in n_fs:
        out = nm.Conv(out, n_f, (1, 3, 3))
        out = nm.Conv(out, n_f, (1, 3, 3))
        convs.append(out)
        out = nm.Pool(out, (1, 2, 2))
    return out, convs


def build_unet3d_lite(name="unet3d_lite"):
    model = nm.model_manager.newmodel(name)
    inp = nm.Input((None, 1, 22, 140, 140), "b,f,z,x,y", name="raw")
    out, convs = _encoder(inp, [32, 64, 128])
    out = nm.Conv(nm.Conv(out, 256, (3, 3, 3)), 256, (3, 3, 3))
    spec = [(512, 256, (1, 3, 3)), (256, 128, (3, 3, 3)), (128, 64, (3, 3, 3))]
    return _decoder(model, inp, out, convs[::-1], spec)


def build_unet3d_litelite(name="unet3d_litelite"):
    model = nm.model_manager.newmodel(name)
    inp = nm.Input((None, 1, 22, 140, 140), "b,f,z,x,y", name="raw")
    out, convs = _encoder(inp, [20, 30, 35])
    out = nm.Conv(nm.Pool(nm.Conv(out, 42, (3, 3, 3)), (1, 2, 2)), 42, (3, 3, 3))
    spec = [(45, 42, (1, 3, 3)), (42, 35, (3, 3, 3)), (30, 20, (3, 3, 3))]
    return _decoder(model, inp, out, convs[::-1], spec)


def build_mnist(name="mnist"):
    model = nm.model_manager.newmodel(name)
    inp = nm.Input((None, 1, 26, 26), "b,f,y,x", name="raw")
    out = nm.Conv(inp, 12, (3, 3), (2, 2), batch_normalisation="train")
    out = nm.Conv(out, 36, (3, 3), (2, 2), batch_normalisation="train")
    out = nm.Conv(out, 64, (3, 3), batch_normalisation="train")
    out = nm.Perceptron(out, 200, flatten=True)
    out = nm.Perceptron(out, 10, activation_func="lin")
    probs = nm.Softmax(out)
    target = nm.Input_like(out, override_f=1, name="target")
    loss = nm.AggregateLoss(nm.MultinoulliNLL(probs, target, name="nll_", target_is_sparse=True))
    errors = nm.Errors(probs, target, target_is_sparse=True)
    model.designate_nodes(input_node=inp, target_node=target, loss_node=loss, prediction_node=probs,
                          prediction_ext=[loss, errors, probs])
    return model


def _trainable(model):
    return sum(p.size for p in model.all_params.values() if p.trainable)


pytestmark = pytest.mark.usefixtures("forget_new_models")


def test_neuro3d_geometry():
    model = build_neuro3d()
    pred = model.prediction_node
    assert pred.shape.spatial_shape == (5, 21, 21)
    assert pred.shape.strides == (2, 4, 4)
    assert pred.shape.fov == (15, 105, 105)
    assert pred.shape.offsets == (7, 52, 52)
    # ≈2.76 M parameters (inventory), computed exactly from the layer list:
    layers = [(1, 20, 36), (20, 30, 25), (30, 40, 25), (40, 80, 64), (80, 100, 48), (100, 100, 48),
              (100, 150, 32), (150, 200, 16), (200, 200, 16), (200, 200, 1), (200, 2, 1)]
    expected = sum(n_in * n_f * k + n_f for n_in, n_f, k in layers)
    assert _trainable(model) == expected == 2_756_042
    assert [n.name for n in model.loss_node.input_nodes] == ["raw", "target"]
    assert model.target_node.shape.spatial_shape == (5, 21, 21)


def test_neuro3d_lite_geometry():
    model = build_neuro3d_lite()
    pred = model.prediction_node
    assert (pred.shape.spatial_shape, pred.shape.strides, pred.shape.fov) == ((4, 30, 30), (2, 4, 4), (5, 39, 39))
    assert _trainable(model) == 885_132  # the Keras 3 count of design_notes.md (≈0.89 M in the inventory)


def test_unet3d_lite_geometry():
    model = build_unet3d_lite()
    pred = model.prediction_node
    assert pred.shape.spatial_shape == (10, 52, 52)
    assert pred.shape.strides == (1, 1, 1)
    # repaired by designate_nodes to in - strides * (out - 1) (ELEKTRONN2 gave the context, one less)
    assert pred.shape.fov == (13, 89, 89) and pred.shape.offsets == (6, 44, 44)
    assert model.target_node.shape.fov == (13, 89, 89)
    assert abs(_trainable(model) - 7.8e6) < 0.05e6


def test_unet3d_litelite_geometry():
    model = build_unet3d_litelite()
    pred = model.prediction_node
    assert (pred.shape.spatial_shape, pred.shape.fov) == ((10, 36, 36), (13, 105, 105))
    assert abs(_trainable(model) - 0.35e6) < 0.02e6
    ups = [n for n in model.nodes.values() if type(n).__name__ == "UpConv"]
    assert [u.pool_shape for u in ups] == [(1, 4, 4), (1, 2, 2), (1, 2, 2)]


def test_mnist_geometry_and_param_count():
    model = build_mnist()
    convs = [n for n in model.nodes.values() if type(n).__name__ == "Conv"]
    assert [c.shape.spatial_shape for c in convs] == [(12, 12), (5, 5), (3, 3)]
    weights_biases = sum(p.size for p in model.all_params.values() if p.name in ("w", "b"))
    gammas = sum(p.size for p in model.all_params.values() if p.name == "gamma")
    assert (weights_biases, gammas) == (142_254, 112)
    assert model.batch_normalisation_active
    x = np.random.default_rng(0).random((3, 1, 26, 26)).astype("float32")
    assert model.predict(x).shape == (3, 10)


def test_neuro3d_lite_runs_and_matches_computed_shape():
    model = build_neuro3d_lite()
    logits = model.prediction_node.parents[0]
    out, _ = logits.test_run(on_shape_mismatch="raise")
    assert out.shape == (1, 2, 4, 30, 30)


def test_mnist_trains_with_adam_in_one_trace():
    model = build_mnist()
    rng = np.random.default_rng(0)
    x = rng.random((8, 1, 26, 26)).astype("float32")
    y = rng.integers(0, 10, (8, 1)).astype("float32")
    model.lr = 2e-3
    mean0 = model["conv"].params["mean"].get_value()
    losses = [model.trainingstep(x, y, optimiser="Adam")[0] for _ in range(6)]
    assert losses[-1] < losses[0] and model.iterations == 6
    assert model._functions["train:adam"].traces == 1
    assert not np.allclose(model["conv"].params["mean"].get_value(), mean0)  # BN statistics updated
