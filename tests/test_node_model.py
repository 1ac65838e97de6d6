"""Node registration, descriptors, compiled calls with clear errors, Model roles and training step."""

import json

import numpy as np
import pytest

import ekn_core.neuromancer as nm
from ekn_core.errors import ConfigError, EknError, ShapeError
from ekn_core.node import GraphFunction, Node, model_manager, set_compile_mode


@pytest.fixture(autouse=True)
def _cleanup():
    before = set(model_manager.models)
    yield
    set_compile_mode(None)
    for name in set(model_manager.models) - before:
        model_manager.remove(name)


def _regression_model(name="reg", tags="b,f,x"):
    model = model_manager.newmodel(name)
    sizes = {"b": None, "f": 3, "x": 6}
    inp = nm.Input([sizes[t] for t in tags.split(",")], tags, name="raw")
    hidden = nm.Conv(inp, 4, 3, activation_func="tanh")
    pred = nm.Conv(hidden, 1, 1, activation_func="lin", name="pred")
    target = nm.Input_like(pred, name="target")
    loss = nm.AggregateLoss(nm.SquaredLoss(pred, target), name="loss")
    model.designate_nodes(input_node=inp, target_node=target, loss_node=loss, prediction_node=pred)
    return model


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(5, 3, 6)).astype("float32")
    return x, np.tanh(x[:, :1, 1:5] * 2).astype("float32")


def test_names_descriptors_and_graph_links():
    model = model_manager.newmodel("names")
    inp = nm.Input((None, 2, 8, 8), "b,f,x,y")
    a, b = nm.Conv(inp, 3, (3, 3)), nm.Conv(inp, 3, (3, 3))
    c = nm.Concat([a, b], name="merge")
    assert [n.name for n in model.nodes.values()] == ["input", "conv", "conv1", "merge"]
    assert model.choose_name("conv9") == "conv9" and model_manager.current is model
    d = model.descriptors["merge"]
    assert d == json.loads(json.dumps(d))
    assert d["type"] == "concat" and d["parents"] == ["conv", "conv1"]
    assert d["config"] == {"parent_nodes": [{"node": "conv"}, {"node": "conv1"}], "axis": "f"}
    assert set(inp.children) == {"conv", "conv1"} and c.input_nodes == [inp]
    assert list(c.all_parents) == ["input", "conv", "conv1", "merge"]
    assert c.all_params_count == 2 * (2 * 3 * 9 + 3)


def test_nodes_must_not_create_nodes():
    class Bad(Node):
        def __init__(self, parent, name="bad"):
            super().__init__(parent, name)
            nm.Conv(parent, 1, 1)

    model_manager.newmodel("nested")
    with pytest.raises(EknError, match="nodes must not create nodes"):
        Bad(nm.Input((None, 1, 4), "b,f,x"))


def test_call_errors_name_the_input_and_expectation():
    model = _regression_model()
    x, t = _batch()
    with pytest.raises(TypeError, match=r"needs 2 input array\(s\), in this order: #0 'raw'.*#1 'target'"):
        model.loss_node(x)
    with pytest.raises(ShapeError, match=r"input #0 'raw'.*axis 'x' has size 7 but 6 is expected"):
        model.prediction_node(np.zeros((5, 3, 7), "float32"))
    with pytest.raises(ShapeError, match="must have 3 axes"):
        model.prediction_node(np.zeros((3, 6), "float32"))
    model_manager.newmodel("sparse")
    labels = nm.Input((None, 1, 4), "b,f,x", dtype="int16", name="labels")
    with pytest.raises(TypeError, match="must have dtype int16"):
        labels(np.zeros((1, 1, 4), "float32"))
    assert labels(np.zeros((1, 1, 4), "int64")).dtype == np.int16


def test_tag_orders_give_the_same_result():
    m1 = _regression_model("order1", "b,f,x")
    m2 = _regression_model("order2", "b,x,f")
    m2.set_param_values(m1.get_param_values())
    x, _ = _batch()
    y1 = m1.predict(x)
    y2 = m2.predict(x.transpose(0, 2, 1))
    np.testing.assert_allclose(y2.transpose(0, 2, 1), y1, rtol=1e-6)


def test_compile_modes_agree_and_trace_once():
    model = _regression_model()
    x, _ = _batch()
    outs = {}
    for mode in ("eager", "plain", "xla"):
        set_compile_mode(mode)
        fn = GraphFunction([model.prediction_node])
        outs[mode] = fn(x)
        fn(x)
        assert fn.traces == (2 if mode == "eager" else 1)
    np.testing.assert_allclose(outs["xla"], outs["plain"], atol=1e-5)
    np.testing.assert_allclose(outs["eager"], outs["plain"], atol=1e-5)


def test_training_step_gradients_and_meta_parameters_without_retrace():
    model = _regression_model()
    x, t = _batch()
    grads = model.gradients(x, t)
    w = model["conv"].params["w"]
    # finite differences of the loss (float32: loose tolerance, but sign and size must agree)
    eps, idx = 1e-2, (1, 2, 0)
    base = w.get_value()
    values = []
    for sign in (1, -1):
        shifted = base.copy()
        shifted[idx] += sign * eps
        w.set_value(shifted)
        values.append(model.loss(x, t))
    w.set_value(base)
    np.testing.assert_allclose(grads["conv/w"][idx], (values[0] - values[1]) / (2 * eps), rtol=2e-2, atol=1e-4)

    model.lr, model.mom, model.wd = 0.1, 0.0, 0.0
    before = model.get_param_values()
    loss0, _, debug = model.trainingstep(x, t, optimiser="SGD")
    assert debug is None and model.iterations == 1
    np.testing.assert_allclose(w.get_value(), before["conv"]["w"] - 0.1 * grads["conv/w"], rtol=1e-4, atol=1e-6)
    model.lr = 0.05  # takes effect without retrace
    losses = [model.trainingstep(x, t, optimiser="sgd")[0] for _ in range(20)]
    step = model._functions["train:sgd"]
    assert step.traces == 1
    assert losses[-1] < loss0
    assert model.optimisers["sgd"].lr == pytest.approx(0.05)


@pytest.mark.parametrize("mode", ["eager", "plain", "xla"])
def test_gradients_change_neither_batch_norm_statistics_nor_the_dropout_stream(mode):
    import tensorflow as tf

    set_compile_mode(mode)
    model = model_manager.newmodel("inspect")
    inp = nm.Input((4, 3), "b,f", name="x")
    hidden = nm.Perceptron(inp, 6, batch_normalisation="train", dropout_rate=0.5)
    probs = nm.Softmax(nm.Perceptron(hidden, 2, activation_func="lin"))
    target = nm.Input_like(probs, override_f=1, dtype="int16", name="target")
    loss = nm.AggregateLoss(nm.MultinoulliNLL(probs, target, target_is_sparse=True))
    model.designate_nodes(input_node=inp, target_node=target, loss_node=loss, prediction_node=probs)
    rng = np.random.default_rng(0)
    x, y = rng.normal(5, 2, (4, 3)).astype("float32"), rng.integers(0, 2, (4, 1)).astype("int16")
    tf.random.set_global_generator(tf.random.Generator.from_seed(7))
    before = {k: p.get_value() for k, p in model.all_params.items()}
    stream = tf.random.get_global_generator().state.numpy()
    grads = [model.gradients(x, y) for _ in range(2)]
    assert float(hidden.params["bn_count"].get_value()) == 0.0  # gradstats in the shell: nothing accumulated
    for key, value in before.items():
        np.testing.assert_array_equal(model.all_params[key].get_value(), value, err_msg=key)
    np.testing.assert_array_equal(tf.random.get_global_generator().state.numpy(), stream)
    # the same dropout mask and batch statistics as the training step that follows: its gradients
    model.lr, model.mom = 1.0, 0.0
    model.trainingstep(x, y, optimiser="SGD")
    assert float(hidden.params["bn_count"].get_value()) == 4.0  # a training step does accumulate
    for key, grad in grads[0].items():
        np.testing.assert_array_equal(grads[1][key], grad, err_msg=key)
        np.testing.assert_allclose(before[key] - model.all_params[key].get_value(), grad, atol=1e-6, err_msg=key)
    assert any(np.abs(g).max() > 1e-3 for g in grads[0].values())


def test_dropout_only_in_training_and_rates_settable():
    model = model_manager.newmodel("dropout")
    inp = nm.Input((None, 4, 10), "b,f,x")
    out = nm.Conv(inp, 50, 1, activation_func="lin", dropout_rate=0.5, b=np.zeros(50, "float32"))
    model.designate_nodes(input_node=inp, prediction_node=out)
    x = np.ones((2, 4, 10), "float32")
    inference = out(x)
    np.testing.assert_array_equal(inference, out(x))
    trained = out(x, training=True)
    zero = trained == 0
    assert 0.3 < zero.mean() < 0.7
    np.testing.assert_allclose(trained[~zero], 2 * inference[~zero], rtol=1e-5)
    fn = out.function(training=True)
    model.dropout_rates = 0.0
    np.testing.assert_allclose(out(x, training=True), inference, rtol=1e-6)
    assert model.dropout_rates == [0.0] and fn.traces == 1
    with pytest.raises(ConfigError, match=r"in \[0, 1\)"):
        model.dropout_rates = 1.5


def test_batch_normalisation_train_mode_updates_running_statistics():
    model_manager.newmodel("bn")
    inp = nm.Input((None, 2, 6), "b,f,x")
    out = nm.Conv(inp, 3, 1, activation_func="lin", batch_normalisation="train")
    x = np.random.default_rng(0).normal(3.0, 2.0, (8, 2, 6)).astype("float32")
    mean0 = out.params["mean"].get_value()
    y = out(x, training=True)
    np.testing.assert_allclose(y.mean(axis=(0, 2)), out.params["b"].get_value(), atol=1e-4)
    assert not np.allclose(out.params["mean"].get_value(), mean0)
    assert out.params["gamma"].weight_decay == 3.0 and not out.params["mean"].trainable


def test_summary_plot_and_stats(tmp_path):
    model = _regression_model()
    text = model.summary()
    assert "pred" in text and "fov" in text and "Conv" in text
    dot = model.plot(str(tmp_path / "g.dot"))
    assert '"conv" -> "pred"' in open(dot).read()
    import shutil

    if shutil.which("dot") is None:
        with pytest.raises(EknError, match="graphviz"):
            model.plot(str(tmp_path / "g.png"))
        assert (tmp_path / "g.dot").exists()
    x, t = _batch()
    assert set(model.paramstats()) == {"conv/w", "conv/b", "pred/w", "pred/b", "loss/mixing_weights"}
    assert set(model.gradstats(x, t)) == {"conv/w", "conv/b", "pred/w", "pred/b"}
    assert "pred" in model.actstats(x, t)
    out, seconds = model.test_run_prediction()
    assert out.shape == (1, 1, 4) and seconds >= 0
    assert set(model.measure_exectimes(n_samples=1, n_warmup=1, print_info=False)) == {"conv", "pred"}


def test_model_manager():
    a = model_manager.newmodel("mm_a")
    with pytest.raises(ConfigError, match="exists already"):
        model_manager.newmodel("mm_a")
    b = model_manager.newmodel("mm_b")
    assert model_manager.togglemodel() is a and model_manager.getmodel("mm_b") is b
    with pytest.raises(ConfigError, match="no model named"):
        model_manager.getmodel("nope")


def test_fov_repair_for_upconv_nets():
    model = model_manager.newmodel("unet")
    inp = nm.Input((None, 1, 20), "b,f,x")
    down = nm.Pool(nm.Conv(inp, 2, 3), 2)
    merged = nm.AutoMerge(inp, nm.Conv(down, 2, 3), 2)
    out = nm.Conv(merged, 2, 3)
    assert out.shape.fov == (-1,)
    model.designate_nodes(input_node=inp, prediction_node=out)
    assert out.shape.spatial_shape == (12,) and out.shape.fov == (9,)  # in - strides * (out - 1)
    assert out.shape.offsets == (4,)  # the output block centred in the input
