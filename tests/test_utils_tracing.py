"""Tracing: an ekn agent trained for a few seconds with TracingData follows unseen tubes further than
a straight line; stop rules (self-crossings at any angle against a brute-force path), history, radius
zoom, anisotropy and bad input."""

import numpy as np
import pytest

from ekn_core.errors import ConfigError, ShapeError
from ekn_plugins.utils.skeleton import TubeSkeleton, frame
from ekn_plugins.utils.tracing import (AgentOutput, Tracer, followed_length, straight_line, synthetic_tube,
                                       synthetic_tubes)

SHAPE, PATCH = (32, 48, 64), (5, 11, 11)


def _seed(skel, arc=3.0):
    i = int(np.searchsorted(skel.arc, arc))
    return skel.points[i], skel.tangents[i], skel.arc[-1] - skel.arc[i]


def test_trained_agent_follows_unseen_tubes_further_than_a_straight_line():
    """The example of docs/utilities.md: a two-layer ekn model trained with TracingData (60 steps)."""
    pytest.importorskip("tensorflow")
    import ekn_core.neuromancer as nm
    from ekn_core.node import set_seed
    from ekn_plugins.data.tracing import TracingData
    from ekn_plugins.utils.model_agent import ModelAgent

    rng = np.random.default_rng(0)
    tubes = [synthetic_tube(SHAPE, rng=rng) for _ in range(3)]
    set_seed(1)
    model = nm.model_manager.newmodel("tube_agent")
    inp = nm.Input((None, 1, *PATCH), "b,f,z,y,x", name="raw")
    direction = nm.Perceptron(nm.Perceptron(inp, 32, flatten=True), 3, activation_func="lin", name="direction")
    target = nm.Input_like(direction, name="target")
    model.designate_nodes(input_node=inp, target_node=target, prediction_node=direction,
                          loss_node=nm.AggregateLoss(nm.CosineDistance(direction, target)))
    data = TracingData.from_nodes(inp, target, volumes=[v for v, _ in tubes], skeletons=[s for _, s in tubes], seed=0)
    model.lr = 5e-3
    losses = [model.trainingstep(*data.getbatch(32), optimiser="Adam")[0] for _ in range(60)]
    assert np.mean(losses[-10:]) < 0.3 * np.mean(losses[:5])
    agent = ModelAgent(model)
    for _ in range(2):  # tubes the agent never saw
        vol, skel = synthetic_tube(SHAPE, rng=rng)
        start, heading, length = _seed(skel)
        trace = Tracer(agent, vol, agent.patch_shape).trace(start, heading)
        followed = followed_length(trace.points, skel, tolerance=3.0)
        baseline = followed_length(straight_line(start, heading, 1.5, 200), skel, tolerance=3.0)
        assert followed >= 0.85 * length, (trace.reason, followed, length)
        assert followed >= 3 * baseline, (followed, baseline)
        assert trace.reason == "left the volume"


def test_tracer_stop_rules():
    vol = np.zeros((20, 40, 40), np.float32)
    start, ahead = np.array([10.0, 20.0, 20.0]), np.array([0.0, 0.0, 1.0])
    forward = lambda p: np.tile([1.0, 0.0, 0.0], (len(p), 1))
    trace = Tracer(forward, vol, (1, 3, 3), step=1.0, inertia=0.0).trace(start, ahead)
    assert trace.reason == "left the volume"
    np.testing.assert_allclose(trace.points[-1], [10, 20, 38])  # margin 1: x <= 38
    assert Tracer(forward, vol, (1, 3, 3), max_steps=5).trace(start, ahead).reason == "max steps"
    back = lambda p: np.tile([-1.0, 0.1, 0.0], (len(p), 1))
    assert Tracer(back, vol, (1, 3, 3)).trace(start, ahead).reason == "u-turn"
    class Circle:  # steers along a circle in the y-x plane, 12 steps per lap (tracks the heading itself)
        def __init__(self):
            self.heading, self.k = ahead.copy(), 0

        def __call__(self, patches):
            self.k += 1
            a = 2 * np.pi * self.k / 12
            goal = np.array([0.0, np.sin(a), np.cos(a)])
            local = frame(self.heading) @ goal
            self.heading = goal
            return local[None]

    circle = Tracer(Circle(), vol, (1, 3, 3), step=0.5, inertia=0.0, max_steps=400).trace(start, ahead)
    assert circle.reason == "ran into itself"
    assert len(circle.points) == 12  # one lap
    assert np.linalg.norm(circle.points - start, axis=1).max() < 2.0
    nothing = lambda p: np.zeros((len(p), 3))
    assert Tracer(nothing, vol, (1, 3, 3)).trace(start, ahead).reason == "no direction predicted"
    with pytest.raises(ConfigError, match="inertia"):
        Tracer(forward, vol, (1, 3, 3), inertia=1.0)


def test_followed_length_against_hand_computed_values():
    skel = TubeSkeleton.from_path([[0, 0, 0], [0, 0, 20]], step=0.5)
    on = np.stack([np.zeros(11), np.zeros(11), np.arange(11.0)], 1)
    astray = np.concatenate([on, [[0, 5, 11], [0, 0, 12]]])  # strays at x = 11; coming back does not count
    assert followed_length(on, skel, 1.0) == pytest.approx(10.0)
    assert followed_length(astray, skel, 1.0) == pytest.approx(10.0)
    assert followed_length([[0, 9, 0]], skel, 1.0) == 0.0
    np.testing.assert_allclose(straight_line([0, 0, 0], [0, 0, 2], 1.5, 3), [[0, 0, 0], [0, 0, 1.5], [0, 0, 3]])
    star = TubeSkeleton([[0, 0, 0], [0, 0, 5], [0, 5, 0]], [[0, 1], [0, 2]])
    with pytest.raises(ConfigError, match="chain"):
        followed_length(on, star, 1.0)


def test_tracer_stops_at_bounding_box_lost_track_and_registry_overlap():
    vol = np.zeros((20, 40, 40), np.float32)
    vol[:, :, 25:] = 1.0  # bright from x = 25 on
    start, ahead = np.array([10.0, 20.0, 20.0]), np.array([0.0, 0.0, 1.0])
    forward = lambda p: np.tile([1.0, 0.0, 0.0], (len(p), 1))
    make = lambda **kw: Tracer(forward, vol, (1, 3, 3), step=1.0, inertia=0.0, **kw)
    boxed = make(bounding_box=[[0, 0, 0], [19, 39, 30]]).trace(start, ahead)
    assert boxed.reason == "left the bounding box" and boxed.points[-1].tolist() == [10, 20, 30]
    seen = []

    def bright(patch, output):
        seen.append(output.directions.shape)
        return patch.mean() > 0.5

    lost = make(stop=bright).trace(start, ahead)
    assert lost.reason == "lost track" and lost.points[-1].tolist() == [10, 20, 25]
    assert seen == [(1, 3)] * 6  # asked at x = 20 ... 25
    owned = make().trace(start, ahead, owner=lambda p: 7 if p[2] >= 30 else -1)
    assert owned.reason == "registry overlap" and owned.met == 7 and owned.points[-1].tolist() == [10, 20, 29]
    assert make().trace(start, ahead).met is None
    for bad in ({"bounding_box": [[0, 0, 9], [5, 5, 5]]}, {"reference_radius": 0.0}, {"zoom_range": (2.0, 3.0)}):
        with pytest.raises(ConfigError):
            make(**bad)
    with pytest.raises(ConfigError, match="one direction"):
        Tracer(lambda p: np.ones((len(p), 4)), vol, (1, 3, 3)).trace(start, ahead)


@pytest.mark.parametrize("radius, spacings", [
    (6.0, [1.0, 1.25, 1.5625, 1.953125, 2.0, 2.0]),   # zooms out by at most 25 % a step, to the limit 2
    (1.0, [1.0, 0.75, 0.5625, 0.5, 0.5, 0.5]),        # zooms in to the limit 0.5
])
def test_radius_zoom_follows_the_predicted_radius(radius, spacings):
    """The patch spacing (measured on a ramp volume) follows radius / reference_radius = 3 or 0.5."""
    vol = np.broadcast_to(np.arange(40, dtype=np.float32)[None, :, None], (20, 40, 60))  # value = y

    class Sizer:  # reports the true radius in patch samples, as a trained net would
        def __init__(self):
            self.spacings = []

        def __call__(self, patches):
            spacing = (patches[0, 0, 0, -1] - patches[0, 0, 0, 0]) / 2  # patch axis 2 is y for heading x
            self.spacings.append(float(spacing))
            return AgentOutput(np.array([[1.0, 0.0, 0.0]]), np.array([radius / spacing]))

    sizer = Sizer()
    tracer = Tracer(sizer, vol, (1, 3, 3), step=1.0, max_steps=6, reference_radius=2.0)
    trace = tracer.trace([10.0, 20.0, 10.0], [0.0, 0.0, 1.0])
    np.testing.assert_allclose(sizer.spacings, spacings, rtol=1e-5)
    np.testing.assert_allclose(trace.radii, radius, rtol=1e-5)
    assert len(trace.radii) == len(trace.points) == 7
    fixed = Sizer()
    Tracer(fixed, vol, (1, 3, 3), step=1.0, max_steps=3).trace([10.0, 20.0, 10.0], [0.0, 0.0, 1.0])
    np.testing.assert_allclose(fixed.spacings, 1.0)  # no reference_radius: no zoom


def test_synthetic_tubes_are_separate_tubes_around_their_centres():
    rng = np.random.default_rng(3)
    vol, skels = synthetic_tubes((16, 40, 30), [(8, 8), (8, 20), (8, 32)], radius=2.0, noise=0.0, rng=rng)
    for skel, y in zip(skels, (8, 20, 32)):
        assert abs(skel.points[:, 1].mean() - y) < 1e-9 and np.abs(skel.points[:, 1] - y).max() <= 0.05 * 40 * 2
        on = np.round(skel.points).astype(int)
        assert vol[tuple(on.T)].min() > 0.8  # bright on every centre line
    single, skel = synthetic_tube((16, 40, 30), 2.0, 0.0, np.random.default_rng(3), center=(8, 8), max_bend=0.05)
    np.testing.assert_allclose(skel.points, skels[0].points)  # same random stream as synthetic_tube
    with pytest.raises(ConfigError, match="centre"):
        synthetic_tubes((16, 40, 30), [])


def test_anisotropic_voxels_trace_like_the_isotropic_volume():
    """A linear volume sampled every second z slice, traced with ``voxel_size=(2, 1, 1)``, gives the
    patches (linear interpolation is exact on a linear function) and, in physical units, the points of
    the isotropic volume; a predictor that turns a little each step exercises the heading update."""
    z, y, x = np.meshgrid(np.arange(40.0), np.arange(30.0), np.arange(30.0), indexing="ij")
    iso = (0.5 * z + 0.3 * y - 0.2 * x).astype(np.float32)
    seen: dict[str, list[np.ndarray]] = {"iso": [], "aniso": []}

    def predictor(key):
        def predict(patches):
            seen[key].append(patches[0].copy())
            return np.array([[0.95, 0.25, 0.1]])
        return predict

    kwargs = dict(patch_shape=(3, 5, 5), spacing=1.0, step=1.5, inertia=0.2, max_steps=12, margin=1.0)
    start, heading = np.array([6.0, 12.0, 14.0]), np.array([1.0, 0.2, 0.0])
    a = Tracer(predictor("iso"), iso, **kwargs).trace(start, heading)
    b = Tracer(predictor("aniso"), iso[::2], voxel_size=(2, 1, 1), **kwargs).trace(start / [2, 1, 1], heading)
    assert a.reason == "max steps" and b.reason == "max steps"
    np.testing.assert_allclose(b.points * [2, 1, 1], a.points, atol=1e-9)
    np.testing.assert_allclose(b.directions, a.directions, atol=1e-9)
    np.testing.assert_allclose(np.array(seen["aniso"]), np.array(seen["iso"]), atol=1e-4)
    with pytest.raises(ConfigError, match="voxel_size"):
        Tracer(predictor("iso"), iso, (3, 5, 5), voxel_size=(2, 1))


class Curl:
    """Heads along +x, from step ``turn`` on turns left by ``rate`` radians a step up to the heading
    angle ``final`` (in the y-x plane; rising by ``rise`` in z while it turns), then goes straight
    on. Absolute headings, so it tracks the tracer's heading itself (use ``inertia=0``)."""

    def __init__(self, turn, rate, final, rise=0.0):
        self.turn, self.rate, self.final, self.rise = turn, rate, final, rise
        self.k, self.heading = 0, np.array([0.0, 0.0, 1.0])

    def goal(self):
        self.k += 1
        a = min(max(self.k - self.turn, 0) * self.rate, self.final)
        goal = np.array([self.rise if 0 < a < self.final else 0.0, np.sin(a), np.cos(a)])
        return goal / np.linalg.norm(goal)

    def __call__(self, patches):
        goal = self.goal()
        local = frame(self.heading) @ goal
        self.heading = goal
        return local[None]


def _first_crossing(points, recent):
    """Index k of the first segment ``points[k-1] -> points[k]`` that intersects (in the y-x plane)
    a segment at least ``recent`` segments before it, by orientation tests (brute force)."""
    p = points[:, 1:]
    cross = lambda o, a, b: (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
    for k in range(1, len(p)):
        for j in range(1, k - recent):
            a, b, c, d = p[k - 1], p[k], p[j - 1], p[j]
            if cross(a, b, c) * cross(a, b, d) < 0 and cross(c, d, a) * cross(c, d, b) < 0:
                return k
    return None


@pytest.mark.parametrize("final", [1.5 * np.pi, 1.3 * np.pi, 1.7 * np.pi])  # crossing at 90, 54 and 126 degrees
def test_tracer_stops_where_it_crosses_its_own_path(final):
    """A trace that curls round and crosses its own earlier path, for crossing points at many offsets
    from the earlier samples (turn start and rate varied): it stops at the crossing step, or up to two
    steps before it, where it comes within step / sqrt(2) of an earlier point."""
    vol = np.zeros((20, 80, 80), np.float32)
    start, step = np.array([10.0, 20.0, 5.0]), 1.5
    checked = 0
    for turn in range(14, 20):
        for rate in (0.17, 0.22, 0.25, 0.29, 0.33):
            ideal = Curl(turn, rate, final)
            path = np.cumsum([start] + [step * ideal.goal() for _ in range(60)], axis=0)
            k = _first_crossing(path, recent=3)
            assert k is not None  # the path does cross itself
            trace = Tracer(Curl(turn, rate, final), vol, (1, 3, 3), step=step, inertia=0.0, max_steps=60).trace(
                start, [0, 0, 1])
            assert trace.reason == "ran into itself", (turn, rate, trace.reason, k)
            assert k - 2 <= len(trace.points) <= k, (turn, rate, len(trace.points), k)
            np.testing.assert_allclose(trace.points, path[:len(trace.points)], atol=1e-9)
            checked += 1
    assert checked == 30


def test_tracer_passes_over_its_own_path_at_a_distance():
    """The same curl rising in z while it turns: it passes 1.5 steps above its earlier path and goes on."""
    vol = np.zeros((20, 80, 80), np.float32)
    start, step = np.array([6.0, 20.0, 5.0]), 1.5
    ideal = Curl(12, 0.25, 1.5 * np.pi, rise=0.08)
    path = np.cumsum([start] + [step * ideal.goal() for _ in range(60)], axis=0)
    assert path[-1, 0] - start[0] == pytest.approx(1.5 * step, abs=0.2)
    trace = Tracer(Curl(12, 0.25, 1.5 * np.pi, rise=0.08), vol, (1, 3, 3), step=step, inertia=0.0,
                   max_steps=60).trace(start, [0, 0, 1])
    assert trace.reason == "left the volume"


def test_history_counts_as_earlier_points():
    """A trace that continues ``history`` stops where it would cross it, and not on its last points."""
    vol = np.zeros((20, 40, 40), np.float32)
    forward = lambda p: np.tile([1.0, 0.0, 0.0], (len(p), 1))
    tracer = Tracer(forward, vol, (1, 3, 3), step=1.0, inertia=0.0)
    wall = np.stack([np.full(21, 10.0), np.arange(10.0, 31.0), np.full(21, 30.0)], 1)  # across x = 30
    behind = np.stack([np.full(5, 10.0), np.full(5, 20.0), np.arange(15.0, 20.0)], 1)  # leads up to the start
    trace = tracer.trace([10, 20, 20], [0, 0, 1], history=np.concatenate([wall, behind]))
    assert trace.reason == "ran into itself" and trace.points[-1].tolist() == [10, 20, 29]
    assert tracer.trace([10, 20, 20], [0, 0, 1], history=behind).reason == "left the volume"
    with pytest.raises(ConfigError, match="history"):
        tracer.trace([10, 20, 20], [0, 0, 1], history=[1, 2])


def test_tracer_refuses_bad_geometry():
    vol = np.zeros((20, 20, 20), np.float32)
    forward = lambda p: np.tile([1.0, 0.0, 0.0], (len(p), 1))
    for bad in ({"spacing": 0.0}, {"spacing": -1.0}, {"margin": -5.0}):  # would sample one point, mirror, leave
        with pytest.raises(ConfigError, match=f"spacing must be > 0 and margin >= 0 .*{list(bad.values())[0]}"):
            Tracer(forward, vol, (3, 5, 5), **bad)
    with pytest.raises(ShapeError, match=r"\(z, y, x\), got shape \(2, 20, 20, 20\)"):
        Tracer(forward, np.zeros((2, 20, 20, 20), np.float32), (3, 5, 5))
    tracer = Tracer(forward, vol, (3, 5, 5))
    for start in ([10, 10], [10, 10, np.nan]):
        with pytest.raises(ConfigError, match="start must be a finite position"):
            tracer.trace(start, [0, 0, 1])
