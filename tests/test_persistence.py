"""Model files (HDF5, no pickle), registry-only type resolution, and restoring with changes."""

import json
import os
import re

import h5py
import numpy as np
import pytest

import ekn_core.neuromancer as nm
from ekn_core.errors import ConfigError, EknError, ShapeError
from ekn_core.persistence import read_model_file
from ekn_core.node import Node
from test_examples_geometry import build_mnist, build_neuro3d


pytestmark = pytest.mark.usefixtures("forget_new_models")


def _small(name="small"):
    model = nm.model_manager.newmodel(name)
    inp = nm.Input((None, 2, 9, 10), "b,f,y,x", name="raw")
    c1 = nm.Conv(inp, 3, (2, 3), (2, 2))
    c2 = nm.Conv(c1, 4, (2, 2), activation_func="tanh")
    out = nm.Conv(c2, 2, (1, 1), activation_func="lin", name="logits")
    model.designate_nodes(input_node=inp, prediction_node=out)
    return model


def _logits(model):
    """The node before the softmax (the prediction proper of the example nets)."""
    pred = model.prediction_node
    return pred.parents[0] if type(pred).__name__ == "Softmax" else pred


def test_file_layout_and_identical_outputs(tmp_path):
    model = _small()
    model.lr = 0.25
    path = model.save(str(tmp_path / "small.h5"))
    assert sorted(os.listdir(tmp_path)) == ["small.h5"]  # no temp file left behind
    with h5py.File(path) as f:
        assert f.attrs["format"] == "ekn-model"
        descriptors = json.loads(f.attrs["descriptors"])
        assert [d["type"] for d in descriptors] == ["input", "conv", "conv", "conv"]
        assert descriptors[1]["parents"] == ["raw"] and descriptors[1]["config"]["parent"] == {"node": "raw"}
        assert {r["name"]: r["distribution"] for r in json.loads(f.attrs["required_plugins"])} == {
            "input": "ekn", "conv": "ekn"}
        np.testing.assert_array_equal(f["weights/conv/w"][()], model["conv"].params["w"].get_value())
    loaded = nm.modelload(path)
    assert loaded is nm.model_manager.current and loaded.lr == 0.25
    x = np.random.default_rng(1).random((3, 2, 9, 10)).astype("float32")
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_neuro3d_roundtrip_and_mfp_reload(tmp_path):
    model = build_neuro3d()
    path = model.save(str(tmp_path / "neuro3d.h5"))
    rng = np.random.default_rng(0)
    raw = rng.random((1, 1, 24, 188, 188)).astype("float32")
    x = raw[:, :, :23, :185, :185]
    loaded = nm.modelload(path, name="n3d_loaded")
    np.testing.assert_array_equal(_logits(loaded)(x), _logits(model)(x))

    mfp = nm.modelload(path, override_mfp_to_active=True, imposed_batch_size=1, name="n3d_mfp")
    assert mfp.input_node.shape.shape == (1, 1, 22, 184, 184)  # snapped as in the inventory
    assert mfp.prediction_node.shape.spatial_shape == (8, 80, 80)
    assert mfp.prediction_node.shape.strides == (1, 1, 1)
    dense = _logits(mfp)(raw[:, :, :22, :184, :184])
    assert dense.shape == (1, 2, 8, 80, 80)
    # oracle: the strided net at input shift o gives dense[o::strides]
    for o in [(0, 0, 0), (1, 3, 2)]:
        shifted = raw[:, :, o[0]:o[0] + 23, o[1]:o[1] + 185, o[2]:o[2] + 185]
        expected = _logits(model)(shifted)[:, :, :(8 - o[0] + 1) // 2, :(80 - o[1] + 3) // 4, :(80 - o[2] + 3) // 4]
        got = dense[:, :, o[0]::2, o[1]::4, o[2]::4]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_imposed_patch_size_is_snapped_or_refused(tmp_path):
    path = _small().save(str(tmp_path / "m.h5"))
    # y: 9 valid (9-1=8 even, /2 -1 = 3); 10 is not; x: 10-2=8 -> 4 -> 3 valid; 11 -> 9 odd invalid
    model = nm.modelload(path, imposed_patch_size=(10, 11), name="snapped")
    assert model.input_node.shape.spatial_shape == (9, 10)
    with pytest.raises(ShapeError, match="needs 2 entries"):
        nm.modelload(path, imposed_patch_size=(9,), name="bad")


def test_misspelt_load_options_are_named_with_the_closest_option(tmp_path):
    model = _small()
    path = model.save(str(tmp_path / "m.h5"))
    models_before = set(nm.model_manager.models)
    with pytest.raises(ConfigError, match=r"modelload takes no argument 'imposed_patch_sise' \(did you mean "
                                          r"'imposed_patch_size'\?\); it takes name, override_mfp_to_active"):
        nm.modelload(path, imposed_patch_sise=(9, 10))
    with pytest.raises(ConfigError, match=r"rebuild_model takes no argument 'replace_batchnorm'"):
        nm.rebuild_model(model, replace_batchnorm="predict")
    assert set(nm.model_manager.models) == models_before
    nm.modelload(path, replace_bn="predict", lock_trainable_params=1)  # every option restore takes passes


def test_module_path_type_is_refused(tmp_path):
    path = _small().save(str(tmp_path / "m.h5"))
    with h5py.File(path, "a") as f:
        descriptors = json.loads(f.attrs["descriptors"])
        descriptors[1]["type"] = "ekn_plugins.layers.conv:Conv"
        f.attrs["descriptors"] = json.dumps(descriptors)
    with pytest.raises(EknError, match="module path or class name is not accepted"):
        nm.modelload(path)


def test_missing_plugin_names_distribution_and_version(tmp_path):
    path = _small().save(str(tmp_path / "m.h5"))
    with h5py.File(path, "a") as f:
        descriptors = json.loads(f.attrs["descriptors"])
        descriptors[2]["type"] = "foo.fancy_conv"
        f.attrs["descriptors"] = json.dumps(descriptors)
        reqs = json.loads(f.attrs["required_plugins"])
        reqs.append({"kind": "layers", "name": "foo.fancy_conv", "distribution": "ekn-foo", "version": "1.2"})
        f.attrs["required_plugins"] = json.dumps(reqs)
    models_before = set(nm.model_manager.models)
    with pytest.raises(EknError, match=r"needs layer 'foo.fancy_conv' from distribution ekn-foo >= 1.2"):
        nm.modelload(path)
    assert set(nm.model_manager.models) == models_before  # nothing half-built is left behind


def test_not_a_model_file(tmp_path):
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f["a"] = 1
    with pytest.raises(EknError, match="not an ekn model file"):
        read_model_file(str(path))


def test_a_run_directory_given_as_model_file_points_to_its_models(tmp_path):
    with pytest.raises(EknError, match=r"is a folder, not a model file: give a model file$"):
        read_model_file(str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "latest.mdl").write_bytes(b"")
    latest = os.path.join(str(tmp_path), "models", "latest.mdl")
    with pytest.raises(EknError, match=rf"a model file, e\.g\. {re.escape(latest)} \(the run's latest model\)"):
        read_model_file(str(tmp_path))
    (tmp_path / "models" / "best.mdl").write_bytes(b"")
    with pytest.raises(EknError, match=r"best\.mdl \(the run's best model\)"):
        read_model_file(str(tmp_path))


def test_a_checkpoint_given_as_model_file_points_to_the_runs_model_files(tmp_path):
    from ekn_core.trainer.checkpoint import CheckpointData, write_checkpoint

    path = write_checkpoint(str(tmp_path / "run" / "checkpoints"), CheckpointData(step=40))
    models = os.path.join(str(tmp_path), "run", "models")
    with pytest.raises(EknError, match=rf"ckpt-00000040\.h5 is a training checkpoint \(what `ekn train --resume` "
                                       rf"continues from\), not a model file: give one of the run's model files, "
                                       rf"{re.escape(models)}/latest\.mdl, best\.mdl or final\.mdl$"):
        read_model_file(path)


def test_the_fine_tuning_recipe_of_the_docs_keeps_the_trained_layers_and_trains_a_new_head(tmp_path):
    docs = open(os.path.join(os.path.dirname(__file__), "..", "docs", "nodes.md"), encoding="utf-8").read()
    recipe = re.search(r"### Fine-tuning\n.*?```python\n(.*?)```", docs, re.S).group(1)
    trained = nm.model_manager.newmodel("barrier")  # the trained net: the same layers, a 2-class head
    inp = nm.Input((None, 1, 11, 155, 155), "b,f,z,x,y", name="raw")
    out = nm.Conv(nm.Conv(inp, 20, (1, 4, 4), (1, 2, 2), name="conv1"), 40, (3, 3, 3), (1, 2, 2), name="conv2")
    trained.designate_nodes(input_node=inp, prediction_node=nm.Conv(out, 2, (1, 1, 1), name="head"))
    old = trained.get_param_values()
    path = trained.save(str(tmp_path / "best.mdl"))
    namespace = {}
    exec(recipe, namespace)
    from ekn_core.trainer.model_setup import fresh_default_model

    fresh_default_model()  # as the trainer calls create_model
    model = namespace["create_model"](pretrained=path, patch_size=(3, 15, 15))
    for name in ("conv1", "conv2"):
        for key, value in model[name].get_param_values().items():
            np.testing.assert_array_equal(value, old[name][key], err_msg=f"{name}/{key}")
    assert model["head3"].params["w"].shape[-1] == 3 and "head" not in model.nodes
    rng = np.random.default_rng(0)
    x = rng.random((1, 1, 3, 15, 15), dtype=np.float32)
    y = rng.integers(0, 3, (1, 1, *model.prediction_node.shape.spatial_shape)).astype("int16")
    model.trainingstep(x, y, optimiser="Adam")
    new = model.get_param_values()
    np.testing.assert_array_equal(new["conv1"]["w"], old["conv1"]["w"])  # frozen
    assert not np.array_equal(new["conv2"]["w"], old["conv2"]["w"])  # trained further


def test_lock_trainable_params_and_constant_flags_survive_save(tmp_path):
    model = _small()
    locked = nm.rebuild_model(model, lock_trainable_params=2, name="locked")
    assert [n.name for n in locked.nodes.values() if n.params and all(p.constant for p in n.params.values())] == \
        ["conv", "conv1"]
    again = nm.modelload(locked.save(str(tmp_path / "l.h5")), name="locked_again")
    assert again["conv"].params["w"].constant and not again["logits"].params["w"].constant
    by_name = nm.rebuild_model(model, lock_trainable_params=["logits"], name="by_name")
    assert by_name["logits"].params["b"].constant and by_name["conv"].params["b"].trainable


def test_replace_bn_predict_keeps_inference_outputs(tmp_path):
    model = build_mnist()
    x = np.random.default_rng(2).random((4, 1, 26, 26)).astype("float32")
    for node in model.nodes.values():  # non-trivial running statistics
        if getattr(node, "batch_normalisation", False):
            node.params["mean"].set_value(np.linspace(-0.1, 0.1, node.n_f).astype("float32"))
            node.params["std"].set_value(np.linspace(0.5, 2, node.n_f).astype("float32"))
    rebuilt = nm.rebuild_model(model, replace_bn="predict", name="bn_predict")
    assert not rebuilt.batch_normalisation_active
    np.testing.assert_allclose(_logits(rebuilt)(x), _logits(model)(x), rtol=1e-5, atol=1e-6)
    removed = nm.rebuild_model(model, replace_bn="remove", name="bn_removed")
    assert all("gamma" not in n.params for n in removed.nodes.values())


def test_constant_weights_given_as_arguments_survive(tmp_path):
    model = nm.model_manager.newmodel("const_arg")
    inp = nm.Input((None, 1, 5), "b,f,x")
    nm.Conv(inp, 2, 3, w=[np.ones((3, 1, 2), "float32"), "const"])
    model.designate_nodes(input_node=inp, prediction_node="conv")
    assert model.descriptors["conv"]["config"]["w"] == {"saved_param": "w", "mode": "const"}
    loaded = nm.modelload(model.save(str(tmp_path / "c.h5")), name="const_w")
    assert loaded["conv"].params["w"].constant
    np.testing.assert_array_equal(loaded["conv"].params["w"].get_value(), 1.0)


class _Apply(Node):
    def __init__(self, parent, fn=None, name="apply"):
        super().__init__(parent, name)
        self.fn = fn

    def _forward(self, inputs, training):
        return inputs[0]


def test_unserialisable_or_unregistered_nodes_are_refused_at_save(tmp_path):
    model = nm.model_manager.newmodel("unserialisable")
    inp = nm.Input((None, 1, 5), "b,f,x")
    _Apply(inp, fn=np.mean)
    with pytest.raises(EknError, match="cannot be saved.*argument 'fn'"):
        model.save(str(tmp_path / "bad.h5"))
    model = nm.model_manager.newmodel("unregistered")
    _Apply(nm.Input((None, 1, 5), "b,f,x"))
    with pytest.raises(EknError, match="not registered in an ekn registry"):
        model.save(str(tmp_path / "bad.h5"))
    assert not os.path.exists(tmp_path / "bad.h5")


def test_mfp_refuses_a_prediction_node_with_spatial_extent(tmp_path):
    """FragmentsToDense goes right before the prediction node, so that node must be point-wise."""
    nm.model_manager.newmodel(None)
    inp = nm.Input((1, 1, 9, 20, 20), "b,f,z,y,x")
    conv = nm.Conv(inp, 4, (1, 3, 3), (1, 2, 2))
    out = nm.Conv(conv, 2, (1, 3, 3), (1, 1, 1), activation_func="lin")
    model = nm.model_manager.current
    model.designate_nodes(input_node=inp, prediction_node=out)
    path = model.save(str(tmp_path / "m.h5"))
    with pytest.raises(ConfigError, match="point-wise prediction node"):
        nm.modelload(path, override_mfp_to_active=True, imposed_batch_size=1)


def test_loading_does_not_repeat_the_node_descriptions_at_info(tmp_path, caplog):
    import logging

    model = nm.model_manager.newmodel("described")
    with caplog.at_level(logging.DEBUG, logger="ekn"):
        inp = nm.Input((None, 1, 8, 8), "b,f,y,x", name="raw", print_repr=True)
        out = nm.Conv(inp, 2, (3, 3), activation_func="lin", name="logits", print_repr=True)
    model.designate_nodes(input_node=inp, prediction_node=out)
    built = [r for r in caplog.records if r.levelno == logging.INFO and r.name != "ekn.model"
             and "logits" in r.getMessage()]
    assert len(built) == 1  # the config's own construction is described
    path = model.save(str(tmp_path / "m.h5"))
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="ekn"):
        nm.modelload(path)
        nm.modelload(path, imposed_patch_size=(10, 10))
    described = [r for r in caplog.records if r.name != "ekn.model" and "logits" in r.getMessage()]
    assert described and all(r.levelno == logging.DEBUG for r in described)
