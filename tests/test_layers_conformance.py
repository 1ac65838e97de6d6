"""The conformance checks of :mod:`ekn_core.testing` over every layer in the ``ekn.layers`` registry.

Single-parent layers go through :func:`ekn_core.testing.check_node` directly. Layers with several
parents, no parents, and the factory functions (``split``, ``scan``, ``auto_merge``) go through
:func:`check_graph`, the same battery on a small graph: computed = actual output shapes; eager =
``tf.function`` = XLA; descriptors JSON-stable; save → load gives identical outputs.

Every built-in layer must have an example here: a new registration without one fails
``test_every_builtin_layer_has_an_example``. Layers of other installed distributions (e.g. the
plugin template) are checked with ``check_node(name)`` and their default arguments.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import ekn_core.neuromancer as nm
from ekn_core.node import GraphFunction, Node, model_manager, set_compile_mode
from ekn_core.persistence import modelload
from ekn_core.plugins import registry
from ekn_core.testing import check_node

# name → (args, kwargs for check_node)
SINGLE: dict[str, tuple[tuple, dict[str, Any]]] = {
    "apply_func": (("tanh",), {}),
    "batch_norm": ((), {}),
    "conv": ((3, (2, 3, 3)), {"pool_shape": (1, 1, 1)}),
    "crop": (((1, 2, 2),), {}),
    "dropout": ((0.3,), {}),
    "fragments_to_dense": ((), {"input_shape": (4, 2, 2, 3, 3), "fov": False}),
    "gaussian_noise": ((0.2,), {}),
    "group_norm": ((), {"n_groups": 2, "fov": False}),  # every output depends on the whole example
    "initial_state_like": ((3,), {"fov": False}),  # its value does not depend on the input's values
    "lrn": (((1, 3, 3),), {"alpha": 0.5}),
    "pad": (((0, 1, 2),), {"value": 0.5}),
    "perceptron": ((3, "tanh"), {}),
    "pool": (((1, 2, 2),), {"stride": (1, 2, 1), "input_shape": (1, 2, 3, 8, 7)}),
    "reshape": (((None, 2, 5, 81), "b,f,z,x"), {"fov": False}),
    "split_node": (("f", 1, 2), {}),
    "upconv": ((3, (1, 2, 2)), {}),
}


def _seq_net(cell: str) -> Callable[..., Node]:
    def build(seq: Node) -> Node:
        x_t, _ = nm.split(seq, "r", index=1, strip_singleton_dims=True)
        mem = nm.InitialState_like(x_t, 6 if cell == "lstm" else 3, init_kwargs={"mode": "fix-uni", "scale": 0.3})
        step = (nm.LSTM if cell == "lstm" else nm.GRU)(x_t, mem, 3)
        return nm.Scan(step, mem, in_iterate=seq, in_iterate_0=x_t)
    return build


SEQ = {"seq": ((3, 2, 4), "r,b,f")}
PAIR = {"a": ((2, 3, 4), "b,f,x"), "b": ((4, 2, 3), "x,b,f")}
VOLUME = {"raw": ((1, 2, 4, 8, 8), "b,f,z,y,x")}


def _unet(raw: Node) -> Node:
    hi = nm.Conv(raw, 3, (1, 3, 3))
    lo = nm.Pool(nm.Conv(hi, 3, (1, 3, 3)), (1, 2, 2))
    return nm.AutoMerge(hi, lo, 2)


# name → (builder taking the input nodes by name, inputs {name: (shape, tags)}, deterministic feed override)
GRAPHS: dict[str, tuple[Callable[..., Any], dict[str, tuple], dict[str, Any]]] = {
    "add": (lambda a, b: nm.Add(a, b), PAIR, {}),
    "mult": (lambda a, b: nm.Mult(a, b), PAIR, {}),
    "mult_merge": (lambda a, b: nm.MultMerge(a, b), PAIR, {}),
    "concat": (lambda a, b: nm.Concat([a, b], "f"), PAIR, {}),
    "gaussian_kl": (lambda a, b: nm.GaussianKL(a, b), PAIR, {}),
    # log_sig = -40 makes the sample deterministic (= mu) for the output comparisons
    "gaussian_rv": (lambda a, b: nm.GaussianRV(a, b, n_samples=2), PAIR, {"b": -40.0}),
    "gru": (lambda a, b: nm.GRU(a, nm.Perceptron(b, 3, "tanh"), 3), PAIR, {}),
    "lstm": (lambda a, b: nm.LSTM(a, nm.Perceptron(b, 4, "tanh"), 2), PAIR, {}),
    "input": (lambda: nm.Input((2, 3), "b,f", name="extra"), {}, {}),
    "input_like": (lambda a, b: nm.Input_like(a, override_f=1, name="like"), PAIR, {}),
    "value_node": (lambda a, b: nm.Add(a, nm.ValueNode((2, 3, 4), "b,f,x", apply_train=True,
                                                        init_kwargs={"mode": "normal", "scale": 1.0})), PAIR, {}),
    "split": (lambda seq: nm.split(seq, "f", n_out=2) + nm.split(seq, "r", index=[1, 2], strip_singleton_dims=True),
              SEQ, {}),
    # Scan builds a ScanN node and one ScanOutput per result
    "scan": (_seq_net("gru"), SEQ, {}),
    "scan_n": (_seq_net("lstm"), SEQ, {}),
    "scan_output": (_seq_net("lstm"), SEQ, {}),
    "auto_merge": (_unet, VOLUME, {}),
}


def _run(outputs: list[Node], inputs: list[Node], arrays: list[np.ndarray], mode: str) -> list[np.ndarray]:
    set_compile_mode(mode)
    try:
        outs = GraphFunction(outputs, inputs=inputs, name=f"check:{mode}")(*arrays)
    finally:
        set_compile_mode(None)
    return outs if len(outputs) > 1 else [outs]


def check_graph(build: Callable[..., Any], inputs: dict[str, tuple], overrides: dict[str, Any]) -> None:
    """The conformance battery on ``build(**input_nodes)``'s output node(s)."""
    model = model_manager.current
    nodes = {name: nm.Input(shape, tags, name=name) for name, (shape, tags) in inputs.items()}
    built = build(**nodes)
    outputs = list(built) if isinstance(built, tuple) else [built]
    feeds = list(nodes.values()) or outputs[0].input_nodes
    for out in outputs:
        for src in out.input_nodes:
            if src not in feeds:
                feeds.append(src)
    rng = np.random.default_rng(0)
    arrays = [np.full(n.shape.shape, overrides[n.name], "float32") if n.name in overrides
              else rng.standard_normal(n.shape.shape).astype("float32") for n in feeds]
    results = {mode: _run(outputs, feeds, arrays, mode) for mode in ("plain", "eager", "xla")}
    for out, value in zip(outputs, results["plain"]):
        assert value.shape == out.shape.shape, f"{out.name}: computed {out.shape.shape}, actual {value.shape}"
    for mode in ("eager", "xla"):
        for a, b in zip(results[mode], results["plain"]):
            np.testing.assert_allclose(a, b, atol=1e-5, err_msg=f"{mode} differs from tf.function")
    for name, descriptor in model.descriptors.items():
        assert json.loads(json.dumps(descriptor)) == descriptor, f"descriptor of {name!r} is not JSON-stable"
        assert descriptor["type"] is not None, f"node {name!r} has a class that is not registered"
    model.designate_nodes(input_node=feeds[0], prediction_node=outputs[0])
    with tempfile.TemporaryDirectory() as tmp:
        loaded = modelload(model.save(os.path.join(tmp, "m.h5")), name=f"{model.name}-loaded")
    again = _run([loaded[o.name] for o in outputs], [loaded[n.name] for n in feeds], arrays, "plain")
    for a, b in zip(again, results["plain"]):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(autouse=True)
def _model(scratch_model):
    return scratch_model


def _builtin(name: str) -> bool:
    return registry("layers").info(name).builtin


def test_every_builtin_layer_has_an_example():
    missing = sorted({n for n in registry("layers").names() if _builtin(n)} - set(SINGLE) - set(GRAPHS))
    assert not missing, f"registered layers without a conformance example in {__file__}: {missing}"


@pytest.mark.parametrize("name", sorted(registry("layers").names()))
def test_conformance(name):
    if name in SINGLE:
        args, kwargs = SINGLE[name]
        check_node(name, *args, **kwargs)
    elif name in GRAPHS:
        check_graph(*GRAPHS[name])
    elif _builtin(name):
        pytest.fail(f"no conformance example for built-in layer {name!r}")
    else:
        check_node(name)
