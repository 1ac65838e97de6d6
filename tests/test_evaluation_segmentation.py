"""Segmentations from boundary probabilities and affinities, their scores, the parameter search and
saving (ekn_plugins.evaluation.segmentation and .seg_search)."""

import dataclasses
import functools
import json
import math
import os

import numpy as np
import pytest
from scipy import ndimage
from skimage.segmentation import relabel_sequential

import ekn_core.volumes
from ekn_core.errors import ConfigError, EknError, ShapeError
from ekn_core.volumes import open_volume
from ekn_plugins.data.image import ids2barriers
from ekn_plugins.evaluation.seg_search import SegmentationSearch, grid_points, search_segmentation
from ekn_plugins.evaluation.segmentation import (SCORE_NAMES, AffinityParams, WatershedParams,
                                                 affinity_segmentation, save_segmentation, segmentation_scores,
                                                 watershed_segmentation)
from ekn_plugins.malis import mknhood3d, seg_to_affgraph


@functools.lru_cache(maxsize=None)
def voronoi_cells(shape=(10, 40, 40), n_cells=8, seed=0):
    """Ground truth: every voxel belongs to its nearest of ``n_cells`` random points (ids 1..n)."""
    rng = np.random.default_rng(seed)
    points = np.zeros(shape, np.uint32)
    points[tuple(rng.integers(0, s, n_cells) for s in shape)] = np.arange(1, n_cells + 1)
    index = ndimage.distance_transform_edt(points == 0, return_distances=False, return_indices=True)
    ids = points[tuple(index)]
    ids.flags.writeable = False
    return ids


def boundaries(ids):
    """The perfect boundary map: 1.0 on both voxels of every id change, 0.0 inside cells."""
    return ids2barriers(ids, dilute=False, ecs_as_barr=False).astype(np.float64)


def noisy(prob, seed=1, sigma=1.0, noise=0.2):
    rng = np.random.default_rng(seed)
    return np.clip(ndimage.gaussian_filter(prob, sigma) + rng.normal(0, noise, prob.shape), 0, 1)


def same_partition(a, b):
    """True when ``a`` and ``b`` split the voxels identically (ids may differ) and agree on 0."""
    a, b = a.ravel(), b.ravel()
    pairs = np.unique(np.stack([a, b]), axis=1)
    return (np.array_equal(a == 0, b == 0) and pairs.shape[1] == len(np.unique(a)) == len(np.unique(b)))


# --- scores against a brute-force reference ---------------------------------------------------------

def reference_scores(true, pred, ignore_labels):
    """Entropies from the numpy contingency table with predicted 0 one label (CREMI's ``voi``), Rand
    scores by enumerating all voxel pairs with every unassigned voxel alone (SNEMI3D)."""
    true, pred = true.ravel(), pred.ravel().astype(np.int64)
    keep = ~np.isin(true, ignore_labels)
    true, pred = true[keep], pred[keep]
    n = true.size
    _, t = np.unique(true, return_inverse=True)
    _, p = np.unique(pred, return_inverse=True)
    unassigned = pred == 0
    pred[unassigned] = -1 - np.arange(unassigned.sum())  # every unassigned voxel alone
    joint = np.zeros((t.max() + 1, p.max() + 1))
    np.add.at(joint, (t, p), 1.0 / n)
    p_true, p_pred = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    h_pred_given_true = -np.sum(joint[nz] * np.log2((joint / p_true)[nz]))
    h_true_given_pred = -np.sum(joint[nz] * np.log2((joint / p_pred)[nz]))
    distinct = ~np.eye(n, dtype=bool)
    same_true, same_pred = (true[:, None] == true[None]) & distinct, (pred[:, None] == pred[None]) & distinct
    both = (same_true & same_pred).sum()
    precision, recall = both / same_pred.sum(), both / same_true.sum()
    return {"vi": h_pred_given_true + h_true_given_pred, "vi_split": h_pred_given_true, "vi_merge": h_true_given_pred,
            "adapted_rand_error": 1 - 2 * precision * recall / (precision + recall), "rand_precision": precision,
            "rand_recall": recall, "rand_index": ((same_true == same_pred) & distinct).sum() / distinct.sum(),
            "n_true": len(np.unique(true)), "n_pred": len(np.unique(pred[~unassigned])),
            "unassigned_fraction": unassigned.mean()}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ignore_labels", [(0,), (), (0, 3)])
def test_scores_match_brute_force(seed, ignore_labels):
    rng = np.random.default_rng(seed)
    true = rng.integers(0, 5, (6, 25)) * 7  # sparse ids: 0, 7, 14, ...
    pred = rng.integers(0, 6, (6, 25)) + 2**40 * rng.integers(0, 2, (6, 25))  # 64-bit ids, some 0
    pred[pred == 2**40] = 0
    ignore = tuple(7 * v for v in ignore_labels)
    scores = segmentation_scores(true, pred, ignore_labels=ignore)
    expected = reference_scores(true, pred, ignore)
    assert list(scores) == list(SCORE_NAMES)
    for name in SCORE_NAMES:
        assert scores[name] == pytest.approx(expected[name], rel=1e-9, abs=1e-12), name


def test_scores_split_and_merge_directions():
    true = np.repeat([1, 2], 8)
    split = segmentation_scores(true, np.repeat([1, 2, 3, 4], 4))
    merged = segmentation_scores(true, np.ones(16, int))
    assert split["vi_split"] == 1.0 and split["vi_merge"] == 0.0
    assert split["rand_precision"] == 1.0 and split["rand_recall"] < 1.0
    assert merged["vi_merge"] == 1.0 and merged["vi_split"] == 0.0
    assert merged["rand_recall"] == 1.0 and merged["rand_precision"] < 1.0
    identical = segmentation_scores(true, true + 5)
    assert identical["vi"] == identical["adapted_rand_error"] == 0.0 and identical["rand_index"] == 1.0


def test_unassigned_voxels_are_one_label_in_the_vi_and_singletons_in_the_rand_scores():
    # CREMI's voi(reconstruction, groundtruth, ignore_reconstruction=[]): predicted 0 is one label
    unassigned = segmentation_scores(np.ones(1000, int), np.zeros(1000, int))
    assert unassigned["vi"] == unassigned["vi_split"] == unassigned["vi_merge"] == 0.0
    assert unassigned["rand_recall"] == 0.0 and unassigned["adapted_rand_error"] == 1.0
    # masking 50 voxels of each of two cells: in the VI one extra segment, half of either cell
    true = np.repeat([1, 2], 500)
    masked = np.where(np.arange(1000) % 500 < 50, 0, true)
    scores = segmentation_scores(true, masked)
    assert scores["vi_split"] == pytest.approx(-(0.1 * np.log2(0.1) + 0.9 * np.log2(0.9)))
    assert scores["vi_merge"] == pytest.approx(0.1)  # the 10% in segment 0 hold 1 bit about their cell
    assert scores["rand_recall"] == pytest.approx(2 * 450 * 449 / (2 * 500 * 499))


def test_scores_keep_memory_linear_in_the_voxels_with_many_unassigned():
    import tracemalloc

    rng = np.random.default_rng(3)
    true = rng.integers(1, 501, 100_000)
    pred = np.where(rng.random(true.size) < 0.5, 0, rng.integers(1, 20_001, true.size))
    tracemalloc.start()
    try:
        scores = segmentation_scores(true, pred)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # a dense table of true x predicted ids takes 80 MB, with a column per unassigned voxel 280 MB
    assert peak < 30e6, f"peak {peak / 1e6:.0f} MB"
    assert scores["unassigned_fraction"] == pytest.approx(0.5, abs=0.01) and scores["rand_precision"] < 0.01


def test_several_ignored_true_ids():
    prob, ids = search_case()
    glia = int(ids[3, 16, 16])
    true = np.where(ids == ids[0, 0, 0], 0, ids)
    seg = watershed_segmentation(prob, WatershedParams(threshold=0.3))
    kept = ~np.isin(true, [0, glia])
    expected = segmentation_scores(true[kept], seg[kept], ignore_labels=())
    assert expected["n_true"] == len(np.unique(ids)) - 2
    for ignore in ((0, glia), [glia, 0], {0, glia}, np.array([0, glia], np.uint64)):
        assert segmentation_scores(true, seg, ignore_labels=ignore) == expected
    search = search_segmentation(prob, true, grid={"threshold": [0.3, 0.5]}, ignore_labels=(0, glia), n_proc=2)
    assert search.rows[0][1] == expected
    with pytest.raises(ConfigError, match="integer true ids"):
        segmentation_scores(true, seg, ignore_labels=(0.5,))


def test_scores_degenerate_and_bad_input():
    singletons = segmentation_scores(np.arange(1, 5), np.zeros(4, int))  # nothing joined anywhere
    assert singletons["adapted_rand_error"] == 0.0 and singletons["unassigned_fraction"] == 1.0
    with pytest.raises(ShapeError, match="differ in shape"):
        segmentation_scores(np.ones((2, 3), int), np.ones((3, 2), int))
    with pytest.raises(ConfigError, match="integer ids"):
        segmentation_scores(np.ones(3, int), np.ones(3))
    with pytest.raises(ConfigError, match="nothing to score"):
        segmentation_scores(np.zeros(3, int), np.ones(3, int))


# --- watershed segmentation --------------------------------------------------------------------------

def test_perfect_boundaries_reproduce_the_cells():
    ids = voronoi_cells()
    prob = boundaries(ids)
    seg = watershed_segmentation(prob, WatershedParams(threshold=0.5))
    scores = segmentation_scores(ids, seg)
    assert scores["n_pred"] == scores["n_true"] and scores["adapted_rand_error"] < 0.01 and scores["vi"] < 0.1
    # all differences lie on the (two voxels wide) boundaries, where the flood has to choose a side
    assert segmentation_scores(np.where(prob > 0, 0, ids), seg)["vi"] == 0.0
    worse = segmentation_scores(ids, watershed_segmentation(noisy(prob), WatershedParams(threshold=0.5)))
    assert worse["vi"] > scores["vi"] + 1 and worse["adapted_rand_error"] > scores["adapted_rand_error"] + 0.3


def _contact(ids):
    """The two cells with the largest face contact."""
    pairs = []
    for axis in range(3):
        a, b = np.moveaxis(ids, axis, 0)[:-1].ravel(), np.moveaxis(ids, axis, 0)[1:].ravel()
        pairs.append(np.sort(np.stack([a[a != b], b[a != b]]), axis=0))
    values, counts = np.unique(np.concatenate(pairs, axis=1), axis=1, return_counts=True)
    return values[:, counts.argmax()]


def test_missing_boundary_merges_and_extra_boundary_splits():
    ids = voronoi_cells()
    params = WatershedParams(threshold=0.5)
    perfect = segmentation_scores(ids, watershed_segmentation(boundaries(ids), params))
    a, b = _contact(ids)
    merged_ids = np.where(ids == b, a, ids)
    merged = segmentation_scores(ids, watershed_segmentation(boundaries(merged_ids), params))
    biggest = np.bincount(ids.ravel()).argmax()
    x = np.nonzero(ids == biggest)[2]
    split_ids = np.where((ids == biggest) & (np.arange(ids.shape[2]) < np.median(x)), ids.max() + 1, ids)
    split = segmentation_scores(ids, watershed_segmentation(boundaries(split_ids), params))
    assert merged["vi_merge"] > perfect["vi_merge"] + 0.1 and merged["vi_split"] < perfect["vi_split"] + 0.02
    assert split["vi_split"] > perfect["vi_split"] + 0.1 and split["vi_merge"] < perfect["vi_merge"] + 0.02
    assert merged["rand_precision"] < perfect["rand_precision"] - 0.05 < split["rand_precision"]
    assert split["rand_recall"] < perfect["rand_recall"] - 0.05 < merged["rand_recall"]


def test_every_voxel_assigned_and_seeds_respected():
    prob = noisy(boundaries(voronoi_cells()))
    params = WatershedParams(threshold=0.3, min_seed_size=5)
    seg = watershed_segmentation(prob, params)
    assert seg.dtype == np.uint32 and (seg > 0).all()
    seeds, n = ndimage.label(prob < 0.3)
    sizes = np.bincount(seeds.ravel())
    kept = [s for s in range(1, n + 1) if sizes[s] >= 5]
    assert any(sizes[1:] < 5)  # some seeds are dropped
    segment_of = []
    for s in kept:
        inside = np.unique(seg[seeds == s])
        assert len(inside) == 1  # one seed, one segment
        segment_of.append(inside[0])
    assert sorted(segment_of) == list(range(1, seg.max() + 1))  # one segment per kept seed, none else


def test_mask_threshold_leaves_boundaries_unassigned():
    prob = noisy(boundaries(voronoi_cells()))
    seg = watershed_segmentation(prob, WatershedParams(threshold=0.3, mask_threshold=0.6))
    assert (seg[prob > 0.6] == 0).all() and (seg[prob < 0.3] > 0).all()
    # a masked voxel is assigned exactly when the mask connects it to a seed
    reachable = ndimage.label(prob <= 0.6)[0]
    assert np.array_equal(seg > 0, np.isin(reachable, np.unique(reachable[prob < 0.3])) & (prob <= 0.6))


def test_per_slice_ids_stay_in_their_slice():
    prob = noisy(boundaries(voronoi_cells()))
    params = WatershedParams(threshold=0.3, min_size=10, per_slice=True)
    seg = watershed_segmentation(prob, params)
    slices_of = [np.unique(np.nonzero(seg == i)[0]) for i in range(1, seg.max() + 1)]
    assert all(len(z) == 1 for z in slices_of)
    for z in (0, 4):  # each slice is the 2-D segmentation of that slice alone
        alone = watershed_segmentation(prob[z:z + 1], WatershedParams(threshold=0.3, min_size=10))
        assert same_partition(seg[z:z + 1], alone)
    volume = watershed_segmentation(prob, WatershedParams(threshold=0.3, min_size=10))
    assert len(np.unique(volume)) < len(np.unique(seg))


def test_min_size_merges_small_segments():
    prob = noisy(boundaries(voronoi_cells()))
    small = watershed_segmentation(prob, WatershedParams(threshold=0.3))
    sizes = np.bincount(small.ravel())[1:]
    min_size = int(np.sort(sizes)[-4])  # the fourth largest segment has exactly min_size voxels
    seg = watershed_segmentation(prob, WatershedParams(threshold=0.3, min_size=min_size))
    assert sizes.min() < min_size and (sizes >= min_size).sum() >= 4
    assert (seg > 0).all() and np.bincount(seg.ravel())[1:].min() >= min_size
    assert seg.max() == (sizes >= min_size).sum()  # the big segments survive, every small one is merged
    big = np.isin(small, np.nonzero(sizes >= min_size)[0] + 1)
    assert same_partition(np.where(big, small, 0), np.where(big, seg, 0))


def _dumbbell(channel):
    """Two interior boxes joined by a thin channel of interior, inside boundary."""
    prob = np.ones((5, 20, 30))
    prob[1:4, 2:18, 2:13] = prob[1:4, 2:18, 17:28] = 0.0
    prob[channel] = 0.0
    return prob


def test_seed_erosion_splits_thin_bridges_and_respects_anisotropy():
    thin_in_y = _dumbbell(np.s_[1:4, 9:10, 13:17])
    assert watershed_segmentation(thin_in_y).max() == 1
    assert watershed_segmentation(thin_in_y, WatershedParams(seed_erosion=1)).max() == 2
    thin_in_z = _dumbbell(np.s_[2:3, 4:16, 13:17])
    assert watershed_segmentation(thin_in_z, WatershedParams(seed_erosion=1)).max() == 2
    # z sampled 3x coarser: the membrane above and below the bridge is 3 voxel sizes away
    coarse_z = WatershedParams(seed_erosion=1, anisotropy=(3, 1, 1))
    assert watershed_segmentation(thin_in_z, coarse_z).max() == 1
    assert (watershed_segmentation(thin_in_y, coarse_z) > 0).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"threshold": 0}, "threshold must be a boundary probability"),
    ({"threshold": 1.5}, "threshold must be"),
    ({"min_size": 0}, "min_size must be a whole number"),
    ({"min_seed_size": 2.5}, "min_seed_size must be"),
    ({"seed_erosion": -1}, "seed_erosion must be"),
    ({"threshold": 0.5, "mask_threshold": 0.4}, "must be at least threshold"),
    ({"anisotropy": (1, 1)}, "anisotropy must be three"),
    ({"per_slice": "yes"}, "per_slice must be"),
])
def test_params_are_checked(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        WatershedParams(**kwargs)


def test_boundary_prob_is_checked():
    with pytest.raises(ShapeError, match=r"pred\[1\] of a 2-class softmax"):
        watershed_segmentation(np.zeros((2, 3, 4, 5)))
    with pytest.raises(ConfigError, match="prob / 255"):
        watershed_segmentation(np.zeros((3, 4, 5), np.uint8))
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        watershed_segmentation(np.full((3, 4, 5), np.nan))
    for empty in (np.zeros((0, 4, 4)), np.zeros((3, 4, 0), np.float32)):  # not numpy's reduction error
        with pytest.raises(ShapeError, match=r"boundary_prob array is empty \(shape .*\): nothing to segment"):
            watershed_segmentation(empty)
    with pytest.raises(ShapeError, match="affinities array is empty"):
        AffinityParams().segment(np.zeros((3, 0, 4, 4)))


# --- affinities -----------------------------------------------------------------------------------

def test_affinity_segmentation_is_ndimage_label():
    rng = np.random.default_rng(3)
    mask = rng.random((6, 12, 14)) < 0.45
    edges = seg_to_affgraph(mask.astype(np.int32), mknhood3d(1))
    aff = np.where(edges > 0, 0.6, 0.0) + 0.3 * rng.random(edges.shape)  # connected edges in [0.6, 0.9)
    reference, _ = ndimage.label(mask)
    reference[np.bincount(reference.ravel())[reference] < 2] = 0  # single voxels: background
    reference = relabel_sequential(reference)[0]
    seg = affinity_segmentation(aff, threshold=0.45, min_size=2)
    assert seg.dtype == np.uint32 and np.array_equal(seg, reference)
    assert (affinity_segmentation(aff, threshold=0.9, min_size=2) == 0).all()  # no edge above 0.9
    singletons = affinity_segmentation(aff, threshold=0.9)  # min_size 1: every voxel its own segment
    assert np.array_equal(np.sort(singletons.ravel()), np.arange(1, mask.size + 1))


def test_affinity_segmentation_checks_shapes():
    with pytest.raises(ShapeError, match="one channel per nhood row"):
        affinity_segmentation(np.zeros((2, 3, 4, 5)))
    with pytest.raises(ConfigError, match="threshold"):
        affinity_segmentation(np.zeros((3, 3, 4, 5)), threshold=1.0)


# --- search ---------------------------------------------------------------------------------------

SEARCH_GRID = {"threshold": [0.2, 0.3, 0.5], "min_size": [1, 40]}


@functools.lru_cache(maxsize=None)
def search_case():
    ids = voronoi_cells((6, 32, 32), 6, 4)
    return noisy(boundaries(ids), seed=5), ids


@pytest.mark.parametrize("metric", ["vi", "adapted_rand_error"])
def test_search_best_is_the_argmin_of_direct_evaluations(metric):
    prob, ids = search_case()
    search = search_segmentation(prob, ids, grid=SEARCH_GRID, metric=metric)
    direct = [segmentation_scores(ids, watershed_segmentation(prob, p)) for p in grid_points(SEARCH_GRID)]
    assert [p for p, _ in search.rows] == grid_points(SEARCH_GRID)
    assert [s for _, s in search.rows] == direct
    values = [s[metric] for s in direct]
    assert len(set(values)) > 1
    assert search.best_params == grid_points(SEARCH_GRID)[int(np.argmin(values))]
    assert search.best_scores == direct[int(np.argmin(values))]
    ranks = [int(line.split("|")[1]) for line in search.table().splitlines()[2:]]
    assert ranks == list(np.argsort(np.argsort(values, kind="stable"), kind="stable") + 1)


def test_search_ties_go_to_the_first_grid_point():
    ids = np.ones((2, 4, 8), np.uint32)
    search = search_segmentation(np.zeros(ids.shape), ids, grid={"threshold": [0.9, 0.5, 0.7]})
    assert search.best_params.threshold == 0.9 and search.table().splitlines()[2].startswith("| 1 | 0.9 |")


def test_search_ties_go_to_a_segmentation_with_segments_before_an_empty_one():
    """A threshold below every probability leaves no seed: 0 segments score VI 0 against one true
    object, as does one segment over everything; the non-empty one is chosen (ekn segment would
    otherwise write an empty segmentation)."""
    ids = np.ones((2, 4, 8), np.uint32)
    search = search_segmentation(np.full(ids.shape, 0.3), ids, grid={"threshold": [0.1, 0.5]})
    assert [(s["vi"], s["n_pred"]) for _, s in search.rows] == [(0.0, 0), (0.0, 1)]
    assert search.best_params.threshold == 0.5 and search.table().splitlines()[3].startswith("| 1 | 0.5 |")


def test_search_in_two_processes_gives_the_same_rows():
    prob, ids = search_case()
    base = WatershedParams(anisotropy=(2, 1, 1))
    one = search_segmentation(prob, ids, grid=SEARCH_GRID, base=base)
    two = search_segmentation(prob, ids, grid=SEARCH_GRID, base=base, n_proc=2)
    assert two.to_dict() == one.to_dict() and one.best_params.anisotropy == (2.0, 1.0, 1.0)


def test_search_checks_its_arguments():
    prob, ids = search_case()
    with pytest.raises(ConfigError, match="no watershed parameter"):
        search_segmentation(prob, ids, grid={"thresh": [0.5]})
    with pytest.raises(ConfigError, match="non-empty list"):
        search_segmentation(prob, ids, grid={"threshold": []})
    with pytest.raises(ConfigError, match=r"grid point \{'threshold': 0.5, 'mask_threshold': 0.3\}"):
        search_segmentation(prob, ids, grid={"threshold": [0.5], "mask_threshold": [0.3]})
    with pytest.raises(ConfigError, match="metric must be one of"):
        search_segmentation(prob, ids, metric="rand")
    with pytest.raises(ShapeError, match="center_cubes"):
        search_segmentation(prob, ids[:-1])


def test_search_save_and_load(tmp_path, monkeypatch):
    prob, ids = search_case()
    search = search_segmentation(prob, ids, grid={"threshold": [0.3, 0.5]})
    json_path, md_path = search.save(tmp_path / "net")
    assert json_path == str(tmp_path / "net-seg_params.json")
    record = json.loads(open(json_path).read())
    assert record["best"]["params"] == search.best_params.to_dict() and len(record["rows"]) == 2
    assert SegmentationSearch.load(json_path) == search
    assert (record["channel"], record["interior"]) == (None, None)  # not recorded (search_segmentation alone)
    recorded = dataclasses.replace(search, channel=0, interior=True)  # as ekn evaluate records them
    loaded = SegmentationSearch.load(recorded.save(tmp_path / "recorded")[0])
    assert loaded == recorded and (loaded.channel, loaded.interior) == (0, True)
    assert search.table() in open(md_path).read()
    assert search.save(tmp_path)[0] == str(tmp_path / "seg_params.json")
    # a NaN score (e.g. a precision of nothing) is written as null, strict JSON, and read back as NaN
    search.rows[1][1]["rand_precision"] = float("nan")
    strict_path = search.save(tmp_path / "nan")[0]

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    assert json.loads(open(strict_path).read(), parse_constant=refuse)["rows"][1]["scores"]["rand_precision"] is None
    assert math.isnan(SegmentationSearch.load(strict_path).rows[1][1]["rand_precision"])
    # a write that fails halfway leaves the previous file whole and no temporary file
    before = sorted(os.listdir(tmp_path))
    monkeypatch.setattr("ekn_core.atomic.os.replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        search_segmentation(prob, ids, grid={"threshold": [0.2]}).save(tmp_path / "net")
    assert sorted(os.listdir(tmp_path)) == before and json.loads(open(json_path).read()) == record


# --- saving segmentations ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["seg.h5", "seg.h5:ws/seg", "seg.zarr", "seg.zarr:ws/seg"])
def test_save_segmentation_round_trip(tmp_path, name):
    seg = voronoi_cells().astype(np.uint64) * 2**33
    target = save_segmentation(seg, str(tmp_path / name))
    with open_volume(target) as vol:
        assert vol.dtype == np.uint64 and np.array_equal(vol[:], seg)
    smaller = np.arange(24, dtype=np.uint32).reshape(2, 3, 4)
    assert save_segmentation(smaller, str(tmp_path / name)) == target  # replaces the volume
    with open_volume(target) as vol:
        assert np.array_equal(vol[:], smaller)
    assert not [n for n in os.listdir(tmp_path) if ".tmp" in n or ".old" in n]


@pytest.mark.parametrize("name", ["seg.h5", "seg.zarr:ws/seg"])
def test_save_segmentation_keeps_the_old_volume_on_failure(tmp_path, monkeypatch, name):
    old = np.ones((2, 3, 4), np.uint32)
    target = save_segmentation(old, str(tmp_path / name))
    if name.endswith(".h5"):
        save_segmentation(old * 2, str(tmp_path / name), key="other")

    create_volume = ekn_core.volumes.create_volume

    def failing(*args, **kwargs):  # creates the new (empty) volume, then dies before writing it
        create_volume(*args, **kwargs).close()
        raise RuntimeError("killed while writing")

    monkeypatch.setattr("ekn_core.volumes.create_volume", failing)
    with pytest.raises(RuntimeError, match="killed"):
        save_segmentation(old * 5, str(tmp_path / name))
    monkeypatch.undo()
    with open_volume(target) as vol:
        assert np.array_equal(vol[:], old)
    if name.endswith(".h5"):
        with open_volume(f"{tmp_path / name}:other") as vol:  # other datasets of the file are kept
            assert np.array_equal(vol[:], old * 2)
    leftovers = [n for _, dirs, files in os.walk(tmp_path) for n in dirs + files if ".tmp" in n]
    assert leftovers == []


def test_save_segmentation_checks_its_input(tmp_path):
    with pytest.raises(ConfigError, match="integer ids"):
        save_segmentation(np.zeros((2, 2, 2)), str(tmp_path / "s.h5"))
    with pytest.raises(EknError, match="HDF5 .* or zarr"):
        save_segmentation(np.zeros((2, 2, 2), np.uint32), str(tmp_path / "s.tif"))
