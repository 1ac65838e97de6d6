"""Blockwise watershed segmentation with stitching (ekn_plugins.evaluation.blockwise_segmentation,
.stitching, ``ekn segment``) against the in-memory watershed of the whole volume."""

import argparse
import dataclasses
import json
import multiprocessing
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np
import pytest
from scipy import ndimage

import ekn_core.volumes
import ekn_plugins.evaluation.blockwise_segmentation as bs
from ekn_core.cli import main
from ekn_core.errors import ConfigError, EknError
from ekn_core.volumes import open_volume
from ekn_plugins.commands.segment import SegmentCommand
from ekn_plugins.data.image import ids2barriers
from ekn_plugins.evaluation.seg_search import search_segmentation
from ekn_plugins.evaluation.agglomeration import MutexParams, WaterzParams
from ekn_plugins.evaluation.segmentation import (AffinityParams, WatershedParams, segmentation_scores,
                                                 watershed_segmentation)
from ekn_plugins.evaluation.stitching import final_ids, overlap_matches
from ekn_plugins.malis import mknhood3d, seg_to_affgraph

SHAPE = (15, 48, 48)
BLOCK = (5, 16, 16)  # 3 x 3 x 3 blocks
CORNER = (5, 16, 16)  # where 8 blocks meet


def voronoi(shape=SHAPE, n_cells=10, seed=0, corner=CORNER):
    """Every voxel belongs to its nearest of ``n_cells`` random points, one of them at ``corner``."""
    rng = np.random.default_rng(seed)
    points = np.zeros(shape, np.uint32)
    points[tuple(rng.integers(0, s, n_cells - 1) for s in shape)] = np.arange(2, n_cells + 1)
    points[corner] = 1
    index = ndimage.distance_transform_edt(points == 0, return_distances=False, return_indices=True)
    return points[tuple(index)]


def clean_map(ids, seed=3):
    """Membranes (both voxels of every id change) above 0.5, interiors 0. The membrane values are
    distinct (random): with a constant 1.0, voxels equally far from two seeds tie, and scikit-image
    breaks ties by its queue order, which depends on the array's extent, not on the data."""
    membrane = ids2barriers(ids, dilute=False, ecs_as_barr=False).astype(bool)
    return np.where(membrane, 0.5 + 0.5 * np.random.default_rng(seed).random(ids.shape), 0.0).astype(np.float32)


def noisy_map(ids, seed=1):
    membrane = ids2barriers(ids, dilute=False, ecs_as_barr=False).astype(np.float64)
    noise = np.random.default_rng(seed).normal(0, 0.3, ids.shape)
    return ndimage.gaussian_filter(membrane + noise, 1.0).clip(0, 1).astype(np.float32)


def write_h5(tmp_path, array, name="prob"):
    path = str(tmp_path / f"{name}.h5")
    with h5py.File(path, "w") as f:
        f["p"] = array
    return path + ":p"


def read(path):
    with open_volume(path) as volume:
        return volume[:]


def assert_same_segmentation(seg, reference):
    """A bijection between the ids of ``seg`` and ``reference`` (0 only where the other has 0), VI 0."""
    pairs = np.unique(np.stack([seg.ravel(), reference.ravel()]), axis=1)
    assert pairs.shape[1] == len(np.unique(seg)) == len(np.unique(reference))
    assert np.array_equal(seg == 0, reference == 0)
    assert segmentation_scores(reference.astype(np.int64) + 1, seg.astype(np.int64) + 1)["vi"] == pytest.approx(0, abs=1e-12)


def block_of(point):
    return tuple(p // b for p, b in zip(point, BLOCK))


# --- stitching primitives against brute force ----------------------------------------------------------

def test_overlap_matches_against_brute_force():
    rng = np.random.default_rng(0)
    matched = restricted = 0
    for _ in range(20):
        a, b = rng.integers(0, 6, (2, 4, 5, 6))
        a[rng.random(a.shape) < 0.5] = a.flat[0]  # some large segments
        b = np.where(rng.random(a.shape) < rng.random(), a + 10 * (a > 0), b)  # partly a's: majorities occur
        expected = []
        for i in np.unique(a[a > 0]):
            for j in np.unique(b[b > 0]):
                shared = np.sum((a == i) & (b == j))
                if 2 * shared > max(np.sum(a == i), np.sum(b == j)):
                    expected.append([i, j])
        assert overlap_matches(a, b).tolist() == expected
        allowed_a, allowed_b = rng.choice(6, 4, replace=False), rng.choice(16, 12, replace=False)
        allowed = [[i, j] for i, j in expected if i in allowed_a and j in allowed_b]
        assert overlap_matches(a, b, allowed_a, allowed_b).tolist() == allowed
        matched, restricted = matched + len(expected), restricted + len(expected) - len(allowed)
    assert matched > 10 and restricted > 3  # the cases occur
    assert overlap_matches(np.zeros(3, int), np.zeros(3, int)).shape == (0, 2)


def test_final_ids_against_union_find():
    n_ids = [4, 0, 3, 5]
    offsets = np.cumsum([0] + n_ids[:-1])
    nodes = [(k, i) for k, n in enumerate(n_ids) for i in range(1, n + 1)]
    # chains across blocks, a segment matched twice, and a component whose first node (block 0's
    # id 3) is not written, so it is numbered after block 2's segments
    matches = np.array([[0, 1, 2, 2], [2, 2, 3, 2], [0, 3, 3, 5], [3, 3, 3, 4], [0, 2, 2, 2], [2, 3, 3, 1]])
    written = [np.array([1, 2, 4]), np.array([], int), np.array([1, 2, 3]), np.array([2, 5])]
    parent = {node: node for node in nodes}

    def root(node):
        while parent[node] != node:
            node = parent[node]
        return node

    for a, i, b, j in matches:
        parent[root((a, i))] = root((b, j))
    order = []  # roots in the order of their first written node
    for k, ids in enumerate(written):
        for i in ids:
            if root((k, i)) not in order:
                order.append(root((k, i)))
    final, got_offsets = final_ids(n_ids, matches, written)
    assert got_offsets.tolist() == offsets.tolist()
    expected = [order.index(root(node)) + 1 if root(node) in order else 0 for node in nodes]
    assert final.tolist() == expected
    assert expected[nodes.index((0, 3))] > expected[nodes.index((2, 1))]


# --- the blockwise segmentation against the whole volume -------------------------------------------------

@pytest.mark.parametrize("params, halo", [
    (WatershedParams(), 4),
    # a 2-D cross-section of a cell can have two seeds: the halo must reach both from every core voxel
    (WatershedParams(per_slice=True), (0, 8, 8)),
    (WatershedParams(threshold=0.3, seed_erosion=1.0, mask_threshold=0.9), 4),
], ids=["default", "per_slice", "erosion_mask"])
def test_clean_map_equals_whole_volume(tmp_path, params, halo):
    ids = voronoi()
    prob = clean_map(ids)
    whole = watershed_segmentation(prob, params)
    # one voxel in each of the 8 blocks at the corner (per slice: 4 blocks in each of 2 slices)
    corners = [tuple(slice(c - 1, c + 1) for c in CORNER)]
    if params.per_slice:
        corners = [(z, *corners[0][1:]) for z in (CORNER[0] - 1, CORNER[0])]
    for corner in corners:
        assert len(np.unique(whole[corner])) == 1 and whole[corner].min() > 0
        assert len({block_of(p) for p in np.argwhere(whole == whole[corner].min())}) >= 4  # the cell reaches far

    out = str(tmp_path / "seg.zarr")
    summary = bs.segment_volume(write_h5(tmp_path, prob), out, params, block=BLOCK, halo=halo, progress=False)
    seg = read(out)
    assert seg.dtype == np.uint32 and seg.shape == SHAPE
    assert_same_segmentation(seg, whole)
    assert all(len(np.unique(seg[corner])) == 1 for corner in corners)
    assert summary["blocks"] == 27 and summary["segments"] == whole.max() == seg.max()
    assert sorted(np.unique(seg[seg > 0])) == list(range(1, seg.max() + 1))  # consecutive


@pytest.mark.parametrize("halo", [4, 8])
def test_noisy_map_equals_whole_volume(tmp_path, monkeypatch, halo):
    """On a noisy, blurred map the blocks see different seeds near their faces. Matched over the face
    ± half the halo (the outer half of a halo sees least of the map), the stitched result equals
    the whole volume's with a halo of 4 and of 8 (VI 0; matched over the face ± the whole halo it
    was 0.156 with a halo of 4: false merges), against VI > 2 without stitching."""
    ids = voronoi(n_cells=14)
    prob = noisy_map(ids)
    params = search_segmentation(prob, ids, grid={"threshold": [0.2, 0.3], "min_size": [1, 20]}).best_params
    whole = watershed_segmentation(prob, params)
    source = write_h5(tmp_path, prob)
    bs.segment_volume(source, str(tmp_path / "seg.zarr"), params, block=BLOCK, halo=halo, progress=False)
    assert_same_segmentation(read(str(tmp_path / "seg.zarr")), whole)
    if halo == 8:
        monkeypatch.setattr(bs, "overlap_matches", lambda *args: np.zeros((0, 2), np.int64))
        bs.segment_volume(source, str(tmp_path / "unstitched.zarr"), params, block=BLOCK, halo=8, progress=False)
        unstitched = read(str(tmp_path / "unstitched.zarr")).astype(np.int64)
        assert segmentation_scores(whole.astype(np.int64) + 1, unstitched)["vi"] > 2.0


def smooth_map(seed):
    """Smooth random values (16, 64, 64) in [0, 1]: at threshold 0.4, irregular cells of all sizes."""
    prob = ndimage.gaussian_filter(np.random.default_rng(seed).random((16, 64, 64)), 2) * 3 - 1
    return np.clip(prob, 0, 1).astype(np.float32)


def test_segments_in_no_core_join_nothing(tmp_path):
    """Every block's core agrees with the whole volume's watershed (one-to-one), yet segments that a
    block has only in its halo overlapped different cells on two faces and chained them (VI 0.20,
    3 of 51 cells merged, before such segments were kept out of the matching): the output equals
    the whole volume."""
    prob = smooth_map(0)
    params = WatershedParams(threshold=0.4)
    whole = watershed_segmentation(prob, params)
    block = (8, 16, 16)
    out = str(tmp_path / "seg.zarr")
    summary = bs.segment_volume(write_h5(tmp_path, prob), out, params, block=block, progress=False)
    grid = bs.make_grid(prob.shape, block, bs.default_halo(params), params)
    for index in range(summary["blocks"]):
        (lo, hi), (dlo, dhi) = grid.core(index), grid.domain(index)
        local = watershed_segmentation(prob[tuple(slice(l, h) for l, h in zip(dlo, dhi))], params)
        core = local[tuple(slice(l - d, h - d) for l, h, d in zip(lo, hi, dlo))]
        truth = whole[tuple(slice(l, h) for l, h in zip(lo, hi))]
        pairs = np.unique(np.stack([core.ravel(), truth.ravel()]), axis=1)
        assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]  # the core is right
    assert_same_segmentation(read(out), whole)


@pytest.mark.parametrize("seed", [4, 5])
def test_slabs_of_half_the_halo_neither_split_nor_merge(tmp_path, seed):
    """Matched over the face ± half the halo, the blocks give the whole volume's segmentation. Matched
    over the face ± the whole halo (segments of the cores only), the same blocks gave splits and
    merges (VI split / merge 0.0094 / 0.13 with seed 4, 0.0007 / 0.051 with seed 5): in the outer
    half of its halo a block joined two cells that its neighbour's core keeps apart, so its segment
    was the majority of neither and matched nothing. Splits and merges are checked apart."""
    prob = smooth_map(seed)
    params = WatershedParams(threshold=0.4)
    whole = watershed_segmentation(prob, params)
    out = str(tmp_path / "seg.zarr")
    bs.segment_volume(write_h5(tmp_path, prob), out, params, block=(8, 16, 16), progress=False)
    scores = segmentation_scores(whole.astype(np.int64) + 1, read(out).astype(np.int64) + 1)
    assert scores["vi_split"] == pytest.approx(0, abs=1e-12), "cells of the whole volume are split"
    assert scores["vi_merge"] == pytest.approx(0, abs=1e-12), "cells of the whole volume are merged"
    assert_same_segmentation(read(out), whole)


@pytest.mark.parametrize("segmenter", [AffinityParams, WaterzParams, MutexParams])
def test_min_size_of_affinity_segmenters_counts_whole_segments(tmp_path, segmenter):
    """A 60-voxel process is kept with min_size 50 on the whole volume, but no block with its halo
    sees 50 of its voxels (it was erased); a 40-voxel one is erased by both."""
    ids = np.zeros((16, 16, 64), np.int64)
    ids[:8, :8, :] = 1  # a big cell
    ids[10, 10, 2:62] = 2  # a thin process across four blocks
    ids[12, 3, 10:50] = 4  # a shorter one
    ids[8:] = np.where(ids[8:] == 0, 3, ids[8:])
    aff = seg_to_affgraph(ids, mknhood3d(1)).astype(np.float32) * 0.9 + 0.05
    params = segmenter(min_size=50)
    whole = params.segment(aff)
    assert (whole[ids == 2] > 0).all() and (whole[ids == 4] == 0).all()
    out = str(tmp_path / "seg.zarr")
    summary = bs.segment_volume(write_h5(tmp_path, aff), out, params, block=(16, 16, 16), halo=4, progress=False)
    assert_same_segmentation(read(out), whole)
    assert summary["segments"] == whole.max()


def test_roi_channel_uint8_interior(tmp_path):
    """A ROI of channel 1 of a (c, z, y, x) uint8 interior map is segmented as that crop on its own."""
    ids = voronoi()
    boundary = np.round(clean_map(ids) * 255).astype(np.uint8)
    pred = np.stack([boundary, 255 - boundary])  # channel 1: interior probability
    roi = ((2, 5, 0), (15, 40, 33))
    crop = boundary[tuple(slice(l, h) for l, h in zip(*roi))].astype(np.float32) / 255
    params = WatershedParams(threshold=0.4)
    out = str(tmp_path / "seg.h5") + ":seg"
    summary = bs.segment_volume(write_h5(tmp_path, pred), out, params, block=(5, 12, 12), halo=(3, 4, 4), roi=roi,
                                channel=1, interior=True, progress=False)
    assert summary["shape"] == crop.shape and summary["blocks"] == 3 * 3 * 3
    assert_same_segmentation(read(out), watershed_segmentation(crop, params))


# --- resume, workers -------------------------------------------------------------------------------------

class Killed(Exception):
    pass


def counting_watershed(monkeypatch):
    calls = []

    def spy(prob, params):
        calls.append(prob.shape)
        return watershed_segmentation(prob, params)

    monkeypatch.setattr(bs, "watershed_segmentation", spy)
    return calls


@pytest.mark.parametrize("killed_pass", ["segment", "stitch", "relabel"])
def test_resume_after_kill(tmp_path, monkeypatch, killed_pass):
    prob = noisy_map(voronoi())
    params = WatershedParams(threshold=0.3)
    source = write_h5(tmp_path, prob)
    bs.segment_volume(source, str(tmp_path / "reference.zarr"), params, block=BLOCK, halo=4, progress=False)
    reference = read(str(tmp_path / "reference.zarr"))

    seen = []

    def kill(name, index):
        seen.append(name)
        if seen.count(killed_pass) == 5:
            raise Killed

    out = str(tmp_path / "seg.h5:seg")
    with pytest.raises(Killed):
        bs.segment_volume(source, out, params, block=BLOCK, halo=4, progress=False, on_block=kill)
    calls = counting_watershed(monkeypatch)
    summary = bs.segment_volume(source, out, params, block=BLOCK, halo=4, progress=False)
    assert len(calls) == (27 - 5 if killed_pass == "segment" else 0)
    assert summary["skipped"] == (5 if killed_pass == "segment" else 27)
    np.testing.assert_array_equal(read(out), reference)

    calls.clear()  # a finished job is not redone; new parameters are
    assert bs.segment_volume(source, out, params, block=BLOCK, halo=4, progress=False)["skipped"] == 27
    assert calls == []
    other = WatershedParams(threshold=0.2)
    bs.segment_volume(source, out, other, block=BLOCK, halo=4, progress=False)
    assert len(calls) == 27
    bs.segment_volume(source, str(tmp_path / "fresh.zarr"), other, block=BLOCK, halo=4, progress=False)
    np.testing.assert_array_equal(read(out), read(str(tmp_path / "fresh.zarr")))


def test_two_workers_equal_one(tmp_path):
    prob = noisy_map(voronoi())
    params = WatershedParams(threshold=0.3, min_size=20)
    source = write_h5(tmp_path, prob)
    one = bs.segment_volume(source, str(tmp_path / "one.zarr"), params, block=BLOCK, halo=4, progress=False)
    two = bs.segment_volume(source, str(tmp_path / "two.zarr"), params, block=BLOCK, halo=4, workers=2,
                            progress=False)
    assert (one["segments"], one["merges"]) == (two["segments"], two["merges"])
    np.testing.assert_array_equal(read(str(tmp_path / "one.zarr")), read(str(tmp_path / "two.zarr")))
    again = bs.segment_volume(source, str(tmp_path / "two.zarr"), params, block=BLOCK, halo=4, progress=False)
    assert again["skipped"] == 27  # every block the workers finished was recorded


def test_two_workers_read_a_zarr_input(tmp_path, monkeypatch):
    """A zarr input is read through tensorstore, which aborts a forked child that reads after the
    parent did: the workers start from a fork server instead (also where TensorFlow is not imported)."""
    prob = noisy_map(voronoi())
    source = str(tmp_path / "prob.zarr")
    with ekn_core.volumes.create_volume(source, shape=prob.shape, dtype=prob.dtype) as volume:
        volume[...] = prob
    params = WatershedParams(threshold=0.3)
    bs.segment_volume(source, str(tmp_path / "one.zarr"), params, block=BLOCK, halo=4, progress=False)
    methods, get_context = [], multiprocessing.get_context
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)  # imported by other tests, or not
    monkeypatch.setattr(multiprocessing, "get_context", lambda method: methods.append(method) or get_context(
        "forkserver" if method == "fork" else method))  # never fork a process that may hold TensorFlow
    bs.segment_volume(source, str(tmp_path / "two.zarr"), params, block=BLOCK, halo=4, workers=2, progress=False)
    assert methods == ["forkserver", "forkserver"]  # the segment and the stitch pass
    np.testing.assert_array_equal(read(str(tmp_path / "one.zarr")), read(str(tmp_path / "two.zarr")))


def _opened_inputs():
    from ekn_plugins.evaluation import blockwise_segmentation

    return len(blockwise_segmentation._OPEN)


def test_dask_cluster_equals_one_process(tmp_path):
    from distributed import Client, LocalCluster

    prob = noisy_map(voronoi())
    params = WatershedParams(threshold=0.3, min_size=20)
    source = write_h5(tmp_path, prob)
    one = bs.segment_volume(source, str(tmp_path / "one.zarr"), params, block=BLOCK, halo=4, progress=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        done = []
        dask = bs.segment_volume(source, str(tmp_path / "dask.zarr"), params, block=BLOCK, halo=4,
                                 scheduler=cluster.scheduler_address, progress=False,
                                 on_block=lambda name, index: done.append(name))
        assert sum(client.run(_opened_inputs).values()) >= 1  # the blocks were segmented on the workers
    assert done.count("segment") == done.count("stitch") == 27
    assert (one["segments"], one["merges"]) == (dask["segments"], dask["merges"])
    np.testing.assert_array_equal(read(str(tmp_path / "one.zarr")), read(str(tmp_path / "dask.zarr")))
    with pytest.raises(ConfigError, match="either workers .* or scheduler"):
        bs.segment_volume(source, str(tmp_path / "x.zarr"), params, workers=2, scheduler="tcp://localhost:1")


def test_threads_share_the_open_inputs(tmp_path, monkeypatch):
    """Worker threads (a Dask worker with several) open an input once and never close one that
    another thread reads: threads opening the same input at once, then a thread opening another
    input while one reads the first."""
    arrays = {name: np.random.default_rng(i).random((2, 4, 4)).astype(np.float32) for i, name in enumerate("ab")}
    jobs = {name: bs._Job(write_h5(tmp_path, array, name), {}, slice(0, 1), False, WatershedParams(), None,
                          str(tmp_path)) for name, array in arrays.items()}
    opened, real_open = [], ekn_core.volumes.open_volume

    def slow_open(path, **options):
        opened.append(path)
        threading.Event().wait(0.05)  # wide open for a race
        return real_open(path, **options)

    monkeypatch.setattr(ekn_core.volumes, "open_volume", slow_open)
    start = threading.Barrier(4)

    def read_a(_):
        start.wait(10)
        with bs._input(jobs["a"]) as view:
            return np.asarray(view[:, :, :, :])[0]

    try:
        with ThreadPoolExecutor(4) as pool:
            for result in pool.map(read_a, range(4)):
                np.testing.assert_array_equal(result, arrays["a"])
        assert opened == [jobs["a"].input]
        reading, other_opened = threading.Event(), threading.Event()

        def hold_a():
            with bs._input(jobs["a"]) as view:
                reading.set()
                other_opened.wait(10)
                return np.asarray(view[:, :, :, :])[0]

        def open_b():
            reading.wait(10)
            with bs._input(jobs["b"]) as view:
                other_opened.set()
                return np.asarray(view[:, :, :, :])[0]

        with ThreadPoolExecutor(2) as pool:
            held, other = pool.submit(hold_a), pool.submit(open_b)
            np.testing.assert_array_equal(held.result(), arrays["a"])  # still open while b was opened
            np.testing.assert_array_equal(other.result(), arrays["b"])
        assert set(bs._OPEN) == {repr((job.input, [])) for job in jobs.values()}
        with bs._input(jobs["b"]):
            bs._close_inputs()  # closes a, not b (read here)
            assert [opened.readers for opened in bs._OPEN.values()] == [1]
    finally:
        bs._close_inputs()
    assert bs._OPEN == {}


# --- command line ---------------------------------------------------------------------------------------

def test_command_with_params_file(tmp_path, capsys):
    prob = noisy_map(voronoi())
    source = write_h5(tmp_path, prob[None])
    search = search_segmentation(prob, voronoi(), grid={"threshold": [0.25, 0.35]})
    params_file, _ = search.save(str(tmp_path / "valid"))
    out = str(tmp_path / "seg.zarr")
    assert main(["segment", source, out, "--params", params_file, "--min-size", "20", "--block", "5,16,16",
                 "--halo", "4", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    expected_params = WatershedParams(threshold=search.best_params.threshold, min_size=20)
    expected = bs.segment_volume(source, str(tmp_path / "api.zarr"), expected_params, block=BLOCK, halo=4,
                                 progress=False)
    np.testing.assert_array_equal(read(out), read(str(tmp_path / "api.zarr")))
    assert f"{expected['segments']} segments, 27 blocks (0 already done)" in printed and "voxels/s" in printed
    inline = str(tmp_path / "inline.zarr")  # the same parameters written on the command line
    assert main(["segment", source, inline, "--params", f'{{"threshold": {search.best_params.threshold}}}',
                 "--min-size", "20", "--block", "5,16,16", "--halo", "4", "--no-progress"]) == 0
    np.testing.assert_array_equal(read(inline), read(out))


def test_command_uses_the_searched_channel_and_polarity(tmp_path, capsys, monkeypatch):
    """Parameters that ekn evaluate searched on channel 0 as the interior probability segment that
    channel as 1 - p without --channel and --interior (parameters and channel from one read of the
    file); another channel is refused."""
    ids = voronoi()
    boundary = noisy_map(ids)
    source = write_h5(tmp_path, np.stack([1 - boundary, boundary]))  # channel 0: the interior
    search = search_segmentation(boundary, ids, grid={"threshold": [0.25, 0.35]})
    params_file, _ = dataclasses.replace(search, channel=0, interior=True).save(str(tmp_path / "valid"))
    out = str(tmp_path / "seg.zarr")
    options = ["--block", "5,16,16", "--halo", "4", "--no-progress"]
    reads, read_params = [], bs.read_params
    monkeypatch.setattr(bs, "read_params", lambda path: reads.append(path) or read_params(path))
    assert main(["segment", source, out, "--params", params_file, *options]) == 0
    assert reads == [params_file]
    bs.segment_volume(source, str(tmp_path / "api.zarr"), search.best_params, block=BLOCK, halo=4, channel=0,
                      interior=True, progress=False)
    np.testing.assert_array_equal(read(out), read(str(tmp_path / "api.zarr")))
    capsys.readouterr()
    assert main(["segment", source, str(tmp_path / "x.zarr"), "--params", params_file, "--channel", "1",
                 *options]) == 2
    assert "searched (ekn evaluate) on channel 0 of the net; channel 1 is another" in capsys.readouterr().err


def test_min_size_help_names_both_meanings():
    parser = argparse.ArgumentParser()
    SegmentCommand().add_arguments(parser)
    (action,) = [a for a in parser._actions if "--min-size" in a.option_strings]
    assert "watershed merges them into their neighbours" in action.help
    assert "affinity segmenter (affinity, waterz, mutex) leaves them unassigned, 0" in action.help


def test_work_folders_of_the_former_stitching_are_segmented_anew(tmp_path, monkeypatch):
    """Progress logs of the former format (version 1: slabs of the face ± the whole halo, affinity
    blocks segmented with min_size) are not resumed: their block files would be stitched wrongly."""
    source = write_h5(tmp_path, noisy_map(voronoi()))
    params = WatershedParams(threshold=0.3)
    out = str(tmp_path / "seg.zarr")
    bs.segment_volume(source, out, params, block=BLOCK, halo=4, progress=False)
    logs = [os.path.join(bs.work_folder(out), f"{name}.ekn-progress") for name in ("segment", "stitch")]
    for path in [*logs, out + ".ekn-progress"]:
        with open(path) as f:
            header, rest = f.read().split("\n", 1)
        with open(path, "w") as f:
            f.write(json.dumps({**json.loads(header), "version": 1}) + "\n" + rest)
    calls = counting_watershed(monkeypatch)
    assert bs.segment_volume(source, out, params, block=BLOCK, halo=4, progress=False)["skipped"] == 0
    assert len(calls) == 27


# --- errors ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"block": (0, 16, 16)}, "block must be three whole numbers >= 1"),
    ({"block": (5, 16)}, "block must be three whole numbers"),
    ({"halo": -1}, "halo must be three whole numbers >= 0"),
    ({"halo": (4, 0, 4)}, "halo along y is 0"),
    ({"halo": 1, "params": WatershedParams(seed_erosion=2.0)}, "shorter than the seed erosion"),
    ({"channel": 2}, "channel 2 does not exist"),
    ({"roi": ((0, 0, 0), (16, 48, 48))}, "must be a non-empty box inside the volume"),
    ({"workers": 0}, "workers must be a number of processes >= 1"),
    ({"params": '{"threshold": 0.3}', "searched": {"channel": 0}},  # the file's record would replace searched=
     r"params is a file \(or JSON text\), whose recorded search input is used; searched= is for parameters given"),
])
def test_bad_arguments(tmp_path, kwargs, message):
    source = write_h5(tmp_path, clean_map(voronoi())[None].repeat(2, axis=0))
    kwargs = {"block": BLOCK, "progress": False, **kwargs}
    with pytest.raises(ConfigError, match=message):
        bs.segment_volume(source, str(tmp_path / "seg.zarr"), **kwargs)


def test_bad_inputs(tmp_path):
    with pytest.raises(ConfigError, match=r"channel: the input .* has 3 channels \(0, 1, 2\); say which one holds "
                                          "the boundary probability with --channel K"):
        bs.segment_volume(write_h5(tmp_path, np.zeros((3, 4, 8, 8), np.float32)), str(tmp_path / "a.zarr"),
                          progress=False)
    with pytest.raises(ConfigError, match="holds int16 values"):
        bs.segment_volume(write_h5(tmp_path, np.zeros((4, 8, 8), np.int16), "int"), str(tmp_path / "b.zarr"),
                          progress=False)
    with pytest.raises(ConfigError, match=r"must lie in \[0, 1\]"):
        bs.segment_volume(write_h5(tmp_path, np.full((4, 8, 8), 2.0, np.float32), "two"), str(tmp_path / "c.zarr"),
                          progress=False)


@pytest.mark.parametrize("content, message", [
    ("{not json", "cannot read the segmentation parameters"),
    ('{"threshold": 0.3, "colour": 1}', "neither a segmentation search"),
    ('{"metric": "vi", "rows": [{"params": {}}]}', "no valid segmentation search record"),
    ('{"metric": "vi", "interior": "yes", "rows": [{"params": {}, "scores": {}}]}',
     "no valid segmentation search record: channel must be a channel number or null and interior true"),
    ('{"threshold": 2.0}', "threshold must be a boundary probability"),
    ('{"segmenter": "waterz", "scoring": "max"}', "scoring must be one of the scoring functions waterz ships"),
    ('{"segmenter": "mutex", "seed_erosion": 1}', "nor an object of watershed parameters .* or of another segmenter"),
])
def test_bad_params_file(tmp_path, content, message):
    path = tmp_path / "params.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        bs.load_params(path)
    with pytest.raises(ConfigError, match=message):  # the same text given inline
        bs.load_params(content)


def test_lost_block_file_is_recomputed(tmp_path, monkeypatch):
    """A block file lost after its pass recorded it is reported, and the rerun recomputes only it."""
    source = write_h5(tmp_path, noisy_map(voronoi()))
    params = WatershedParams(threshold=0.3)
    bs.segment_volume(source, str(tmp_path / "reference.zarr"), params, block=BLOCK, halo=4, progress=False)
    out = str(tmp_path / "seg.zarr")
    lost = os.path.join(bs.work_folder(out), "block_0000013.npz")

    def lose(name, index):
        if (name, index) == ("stitch", 26):
            os.remove(lost)

    with pytest.raises(EknError, match="block 13's file .* is missing or damaged"):
        bs.segment_volume(source, out, params, block=BLOCK, halo=4, progress=False, on_block=lose)
    calls = counting_watershed(monkeypatch)
    bs.segment_volume(source, out, params, block=BLOCK, halo=4, progress=False)
    assert len(calls) == 1
    np.testing.assert_array_equal(read(out), read(str(tmp_path / "reference.zarr")))
