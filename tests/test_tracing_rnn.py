"""Recurrent tracing agents (examples/tracing_agent_rnn.py): trajectory batches of TracingData's
sequence mode vs the Tracer driven by the ground truth, sample_patch and tracing_target; the
example trained in-process follows unseen tubes when traced by ModelAgent; exact resume; `ekn train`."""

import os
from types import SimpleNamespace

import numpy as np
import pytest

from ekn_core.errors import ConfigError, ShapeError
from ekn_core.shapes import TaggedShape
from ekn_core.trainer.checkpoint import latest_checkpoint
from ekn_core.trainer.config import ExperimentConfig
from ekn_plugins.data.tracing import TracingData, TracingTrajectories
from ekn_plugins.utils.skeleton import TubeSkeleton, frame, sample_patch, tracing_target
from ekn_plugins.utils.tracing import AgentOutput, Tracer, synthetic_tube, synthetic_tubes

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "..", "examples", "tracing_agent_rnn.py")
QUIET = ["history_freq=0", "plot_on=False", "tensorboard=False", "schedules={}"]
STEPS, PATCH = 5, (3, 7, 7)


def node(shape, tags, name="node"):
    return SimpleNamespace(name=name, shape=TaggedShape(shape, tags))


@pytest.fixture(scope="module")
def tubes_data():
    """Two tubes in an anisotropic volume (z voxels twice as long) and one in another volume."""
    rng = np.random.default_rng(5)
    volume, skeletons = synthetic_tubes((24, 48, 64), [(12, 14), (12, 34)], rng=rng)
    volume = volume[::2]  # z voxels of 2 lateral voxels
    halved = [TubeSkeleton.from_path(s.nodes / [2, 1, 1], radius=3.0, step=0.5) for s in skeletons]
    other, skeleton = synthetic_tube((24, 32, 48), rng=rng)
    return [volume, other], [halved, skeleton]


def trajectories(tubes_data, input_tags="r,b,f,z,y,x", target_tags="r,b,f", **kwargs):
    volumes, skeletons = tubes_data
    args = {"aniso_factor": 2.0, "valid_skeletons": [2], "lookahead": 3.0, "walk_step": 1.2, "walk_inertia": 0.4,
            **kwargs}
    shape = [None if t == "b" else STEPS if t == "r" else 1 if t == "f" else 0 for t in input_tags.split(",")]
    sizes = iter(PATCH)
    shape = [next(sizes) if s == 0 else s for s in shape]
    target = [None if t == "b" else STEPS if t == "r" else 3 for t in target_tags.split(",")]
    return TracingData.from_nodes(node(shape, input_tags, "raw"), node(target, target_tags, "target"),
                                  sequence_length=STEPS, volumes=volumes, skeletons=skeletons, **args)


class Oracle(Tracer):
    """The Tracer whose agent predicts the ground truth (physical units, as the data source)."""

    def __init__(self, skeleton, lookahead, *args, **kwargs):
        super().__init__(None, *args, **kwargs)
        self.skeleton, self.lookahead = skeleton, lookahead

    def predict_at(self, patch, position, heading):
        local = tracing_target(self.skeleton, position * self.voxel_size, heading, self.lookahead)
        return AgentOutput(local[None])


LAYOUTS = [  # input tags, target tags, the manual placement of patch t of example i / its target
    ("r,b,f,z,y,x", "r,b,f", lambda x, i, t: x[t, i, 0], lambda y, i, t: y[t, i]),
    ("b,z,r,y,x,f", "b,f,r", lambda x, i, t: x[i, :, t, :, :, 0], lambda y, i, t: y[i, :, t]),
]


@pytest.mark.parametrize("input_tags, target_tags, patch_at, target_at", LAYOUTS)
def test_trajectory_batches_are_the_tracer_following_the_ground_truth(tubes_data, input_tags, target_tags, patch_at,
                                                                      target_at):
    data = trajectories(tubes_data, input_tags, target_tags, walk_jitter=0.0)
    assert isinstance(data, TracingTrajectories)
    n = 6
    rng = np.random.default_rng(7)
    paths = [data.trajectory("train", rng) for _ in range(n)]  # what getbatch draws from the same generator
    x, y = data.getbatch(n, rng=np.random.default_rng(7))
    again = data.getbatch(n, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(again[0], x)
    np.testing.assert_array_equal(again[1], y)
    assert [x.shape, y.shape] == [s for s, _ in data.batch_spec(n)]
    assert {a.track for p in paths for a in p} <= set(data.splits["train"]) and len({p[0].track for p in paths}) > 1
    for i, path in enumerate(paths):
        assert len(path) == STEPS and len({a.track for a in path}) == 1
        track = data.tracks[path[0].track]
        volume, skeleton = data.volumes[track.volume], track.skeleton
        tracer = Oracle(skeleton, data.lookahead, volume, data.patch_shape, data.spacing, step=data.walk_step,
                        inertia=data.walk_inertia, max_steps=STEPS - 1, uturn_cos=-2.0, margin=0.0,
                        voxel_size=data.voxel_size)
        trace = tracer.trace(path[0].position / data.voxel_size, path[0].heading)
        assert trace.reason == "max steps"
        np.testing.assert_allclose([a.position for a in path], trace.points * data.voxel_size, atol=1e-9)
        np.testing.assert_allclose([a.heading for a in path], trace.directions, atol=1e-9)
        for t, agent in enumerate(path):
            patch = sample_patch(volume, agent.position / data.voxel_size, agent.heading, PATCH, data.spacing,
                                 voxel_size=data.voxel_size)
            np.testing.assert_allclose(patch_at(x, i, t), patch, atol=1e-6)
            np.testing.assert_allclose(target_at(y, i, t), tracing_target(skeleton, agent.position, agent.heading,
                                                                          data.lookahead), atol=1e-6)


def test_jittered_steps_stay_within_the_jitter_of_the_target(tubes_data):
    data = trajectories(tubes_data, walk_jitter=0.4)
    rng = np.random.default_rng(3)
    angles = []
    for source in ("train", "valid"):
        for _ in range(20):
            path = data.trajectory(source, rng)
            assert {a.track for a in path} <= set(data.splits[source])
            skeleton, a = data.tracks[path[0].track].skeleton, data.walk_inertia
            for before, after in zip(path, path[1:]):
                np.testing.assert_allclose(np.linalg.norm(after.position - before.position), data.walk_step)
                np.testing.assert_allclose(after.position - before.position, data.walk_step * after.heading)
                dist, idx = skeleton.nearest(after.position[None])
                assert dist[0] <= skeleton.radii[idx[0]]
                # the proposal p the heading turned to: s * h1 = a * h0 + (1 - a) p with |p| = 1
                c = before.heading @ after.heading
                s = a * c + np.sqrt(a * a * c * c - a * a + (1 - a) ** 2)
                proposal = (s * after.heading - a * before.heading) / (1 - a)
                goal = frame(before.heading).T @ tracing_target(skeleton, before.position, before.heading,
                                                                data.lookahead)
                angles.append(np.arccos(np.clip(proposal @ goal, -1, 1)))
    assert max(angles) <= 0.4 + 1e-6 and max(angles) > 0.3


def test_sequence_mode_errors_name_the_problem(tubes_data):
    volumes, skeletons = tubes_data
    common = {"volumes": volumes, "skeletons": skeletons, "aniso_factor": 2.0}
    seq_in, seq_target = node((STEPS, None, 1, *PATCH), "r,b,f,z,y,x"), node((STEPS, None, 3), "r,b,f")
    flat_in, flat_target = node((None, 1, *PATCH), "b,f,z,y,x"), node((None, 3), "b,f")
    with pytest.raises(ConfigError, match=r"'r' axis .*sequence_length'\] = 5"):
        TracingData.from_nodes(seq_in, seq_target, **common)
    with pytest.raises(ConfigError, match="sequence_length=5 needs a model whose input has an 'r' axis"):
        TracingData.from_nodes(flat_in, seq_target, sequence_length=STEPS, **common)
    with pytest.raises(ConfigError, match="sequence_length=4 needs .* 4 steps"):
        TracingData.from_nodes(seq_in, seq_target, sequence_length=4, **common)
    with pytest.raises(ConfigError, match="drop one of them"):
        TracingData.from_nodes(seq_in, seq_target, sequence_length=STEPS, sequence_training=3, **common)
    for target in (flat_target, node((STEPS + 1, None, 3), "r,b,f"), node((STEPS, None, 2), "r,b,f")):
        with pytest.raises(ShapeError, match="target node of shape \\(5 steps, batch, 3 or 4\\)"):
            TracingData.from_nodes(seq_in, target, sequence_length=STEPS, **common)
    with pytest.raises(ShapeError, match="target node of shape \\(batch, 3 or 4\\)"):
        TracingData.from_nodes(flat_in, seq_target, **common)
    with pytest.raises(ConfigError, match="have none"):
        TracingTrajectories(PATCH, sequence_length=STEPS, input_tags="b,f,z,y,x", **common)
    with pytest.raises(ConfigError, match="needs sequence_length"):
        TracingData(PATCH, input_tags="r,b,f,z,y,x", **common)
    with pytest.raises(ConfigError, match="sequence_length must be"):
        TracingTrajectories(PATCH, sequence_length=0, input_tags="r,b,f,z,y,x", **common)
    with pytest.raises(ConfigError, match="walk_jitter"):
        TracingTrajectories(PATCH, sequence_length=2, walk_jitter=-1, input_tags="r,b,f,z,y,x", **common)
    with pytest.raises(ConfigError, match="target_tags"):
        TracingTrajectories(PATCH, sequence_length=2, target_tags="r,b", input_tags="r,b,f,z,y,x", **common)
    long = TracingTrajectories(PATCH, sequence_length=200, input_tags="r,b,f,z,y,x", **common)
    long.max_attempts = 3
    with pytest.raises(ShapeError, match="3 trajectories of 200 steps .* left the tube or the volume"):
        long.getbatch(1)


# ------------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def tubes(tmp_path_factory):
    from ekn_plugins.data.synth import write_tube_dataset

    folder = str(tmp_path_factory.mktemp("tubes"))
    write_tube_dataset(folder, n_volumes=4, seed=0)
    return folder


def trainer(tubes, monkeypatch, save_path, name, *overrides, resume=False):
    pytest.importorskip("tensorflow")
    from ekn_core.trainer.loop import Trainer

    monkeypatch.setenv("EKN_TUBES_DIR", tubes)  # read by the example config
    cfg = ExperimentConfig.from_file(EXAMPLE, [f"save_path={str(save_path)!r}", f"save_name={name!r}", *overrides])
    return Trainer(cfg, resume=resume)


def followed(model, data, tubes):
    """Skeleton length the Tracer with ``model`` (a recurrent ModelAgent) follows on each tube."""
    from ekn_plugins.utils.model_agent import ModelAgent
    from ekn_plugins.utils.tracing import followed_length

    predictor = ModelAgent(model)
    assert predictor.recurrent and predictor.patch_shape == data.patch_shape
    lengths = []
    for volume, skeleton in tubes:
        i = int(np.searchsorted(skeleton.arc, 3.0))
        trace = Tracer(predictor, volume, predictor.patch_shape, data.spacing, step=data.walk_step,
                       inertia=data.walk_inertia).trace(skeleton.points[i], skeleton.tangents[i])
        lengths.append(followed_length(trace.points, skeleton, tolerance=3.0))
    return np.array(lengths)


def test_trained_recurrent_agent_follows_unseen_tubes(tubes, monkeypatch, tmp_path):
    rng = np.random.default_rng(100)
    unseen = [synthetic_tube((32, 48, 64), rng=rng) for _ in range(3)]
    lengths = np.array([s.arc[-1] - s.arc[int(np.searchsorted(s.arc, 3.0))] for _, s in unseen])
    tr = trainer(tubes, monkeypatch, tmp_path, "run", "n_steps=80", *QUIET)
    try:
        before = followed(tr.model, tr.data, unseen)
        assert tr.run() == "finished"
    finally:
        tr.close()
    after = followed(tr.model, tr.data, unseen)
    assert np.all(after >= 0.85 * lengths), (after, lengths)
    assert np.all(after >= 3 * before + 10), (after, before)


def test_trajectory_training_resumes_exactly(tubes, monkeypatch, tmp_path):
    common = ["data_init_kwargs.sequence_length=3", "model_load_args={'patch_size': (3, 7, 7), 'steps': 3, "
              "'n_mem': 8, 'width': 0.5}", "batch_size=3", "monitor_batch_size=4", *QUIET, "history_freq=2"]
    whole = trainer(tubes, monkeypatch, tmp_path, "whole", "n_steps=6", "prefetch_to_device=True",
                    "background_processes=2", *common)
    try:
        whole.run()
    finally:
        whole.close()
    part = trainer(tubes, monkeypatch, tmp_path, "part", "n_steps=3", *common)
    try:
        part.run()
    finally:
        part.close()
    assert latest_checkpoint(part.run_dir.checkpoints) is not None
    rest = trainer(tubes, monkeypatch, tmp_path, "part", "n_steps=6", *common, resume=True)
    try:
        assert rest.step == 3
        rest.run()
    finally:
        rest.close()
    for key, param in whole.model.all_params.items():
        np.testing.assert_allclose(rest.model.all_params[key].get_value(), param.get_value(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(rest.history.timeline["loss"], whole.history.timeline["loss"], rtol=1e-6)


@pytest.mark.slow
def test_ekn_train_runs_the_recurrent_example(tubes, tmp_path):
    from test_tracing_training import train_with_cli

    train_with_cli(EXAMPLE, tubes, tmp_path, batch_size=2)
