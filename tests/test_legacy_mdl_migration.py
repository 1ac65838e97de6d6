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
from test_legacy_mdl import neuro3d_lite_like, neuro3d_reference, rand

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
    for ext in ([], ["total_loss", "softmax", "softmax"]):  # none, or no error node in the middle
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
