"""Shotgun tracing: occupancy vs brute force, seed order and peaks vs brute force, principal axes, an
oracle tracing three synthetic tubes into exactly one merged tree each, NML export."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ekn_core.errors import ConfigError, ShapeError
from ekn_plugins.readers.knossos.nml import Skeleton
from ekn_plugins.utils.shotgun import (ShotgunRegistry, principal_axes, seeds_from_probability, sort_seeds)
from ekn_plugins.utils.skeleton import tracing_target
from ekn_plugins.utils.tracing import AgentOutput, Tracer, synthetic_tubes

ahead = lambda patches: np.tile([1.0, 0.0, 0.0], (len(patches), 1))


def brute_occupancy(shape, factors, radius, traces, voxel_size=(1, 1, 1)):
    """Owner per cell: the first trace with a point in the cell (voxels ``k * f - 0.5`` to
    ``(k + 1) * f - 0.5``) or within ``radius`` (physical: voxels scaled by ``voxel_size``) of the
    cell centre, else -1."""
    factors, voxel_size = np.asarray(factors), np.asarray(voxel_size)
    cells = -(-np.asarray(shape) // factors)
    grid = np.full(tuple(cells), -1)
    for cell in itertools.product(*[range(c) for c in cells]):
        first = np.array(cell) * factors
        centre = first + (factors - 1) / 2
        for trace_id, points in enumerate(traces):
            points = np.asarray(points)
            inside = np.all((points >= first - 0.5) & (points < first + factors - 0.5), axis=1)
            if inside.any() or np.min(np.linalg.norm((points - centre) * voxel_size, axis=1)) <= radius:
                grid[cell] = trace_id
                break
    return grid


@pytest.mark.parametrize("factors, voxel_size, radius", [(1, (1, 1, 1), 2.5), ((2, 3, 1), (1, 1, 1), 2.5),
                                                          ((1, 2, 2), (2.5, 1, 1), 2.5), (4, (1, 1, 1), 1.0),
                                                          ((3, 4, 4), (2, 1, 1), 1.5)])
def test_occupancy_and_owner_match_brute_force(factors, voxel_size, radius):
    rng = np.random.default_rng(0)
    shape = (9, 13, 11)
    traces = [rng.uniform(-2, 14, (5, 3)) for _ in range(3)]  # some points outside the volume
    tracer = Tracer(ahead, np.zeros(shape), (1, 3, 3), voxel_size=voxel_size)
    registry = ShotgunRegistry(tracer, radius=radius, downsample=factors)
    for trace_id, points in enumerate(traces):
        registry.register(points, trace_id)
    want = brute_occupancy(shape, np.broadcast_to(factors, (3,)), radius, traces, voxel_size)
    np.testing.assert_array_equal(registry.occupancy, want)
    assert 0 < (want >= 0).mean() < 1
    for p in rng.uniform(0, 8.4, (50, 3)):
        cell = np.floor((p + 0.5) / np.broadcast_to(factors, (3,))).astype(int)
        assert registry.owner(p) == want[tuple(cell)]


def test_a_point_always_claims_its_own_cell():
    # radius 1 on 4-voxel cells: no cell centre (at 1.5 + 4 k) lies within 1 of (8, 8, 8)
    registry = ShotgunRegistry(Tracer(ahead, np.zeros((16, 16, 16)), (1, 3, 3)), radius=1.0, downsample=4)
    registry.register([[8, 8, 8]], 0)
    registry.register([[8.4, 9, 10], [-3, 8, 8]], 1)  # same cell: the first owner keeps it; outside: nothing
    assert registry.owner((8, 8, 8)) == 0 and registry.owner((11, 11, 11)) == 0
    assert np.sum(registry.occupancy >= 0) == 1


def test_sort_seeds_matches_a_brute_force_sort():
    rng = np.random.default_rng(1)
    seeds = rng.integers(0, 20, (60, 3))
    values = rng.integers(0, 6, 60) / 5.0  # many ties
    bbox, border = np.array([[1, 2, 0], [18, 19, 17]]), np.array([3, 2, 4])
    order = sort_seeds(seeds, values, bbox=bbox, border=border, first_value=0.5)
    inside = [i for i in range(60) if np.all(seeds[i] > bbox[0]) and np.all(seeds[i] < bbox[1])]
    inner = lambda i: bool(np.all(seeds[i] > bbox[0] + border) and np.all(seeds[i] < bbox[1] - border))
    want = sorted(inside, key=lambda i: (values[i] < 0.5, inner(i), -values[i], i))
    assert order.tolist() == want
    assert sort_seeds(seeds, values).tolist() == sorted(range(60), key=lambda i: (-values[i], i))
    with pytest.raises(ConfigError, match="bbox"):
        sort_seeds(seeds, values, border=border)
    with pytest.raises(ShapeError, match="one value per seed"):
        sort_seeds(seeds, values[:3])


def test_seeds_are_spaced_window_maxima_above_the_threshold_highest_first():
    rng = np.random.default_rng(2)
    from scipy.ndimage import gaussian_filter

    prob = gaussian_filter(rng.random((14, 16, 18)), 1.5)
    threshold, distance = float(np.quantile(prob, 0.6)), 2
    seeds, values = seeds_from_probability(prob, threshold, distance)
    assert len(seeds) > 3
    np.testing.assert_array_equal(values, prob[tuple(seeds.T)])
    assert np.all(values > threshold) and np.all(np.diff(values) <= 0)
    for s in seeds:
        window = prob[tuple(slice(max(c - distance, 0), c + distance + 1) for c in s)]
        assert prob[tuple(s)] == window.max()
    gaps = np.abs(seeds[:, None] - seeds[None]).max(-1) + np.eye(len(seeds), dtype=int) * 99
    assert gaps.min() >= distance
    with pytest.raises(ConfigError, match="min_distance"):
        seeds_from_probability(prob, threshold, 0)


def test_principal_axes_follow_tube_axes():
    rng = np.random.default_rng(3)
    vol, skels = synthetic_tubes((16, 40, 36), [(8, 10), (8, 28)], radius=2.0, noise=0.0, rng=rng, max_bend=0.1)
    for skel in skels:
        idx = np.arange(20, len(skel) - 20, 9)
        axes = principal_axes(vol, skel.points[idx], radius=5.0)
        np.testing.assert_allclose(np.linalg.norm(axes, axis=1), 1.0)
        assert np.min(np.abs(np.sum(axes * skel.tangents[idx], axis=1))) > 0.95
    # an elongated Gaussian blob along a known direction: the axis is that direction
    d = np.array([2.0, -1.0, 2.0]) / 3
    grid = np.stack(np.meshgrid(*[np.arange(21)] * 3, indexing="ij"), -1) - 10.0
    along = grid @ d
    blob = np.exp(-along ** 2 / 20 - (np.sum(grid ** 2, -1) - along ** 2) / 2)
    np.testing.assert_allclose(principal_axes(blob, [[10, 10, 10]], radius=8.0)[0], d, atol=1e-5)  # lattice ball
    with pytest.raises(ValueError, match="no probability mass"):
        principal_axes(np.zeros((5, 5, 5)), [[2, 2, 2]], radius=2.0)


@pytest.mark.parametrize("direction", [(1.0, 0.0, 1.0), (2.0, -1.0, 2.0), (1.0, 2.0, -0.5)])
def test_principal_axes_are_physical_directions_on_anisotropic_data(direction):
    # an isotropic tube along a known direction, every other z slice kept: voxels of size (2, 1, 1)
    d = np.array(direction) / np.linalg.norm(direction)
    grid = np.stack(np.meshgrid(*[np.arange(41)] * 3, indexing="ij"), -1) - 20.0
    along = grid @ d
    tube = np.exp(-(np.sum(grid ** 2, -1) - along ** 2) / 4)
    aniso = tube[::2]
    axes = principal_axes(aniso, [[10, 20, 20]], radius=12.0, voxel_size=(2, 1, 1))
    np.testing.assert_allclose(np.linalg.norm(axes, axis=1), 1.0)
    assert abs(axes[0] @ d) > 0.999
    np.testing.assert_allclose(axes, principal_axes(tube, [[20, 20, 20]], radius=12.0), atol=0.02)
    # read as voxel steps the same data gives another direction (what the tracer would misread)
    assert abs(principal_axes(aniso, [[10, 20, 20]], radius=12.0)[0] @ d) < 0.99
    with pytest.raises(ConfigError, match="voxel_size"):
        principal_axes(aniso, [[10, 20, 20]], radius=12.0, voxel_size=(2, 1))


def test_principal_axes_ball_is_physical():
    # a bar along x, and a heavier bar along y 2 slices (4 physical units) above it and 5 voxels aside:
    # more than 6 physical units away, but within 6 voxel steps of the centre
    prob = np.zeros((20, 41, 41))
    prob[10, 20, :] = 1.0
    prob[12, :, 25] = 5.0
    np.testing.assert_allclose(principal_axes(prob, [[10, 20, 20]], radius=6.0, voxel_size=(2, 1, 1)), [[0, 0, 1]],
                               atol=1e-9)
    assert principal_axes(prob, [[10, 20, 20]], radius=6.0)[0, 0] > 0.1  # a 6-voxel ball reaches the y bar


class OracleTracer(Tracer):
    """Steers with the known skeletons: towards the centre line of the nearest tube, ahead."""

    def __init__(self, skeletons, *args, **kwargs):
        super().__init__(None, *args, **kwargs)
        self.skeletons = skeletons

    def predict_at(self, patch, position, heading):
        nearest = min(self.skeletons, key=lambda s: s.nearest(position[None])[0][0])
        return AgentOutput(tracing_target(nearest, position, heading)[None])


def test_shotgun_oracle_gives_one_merged_tree_per_tube(tmp_path):
    rng = np.random.default_rng(4)
    centres = [(8, 8), (8, 22), (8, 36)]
    vol, skels = synthetic_tubes((16, 44, 48), centres, radius=2.5, noise=0.0, rng=rng)
    seeds, values = seeds_from_probability(vol, 0.5, 5)
    directions = principal_axes(vol, seeds, radius=6.0)
    tracer = OracleTracer(skels, vol, (1, 5, 5), step=1.0, max_steps=12)  # short traces: several per tube
    registry = ShotgunRegistry(tracer, radius=4.0, downsample=2)
    result = registry.run(seeds, directions)
    tube_of = lambda points: {int(np.argmin([s.nearest(p[None])[0][0] for s in skels])) for p in points}
    # every trace stays on one tube, close to its centre line (beyond the tube's ends it goes on straight)
    tubes = []
    for trace in result.traces:
        (tube,) = tube_of(trace.points)
        tubes.append(tube)
        along = (trace.points[:, 2] >= 4) & (trace.points[:, 2] <= 48 - 5)
        assert skels[tube].nearest(trace.points[along])[0].max() < 1.0
    # no covered seed starts a trace: each trace's seed was outside the earlier traces' territory
    assert result.skipped and len(result.traces) + len(result.skipped) == len(seeds)
    for k, trace in enumerate(result.traces):
        earlier = brute_occupancy(vol.shape, [2, 2, 2], 4.0, [t.points for t in result.traces[:k]]) if k else None
        if earlier is not None:
            cell = tuple(np.floor((seeds[trace.seed] + 0.5) / 2).astype(int))
            assert earlier[cell] == -1
    for i in result.skipped:  # and every skipped seed was covered when its turn came
        assert registry.occupancy[tuple(np.floor((seeds[i] + 0.5) / 2).astype(int))] >= 0
    # links join traces of the same tube where one ran into the other
    assert result.links
    for link in result.links:
        trace, other = result.traces[link.trace], result.traces[link.other]
        assert tubes[link.trace] == tubes[link.other] and link.other < link.trace
        end = 0 if link.point == 0 else 1
        assert link.point in (0, len(trace.points) - 1) and trace.ends[end] == "registry overlap"
        assert np.linalg.norm(trace.points[link.point] - other.points[link.other_point]) < 4.0 + 2.0
    # merged: exactly one group (tree) per tube, covering the tube
    groups = result.groups()
    assert sorted(sorted({tubes[t] for t in g}) for g in groups) == [[0], [1], [2]]
    skeleton = result.to_skeleton()
    skeleton.write(str(tmp_path / "neurons.nml"))
    back = Skeleton.read(str(tmp_path / "neurons.nml"))
    assert len(back.trees) == 3
    for tree, group in zip(back.trees, groups):
        assert len(tree.nodes) == sum(len(result.traces[t].points) for t in group)
        n_links = sum(link.trace in group for link in result.links)
        assert len(tree.edges) == sum(len(result.traces[t].points) - 1 for t in group) + n_links
        skel = skels[tubes[group[0]]]
        zyx = tree.coordinates()[:, ::-1]
        covered = np.min(np.linalg.norm(skel.points[:, None] - zyx[None], axis=-1), axis=1) < 2.0
        # seeds in a short trace's territory are skipped, so a few voxels past its end may stay untraced
        assert covered.mean() > 0.9


@pytest.mark.parametrize("direction", [(0, 1, 0), (0, 0.8, -0.6), (0, 0.2, 1), (0, -0.3, -1)])
def test_the_two_halves_of_a_seed_trace_the_neurite_both_ways_once(direction):
    """A seed on a straight tube along x, its direction across the tube (both halves would turn the
    same way) or along it: one trace from one end of the tube to the other, each part once."""
    from ekn_plugins.utils.skeleton import TubeSkeleton

    skel = TubeSkeleton.from_path([[10, 20, 2], [10, 20, 60]], radius=2.0, step=0.5)
    tracer = OracleTracer([skel], np.zeros((20, 40, 64), np.float32), (1, 3, 3), max_steps=200)
    (trace,) = ShotgunRegistry(tracer, radius=2.0).run([[10, 20, 20]], [direction]).traces
    assert trace.ends == ("left the volume", "left the volume")
    x = trace.points[:, 2]
    assert x.min() < 3 and x.max() > 61  # margin 1: the trace stops one step before x = 0 and 63
    gaps = np.linalg.norm(trace.points[:, None] - trace.points[None], axis=-1)
    far_in_chain = np.abs(np.arange(len(x))[:, None] - np.arange(len(x))[None]) > 3
    assert gaps[far_in_chain].min() > 1.0  # no part traced twice


def test_the_second_half_stops_where_it_meets_the_first():
    """On a ring the first half goes all the way round (and stops where it meets its own start); the
    second half, setting off the other way, meets the first at once instead of going round again."""
    from ekn_plugins.utils.skeleton import TubeSkeleton

    angle = np.linspace(0, 2 * np.pi, 73)
    ring = TubeSkeleton.from_path(np.stack([np.full(73, 10.0), 20 + 12 * np.sin(angle), 20 + 12 * np.cos(angle)], 1),
                                  radius=2.0, step=0.5)
    tracer = OracleTracer([ring], np.zeros((20, 40, 40), np.float32), (1, 3, 3), max_steps=200)
    (trace,) = ShotgunRegistry(tracer, radius=2.0).run([[10, 20, 32]], [[0, 1, 0]]).traces
    assert trace.ends == ("ran into itself", "ran into itself")
    assert ring.nearest(trace.points)[0].max() < 1.0
    covered = np.min(np.linalg.norm(ring.points[:, None] - trace.points[None], axis=-1), axis=1)
    assert covered.max() < 1.5  # all the way round
    gaps = np.linalg.norm(trace.points[:, None] - trace.points[None], axis=-1)
    far_in_chain = np.abs(np.arange(len(gaps))[:, None] - np.arange(len(gaps))[None]) > 3
    assert np.sum(np.any(far_in_chain & (gaps < 1.0), axis=1)) <= 4  # only where the ring closes


def test_registry_errors():
    tracer = Tracer(ahead, np.zeros((5, 5, 5)), (1, 3, 3))
    with pytest.raises(ConfigError, match="radius"):
        ShotgunRegistry(tracer, radius=0)
    with pytest.raises(ConfigError, match="downsample"):
        ShotgunRegistry(tracer, radius=1.0, downsample=0)
    with pytest.raises(ShapeError, match="one direction"):
        ShotgunRegistry(tracer, radius=1.0).run([[2, 2, 2]], [[1, 0, 0], [0, 1, 0]])
