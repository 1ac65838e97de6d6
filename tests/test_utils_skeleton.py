"""Skeleton utilities: frames, oriented patches (vs a brute-force trilinear reference), NML trees."""

import itertools

import numpy as np
import pytest

from ekn_core.errors import ConfigError, ShapeError
from ekn_plugins.readers.knossos.nml import Skeleton
from ekn_plugins.utils.skeleton import TubeSkeleton, frame, sample_patch, trace_to_tree, tracing_target


def trilinear(volume, p):
    """Brute-force trilinear interpolation with zero outside (the reference)."""
    base = np.floor(p).astype(int)
    value = 0.0
    for corner in itertools.product((0, 1), repeat=3):
        q = base + corner
        w = np.prod([1 - abs(p[a] - q[a]) for a in range(3)])
        if np.all(q >= 0) and np.all(q < volume.shape):
            value += w * volume[tuple(q)]
    return value


def test_frame_is_right_handed_orthonormal():
    rng = np.random.default_rng(0)
    for d in [*rng.normal(size=(20, 3)), [1, 0, 0], [0, 1e-3, 1], [-1, 0, 0]]:
        f = frame(d)
        np.testing.assert_allclose(f @ f.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(f) == pytest.approx(1.0)
        np.testing.assert_allclose(f[0], np.asarray(d) / np.linalg.norm(d))
    with pytest.raises(ValueError, match="non-zero"):
        frame([0, 0, 0])


def test_oriented_patch_matches_brute_force_trilinear():
    rng = np.random.default_rng(1)
    vol = rng.random((12, 14, 16)).astype(np.float32)
    for _ in range(5):
        center, direction = rng.uniform(2, 10, 3), rng.normal(size=3)
        patch = sample_patch(vol, center, direction, (3, 5, 4), spacing=1.3)
        f = frame(direction)
        for idx in itertools.product(*[range(s) for s in (3, 5, 4)]):
            offset = (np.array(idx) - (np.array([3, 5, 4]) - 1) / 2) * 1.3
            assert patch[idx] == pytest.approx(trilinear(vol, center + offset @ f), abs=1e-5)


def test_axis_aligned_patch_is_a_crop_and_anisotropy_scales():
    vol = np.arange(10 * 10 * 10, dtype=np.float32).reshape(10, 10, 10)
    patch = sample_patch(vol, (5, 5, 5), (1, 0, 0), (3, 3, 3))  # axes: z, x, -y... by frame()
    f = frame((1, 0, 0)).round().astype(int)
    expected = np.empty((3, 3, 3))
    for i, j, k in itertools.product(range(3), repeat=3):
        expected[i, j, k] = vol[tuple(np.array([5, 5, 5]) + (np.array([i, j, k]) - 1) @ f)]
    np.testing.assert_allclose(patch, expected)
    aniso = sample_patch(vol, (5, 5, 5), (1, 0, 0), (3, 1, 1), spacing=2.0, voxel_size=(2, 1, 1))
    np.testing.assert_allclose(aniso.ravel(), vol[4:7, 5, 5])  # 2 physical units = 1 z voxel
    assert sample_patch(vol, (50, 50, 50), (1, 0, 0), (2, 2, 2), cval=-1).tolist() == np.full((2, 2, 2), -1).tolist()


def test_patch_reads_only_a_bounding_box():
    class Counting:
        def __init__(self, data):
            self.data, self.shape, self.boxes = data, data.shape, []

        def __getitem__(self, index):
            self.boxes.append(index)
            return self.data[index]

    vol = Counting(np.ones((64, 64, 64), np.float32))
    sample_patch(vol, (30, 30, 30), (1, 1, 0), (3, 5, 5))
    (box,) = vol.boxes
    assert all(s.stop - s.start <= 10 for s in box)


def test_skeleton_sampling_nearest_and_targets():
    skel = TubeSkeleton.from_path([[0, 0, 0], [0, 0, 10], [0, 10, 10]], radius=[1, 2, 3], step=0.5)
    assert len(skel) == 41 and skel.arc[-1] == pytest.approx(20.0)
    np.testing.assert_allclose(skel.radii[[0, 20, 40]], [1, 2, 3])
    rng = np.random.default_rng(2)
    q = rng.uniform(-2, 12, (30, 3))
    dist, idx = skel.nearest(q)
    ref = np.sqrt(((q[:, None] - skel.points[None]) ** 2).sum(-1))
    np.testing.assert_allclose(dist, ref.min(1))
    # on the centre line, heading along it: straight ahead in the patch frame
    np.testing.assert_allclose(tracing_target(skel, [0, 0, 3], [0, 0, 1]), [1, 0, 0], atol=1e-12)
    # heading the other way along the tangent: target agrees with the heading, not the edge order
    np.testing.assert_allclose(tracing_target(skel, [0, 0, 5], [0, 0, -1]), [1, 0, 0], atol=1e-12)
    # off the line: the global target points forward and back towards the line
    local = tracing_target(skel, [0, 2, 3], [0, 0, 1], lookahead=2.0)
    np.testing.assert_allclose(frame([0, 0, 1]).T @ local, np.array([0, -2, 2]) / np.sqrt(8), atol=1e-12)


def test_nml_trees_roundtrip(tmp_path):
    nml = Skeleton(scale=(10.0, 10.0, 20.0))
    tree = nml.add_tree(comment="axon")
    ids = [tree.add_node((x, 2 * x, 3), radius=1.5).id for x in (4, 0, 2)]  # stored out of order
    tree.add_edge(ids[1], ids[2])  # (0,0,3) - (2,4,3)
    tree.add_edge(ids[2], ids[0])  # (2,4,3) - (4,8,3)
    path = str(tmp_path / "s.nml")
    nml.write(path)
    skel = TubeSkeleton.from_tree(Skeleton.read(path).trees[0], step=1.0)
    assert skel.arc is not None
    ends = sorted([skel.points[0].tolist(), skel.points[-1].tolist()])
    assert ends == [[3.0, 0.0, 0.0], [3.0, 8.0, 4.0]]  # (z, y, x)
    assert skel.arc[-1] == pytest.approx(2 * np.sqrt(20))
    branched = nml.add_tree()
    a, b, c, d = (branched.add_node(p) for p in [(0, 0, 0), (5, 0, 0), (0, 5, 0), (0, 0, 5)])
    for other in (b, c, d):
        branched.add_edge(a.id, other.id)
    star = TubeSkeleton.from_tree(branched)
    assert star.arc is None and star.nearest([[5, 0, 0]])[0][0] == 0.0  # (z=5, y=0, x=0): the x,y,z=(0,0,5) tip
    out = trace_to_tree([[1, 2, 3], [1, 2, 4]], nml, comment="trace")
    assert [n.position for n in out.nodes.values()] == [(3.0, 2.0, 1.0), (4.0, 2.0, 1.0)] and len(out.edges) == 1
    same = trace_to_tree([[0, 0, 0], [0, 0, 1], [0, 0, 2]], nml, radius=[1.0, 2.5, 4.0], tree=out)
    assert same is out and len(out.nodes) == 5 and len(out.edges) == 3  # a second chain in the same tree
    assert [n.radius for n in out.nodes.values()] == [1.0, 1.0, 1.0, 2.5, 4.0]


def test_bad_skeletons():
    with pytest.raises(ShapeError, match="at least 2 nodes"):
        TubeSkeleton.from_path([[0, 0, 0]])
    with pytest.raises(ShapeError, match="do not exist"):
        TubeSkeleton([[0, 0, 0], [1, 1, 1]], [[0, 2]])
    with pytest.raises(ShapeError, match="zero length"):
        TubeSkeleton.from_path([[1, 1, 1], [1, 1, 1]])
    with pytest.raises(ShapeError, match="patch shape"):
        sample_patch(np.zeros((4, 4, 4)), (2, 2, 2), (1, 0, 0), (3, 3))
    with pytest.raises(ShapeError, match=r"finite positions .* node 1 at \[0.0, 0.0, nan\]"):
        TubeSkeleton.from_path([[0, 0, 0], [0, 0, np.nan]])
    with pytest.raises(ShapeError, match="radii >= 0"):
        TubeSkeleton.from_path([[0, 0, 0], [0, 0, 4]], radius=[1.0, -1.0])
    with pytest.raises(ShapeError, match=r"\(z, y, x\) volume, got one of shape \(2, 4, 4, 4\)"):
        sample_patch(np.zeros((2, 4, 4, 4)), (2, 2, 2), (1, 0, 0), (3, 3, 3))
    with pytest.raises(ConfigError, match="order must be 0"):
        sample_patch(np.zeros((4, 4, 4)), (2, 2, 2), (1, 0, 0), (3, 3, 3), order=3)


@pytest.mark.parametrize("nodes, without", [
    ([[0, 0, 0], [0, 0, 5], [0, 0, 5]], [[0, 0, 0], [0, 0, 5]]),                          # a duplicated end
    ([[0, 0, 0], [0, 0, 0], [0, 0, 5]], [[0, 0, 0], [0, 0, 5]]),                          # a duplicated start
    ([[0, 0, 0], [0, 0, 2], [0, 0, 2], [0, 3, 2]], [[0, 0, 0], [0, 0, 2], [0, 3, 2]]),    # a duplicated joint
])
def test_zero_length_edges_add_nothing(nodes, without):
    """Duplicated nodes, common in hand tracings, give the samples of the chain without them."""
    dup, plain = TubeSkeleton.from_path(nodes, step=1.0), TubeSkeleton.from_path(without, step=1.0)
    np.testing.assert_array_equal(dup.points, plain.points)
    np.testing.assert_array_equal(dup.tangents, plain.tangents)
    np.testing.assert_array_equal(dup.arc, plain.arc)
    assert dup.points[-1].tolist() == list(map(float, without[-1]))


@pytest.mark.parametrize("order", [0, 1])
def test_patches_equal_map_coordinates_of_the_whole_volume(order):
    """Cut from the bounding box, patches equal scipy's interpolation of the whole volume, also where
    they reach over the border."""
    from scipy.ndimage import map_coordinates

    rng = np.random.default_rng(0)
    vol = rng.random((12, 14, 16)).astype(np.float32) + 1
    shape, spacing = (5, 7, 7), 1.3
    for center in ([6.2, 7.1, 8.3], [0.2, 7, 8], [11.7, 13.6, 15.9], [-1.5, 3, 3], [5, -2.0, 16.4], [13.9, 7, 7]):
        direction = rng.standard_normal(3)
        grids = np.meshgrid(*[(np.arange(s) - (s - 1) / 2) * spacing for s in shape], indexing="ij")
        coords = np.einsum("i...,ij->...j", np.stack(grids), frame(direction)) + center
        want = map_coordinates(vol, np.moveaxis(coords, -1, 0), order=order, mode="grid-constant", cval=0.0)
        got = sample_patch(vol, center, direction, shape, spacing, order=order)
        np.testing.assert_allclose(got, want, atol=1e-6)
