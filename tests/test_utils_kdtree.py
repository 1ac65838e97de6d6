"""Appendable KD-tree: random appends and queries equal a brute-force search."""

import numpy as np
import pytest

from ekn_plugins.utils.kdtree import AppendableKDTree


def brute_knn(points, queries, k, scale):
    d = np.sqrt((((queries[:, None] - points[None]) * scale) ** 2).sum(-1))
    idx = np.argsort(d, axis=1)[:, :k]
    return np.take_along_axis(d, idx, axis=1), idx


@pytest.mark.parametrize("threshold", ["auto", 1, 7])
@pytest.mark.parametrize("scale", [None, (2.0, 1.0, 0.5)])
def test_random_appends_match_brute_force(threshold, scale):
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(5, 3))
    tree = AppendableKDTree(pts, rebuild_threshold=threshold, scale=scale)
    s = np.ones(3) if scale is None else np.asarray(scale)
    for step in range(60):
        new = rng.normal(size=(rng.integers(1, 4), 3)) * 3
        tree.append(new if step % 2 else new[0])
        if step % 2 == 0:
            new = new[:1]
        pts = np.concatenate([pts, new])
        q = rng.normal(size=(4, 3)) * 3
        k = int(rng.integers(1, min(9, len(pts)) + 1))
        dist, idx = tree.query(q, k=k)
        ref_d, ref_i = brute_knn(pts, q, k, s)
        np.testing.assert_array_equal(idx, ref_i)
        np.testing.assert_allclose(dist, ref_d, rtol=1e-12, atol=1e-12)
        r = float(rng.uniform(0.5, 4))
        got = tree.query_radius(q, r, return_distance=True)
        full = np.sqrt((((q[:, None] - pts[None]) * s) ** 2).sum(-1))
        for qi, (gi, gd) in enumerate(got):
            ref = np.flatnonzero(full[qi] <= r)
            ref = ref[np.argsort(full[qi, ref])]
            np.testing.assert_array_equal(gi, ref)
            np.testing.assert_allclose(gd, full[qi, ref], rtol=1e-12)
    np.testing.assert_array_equal(tree.points, pts)
    assert len(tree) == len(pts)
    if threshold == 1:
        assert tree.buffer_size == 0  # rebuilt after every append
    if threshold == "auto":
        assert tree.rebuilds <= 3  # 5 + ~120 points: the buffer absorbs them


def test_start_empty_and_buffer_only():
    tree = AppendableKDTree(dim=2, rebuild_threshold=1000)
    tree.append([[0, 0], [3, 4]])
    assert tree.buffer_size == 2 and tree.rebuilds == 0
    d, i = tree.query([[0, 0]], k=2)
    assert i.tolist() == [[0, 1]] and d.tolist() == [[0.0, 5.0]]
    assert tree.query_radius([[0, 0]], 4.9)[0].tolist() == [0]


def test_auto_threshold_is_amortised():
    rng = np.random.default_rng(1)
    tree = AppendableKDTree(dim=3)
    for _ in range(5000):
        tree.append(rng.random(3))
    # buffer sizes of at least 4*sqrt(n) give O(sqrt(n)) rebuilds, not one per append
    assert tree.rebuilds < 40
    assert tree.buffer_size < max(64, 4 * np.sqrt(5000)) + 1


def test_points_view_is_read_only():
    tree = AppendableKDTree(np.zeros((2, 2)))
    with pytest.raises(ValueError):
        tree.points[0, 0] = 1.0


@pytest.mark.parametrize("call, match", [
    (lambda: AppendableKDTree(), "dim="),
    (lambda: AppendableKDTree(np.zeros(3)), r"shape \(n, d\)"),
    (lambda: AppendableKDTree(np.zeros((2, 3)), dim=2), "dim=2"),
    (lambda: AppendableKDTree(dim=2, rebuild_threshold=0), "rebuild_threshold"),
    (lambda: AppendableKDTree(dim=2, scale=(1, -1)), "scale"),
    (lambda: AppendableKDTree(dim=2).append([1, 2, 3]), "append expects"),
    (lambda: AppendableKDTree(dim=2).append([1, np.nan]), "finite"),
    (lambda: AppendableKDTree(np.zeros((2, 2))).query([[0, 0]], k=3), "k must be"),
    (lambda: AppendableKDTree(np.zeros((2, 2))).query([0, 0]), r"shape \(m, 2\)"),
    (lambda: AppendableKDTree(np.zeros((2, 2))).query_radius([[0, 0]], -1), "radius"),
])
def test_bad_input_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
