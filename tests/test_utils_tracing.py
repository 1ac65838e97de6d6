"""Tracing: a tiny agent trained on synthetic tubes follows unseen tubes further than a straight line."""

import numpy as np
import pytest

from ekn_core.errors import ConfigError
from ekn_plugins.utils.skeleton import TubeSkeleton, frame
from ekn_plugins.utils.tracing import (DirectionMLP, Tracer, followed_length, straight_line, synthetic_tube,
                                       training_samples)

SHAPE, PATCH = (32, 48, 64), (5, 11, 11)


def _seed(skel, arc=3.0):
    i = int(np.searchsorted(skel.arc, arc))
    return skel.points[i], skel.tangents[i], skel.arc[-1] - skel.arc[i]


def test_trained_agent_follows_unseen_tubes_further_than_a_straight_line():
    rng = np.random.default_rng(0)
    patches, targets = [], []
    for _ in range(3):
        vol, skel = synthetic_tube(SHAPE, rng=rng)
        p, t = training_samples(vol, skel, 500, PATCH, rng)
        patches.append(p)
        targets.append(t)
    model = DirectionMLP(PATCH, seed=1)
    losses = model.fit(np.concatenate(patches), np.concatenate(targets), steps=300)
    assert np.mean(losses[-20:]) < 0.2 * np.mean(losses[:5])
    for _ in range(2):  # tubes the agent never saw
        vol, skel = synthetic_tube(SHAPE, rng=rng)
        start, direction, length = _seed(skel)
        trace = Tracer(model, vol, PATCH).trace(start, direction)
        agent = followed_length(trace.points, skel, tolerance=3.0)
        baseline = followed_length(straight_line(start, direction, 1.5, 200), skel, tolerance=3.0)
        assert agent >= 0.85 * length, (trace.reason, agent, length)
        assert agent >= 3 * baseline, (agent, baseline)
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
