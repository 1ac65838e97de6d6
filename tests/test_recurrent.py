"""GRU, LSTM and Scan against numpy step loops; small sequence models train; one-step rebuild.

The sequence models follow ELEKTRONN2's wip ``gru.py`` / ``lstm.py`` examples (inventory §5.7):
``Input(r,b,f)`` → ``split`` off the step placeholder → ``InitialState_like`` → ``GRU``/``LSTM``
→ ``Scan`` → ``Perceptron``, scaled down to seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_layers_reference import ATOL, gradient_check

import ekn_core.neuromancer as nm
from ekn_core.node import model_manager, set_seed
from ekn_plugins.layers.recurrent import one_step_model


@pytest.fixture(autouse=True)
def _model(scratch_model):
    set_seed(3)
    return scratch_model


def sig(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def np_gru(x, h, w, b, n):
    zr = sig(np.concatenate([h, x], -1) @ w[:, :2 * n] + b[:2 * n])
    z, r = zr[:, :n], zr[:, n:]
    cand = np.tanh(np.concatenate([r * h, x], -1) @ w[:, 2 * n:] + b[2 * n:])
    return (1 - z) * h + z * cand


def np_lstm(x, mem, w, b, n):
    h, c = mem[:, :n], mem[:, n:]
    hx = np.concatenate([h, x], -1)
    g = sig(hx @ w[:, :3 * n] + b[:3 * n])
    c_new = g[:, :n] * c + g[:, n:2 * n] * np.tanh(hx @ w[:, 3 * n:] + b[3 * n:])
    return np.concatenate([g[:, 2 * n:] * np.tanh(c_new), c_new], -1)


def sequence_net(cell: str, steps: int = 5, batch: int = 3, n_in: int = 2, n_f: int = 4, last_only: bool = False,
                 unroll: bool = True):
    inp = nm.Input((steps, batch, n_in), "r,b,f", name="seq")
    inp0, _ = nm.split(inp, "r", index=1, strip_singleton_dims=True, name=["x_t", "x_rest"])
    mem = nm.InitialState_like(inp0, n_f * (2 if cell == "lstm" else 1), name="mem",
                               init_kwargs={"mode": "fix-uni", "scale": 0.5})
    step = (nm.LSTM if cell == "lstm" else nm.GRU)(inp0, mem, n_f, name="cell")
    out = nm.Scan(step, mem, in_iterate=inp, in_iterate_0=inp0, last_only=last_only, unroll_scan=unroll)
    return inp, mem, step, out


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("unroll", [True, False])
def test_scan_equals_numpy_step_loop(cell, unroll):
    inp, mem, step, out = sequence_net(cell, unroll=unroll)
    x = np.random.default_rng(0).standard_normal((5, 3, 2)).astype("float32")
    w, b = step.params["w"].get_value().astype("float64"), step.params["b"].get_value().astype("float64")
    state = np.tile(mem.params["value"].get_value().astype("float64"), (3, 1))
    fn = np_lstm if cell == "lstm" else np_gru
    want = []
    for t in range(5):
        state = fn(x[t].astype("float64"), state, w, b, 4)
        want.append(state)
    np.testing.assert_allclose(out(x), np.stack(want), atol=ATOL)
    gradient_check(out, {inp: x}, probes=4)


def test_scan_several_results_memories_and_outside_nodes():
    """Two memories (one fed back from a non-result node), two results, a node outside the loop."""
    seq = nm.Input((4, 2, 3), "r,b,f", name="seq")
    x_t, _ = nm.split(seq, "r", index=1, strip_singleton_dims=True)
    m1 = nm.InitialState_like(x_t, 3, name="m1", init_kwargs={"mode": "const", "scale": 0.2})
    m2 = nm.InitialState_like(x_t, 3, name="m2", init_kwargs={"mode": "const", "scale": 1.0})
    outside = nm.ValueNode((2, 3), "b,f", value=np.arange(6).reshape(2, 3) / 10, apply_train=True, name="outside")
    h1 = nm.GRU(x_t, m1, 3, name="h1")
    mixed = nm.ApplyFunc(nm.Add(nm.Mult(h1, m2), outside), "tanh", name="mixed")
    head = nm.Perceptron(mixed, 2, "lin", name="head")
    r_h1, r_head = nm.Scan([h1, head], [m1, m2], out_memory=[h1, mixed], in_iterate=seq, in_iterate_0=x_t)
    x = np.random.default_rng(1).standard_normal((4, 2, 3)).astype("float32")
    w, b = h1.params["w"].get_value(), h1.params["b"].get_value()
    wd, bd = head.params["w"].get_value(), head.params["b"].get_value()
    s1, s2 = np.full((2, 3), 0.2), np.ones((2, 3))
    want_h1, want_head = [], []
    for t in range(4):
        s1 = np_gru(x[t], s1, w, b, 3)
        s2 = np.tanh(s1 * s2 + np.arange(6).reshape(2, 3) / 10)
        want_h1.append(s1)
        want_head.append(s2 @ wd + bd)
    np.testing.assert_allclose(r_h1(x), np.stack(want_h1), atol=ATOL)
    np.testing.assert_allclose(r_head(x), np.stack(want_head), atol=ATOL)
    gradient_check(r_head, {seq: x}, probes=3)
    last = nm.Scan([head], [m1, m2], out_memory=[h1, mixed], in_iterate=seq, in_iterate_0=x_t, n_steps=2,
                   last_only=True)[0]
    np.testing.assert_allclose(last(x), want_head[1], atol=ATOL)


def test_scan_rejects_inconsistent_arguments():
    seq = nm.Input((4, 2, 3), "r,b,f")
    x_t, _ = nm.split(seq, "r", index=1, strip_singleton_dims=True)
    mem = nm.InitialState_like(x_t, 5)
    gru = nm.GRU(x_t, mem, 5)
    with pytest.raises(Exception, match="out_memory"):
        nm.Scan(gru, [mem, mem], in_iterate=seq, in_iterate_0=x_t)
    with pytest.raises(Exception, match="exceeds"):
        nm.Scan(gru, mem, in_iterate=seq, in_iterate_0=x_t, n_steps=9)
    with pytest.raises(Exception, match="features"):
        nm.GRU(x_t, mem, 4)


def _train(cell: str) -> tuple[object, float, float]:
    """Trains a sequence model to output the mean of the first input feature over time."""
    model = model_manager.current
    inp, mem, step, out = sequence_net(cell, steps=6, batch=16, n_in=2, n_f=8, last_only=True)
    pred = nm.Perceptron(out, 1, "lin", name="pred")
    target = nm.Input_like(pred, name="target")
    loss = nm.SquaredLoss(pred, target)
    model.designate_nodes(input_node=inp, target_node=target, loss_node=loss, prediction_node=pred)
    model.lr = 0.02
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(150):
        x = rng.standard_normal((6, 16, 2)).astype("float32")
        y = x[:, :, :1].mean(axis=0)
        losses.append(model.trainingstep(x, y, optimiser="Adam")[0])
    return model, float(np.mean(losses[:10])), float(np.mean(losses[-10:]))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_sequence_model_trains(cell):
    model, first, last = _train(cell)
    assert last < first / 4, f"{cell} loss went from {first:.4f} to {last:.4f}"
    # the one-step rebuild of the trained model reproduces the multi-step prediction
    x = np.random.default_rng(5).standard_normal((6, 16, 2)).astype("float32")
    step_model, feedback = one_step_model(model)
    assert feedback == {"mem": "cell"}
    step_cell, step_pred = step_model["cell"], step_model["pred"]
    state = model["mem"](x)
    for t in range(6):
        feed = {"x_t": x[t], "mem": state}
        last_pred = step_pred(*[feed[n.name] for n in step_pred.input_nodes])
        state = step_cell(*[feed[n.name] for n in step_cell.input_nodes])
    np.testing.assert_allclose(last_pred, model.predict(x), atol=ATOL)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_one_step_rebuild_reproduces_every_step(cell):
    model = model_manager.current
    inp, mem, step, out = sequence_net(cell, last_only=False)
    head = nm.Perceptron(out, 2, "tanh", name="head")
    model.designate_nodes(input_node=inp, prediction_node=head)
    x = np.random.default_rng(2).standard_normal((5, 3, 2)).astype("float32")
    multi = head(x)  # (r, b, f)
    step_model, feedback = nm.rebuild_rnn(model)  # ELEKTRONN2 name
    assert step_model["mem"].is_source and step_model["x_t"].is_source
    assert step_model["scan_cell"].shape.shape == (1, 3, step.shape["f"])
    state = model["mem"](x)
    one_head = step_model["head"]
    for t in range(5):
        feed = {"x_t": x[t], "mem": state}
        np.testing.assert_allclose(one_head(*[feed[n.name] for n in one_head.input_nodes])[0], multi[t], atol=ATOL)
        nxt = step_model[feedback["mem"]]
        state = nxt(*[feed[n.name] for n in nxt.input_nodes])
