"""What TracingData records in the model file reaches the Tracer of a ModelAgent: integer raw is
traced with the grey values of training (uint8 / 255, against sample_patch of the scaled array and
TracingData's own patch), raw of another dtype range is refused unless its range is stated, and
the voxel size and patch spacing of training are the tracer's defaults."""

import numpy as np
import pytest

from ekn_core.errors import ConfigError
from ekn_core.node import set_seed
from ekn_plugins.data.tracing import Agent, TracingData
from ekn_plugins.utils.skeleton import TubeSkeleton, sample_patch
from ekn_plugins.utils.tracing import Tracer

pytest.importorskip("tensorflow")


class Seen(Tracer):
    """A Tracer that keeps the patches it cuts."""

    def predict_at(self, patch, position, heading):
        self.patches = [*getattr(self, "patches", []), patch]
        return super().predict_at(patch, position, heading)


def agent_model(name):
    import ekn_core.neuromancer as nm

    model = nm.model_manager.newmodel(name)
    inp = nm.Input((None, 1, 3, 7, 7), "b,f,z,y,x", name="raw")
    out = nm.Perceptron(inp, 3, activation_func="lin", flatten=True, name="direction")
    target = nm.Input_like(out, name="target")
    loss = nm.AggregateLoss(nm.CosineDistance(out, target))
    model.designate_nodes(input_node=inp, target_node=target, loss_node=loss, prediction_node=out)
    return model, inp, target


def test_the_tracer_sees_the_volume_as_training_did(tmp_path):
    import ekn_core.neuromancer as nm
    from ekn_plugins.utils.model_agent import ModelAgent

    raw = np.random.default_rng(0).integers(0, 256, (20, 24, 30)).astype(np.uint8)
    skeleton = TubeSkeleton.from_path([[10, 12, 3], [10, 12, 26]], radius=2.0)
    model, inp, target = agent_model("record_agent")
    data = TracingData.from_nodes(inp, target, volumes=[raw], skeletons=[skeleton], aniso_factor=2.0, spacing=1.5)
    model.save(str(tmp_path / "agent.mdl"))
    agent = ModelAgent(nm.modelload(str(tmp_path / "agent.mdl")))
    record = agent.training_data
    assert record == data.training_data()
    assert [s.describe() for s in record.input_scaling] == ["uint8 raw mapped from 0..255"]
    assert record.voxel_size == (2.0, 1.0, 1.0) and record.patch_spacing == 1.5

    tracer = Seen(agent, raw, agent.patch_shape, max_steps=1)  # voxel size and spacing from the record
    assert tracer.spacing == 1.5 and tracer.voxel_size.tolist() == [2.0, 1.0, 1.0]
    start, heading = np.array([5.0, 12.0, 15.0]), np.array([0.3, 0.2, 1.0])
    tracer.trace(start, heading)
    want = sample_patch(raw.astype(np.float32) / 255, start, heading, (3, 7, 7), 1.5, (2.0, 1.0, 1.0))
    np.testing.assert_allclose(tracer.patches[0], want, atol=1e-6)
    trained, _ = data.example(Agent(0, start * [2.0, 1.0, 1.0], heading / np.linalg.norm(heading)))
    np.testing.assert_allclose(tracer.patches[0], trained, atol=1e-6)

    with pytest.raises(ConfigError, match="uint16 raw, whose range 0..65535 would be mapped to .* trained on uint8"):
        Tracer(agent, raw.astype(np.uint16), agent.patch_shape)
    stated = Seen(agent, raw.astype(np.uint16), agent.patch_shape, grey_range=(0, 255), max_steps=1)
    stated.trace(start, heading)
    np.testing.assert_allclose(stated.patches[0], want, atol=1e-6)
    given = Tracer(agent, raw, agent.patch_shape, spacing=1.0, voxel_size=(1, 1, 1))  # what is given wins
    assert given.spacing == 1.0 and given.voxel_size.tolist() == [1.0, 1.0, 1.0]


def test_a_predictor_without_a_record_sees_integer_raw_scaled_by_its_dtype():
    raw = np.random.default_rng(1).integers(0, 65536, (12, 12, 12)).astype(np.uint16)
    forward = lambda p: np.tile([1.0, 0.0, 0.0], (len(p), 1))
    tracer = Seen(forward, raw, (3, 5, 5), max_steps=1)
    assert tracer.spacing == 1.0 and tracer.voxel_size.tolist() == [1.0, 1.0, 1.0]
    tracer.trace([6.0, 6.0, 6.0], [0.0, 0.5, 1.0])
    want = sample_patch(raw.astype(np.float64) / 65535, [6.0, 6.0, 6.0], [0.0, 0.5, 1.0], (3, 5, 5))
    np.testing.assert_allclose(tracer.patches[0], want, atol=1e-6)
    floats = raw.astype(np.float32)
    assert Tracer(forward, floats, (3, 5, 5)).volume is floats  # float data are used as they are


def test_a_direction_and_radius_head_learns_the_radius():
    """A 4-feature target (direction, radius in patch samples) trains a radius head through ekn's
    losses; ModelAgent(radius=3) then gives the Tracer radii of unseen tubes of other sizes."""
    import ekn_core.neuromancer as nm
    from ekn_plugins.utils.model_agent import ModelAgent
    from ekn_plugins.utils.tracing import synthetic_tube

    rng = np.random.default_rng(0)
    tubes = [synthetic_tube((24, 32, 40), radius=r, rng=rng) for r in (1.5, 3.0, 4.5)]
    set_seed(0)  # initial weights independent of the tests that ran before in the process
    model = nm.model_manager.newmodel("radius_agent")
    inp = nm.Input((None, 1, 3, 11, 11), "b,f,z,y,x", name="raw")
    out = nm.Perceptron(nm.Perceptron(inp, 32, flatten=True), 4, activation_func="lin", name="direction_radius")
    target = nm.Input_like(out, name="target")
    direction, radius = nm.split(out, "f", index=3, name=["direction", "radius"])
    t_direction, t_radius = nm.split(target, "f", index=3, name=["t_direction", "t_radius"])
    loss = nm.AggregateLoss([nm.CosineDistance(direction, t_direction), nm.SquaredLoss(radius, t_radius)])
    model.designate_nodes(input_node=inp, target_node=target, loss_node=loss, prediction_node=out)
    data = TracingData.from_nodes(inp, target, volumes=[v for v, _ in tubes], skeletons=[s for _, s in tubes], seed=0)
    agent = ModelAgent(model, radius=3)
    test = [data.getbatch(64, rng=np.random.default_rng(k)) for k in range(3)]
    error = lambda: np.mean([np.abs(agent(x[:, 0]).radii - y[:, 3]).mean() for x, y in test])
    constant = np.mean([np.abs(y[:, 3] - 3.0).mean() for _, y in test])  # the best constant guess: about 1
    model.lr = 3e-3
    for _ in range(150):
        model.trainingstep(*data.getbatch(32), optimiser="Adam")
    assert error() < 0.4 * constant, (error(), constant)
    for r in (2.0, 4.0):  # unseen tubes: Trace.radii are in voxels
        vol, skel = synthetic_tube((24, 32, 40), radius=r, rng=np.random.default_rng(50))
        trace = Tracer(agent, vol, agent.patch_shape, max_steps=20).trace(skel.points[10], skel.tangents[10])
        assert np.median(trace.radii) == pytest.approx(r, abs=0.5)
