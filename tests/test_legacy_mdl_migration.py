"""ELEKTRONN2 models in ekn beyond their saved geometry: converted ``.mdl`` files loaded with MFP or
another patch size (their targets, saved by ``Input_like`` as fixed-shape Inputs, follow the net),
``ekn predict --mfp`` on a ``.mdl`` file, and ELEKTRONN2's ``prediction_ext=[loss, errors, probs]``
as the error node (converted files and configs), all against numpy references.
"""

import logging
import math
import os

import numpy as np
import pytest

import ekn_core.neuromancer as nm
from elektronn2_lookalike import E2Graph
from prediction_testnets import read_volume, write_raw_h5
from test_legacy_mdl import e2_conv, e2_post, neuro3d_lite_like, neuro3d_reference, rand, softmax

pytestmark = pytest.mark.usefixtures("forget_new_models")
RNG = np.random.default_rng(11)


def old_model_file(tmp_path, **changes):
    """A neuro3d_lite-like ``.mdl`` as ELEKTRONN2's examples save it: error rates only through
    ``prediction_ext`` (``error_node=None``); returns ``(path, weights)``."""
    with E2Graph() as g:
        weights, roles = neuro3d_lite_like(g)
        roles.update(error_node=None, **changes)
        path = g.save(str(tmp_path / "old-LAST.mdl"), **roles)
    return path, weights


def dense_reference(vol, weights):
    """Brute-force dense prediction of the net of :func:`neuro3d_lite_like` (fov 3×11×11, strides
    1×4×4) on ``vol`` (1, 1, z, x, y) with x, y ≡ 2 (mod 4): one strided pass per phase, interleaved."""
    z, x, y = vol.shape[2:]
    out = np.zeros((1, 2, z - 2, x - 10, y - 10), np.float32)
    for dx in range(4):
        for dy in range(4):
            out[..., dx::4, dy::4] = neuro3d_reference(vol[..., dx:dx + x - 3, dy:dy + y - 3], weights)
    return out


def test_converted_targets_follow_a_new_patch_size(tmp_path):
    path, weights = old_model_file(tmp_path)
    model = nm.modelload(path, imposed_patch_size=(11, 39, 39))
    assert model.input_node.shape.spatial_shape == (11, 39, 39)
    assert model.target_node.shape.spatial_shape == model.prediction_node.shape.spatial_shape == (9, 8, 8)
    assert model.target_node.dtype == "int16"
    x = rand(1, 1, 11, 39, 39)
    probs = neuro3d_reference(x, weights)
    np.testing.assert_allclose(model.predict(x), probs, rtol=1e-4, atol=1e-5)
    labels = RNG.integers(0, 2, size=(1, 1, 9, 8, 8)).astype("int16")
    error = model.nodes["errors"](x, labels)
    assert float(np.ravel(error)[0]) == pytest.approx(np.mean(probs.argmax(1) != labels[:, 0]))


def test_without_a_prediction_node_targets_follow_the_node_their_loss_reads(tmp_path):
    path, _ = old_model_file(tmp_path, prediction_node=None, prediction_ext=[])
    model = nm.modelload(path, imposed_patch_size=(11, 39, 39))
    assert model.descriptors["target"]["type"] == "input_like"
    assert model.target_node.shape.spatial_shape == model.nodes["softmax"].shape.spatial_shape == (9, 8, 8)


@pytest.mark.parametrize("target_shape, strides, kind", [((None, 1, 3, 3), None, "input_like"),
                                                          ((None, 1, 4, 3), None, "input"),
                                                          ((None, 1, 3, 3), (2, 2), "input")])
def test_only_inputs_with_the_geometry_of_a_node_become_input_like(tmp_path, target_shape, strides, kind):
    with E2Graph() as g:
        inp = g.node("Input", (None, 2, 5, 5), "b,f,x,y", name="raw")
        probs = g.node("Softmax", g.node("Conv", inp, 2, (3, 3), activation_func="lin",
                                         params={"w": rand(2, 2, 3, 3), "b": rand(2)}))
        target = g.node("Input", target_shape, "b,f,x,y", strides, name="target")
        path = g.save(str(tmp_path / "small.mdl"), input_node=inp, prediction_node=probs, target_node=target)
    assert nm.modelload(path).descriptors["target"]["type"] == kind


def two_head_unet_like(g, prediction):
    """ELEKTRONN2's ``examples/wip/unet_2d.py`` layout: the target (``Input_like`` of the prediction,
    two channels) is created before the Concat prediction and read only through its split pieces."""
    weights = {"top": (rand(4, 1, 3, 3), rand(4)), "barr": (rand(3, 4, 1, 1), rand(3)), "obj": (rand(2, 4, 1, 1),
                                                                                                rand(2))}
    inp = g.node("Input", [None, 1, 20, 20], "b,f,x,y", name="raw")
    top = g.node("Conv", inp, 4, (3, 3), params=dict(zip("wb", weights["top"])))
    heads = [g.node("Softmax", g.node("Conv", top, len(weights[n][1]), (1, 1), activation_func="lin", name=n,
                                      params=dict(zip("wb", weights[n])))) for n in ("barr", "obj")]
    target = g.node("Input", [None, 2, 18, 18], "b,f,x,y", None, dtype="int16", name="target")
    pieces = g.split(target, "f", n_out=2)
    nlls = [g.node("MultinoulliNLL", h, t, target_is_sparse=True) for h, t in zip(heads, pieces)]
    pred = g.node("Concat", heads, axis="f", name="pred")
    loss = g.node("AggregateLoss", nlls, params={"mixing_weights": np.ones(2, "float32")})
    path = g.save(str(g.tmp / "unet_like.mdl"), input_node=inp, target_node=target, loss_node=loss,
                  prediction_node=pred if prediction else None)
    return path, weights


def two_head_reference(x, y, weights):
    """(prediction, loss) of :func:`two_head_unet_like` in numpy: the mean of the heads' mean NLLs."""
    top = e2_post(e2_conv(x, weights["top"][0]), weights["top"][1])
    heads = [softmax(e2_post(e2_conv(top, weights[n][0]), weights[n][1], act="lin")) for n in ("barr", "obj")]
    nlls = [-np.mean(np.log(np.take_along_axis(h, y[:, i:i + 1].astype(int), 1))) for i, h in enumerate(heads)]
    return np.concatenate(heads, 1), np.mean(nlls)


@pytest.mark.parametrize("prediction", [True, False], ids=["prediction", "no_prediction_node"])
def test_a_target_created_before_its_prediction_and_read_through_split_follows_the_net(tmp_path, prediction):
    with E2Graph() as g:
        g.tmp = tmp_path
        path, weights = two_head_unet_like(g, prediction)
    model = nm.modelload(path, imposed_patch_size=(24, 24))
    target = model.descriptors["target"]
    assert target["type"] == "input_like" and target["config"]["ref"] == {"node": "pred" if prediction else "softmax"}
    assert model.target_node.shape.shape == (None, 2, 22, 22) and model.target_node.dtype == "int16"
    x = rand(2, 1, 24, 24)
    y = RNG.integers(0, 2, (2, 2, 22, 22)).astype("int16")  # ids both heads have (the check sees all of target)
    probs, loss = two_head_reference(x, y, weights)
    np.testing.assert_allclose(model.nodes["pred"](x), probs, rtol=1e-4, atol=1e-5)
    assert float(np.ravel(model.loss(x, y))[0]) == pytest.approx(loss, rel=1e-4)


def test_a_target_created_before_the_softmax_it_copies_follows_mfp(tmp_path):
    with E2Graph() as g:
        inp = g.node("Input", [None, 1, 12, 12], "b,f,x,y", name="raw")
        conv = g.node("Conv", inp, 2, (3, 3), (2, 2), activation_func="lin", params={"w": rand(2, 1, 3, 3),
                                                                                     "b": rand(2)})
        target = g.node("Input", [None, 1, 5, 5], "b,f,x,y", [2, 2], dtype="int16", name="target")
        probs = g.node("Softmax", conv)
        loss = g.node("AggregateLoss", [g.node("MultinoulliNLL", probs, target, target_is_sparse=True)])
        path = g.save(str(tmp_path / "late_softmax.mdl"), input_node=inp, target_node=target, loss_node=loss,
                      prediction_node=probs)
    model = nm.modelload(path, override_mfp_to_active=True)
    assert list(model.nodes).index("target") > list(model.nodes).index("softmax")
    assert model.descriptors["target"]["type"] == "input_like"
    assert model.target_node.shape.strides == model.prediction_node.shape.strides == (1, 1)
    assert model.target_node.shape.spatial_shape == model.prediction_node.shape.spatial_shape


def test_a_node_computed_from_an_input_is_not_its_reference(tmp_path):
    """The prediction reads the second input, so that input copies the node read beside it instead."""
    w, b = rand(1, 1, 3, 3), rand(1)
    with E2Graph() as g:
        inp = g.node("Input", [None, 1, 7, 7], "b,f,x,y", name="raw")
        conv = g.node("Conv", inp, 1, (3, 3), activation_func="lin", params={"w": w, "b": b})
        extra = g.node("Input", [None, 1, 5, 5], "b,f,x,y", name="extra")
        out = g.node("Add", conv, extra, name="out")
        path = g.save(str(tmp_path / "added.mdl"), input_node=inp, prediction_node=out)
    model = nm.modelload(path, imposed_patch_size=(9, 9))
    assert model.descriptors["extra"]["config"]["ref"] == {"node": "conv"}
    x, e = rand(1, 1, 9, 9), rand(1, 1, 7, 7)
    np.testing.assert_allclose(model.predict(x, e), e2_post(e2_conv(x, w), b, act="lin") + e, rtol=1e-4, atol=1e-5)


def test_converted_model_with_mfp_predicts_densely(tmp_path):
    path, weights = old_model_file(tmp_path)
    model = nm.modelload(path, override_mfp_to_active=True)
    assert model.prediction_node.shape.strides == (1, 1, 1)
    assert model.target_node.shape.spatial_shape == model.prediction_node.shape.spatial_shape
    vol = rand(1, 1, 12, 42, 38)
    np.testing.assert_allclose(model.predict_dense(vol[0]), dense_reference(vol, weights)[0], rtol=1e-4, atol=1e-5)


def test_ekn_predict_mfp_reads_an_elektronn2_file(tmp_path):
    from ekn_core.cli import main

    path, weights = old_model_file(tmp_path)
    raw, src = write_raw_h5(tmp_path, (10, 38, 42))
    out = str(tmp_path / "pred.zarr")
    assert main(["predict", path, src, out, "--mfp", "--no-progress"]) == 0
    ref = dense_reference(raw[None, None].astype(np.float32) / 255, weights)[0]
    pred = read_volume(out)
    inner = pred[:, 1:-1, 5:-5, 5:-5]  # the border without full context is padded
    np.testing.assert_allclose(inner, ref, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Error rates through prediction_ext
# ---------------------------------------------------------------------------------------------
def test_prediction_ext_designates_the_error_node_of_converted_files(tmp_path):
    path, _ = old_model_file(tmp_path)
    model = nm.modelload(path)
    assert model.error_node is model.nodes["errors"]
    converted = str(tmp_path / "new.h5")
    model.save(converted)
    assert nm.modelload(converted).error_node.name == "errors"
    for ext in ([], ["total_loss", "softmax", "softmax"], ["total_loss", "conv2", "softmax"]):
        # none, or no error node in the middle (the prediction; logits, not one number)
        path, _ = old_model_file(tmp_path, prediction_ext=ext)
        assert nm.modelload(path).error_node is None


def toy_config(tmp_path, monkeypatch, *replacements):
    """Points ``toy_training`` at a copy of the toy config with ``replacements`` ((old, new) pairs)."""
    import toy_training

    source = open(toy_training.TOY).read()
    data = os.path.join(os.path.dirname(toy_training.TOY), "toy_data.py")
    for old, new in ((", error_node=errors", ""), ('"toy_data.py"', repr(data)), *replacements):
        assert old in source
        source = source.replace(old, new)
    path = tmp_path / "e2_config.py"
    path.write_text(source)
    monkeypatch.setattr(toy_training, "TOY", str(path))


def test_create_model_with_prediction_ext_reports_error_rates(tmp_path, monkeypatch, caplog):
    """ELEKTRONN2's examples give the errors only in ``prediction_ext``; the history has the error
    rates of the monitor batches, as numpy computes them from the trained model."""
    from toy_training import train

    toy_config(tmp_path, monkeypatch)

    measured = {}

    def errors_of(trainer):  # the valid monitor batch of the last monitoring (step 2)
        x, y = trainer.get_batch("valid", size=16, stream="monitor_valid")
        measured["valid_error"] = float(np.mean(np.argmax(trainer.model.predict(x), 1) != y[:, 0]))

    with caplog.at_level(logging.WARNING, logger="ekn.trainer"):
        trainer, status = train(tmp_path, "n_steps=2", after_run=errors_of)
    assert status == "finished" and trainer.model.error_node.name == "errors"
    row = trainer.history.history.last()
    assert math.isfinite(row["train_error"]) and row["valid_error"] == pytest.approx(measured["valid_error"], abs=1e-6)
    assert "error node" not in caplog.text


def test_training_without_an_error_node_warns_once(tmp_path, monkeypatch, caplog):
    from toy_training import train

    toy_config(tmp_path, monkeypatch, ("prediction_ext=[loss, errors, probs]", "prediction_ext=[loss, probs]"))
    with caplog.at_level(logging.WARNING, logger="ekn.trainer"):
        trainer, status = train(tmp_path, "n_steps=4", "history_freq=2")
    assert status == "finished" and trainer.model.error_node is None
    assert caplog.text.count("the model has no error node") == 1 and "error_node=" in caplog.text
    assert math.isnan(trainer.history.history.last()["valid_error"])
