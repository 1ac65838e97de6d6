"""TracingData / TracingSequence: targets against a brute-force nearest point + lookahead, patches
against scipy's map_coordinates (anisotropic), positions inside the tube, layouts, determinism,
the agent state round trip, file inputs (HDF5 region + NML), clear errors, and `ekn data tubes`."""

import functools
import json

import h5py
import numpy as np
import pytest
from forbidding_volume import Forbidding
from scipy.ndimage import map_coordinates

from ekn_core.cli import main
from ekn_core.errors import ConfigError, ShapeError
from ekn_core.shapes import TaggedShape
from ekn_core.volumes import open_volume
from ekn_plugins.data.tracing import Agent, TracingData, TracingSequence, TracingTrajectories
from ekn_plugins.data.workers import BackgroundBatches, batch_rng
from ekn_plugins.readers.knossos.nml import Skeleton
from ekn_plugins.utils.skeleton import TubeSkeleton, frame, trace_to_tree
from ekn_plugins.utils.tracing import Tracer, synthetic_tube

#: A bent path (z, y, x voxels) through a 20×30×40 volume, radius 3; z spacing 2 (aniso).
PATH = np.array([[8.0, 12.0, 4.0], [10.0, 15.0, 20.0], [7.0, 20.0, 35.0]])
SHAPE = (20, 30, 40)


def volume(seed=0):
    return np.random.default_rng(seed).random(SHAPE).astype(np.float32)


def dense_polyline(points, step=0.01):
    """Points every ``step`` along the path and the unit tangent of their segment (the reference)."""
    out, tangents = [], []
    for a, b in zip(points[:-1], points[1:]):
        n = int(np.ceil(np.linalg.norm(b - a) / step))
        t = np.arange(n + 1)[:, None] / n
        out.append(a + t * (b - a))
        tangents.append(np.broadcast_to((b - a) / np.linalg.norm(b - a), (n + 1, 3)))
    return np.concatenate(out), np.concatenate(tangents)


class Node:
    """A stand-in for a model node (what from_nodes reads)."""

    def __init__(self, shape, tags):
        self.shape = TaggedShape(shape, tags)


def test_targets_match_brute_force_nearest_point_and_lookahead():
    aniso = 2.0
    data = TracingData((3, 5, 5), [volume()], [TubeSkeleton.from_path(PATH, radius=3.0)], aniso_factor=aniso,
                       lookahead=4.0, skeleton_step=0.05, max_turn=0.6, seed=1)
    physical = PATH * [aniso, 1, 1]
    line, tangents = dense_polyline(physical)
    rng = np.random.default_rng(2)
    checked = 0
    for _ in range(200):
        agent = data.sample_agent("train", rng)
        dist = np.linalg.norm(line - agent.position, axis=1)
        near = np.argsort(dist)[:1][0]
        others = dist[np.any(np.abs(tangents - tangents[near]) > 1e-9, axis=1)]
        if len(others) and others.min() - dist[near] < 0.2:
            continue  # about equally close to both segments: the nearest one is ambiguous
        tangent = tangents[near] if tangents[near] @ agent.heading >= 0 else -tangents[near]
        goal = line[near] + 4.0 * tangent - agent.position
        goal /= np.linalg.norm(goal)
        _, target = data.example(agent)
        np.testing.assert_allclose(frame(agent.heading).T @ target, goal, atol=0.02)  # target is in the patch frame
        np.testing.assert_allclose(target, [goal @ axis for axis in frame(agent.heading)], atol=0.02)
        checked += 1
    assert checked > 150


def test_patch_is_map_coordinates_of_the_oriented_resampled_grid():
    vol, aniso, spacing = volume(3), 2.0, 1.3
    data = TracingData((3, 5, 4), [vol], [TubeSkeleton.from_path(PATH, radius=2.0)], aniso_factor=aniso,
                       spacing=spacing, seed=0)
    rng = np.random.default_rng(4)
    for _ in range(5):
        agent = data.sample_agent("train", rng)
        axes = frame(agent.heading)
        grid = np.stack(np.meshgrid(*[(np.arange(s) - (s - 1) / 2) * spacing for s in (3, 5, 4)], indexing="ij"), -1)
        physical = agent.position + grid @ axes
        coords = np.moveaxis(physical / [aniso, 1.0, 1.0], -1, 0)
        want = map_coordinates(vol.astype(np.float64), coords, order=1, mode="constant", cval=0.0)
        patch, _ = data.example(agent)
        np.testing.assert_allclose(patch, want, atol=1e-5)
    # the batch is the same agents' patches: getbatch = sample_agent + example, in the input layout
    patches, targets = data.getbatch(3, rng=np.random.default_rng(9))
    rng = np.random.default_rng(9)
    for i in range(3):
        patch, target = data.example(data.sample_agent("train", rng))
        np.testing.assert_array_equal(patches[i, 0], patch)
        np.testing.assert_array_equal(targets[i], target.astype(np.float32))


def test_positions_lie_inside_the_tube_and_headings_follow_the_skeleton():
    radii = [2.0, 4.0, 3.0]
    data = TracingData((3, 5, 5), [volume()], [TubeSkeleton.from_path(PATH, radius=radii)], seed=0)
    line, _ = dense_polyline(PATH)
    seg_len = np.linalg.norm(np.diff(PATH, axis=0), axis=1)  # radii interpolated along each segment
    arc = np.concatenate([[0], np.cumsum(seg_len)])
    line_r = np.interp(np.concatenate([np.linspace(arc[i], arc[i + 1], int(np.ceil(seg_len[i] / 0.01)) + 1)
                                       for i in range(2)]), arc, radii)
    rng = np.random.default_rng(5)
    depth = []
    for _ in range(300):
        agent = data.sample_agent("train", rng)
        dist = np.linalg.norm(line - agent.position, axis=1)
        assert np.min(dist - line_r) <= 0.02, "the position lies outside the tube"
        depth.append(np.min(dist / line_r))
    assert max(depth) > 0.8 and min(depth) < 0.3  # the whole cross-section is used
    straight = TracingData((3, 5, 5), [volume()], [TubeSkeleton.from_path([[10, 15, 3], [10, 15, 37]])],
                           max_turn=0.4, seed=0)
    headings = np.array([straight.sample_agent("train", rng).heading for _ in range(300)])
    np.testing.assert_allclose(np.linalg.norm(headings, axis=1), 1.0)
    angles = np.arccos(np.minimum(np.abs(headings[:, 2]), 1.0))
    assert angles.max() <= 0.4 + 1e-9 and angles.max() > 0.37 and 0.16 < angles.mean() < 0.24  # uniform in [0, 0.4]
    assert 0.4 < np.mean(headings[:, 2] > 0) < 0.6  # both ways along the skeleton


def test_validation_split_is_by_skeleton():
    second = TubeSkeleton.from_path([[5.0, 25.0, 5.0], [5.0, 25.0, 35.0]], radius=1.0)
    data = TracingData((3, 5, 5), [volume(), volume(1)], [TubeSkeleton.from_path(PATH), [second, second]],
                       valid_skeletons=[2], seed=0)
    assert data.splits == {"train": [0, 1], "valid": [2]}
    rng = np.random.default_rng(0)
    assert {data.sample_agent("valid", rng).track for _ in range(30)} == {2}
    assert {data.sample_agent("train", rng).track for _ in range(60)} == {0, 1}
    with pytest.raises(ConfigError, match="no valid skeletons"):
        TracingData((3, 5, 5), [volume()], [TubeSkeleton.from_path(PATH)]).getbatch(2, "valid")


@pytest.mark.parametrize("tags, shape", [("b,f,z,y,x", (2, 1, 3, 5, 4)), ("b,z,y,x,f", (2, 3, 5, 4, 1)),
                                         ("b,z,x,y", (2, 3, 5, 4))])
def test_layout_follows_the_input_tags(tags, shape):
    data = TracingData((3, 5, 4), [volume()], [TubeSkeleton.from_path(PATH)], input_tags=tags, seed=0)
    patches, targets = data.getbatch(2, rng=np.random.default_rng(1))
    reference = TracingData((3, 5, 4), [volume()], [TubeSkeleton.from_path(PATH)], seed=0)
    plain, _ = reference.getbatch(2, rng=np.random.default_rng(1))
    assert patches.shape == shape and targets.shape == (2, 3)
    np.testing.assert_array_equal(patches.reshape(2, 3, 5, 4), plain[:, 0])  # patch axes keep their order
    assert [(s, d) for s, d in data.batch_spec(2)] == [(shape, np.float32), ((2, 3), np.float32)]


def test_from_nodes_takes_geometry_and_checks_it():
    target = Node((None, 3), "b,f")
    data = TracingData.from_nodes(Node((None, 1, 3, 7, 7), "b,f,z,y,x"), target, volumes=[volume()],
                                  skeletons=[TubeSkeleton.from_path(PATH)])
    assert type(data) is TracingData and data.patch_shape == (3, 7, 7)
    flat = TracingData.from_nodes(Node((None, 1, 7, 9), "b,f,y,x"), target, volumes=[volume()],
                                  skeletons=[TubeSkeleton.from_path(PATH)], seed=0)
    patches, _ = flat.getbatch(2)
    assert flat.patch_shape == (1, 7, 9) and patches.shape == (2, 1, 7, 9)  # a slice across the heading
    seq = TracingData.from_nodes(Node((None, 1, 3, 7, 7), "b,f,z,y,x"), target, volumes=[volume()],
                                 skeletons=[TubeSkeleton.from_path(PATH)], sequence_training=3)
    assert type(seq) is TracingSequence and seq.sequence_training == 3
    kw = {"volumes": [volume()], "skeletons": [TubeSkeleton.from_path(PATH)]}
    with pytest.raises(ShapeError, match="2 or 3 spatial axes"):
        TracingData.from_nodes(Node((None, 1, 7), "b,f,x"), target, **kw)
    with pytest.raises(ShapeError, match="2 or 3 spatial axes of fixed size"):
        TracingData.from_nodes(Node((None, 1, 3, None, 7), "b,f,z,y,x"), target, **kw)
    with pytest.raises(ShapeError, match="one-channel"):
        TracingData.from_nodes(Node((None, 2, 3, 7, 7), "b,f,z,y,x"), target, **kw)
    with pytest.raises(ShapeError, match=r"target node of shape \(batch, 3 or 4\)"):
        TracingData.from_nodes(Node((None, 1, 3, 7, 7), "b,f,z,y,x"), Node((None, 2), "b,f"), **kw)
    with pytest.raises(ShapeError, match=r"target node of shape \(batch, 3 or 4\)"):
        TracingData.from_nodes(Node((None, 1, 3, 7, 7), "b,f,z,y,x"), None, **kw)
    with pytest.raises(ConfigError, match="sequence_training must be an integer"):
        TracingData.from_nodes(Node((None, 1, 3, 7, 7), "b,f,z,y,x"), target, sequence_training=-1, **kw)


def test_batches_are_a_function_of_the_rng():
    data = TracingData((3, 5, 5), [volume()], [TubeSkeleton.from_path(PATH)], seed=0)
    a = data.getbatch(4, rng=np.random.default_rng(7))
    b = data.getbatch(4, rng=np.random.default_rng(7))
    c = data.getbatch(4, rng=np.random.default_rng(8))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[1], c[1])


def turned(agent, local, inertia=0.3):
    """Where a walker goes after predicting ``local`` (patch frame): computed here independently."""
    world = local[0] * agent.heading + frame(agent.heading)[1:].T @ local[1:]
    heading = inertia * agent.heading + (1 - inertia) * world / np.linalg.norm(world)
    heading /= np.linalg.norm(heading)
    return agent.position + 1.5 * heading, heading


def test_sequence_agents_follow_their_predictions_until_they_end():
    skel = TubeSkeleton.from_path([[10.0, 15.0, 3.0], [10.0, 15.0, 37.0]], radius=3.0)
    kw = dict(patch_shape=(3, 5, 5), volumes=[volume()], skeletons=[skel], max_turn=0.0, position_spread=0.0)
    data = TracingSequence(sequence_training=3, **kw)
    _, targets = data.getbatch(4, rng=np.random.default_rng(0))
    replay = np.random.default_rng(0)
    first = [data.sample_agent("train", replay) for _ in range(4)]  # the batch's fresh agents
    tilted = np.tile([1.0, 0.4, -0.3], (4, 1))  # 27 degrees off the heading
    data.feedback({"direction": tilted})
    for agent, new, local in zip(first, data.agents, tilted):
        position, heading = turned(agent, local)
        np.testing.assert_allclose(new.position, position, atol=1e-6)
        np.testing.assert_allclose(new.heading, heading, atol=1e-6)
        assert new.age == 1 and new.track == agent.track
    rng = np.random.default_rng(1)
    patches, _ = data.getbatch(4, rng=rng)  # the next batch continues the agents where they are now
    for i, agent in enumerate(data.agents):
        np.testing.assert_array_equal(patches[i, 0], data.example(agent)[0])
    data.feedback({"direction": targets.astype(np.float64)})
    assert all(a is not None and a.age == 2 for a in data.agents)
    data.getbatch(4, rng=rng)
    data.feedback({"direction": targets.astype(np.float64)})  # the 3rd step ends them (sequence_training = 3)
    assert data.agents == [None] * 4
    # predictions straight up (+z) leave the radius-3 tube at the 3rd step (1.38 + 1.49 + 1.5 voxels up)
    data = TracingSequence(sequence_training=10, **kw)
    replay = np.random.default_rng(2)
    agents = [data.sample_agent("train", replay) for _ in range(5)]
    data.getbatch(5, rng=np.random.default_rng(2))
    for step in range(3):
        assert all(a is not None for a in agents)
        data.feedback({"direction": np.array([frame(a.heading) @ [1.0, 0.0, 0.0] for a in agents])})
        agents = data.agents
        data.getbatch(5, rng=rng)
    assert data.agents == [None] * 5


def test_sequence_state_round_trips_through_json():
    kw = dict(patch_shape=(3, 5, 5), volumes=[volume()], skeletons=[TubeSkeleton.from_path(PATH, radius=3.0)],
              sequence_training=4, seed=0)
    data, copy = TracingSequence(**kw), TracingSequence(**kw)
    predict = np.random.default_rng(1)
    for step in range(3):
        _, targets = data.getbatch(6, rng=np.random.default_rng([0, step]))
        data.feedback({"d": targets + predict.normal(scale=0.3, size=targets.shape)})
    assert any(a is not None and a.age > 0 for a in data.agents)
    copy.set_state(json.loads(json.dumps(data.get_state())))
    for step in range(3, 6):
        a = data.getbatch(6, rng=np.random.default_rng([0, step]))
        b = copy.getbatch(6, rng=np.random.default_rng([0, step]))
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
        out = {"d": a[1] + predict.normal(scale=0.3, size=a[1].shape)}
        data.feedback(out)
        copy.feedback(out)
    assert json.dumps(data.get_state()) == json.dumps(copy.get_state())
    with pytest.raises(ConfigError, match="names skeleton 5"):
        copy.set_state({"agents": [[5, [0, 0, 0], [1, 0, 0], 0]]})


def test_sequence_monitor_batches_are_fresh_agents_and_leave_the_training_agents_alone():
    kw = dict(patch_shape=(3, 5, 5), volumes=[volume()], skeletons=[TubeSkeleton.from_path(PATH, radius=3.0)], seed=0)
    data, untrained = TracingSequence(sequence_training=5, **kw), TracingSequence(sequence_training=5, **kw)
    for step in range(3):
        _, targets = data.getbatch(4, rng=np.random.default_rng([0, step]))
        data.feedback({"d": targets.astype(np.float64)})
    state = data.get_state()
    assert sum(a is not None and a.age == 3 for a in data.agents) >= 2
    # the same generator gives the same monitor batch whatever the agents did: fresh agents, as TracingData draws
    want = TracingData(**kw).getbatch(6, rng=np.random.default_rng(9))
    for source in (data, untrained):
        for x, y in zip(source.getbatch(6, rng=np.random.default_rng(9), monitor=True), want):
            np.testing.assert_array_equal(x, y)
    assert data.get_state() == state
    # a monitor batch between a training batch and its feedback changes nothing for training
    agents = list(data.agents)
    patches, targets = data.getbatch(4, rng=np.random.default_rng(10))
    data.getbatch(6, rng=np.random.default_rng(11), monitor=True)
    data.feedback({"d": targets.astype(np.float64)})
    for i, agent in enumerate(agents):
        if agent is not None:
            np.testing.assert_array_equal(patches[i, 0], data.example(agent)[0])
            assert data.agents[i] is None or data.agents[i].age == agent.age + 1


def test_sequence_feedback_errors():
    data = TracingSequence((3, 5, 5), [volume()], [TubeSkeleton.from_path(PATH)], sequence_training=2)
    data.getbatch(2)
    with pytest.raises(ConfigError, match="debug_outputs=\\[prediction\\]"):
        data.feedback({})
    with pytest.raises(ConfigError, match="several debug outputs"):
        data.feedback({"a": np.ones((2, 3)), "b": np.ones((2, 3))})
    with pytest.raises(ShapeError, match=r"need \(2, 3\)"):
        data.feedback({"a": np.ones((3, 3))})
    with pytest.raises(ConfigError, match="direction_output 'x'"):
        TracingSequence((3, 5, 5), [volume()], [TubeSkeleton.from_path(PATH)], sequence_training=2,
                        direction_output="x").feedback({"a": np.ones((2, 3))})
    with pytest.raises(ConfigError, match="sequence_training must be > 1"):
        TracingSequence((3, 5, 5), [volume()], [TubeSkeleton.from_path(PATH)], sequence_training=1)


def test_files_with_a_region_and_nml_skeletons_equal_the_arrays(tmp_path):
    vol = (volume(6) * 255).astype(np.uint8)
    with h5py.File(tmp_path / "raw.h5", "w") as f:
        f["raw"] = vol
    nml = Skeleton()
    trace_to_tree(PATH, nml, radius=2.5)
    lonely = nml.add_tree(comment="a seed marker")
    lonely.add_node((1, 1, 1))
    nml.write(str(tmp_path / "skel.nml"))
    lo, hi = (2, 4, 1), (18, 28, 39)
    from_files = TracingData((3, 5, 5), [("raw.h5", "raw", (lo, hi))], ["skel.nml"], d_path=str(tmp_path),
                             aniso_factor=2.0, seed=0)
    region = vol[2:18, 4:28, 1:39].astype(np.float32) / 255
    from_arrays = TracingData((3, 5, 5), [region], [TubeSkeleton.from_path(PATH - lo, radius=2.5)],
                              aniso_factor=2.0, seed=0)
    assert len(from_files.tracks) == 1  # the one-node tree is skipped
    for x, y in zip(from_files.getbatch(5, rng=np.random.default_rng(3)),
                    from_arrays.getbatch(5, rng=np.random.default_rng(3))):
        np.testing.assert_allclose(x, y, atol=1e-6)


def test_nml_skeletons_of_a_knossos_volume_opened_at_mag_2_are_converted_to_its_voxels(tmp_path):
    """NML positions and radii are mag-1 voxels; read with a KNOSSOS data set at mag 2 (and a region
    of it), they equal the skeleton in mag-2 voxels with the mag-2 array."""
    from ekn_core.volumes import create_volume

    mag1 = np.random.default_rng(8).integers(0, 256, (40, 60, 80)).astype(np.uint8)
    root = str(tmp_path / "em")
    with create_volume(root, shape=mag1.shape, dtype="uint8", reader="knossos", cube_shape=(16, 16, 16),
                       num_mags=2) as arr:
        arr[:] = mag1
    with open_volume(root, mag=2) as back:
        mag2 = back[:]
    assert mag2.shape == SHAPE
    nml = Skeleton()
    trace_to_tree(PATH * 2, nml, radius=5.0)  # mag-1 voxels
    nml.write(str(tmp_path / "skel.nml"))
    lo, hi = (2, 4, 1), (18, 28, 39)
    kw = dict(aniso_factor=2.0, radius_target=True, seed=0)
    from_files = TracingData((3, 5, 5), [("em", None, (lo, hi), {"mag": 2})], ["skel.nml"], d_path=str(tmp_path), **kw)
    region = mag2[2:18, 4:28, 1:39].astype(np.float32) / 255
    from_arrays = TracingData((3, 5, 5), [region], [TubeSkeleton.from_path(PATH - lo, radius=2.5)], **kw)
    np.testing.assert_allclose(from_files.tracks[0].skeleton.nodes, from_arrays.tracks[0].skeleton.nodes)
    for x, y in zip(from_files.getbatch(5, rng=np.random.default_rng(3)),
                    from_arrays.getbatch(5, rng=np.random.default_rng(3))):
        np.testing.assert_allclose(x, y, atol=1e-6)


@pytest.mark.parametrize("cls, kw", [(TracingData, {}), (TracingSequence, {"sequence_training": 3}),
                                     (TracingTrajectories, {"sequence_length": 4, "input_tags": "r,b,f,z,y,x"})])
def test_volumes_stay_lazy_and_batches_equal_the_in_memory_ones(cls, kw):
    vol = (volume(7) * 255).astype(np.uint8)
    lazy = Forbidding(vol, limit=vol.size // 20)
    with pytest.raises(MemoryError):
        np.asarray(lazy[:, :, :])
    skel = TubeSkeleton.from_path(PATH, radius=2.5)
    reference = vol.astype(np.float32) / np.float32(255)  # the grey-value scaling, applied to the whole volume
    args = dict(patch_shape=(3, 5, 5), skeletons=[skel], aniso_factor=2.0, spacing=1.2, **kw)
    data, want = cls(volumes=[lazy], **args), cls(volumes=[reference], **args)
    assert data.volumes[0].shape == SHAPE and data.volumes[0].dtype == np.float32
    for step in range(3):
        got, ref = data.getbatch(4, rng=np.random.default_rng(step)), want.getbatch(4, rng=np.random.default_rng(step))
        for x, y in zip(got, ref):
            np.testing.assert_array_equal(x, y)
        if kw.get("sequence_training"):
            for d in (data, want):
                d.feedback({"d": ref[1].astype(np.float64)})
    # the Tracer takes the same lazy view
    trace = Tracer(lambda p: np.tile([1.0, 0.0, 0.0], (len(p), 1)), data.volumes[0], (3, 5, 5),
                   voxel_size=data.voxel_size, max_steps=5).trace(PATH[0], [0.0, 0.0, 1.0])
    assert len(trace.points) == 6


def test_file_volumes_are_opened_lazily_also_in_background_workers(tmp_path, monkeypatch):
    vol = (volume(8) * 255).astype(np.uint8)
    with h5py.File(tmp_path / "raw.h5", "w") as f:
        f["raw"] = vol[None]  # (1, z, y, x)
    import ekn_core.volumes

    real = ekn_core.volumes.open_volume
    monkeypatch.setattr(ekn_core.volumes, "open_volume", lambda path: Forbidding(real(path), limit=1000))
    lo, hi = (2, 4, 1), (18, 28, 39)
    kw = dict(patch_shape=(3, 5, 5), aniso_factor=2.0)
    data = TracingData(volumes=[("raw.h5", "raw", (lo, hi))], skeletons=[TubeSkeleton.from_path(PATH, radius=2.5)],
                       d_path=str(tmp_path), **kw)
    assert data.volumes[0].shape == (16, 24, 38)
    region = vol[2:18, 4:28, 1:39].astype(np.float32) / np.float32(255)
    want = TracingData(volumes=[region], skeletons=[TubeSkeleton.from_path(PATH - lo, radius=2.5)], **kw)
    for x, y in zip(data.getbatch(6, rng=batch_rng(0, 1)), want.getbatch(6, rng=batch_rng(0, 1))):
        np.testing.assert_array_equal(x, y)
    # each worker opens the file itself (its own lazy handle) and draws the same batches
    factory = functools.partial(TracingData, volumes=[("raw.h5", "raw", (lo, hi))], d_path=str(tmp_path),
                                skeletons=[TubeSkeleton.from_path(PATH, radius=2.5)], **kw)
    with BackgroundBatches(factory, batch_size=6, n_workers=1, seed=0) as batches:
        for index in range(2):
            for x, y in zip(batches.get(), want.getbatch(6, rng=batch_rng(0, index))):
                np.testing.assert_array_equal(x, y)
    with pytest.raises(ShapeError, match="does not fit"):
        TracingData(volumes=[("raw.h5", "raw", (lo, (18, 28, 41)))], skeletons=[TubeSkeleton.from_path(PATH)],
                    d_path=str(tmp_path), **kw)


def test_bad_inputs_get_clear_errors(tmp_path):
    skel = TubeSkeleton.from_path(PATH)
    empty = Skeleton()
    empty.add_tree().add_node((3, 3, 3))
    empty.write(str(tmp_path / "empty.nml"))
    with pytest.raises(ShapeError, match="no skeleton with at least 2 nodes"):
        TracingData((3, 5, 5), [volume()], [str(tmp_path / "empty.nml")])
    with pytest.raises(ConfigError, match="volume 0 has no skeletons"):
        TracingData((3, 5, 5), [volume()], [[]])
    with pytest.raises(ShapeError, match="spans 24 voxels .* smallest side of volume 0"):
        TracingData((5, 25, 25), [volume()], [skel])
    with pytest.raises(ShapeError, match="spans"):
        TracingData((3, 15, 15), [volume()], [skel], aniso_factor=0.5)  # z: 19 voxels * 0.5
    with pytest.raises(ShapeError, match="lies outside its volume"):
        TracingData((3, 5, 5), [volume()], [TubeSkeleton.from_path(PATH + 100)])
    with pytest.raises(ConfigError, match="equally long"):
        TracingData((3, 5, 5), [volume(), volume()], [skel])
    with pytest.raises(ConfigError, match="leave at least one for training"):
        TracingData((3, 5, 5), [volume()], [skel], valid_skeletons=[0])
    with pytest.raises(ConfigError, match=r"valid_skeletons \[3\] do not exist"):
        TracingData((3, 5, 5), [volume()], [skel], valid_skeletons=[3])
    with pytest.raises(ShapeError, match=r"\(z, y, x\) or \(1, z, y, x\)"):
        TracingData((3, 5, 5), [np.zeros((2, 20, 30, 40))], [skel])
    with pytest.raises(ShapeError, match="must be a slice"):
        TracingData((3, 5, 5), [volume()], [skel], input_tags="b,f,y,x")
    with pytest.raises(ConfigError, match="need 'b'"):
        TracingData((3, 5, 5), [volume()], [skel], input_tags="b,r,f,z,y,x")
    with pytest.raises(ConfigError, match="need 'b'"):
        TracingData((3, 5, 5), [volume()], [skel], input_tags="f,z,y,x")
    with pytest.raises(ConfigError, match="TubeSkeletons or NML file paths"):
        TracingData((3, 5, 5), [volume()], [np.zeros((3, 3))])
    with pytest.raises(ConfigError, match="source must be one of"):
        TracingData((3, 5, 5), [volume()], [skel]).getbatch(1, "test")
    with pytest.raises(ConfigError, match="max_turn"):
        TracingData((3, 5, 5), [volume()], [skel], max_turn=4.0)


def test_skeletons_need_a_radius(tmp_path):
    """Radius 0 (an NML written with radius="0") would leave no tube to place agents in: refused with the
    reason, instead of trajectories that all 'leave the tube' or sequences of one step."""
    nml = Skeleton()
    trace_to_tree(PATH, nml, radius=0.0)
    nml.write(str(tmp_path / "thin.nml"))
    for skeletons in ([TubeSkeleton.from_path(PATH, radius=0.0)], [str(tmp_path / "thin.nml")]):
        for cls, kw in ((TracingData, {}), (TracingTrajectories, {"sequence_length": 4, "input_tags": "r,b,f,z,y,x"})):
            with pytest.raises(ShapeError, match="3 of 3 skeleton nodes have radius 0; .* needs radii > 0"):
                cls((3, 5, 5), [volume()], skeletons, **kw)
    thin = TracingTrajectories((3, 5, 5), [volume()], [TubeSkeleton.from_path(PATH, radius=0.01)], sequence_length=4,
                               input_tags="r,b,f,z,y,x", seed=0)
    with pytest.raises(ShapeError, match=r"too thin \(smallest radius 0.01 voxels"):
        thin.getbatch(1)


def test_radius_targets_are_the_skeleton_radius_in_patch_samples():
    """Targets (b, 4): the direction as before, then the radius of the nearest skeleton sample (brute
    force over the dense polyline, radii 2 -> 4 -> 3) divided by the spacing."""
    radii, spacing = np.array([2.0, 4.0, 3.0]), 1.25
    skel = TubeSkeleton.from_path(PATH, radius=radii, step=0.05)
    kw = dict(aniso_factor=2.0, spacing=spacing, seed=0)
    plain = TracingData((3, 5, 5), [volume()], [skel], **kw)
    data = TracingData.from_nodes(Node((None, 1, 3, 5, 5), "b,f,z,y,x"), Node((None, 4), "b,f"), volumes=[volume()],
                                  skeletons=[skel], **kw)
    assert data.radius_target and data.batch_spec(6)[1][0] == (6, 4)
    patches, targets = data.getbatch(6, rng=np.random.default_rng(1))
    want_patches, directions = plain.getbatch(6, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(patches, want_patches)
    np.testing.assert_array_equal(targets[:, :3], directions)
    rng = np.random.default_rng(1)
    line, _ = dense_polyline(PATH * [2.0, 1, 1])
    lengths = np.linalg.norm(np.diff(PATH * [2.0, 1, 1], axis=0), axis=1)
    arc = np.linalg.norm(np.diff(line, axis=0), axis=1).cumsum()
    line_radii = np.interp(np.concatenate([[0.0], arc]), [0, lengths[0], lengths.sum()], radii)
    for target in targets:
        agent = data.sample_agent("train", rng)
        nearest = np.argmin(np.linalg.norm(line - agent.position, axis=1))
        assert target[3] == pytest.approx(line_radii[nearest] / spacing, abs=0.02)
    trajectories = TracingData.from_nodes(Node((4, None, 1, 3, 5, 5), "r,b,f,z,y,x"), Node((4, None, 4), "r,b,f"),
                                          sequence_length=4, volumes=[volume()], skeletons=[skel], **kw)
    _, targets = trajectories.getbatch(3)
    assert targets.shape == (4, 3, 4) and np.all(targets[..., 3] >= 2 / spacing - 1e-6)
    np.testing.assert_allclose(np.linalg.norm(targets[..., :3], axis=-1), 1, rtol=1e-6)
    sequence = TracingData.from_nodes(Node((None, 1, 3, 5, 5), "b,f,z,y,x"), Node((None, 4), "b,f"),
                                      sequence_training=3, volumes=[volume()], skeletons=[skel], **kw)
    _, targets = sequence.getbatch(4)
    sequence.feedback({"prediction": targets})  # a direction + radius prediction: its first 3 features
    moved = [a for a in sequence.agents if a is not None]
    assert moved and all(a.age == 1 for a in moved)
    with pytest.raises(ShapeError, match=r"need \(4, 3\)"):
        sequence.feedback({"prediction": np.ones((4, 5))})


def test_agent_dataclass_holds_physical_coordinates():
    data = TracingData((1, 3, 3), [volume()], [TubeSkeleton.from_path(PATH)], aniso_factor=2.0, seed=0)
    agent = data.sample_agent("train", np.random.default_rng(0))
    assert isinstance(agent, Agent) and agent.age == 0
    np.testing.assert_allclose(data.tracks[0].skeleton.nodes, PATH * [2.0, 1.0, 1.0])


def test_ekn_data_tubes_writes_the_synthetic_tubes_and_their_skeletons(tmp_path, capsys):
    assert main(["data", "tubes", str(tmp_path), "--n-volumes", "2", "--shape", "12", "20", "24", "--seed", "5"]) == 0
    assert "tube_1.nml" in capsys.readouterr().out
    for i in range(2):
        want, skeleton = synthetic_tube((12, 20, 24), rng=np.random.default_rng(np.random.SeedSequence([5, i])))
        np.testing.assert_array_equal(open_volume(str(tmp_path / f"tube_{i}.h5:raw"))[...], want)
        (tree,) = Skeleton.read(str(tmp_path / f"tube_{i}.nml")).trees
        np.testing.assert_allclose([n.position[::-1] for n in tree.nodes.values()], skeleton.nodes)
        assert {n.radius for n in tree.nodes.values()} == {3.0}
    data = TracingData((3, 5, 5), [("tube_0.h5", "raw"), "tube_1.h5:raw"], ["tube_0.nml", "tube_1.nml"],
                       d_path=str(tmp_path), valid_skeletons=[1], seed=0)
    assert [len(data.splits[s]) for s in ("train", "valid")] == [1, 1]
    assert main(["data", "tubes", str(tmp_path / "none"), "--n-volumes", "0"]) == 2
    for radius in ("0", "-1"):  # a volume of noise without a tube is refused
        assert main(["data", "tubes", str(tmp_path / "thin"), "--radius", radius]) == 2
        assert "the tube radius must be > 0 voxels" in capsys.readouterr().err
    assert not (tmp_path / "thin").exists()
