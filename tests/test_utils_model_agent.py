"""ModelAgent: patch layout vs manual reshapes, radius outputs, recurrent memory vs the full Scan model."""

from __future__ import annotations

import numpy as np
import pytest
from test_layers_reference import fresh_model

import ekn_core.neuromancer as nm
from ekn_core.errors import ConfigError, ShapeError
from ekn_core.node import model_manager, set_seed
from ekn_core.shapes import TaggedShape
from ekn_plugins.utils.model_agent import ModelAgent, layout
from ekn_plugins.utils.skeleton import frame, sample_patch
from ekn_plugins.utils.tracing import Tracer


@pytest.fixture(autouse=True)
def _model(scratch_model):
    set_seed(3)
    return scratch_model

LAYOUTS = [  # input shape, tags, patch shape, the manual numpy layout of patches (n, *patch)
    ((None, 1, 3, 5, 7), "b,f,z,x,y", (3, 5, 7), lambda p: p[:, None]),
    ((None, 3, 5, 7, 1), "b,z,y,x,f", (3, 5, 7), lambda p: p[..., None]),
    ((1, 3, None, 5, 7), "f,z,b,x,y", (3, 5, 7), lambda p: p.transpose(1, 0, 2, 3)[None]),
    ((None, 1, 5, 7), "b,f,x,y", (1, 5, 7), lambda p: p),
    ((None, 1, 4, 5, 5), "b,f,z,y,x", (4, 5, 5), lambda p: p[:, None]),  # square: the across axes must not swap
]


@pytest.mark.parametrize("shape, tags, patch, manual", LAYOUTS)
def test_layout_and_agent_match_a_manual_reshape(_model, shape, tags, patch, manual):
    patches = np.random.default_rng(0).standard_normal((2, *patch)).astype(np.float32)
    np.testing.assert_array_equal(layout(patches, TaggedShape(shape, tags)), manual(patches))
    sequence = TaggedShape((3, *shape), "r," + tags)  # a sequence input: the patches repeated along r
    np.testing.assert_array_equal(layout(patches, sequence), np.repeat(manual(patches)[None], 3, axis=0))
    inp = nm.Input(shape, tags, name="patch")
    out = nm.Perceptron(inp, 4, activation_func="lin", flatten=True, name="out")
    _model.designate_nodes(input_node=inp, prediction_node=out)
    agent = ModelAgent(_model, radius=3)
    assert agent.patch_shape == patch and not agent.recurrent
    want = _model.predict(manual(patches))
    got = agent(patches)
    np.testing.assert_allclose(got.directions, want[:, :3], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.radii, want[:, 3], rtol=1e-5, atol=1e-6)


def test_radius_from_a_separate_node_with_the_radius_activation(_model):
    inp = nm.Input((None, 1, 3, 5, 5), "b,f,z,y,x", name="patch")
    hidden = nm.Perceptron(inp, 6, activation_func="tanh", flatten=True, name="hidden")
    direction = nm.Perceptron(hidden, 3, activation_func="lin", name="direction")
    radius = nm.Perceptron(hidden, 1, activation_func="radius", name="radius")
    _model.designate_nodes(input_node=inp, prediction_node=direction)
    patches = np.random.default_rng(1).standard_normal((3, 3, 5, 5)).astype(np.float32)
    got = ModelAgent(_model, radius="radius")(patches)
    h = hidden(patches[:, None])
    w, b = radius.params["w"].get_value(), radius.params["b"].get_value()
    np.testing.assert_allclose(got.radii, 3 + 15 * np.exp(0.15 * (h @ w + b))[:, 0], rtol=1e-5)
    np.testing.assert_allclose(got.directions, direction(patches[:, None]), rtol=1e-5, atol=1e-6)


def tracing_rnn(steps: int, patch: tuple[int, int, int], n_mem: int = 6):
    """A recurrent agent as ELEKTRONN2 trains it: a sequence of patches, one GRU step per patch."""
    inp = nm.Input((steps, None, 1, *patch), "r,b,f,z,y,x", name="patches")
    inp0, _ = nm.split(inp, "r", index=1, strip_singleton_dims=True, name=["patch_t", "rest"])
    feat = nm.Perceptron(inp0, 8, activation_func="tanh", flatten=True, name="feat")
    mem = nm.InitialState_like(feat, n_mem, name="mem", init_kwargs={"mode": "fix-uni", "scale": 0.5})
    cell = nm.GRU(feat, mem, n_mem, name="cell")
    seq = nm.Scan(cell, mem, in_iterate=inp, in_iterate_0=inp0)
    head = nm.Perceptron(seq, 3, activation_func="lin", name="head", b=[np.array([2.0, 0, 0], np.float32), "const"])
    return inp, head


def test_recurrent_agent_feeds_memory_like_the_full_scan(_model):
    steps, patch = 7, (3, 5, 5)
    inp, head = tracing_rnn(steps, patch)
    _model.designate_nodes(input_node=inp, prediction_node=head)
    agent = ModelAgent(_model)
    assert agent.recurrent and agent.patch_shape == patch
    assert model_manager.current is _model  # the one-step rebuild does not change the current model
    vol = np.random.default_rng(2).standard_normal((30, 30, 30)).astype(np.float32)
    tracer = Tracer(agent, vol, patch, step=1.0, inertia=0.0, max_steps=steps, uturn_cos=-2.0)
    trace = tracer.trace([15.0, 15.0, 15.0], [0.0, 0.6, 0.8])
    assert trace.reason == "max steps" and len(trace.points) == steps + 1
    # what the agent predicted at each step, recovered from the headings (inertia 0)
    local = np.array([frame(trace.directions[k]) @ trace.directions[k + 1] for k in range(steps)])
    # the full Scan model over the patches the tracer cut
    seq = np.stack([sample_patch(vol, trace.points[k], trace.directions[k], patch) for k in range(steps)])
    full = _model.predict(seq[:, None, None])[:, 0]
    full = full / np.linalg.norm(full, axis=1, keepdims=True)
    np.testing.assert_allclose(local, full, atol=1e-4)
    # the memory matters: a fresh memory at every step predicts other directions
    fresh = []
    for k in range(steps):
        agent.reset()
        fresh.append(agent(seq[k:k + 1]).directions[0])
    fresh = np.array(fresh) / np.linalg.norm(fresh, axis=1, keepdims=True)
    np.testing.assert_allclose(fresh[0], full[0], atol=1e-4)
    assert np.abs(fresh[1:] - full[1:]).max() > 1e-2
    # every trace starts with a fresh memory: the same seed gives the same trace
    np.testing.assert_allclose(tracer.trace([15.0, 15.0, 15.0], [0.0, 0.6, 0.8]).points, trace.points)


def test_agent_errors_name_the_problem(_model):
    inp = nm.Input((None, 2, 3, 5, 5), "b,f,z,y,x", name="two_channels")
    out = nm.Perceptron(inp, 3, activation_func="lin", flatten=True, name="out")
    _model.designate_nodes(input_node=inp, prediction_node=out)
    with pytest.raises(ShapeError, match="one-channel"):
        ModelAgent(_model)
    with pytest.raises(ConfigError, match="radius must be"):
        ModelAgent(_model, radius=1)
    with pytest.raises(ConfigError, match="not in model"):
        ModelAgent(_model, radius="nope")
    other = fresh_model("agent-b")
    inp = nm.Input((None, 1, 3, 5, 5), "b,f,z,y,x", name="patch")
    two = nm.Perceptron(inp, 2, activation_func="lin", flatten=True, name="two")
    other.designate_nodes(input_node=inp, prediction_node=two)
    with pytest.raises(ShapeError, match="2 features"):
        ModelAgent(other)
    extra = nm.Input((None, 3), "b,f", name="extra")
    both = nm.Concat([two, extra], name="both")
    other.designate_nodes(input_node=inp, prediction_node=both)
    with pytest.raises(ConfigError, match="one patch input"):
        ModelAgent(other)
    other.designate_nodes(input_node=inp, prediction_node=nm.Input((4,), "f", name="no_batch"))
    with pytest.raises(ShapeError, match="'b' and 'f'"):
        ModelAgent(other)
    with pytest.raises(ConfigError, match="designated"):
        ModelAgent(model_manager.newmodel(f"{_model.name}-empty"))
    model_manager.remove(other.name)


def test_recurrent_agent_refuses_a_new_batch_size_mid_trace(_model):
    inp, head = tracing_rnn(3, (1, 3, 3))
    _model.designate_nodes(input_node=inp, prediction_node=head)
    agent = ModelAgent(_model)
    agent(np.zeros((1, 1, 3, 3), np.float32))
    with pytest.raises(ShapeError, match="reset"):
        agent(np.zeros((2, 1, 3, 3), np.float32))
    agent.reset()
    assert agent(np.zeros((2, 1, 3, 3), np.float32)).directions.shape == (2, 3)
