"""Agglomerating segmentations of affinities (ekn_plugins.evaluation.agglomeration): waterz and the
mutex watershed against exact affinities (``seg_to_affgraph``: the ids back exactly), against a
brute-force mutex watershed and the mean-affinity merge rule, on noisy affinities against connected
components, with wrong channel conventions, in the parameter search (every grid point scored
directly) and in ``ekn evaluate --segmenter``."""

import json
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from ekn_core.errors import ConfigError, EknError, ShapeError
from ekn_core.volumes import create_volume, open_volume
from ekn_plugins.data.synth import synth_volume
from ekn_plugins.evaluation.agglomeration import (WATERZ_SCORINGS, MutexParams, WaterzParams, mutex_segmentation,
                                                  quiet_stdout, waterz_affinities)
from ekn_plugins.evaluation.seg_search import SegmentationSearch, grid_points, search_segmentation
from ekn_plugins.evaluation.segmentation import AffinityParams, segmentation_scores
from ekn_plugins.malis import mknhood3d, mknhood3d_aniso, seg_to_affgraph

SHAPE = (8, 20, 24)
NHOODS = {"3d": mknhood3d(1), "3d-aniso": mknhood3d_aniso(1, 1.8), "2d": np.array([[0, -1, 0], [0, 0, -1]]),
          "long": np.array([[-1, 0, 0], [0, -1, 0], [0, 0, -1], [0, -3, 0], [0, 0, -4], [-2, 0, 0]]),
          "3d, x first": mknhood3d(1)[::-1]}


def box_cells():
    """Box-shaped cells of unequal sizes (each connected) and a plane of extracellular space (id 0)."""
    z, y, x = np.indices(SHAPE)
    ids = (1 + 20 * (z >= 3) + 4 * np.digitize(y, [5, 13]) + np.digitize(x, [7, 15, 18])).astype(np.uint32)
    ids[:, :, 7] = 0
    return ids


def same_partition(a, b):
    """``a`` and ``b`` split the voxels identically (the ids may differ)."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return pairs.shape[1] == len(np.unique(a)) == len(np.unique(b))


def noisy(aff, seed=1, noise=0.25):
    rng = np.random.default_rng(seed)
    return np.clip(0.15 + 0.7 * aff + rng.normal(0, noise, aff.shape), 0, 1).astype(np.float32)


def write(path, array):
    with create_volume(path, shape=array.shape, dtype=array.dtype) as vol:
        vol[...] = array
    return path


# --- exact affinities give the ids back -------------------------------------------------------------

@pytest.mark.parametrize("params", [WaterzParams(), WaterzParams(threshold=0.9, scoring="hist_quant_75"),
                                   MutexParams(), MutexParams(threshold=0.2, long_range_threshold=0.9)],
                         ids=["waterz", "waterz q75", "mutex", "mutex 0.2/0.9"])
@pytest.mark.parametrize("nhood", list(NHOODS))
def test_exact_affinities_give_the_ids(params, nhood):
    nh = NHOODS[nhood]
    if isinstance(params, WaterzParams) and nhood == "long":
        nhood = "3d"  # waterz reads 3 edges; "long" is the mutex watershed's
        nh = NHOODS[nhood]
    ids = box_cells()
    aff = seg_to_affgraph(ids, nh).astype(np.float32)
    seg = type(params)(**{**params.to_dict(), "nhood": nh}).segment(aff)
    # a 2-D net's affinities join nothing across slices: every cell is one segment per slice
    cells = ids.astype(np.int64) * SHAPE[0] + np.indices(SHAPE)[0] if nhood == "2d" else ids
    inside = ids > 0
    assert same_partition(seg[inside], cells[inside])
    if nhood != "2d":
        assert segmentation_scores(ids, seg)["vi"] == pytest.approx(0, abs=1e-12)
    # extracellular space: no edge joins its voxels; waterz leaves them unassigned, the mutex
    # watershed makes each a segment of its own
    if isinstance(params, WaterzParams):
        assert (seg[~inside] == 0).all()
    else:
        assert len(np.unique(seg[~inside])) == (~inside).sum() and (seg[~inside] > 0).all()
        assert not np.isin(seg[~inside], seg[inside]).any()
    # ids 1..n in C order of the first voxel
    assert np.array_equal(np.unique(seg[seg > 0]), np.arange(1, seg.max() + 1))
    firsts = [np.flatnonzero(seg.ravel() == i)[0] for i in range(1, seg.max() + 1)]
    assert firsts == sorted(firsts)


def test_channel_conventions():
    """A nhood in another order is read by its offsets; channels in the wrong order, or offsets of the
    wrong sign, spoil the segmentation; waterz refuses a nhood without its three edges."""
    ids = box_cells()
    for params in (WaterzParams, MutexParams):
        reordered = NHOODS["3d, x first"]
        exact = params(nhood=reordered).segment(seg_to_affgraph(ids, reordered).astype(np.float32))
        assert segmentation_scores(ids, exact)["vi"] == pytest.approx(0, abs=1e-12)
        transposed = seg_to_affgraph(ids, mknhood3d(1))[::-1].astype(np.float32)  # x, y, z read as z, y, x
        assert segmentation_scores(ids, params().segment(transposed))["vi"] > 0.1
    flipped = mutex_segmentation(seg_to_affgraph(ids, mknhood3d(1)).astype(np.float32), -mknhood3d(1))
    assert segmentation_scores(ids, flipped)["vi"] > 0.1  # the edge of p read as the one of p + offset
    with pytest.raises(ConfigError, match=r"waterz needs the edges to the previous voxel .* lacks \[0, -1, 0\] "
                       r"\(along y\): segment it with the mutex or affinity segmenter"):
        WaterzParams(nhood=[[-1, 0, 0], [0, 1, 0], [0, 0, -1]])
    AffinityParams(nhood=NHOODS["long"][1:])  # fine for connected components, not for waterz:
    with pytest.raises(ConfigError, match=r"lacks \[-1, 0, 0\]"):
        WaterzParams(nhood=NHOODS["long"][1:])
    picked = waterz_affinities(np.arange(11)[:, None, None, None] * np.ones((11, 1, 1, 1)), mknhood3d_aniso(1, 1.8))
    assert picked[:, 0, 0, 0].tolist() == [0, 1, 2]  # mknhood3d_aniso starts with the three edges


@pytest.mark.parametrize("params", [AffinityParams(), WaterzParams(), MutexParams()], ids=lambda p: p.kind)
def test_segmenters_check_their_input(params):
    """A 2-class softmax per edge (twice the channels), a channel short, 8-bit or out-of-range
    affinities: one clear error each, from segment and (waterz) segment_thresholds alike."""
    aff = seg_to_affgraph(box_cells(), mknhood3d(1)).astype(np.float32)
    softmax = np.stack([1 - aff, aff], axis=1).reshape(6, *SHAPE)  # (disconnected, connected) per edge
    calls = [params.segment] + ([lambda a: params.segment_thresholds(a, [0.3])] if params.kind == "waterz" else [])
    for call in calls:
        with pytest.raises(ShapeError, match=r"one channel per edge of the nhood \(3 edges\), got shape \(6, 8, 20, "
                                             r"24\); of a 2-class softmax .* affinities\[1::2\]"):
            call(softmax)
        with pytest.raises(ShapeError, match=r"\(3 edges\), got shape \(2, 8, 20, 24\)$"):
            call(aff[:2])
        with pytest.raises(ConfigError, match="float probabilities in \\[0, 1\\], got dtype uint8 .* prob / 255"):
            call((aff * 255).astype(np.uint8))
        with pytest.raises(ConfigError, match=r"must lie in \[0, 1\] \(1 = connected\), got values in \[0.0, 2.0\]"):
            call(aff * 2)
    assert same_partition(params.segment(softmax[1::2]), params.segment(aff))  # the connected channels: fine


# --- independent references --------------------------------------------------------------------------

def reference_mutex(aff, nhood, threshold, long_range_threshold):
    """The mutex watershed written out: all edges by |weight| descending, union-find with mutex sets."""
    shape, flat = aff.shape[1:], np.arange(int(np.prod(aff.shape[1:]))).reshape(aff.shape[1:])
    edges = []
    for e, offset in enumerate(nhood):
        weight = aff[e] - (threshold if np.abs(offset).sum() == 1 else long_range_threshold)
        for p in np.ndindex(shape):
            q = tuple(np.add(p, offset))
            if all(0 <= c < s for c, s in zip(q, shape)):
                edges.append((-abs(weight[p]), weight[p] > 0, flat[p], flat[q]))
    parent, mutex = list(range(flat.size)), [set() for _ in range(flat.size)]

    def find(a):
        while parent[a] != a:
            a = parent[a]
        return a

    for _, attractive, u, v in sorted(edges):
        ru, rv = find(u), find(v)
        if ru == rv or rv in mutex[ru]:
            continue
        if attractive:
            parent[rv] = ru
            for m in mutex[rv]:
                mutex[m].discard(rv)
                mutex[m].add(ru)
            mutex[ru] |= mutex[rv]
            mutex[rv] = set()
        else:
            mutex[ru].add(rv)
            mutex[rv].add(ru)
    return np.array([find(i) for i in range(flat.size)]).reshape(shape)


@pytest.mark.parametrize("nhood, thresholds", [("3d", (0.5, 0.5)), ("long", (0.4, 0.7)), ("long", (0.0, 1.0))])
def test_mutex_equals_the_brute_force_mutex_watershed(nhood, thresholds):
    rng = np.random.default_rng(3)
    ids = np.repeat(np.repeat(rng.integers(1, 4, (3, 3, 4)), 2, axis=1), 2, axis=2)  # (3, 6, 8)
    aff = noisy(seg_to_affgraph(ids, NHOODS[nhood]).astype(np.float32), seed=4, noise=0.3)
    seg = mutex_segmentation(aff, NHOODS[nhood], *thresholds)
    reference = reference_mutex(aff, NHOODS[nhood], *thresholds)
    assert same_partition(seg, reference)
    assert 1 < len(np.unique(reference)) < reference.size  # neither all joined nor all apart


def test_waterz_merges_by_the_mean_affinity_between_regions():
    """Two cells with perfect interiors: waterz joins them exactly when the threshold exceeds
    1 - the mean affinity of the edges between them (computed here), on whichever channel they lie."""
    rng = np.random.default_rng(5)
    for axis in range(3):
        ids = np.ones((6, 6, 6), np.uint32)
        ids[(slice(None),) * axis + (slice(3, None),)] = 2
        aff = seg_to_affgraph(ids, mknhood3d(1)).astype(np.float32)
        across = (slice(None),) * axis + (3,)
        aff[axis][across] = rng.uniform(0.05, 0.9, aff[axis][across].shape)
        score = 1.0 - float(np.mean(aff[axis][across], dtype=np.float64))
        below, above = (WaterzParams(threshold=score + d).segment(aff) for d in (-0.01, 0.01))
        assert same_partition(below, ids) and (above == 1).all()


def test_one_agglomeration_gives_every_threshold(capfd):
    aff = noisy(seg_to_affgraph(box_cells(), mknhood3d(1)).astype(np.float32))
    params = WaterzParams(scoring="hist_quant_50", min_size=5)
    thresholds = [0.9, 0.1, 0.5, 0.3]
    together = dict(params.segment_thresholds(aff, thresholds))
    assert list(together) == sorted(thresholds)
    for t in thresholds:
        np.testing.assert_array_equal(together[t], WaterzParams(**{**params.to_dict(), "threshold": t}).segment(aff))
    assert len({len(np.unique(s)) for s in together.values()}) == 4  # each threshold its own segmentation
    assert capfd.readouterr().out == ""  # waterz's progress messages are silenced


def test_quiet_stdout_in_overlapping_threads():
    """Thread a enters, b enters, a leaves (b is still silenced), b leaves: the output is restored
    once, to what it was (file descriptor 1 and sys.stdout); waterz runs in threads likewise."""
    before_stdout, before_fd = sys.stdout, os.fstat(1)
    null = os.stat(os.devnull)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first():
        with quiet_stdout():
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def second():
        a_in.wait(10)
        with quiet_stdout():
            b_in.set()
            a_out.wait(10)
            seen["fd"], seen["stdout"] = os.fstat(1), sys.stdout

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert (seen["fd"].st_dev, seen["fd"].st_ino) == (null.st_dev, null.st_ino)  # b: still silenced
    assert seen["stdout"] is not before_stdout
    assert sys.stdout is before_stdout
    assert (os.fstat(1).st_dev, os.fstat(1).st_ino) == (before_fd.st_dev, before_fd.st_ino)
    aff = noisy(seg_to_affgraph(box_cells(), mknhood3d(1)).astype(np.float32))
    thresholds = [0.2, 0.4] * 4
    with ThreadPoolExecutor(4) as pool:
        segs = list(pool.map(lambda t: WaterzParams(threshold=t).segment(aff), thresholds))
    alone = {t: WaterzParams(threshold=t).segment(aff) for t in (0.2, 0.4)}
    for threshold, seg in zip(thresholds, segs):
        np.testing.assert_array_equal(seg, alone[threshold])
    assert sys.stdout is before_stdout
    assert (os.fstat(1).st_dev, os.fstat(1).st_ino) == (before_fd.st_dev, before_fd.st_ino)


def test_waterz_compiles_nothing():
    """Every offered scoring function is one that waterz's wheel ships compiled: no C++ compiler,
    no witty at run time."""
    from waterz._codegen import normalize
    from waterz._prebuilt.agglomerate import SPECS

    shipped = {normalize(function) for function, queue in SPECS if queue == "0"}
    assert {normalize(f) for f in WATERZ_SCORINGS.values()} <= shipped
    WaterzParams(scoring="hist_quant_95").segment(np.full((3, 2, 2, 2), 0.5, np.float32))
    assert "witty" not in sys.modules


# --- noisy affinities: agglomeration beats connected components ---------------------------------------

def test_agglomeration_beats_connected_components_on_noisy_affinities():
    ids = synth_volume((16, 64, 64), np.random.default_rng(0), aniso_factor=1.0).ids
    aff = noisy(seg_to_affgraph(ids, mknhood3d(1)).astype(np.float32))
    best = {}
    for base in (AffinityParams(), WaterzParams(), MutexParams()):
        best[base.kind] = search_segmentation(aff, ids, base=base).best_scores["vi"]
    assert best["waterz"] < 0.75 * best["affinity"] and best["mutex"] < 0.75 * best["affinity"], best


@pytest.mark.parametrize("params", [WaterzParams(threshold=0.3), MutexParams(threshold=0.6)], ids=["waterz", "mutex"])
def test_min_size_unassigns_the_small_segments(params):
    aff = noisy(seg_to_affgraph(box_cells(), mknhood3d(1)).astype(np.float32), noise=0.35)
    every = params.segment(aff)
    kept = type(params)(**{**params.to_dict(), "min_size": 8}).segment(aff)
    small = (np.bincount(every.ravel()) < 8)[every] | (every == 0)
    assert 0 < small.sum() < small.size
    assert np.array_equal(kept == 0, small) and same_partition(kept[~small], every[~small])


# --- the search ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("base, grid", [
    (WaterzParams(), {"threshold": [0.2, 0.5, 0.8], "scoring": ["mean", "hist_quant_75"], "min_size": [1, 30]}),
    (MutexParams(nhood=NHOODS["long"]), {"threshold": [0.3, 0.6], "long_range_threshold": [0.5, 1.0]})],
    ids=["waterz", "mutex"])
def test_search_returns_the_best_of_its_grid(tmp_path, base, grid):
    ids = box_cells()
    aff = noisy(seg_to_affgraph(ids, np.array(base.nhood)).astype(np.float32), noise=0.3)
    points = grid_points(grid, base)
    direct = [segmentation_scores(ids, p.segment(aff)) for p in points]
    search = search_segmentation(aff, ids, grid, base=base)
    assert [p for p, _ in search.rows] == points and [s for _, s in search.rows] == direct
    assert search.best_params == points[int(np.argmin([s["vi"] for s in direct]))]
    assert len({s["vi"] for s in direct}) > 2  # the grid matters
    assert search_segmentation(aff, ids, grid, base=base, n_proc=2).rows == search.rows
    json_path, _ = search.save(tmp_path / "v")
    record = json.loads(open(json_path).read())
    assert record["segmenter"] == base.kind
    loaded = SegmentationSearch.load(json_path)
    assert loaded.best_params == search.best_params and loaded.rows == search.rows


def test_parameters_are_checked():
    with pytest.raises(ConfigError, match="scoring must be one of the scoring functions waterz ships compiled"):
        WaterzParams(scoring="OneMinus<MaxAffinity<RegionGraphType, ScoreValue>>")
    with pytest.raises(ConfigError, match=r"threshold must be a merge score in \[0, 1\], got 1.5"):
        WaterzParams(threshold=1.5)
    with pytest.raises(ConfigError, match=r"aff_threshold_low \(0.5\) must be below aff_threshold_high \(0.4\)"):
        WaterzParams(aff_threshold_low=0.5, aff_threshold_high=0.4)
    with pytest.raises(ConfigError, match=r"long_range_threshold must be an affinity in \[0, 1\]"):
        MutexParams(long_range_threshold=-0.1)
    with pytest.raises(ConfigError, match="min_size must be a whole number of voxels"):
        MutexParams(min_size=0)
    with pytest.raises(ConfigError, match="the grid has 'seed_erosion', which is no mutex parameter"):
        grid_points({"seed_erosion": [1.0]}, MutexParams())
    with pytest.raises(EknError, match=r"affinities must be \(n_edges, z, y, x\) with one channel per edge"):
        search_segmentation(np.zeros((2, *SHAPE), np.float32), box_cells(), base=WaterzParams())


# --- ekn evaluate --segmenter ----------------------------------------------------------------------------

@pytest.mark.parametrize("segmenter, nhood, points", [("waterz", "3d-aniso", 17), ("mutex", "3d-aniso", 9),
                                                      ("mutex", "3d", 7)])
def test_evaluate_with_a_segmenter(tmp_path, capsys, segmenter, nhood, points):
    from ekn_core.cli import main

    ids = box_cells()
    pred = write(str(tmp_path / "aff.zarr"), seg_to_affgraph(ids, NHOODS[nhood]).astype(np.float32))
    write(str(tmp_path / "ids.zarr"), ids)
    out = tmp_path / "out"
    assert main(["evaluate", "--prediction", pred, "--ids", str(tmp_path / "ids.zarr"), "--affinities", "--nhood",
                 nhood, "--segmenter", segmenter, "--output", str(out), "--no-progress"]) == 0
    v = json.loads((out / "evaluation.json").read_text())["volumes"][0]
    assert v["segmentation"]["segmenter"] == segmenter and v["segmentation"]["points"] == points
    assert v["segmentation"]["scores"]["vi"] == pytest.approx(0, abs=1e-12) and v["segmentation"]["params"]["nhood"] == NHOODS[nhood].tolist()
    search = SegmentationSearch.load(out / v["segmentation"]["search"])
    assert search.best_params.kind == segmenter and len(search.rows) == points
    with open_volume(str(out / v["segmentation"]["volume"])) as vol:
        np.testing.assert_array_equal(vol[...], search.best_params.segment(
            seg_to_affgraph(ids, NHOODS[nhood]).astype(np.float32)))
    assert f"best of the {segmenter} grid by vi" in (out / "REPORT.md").read_text()
    # ekn segment with these parameters, block by block, gives the same segmentation
    json_path = str(out / v["segmentation"]["search"])
    assert main(["segment", pred, str(tmp_path / "seg.zarr"), "--params", json_path, "--block", "4,8,8",
                 "--halo", "2,3,3", "--no-progress"]) == 0
    with open_volume(str(tmp_path / "seg.zarr")) as vol:
        assert same_partition(vol[...], search.best_params.segment(seg_to_affgraph(ids, NHOODS[nhood]).astype(
            np.float32)))
    for wrong, message in ((["--seed-erosion", "1"], f"the {segmenter} segmenter, which has no --seed-erosion"),
                           (["--interior"], "--channel and --interior choose a boundary channel")):
        assert main(["segment", pred, str(tmp_path / "x.zarr"), "--params", json_path, *wrong]) == 2
        assert message in capsys.readouterr().err


def test_evaluate_segmenter_errors(tmp_path, capsys):
    from ekn_core.cli import main

    ids = box_cells()
    pred = write(str(tmp_path / "aff.zarr"), seg_to_affgraph(ids, NHOODS["2d"]).astype(np.float32))
    write(str(tmp_path / "ids.zarr"), ids)
    args = ["evaluate", "--prediction", pred, "--ids", str(tmp_path / "ids.zarr"), "--output", str(tmp_path / "o"),
            "--no-progress"]
    for wrong, message in (
            (["--affinities", "--nhood", "2d", "--segmenter", "mutex", "--per-slice"],
             "--per-slice and --anisotropy are options of the watershed of a boundary map; --segmenter mutex segments "
             "affinities: leave them out"),
            (["--channel", "0", "--segmenter", "waterz"],
             "WaterzParams segment affinities: evaluate them with --affinities (affinities=True)"),
            (["--affinities", "--nhood", "2d", "--segmenter", "mutex", "--grid", '{"scoring": ["mean"]}'],
             "the grid has 'scoring', which is no mutex parameter")):
        assert main([*args, *wrong]) == 2
        assert message in capsys.readouterr().err


# --- ekn segment of affinities ------------------------------------------------------------------------------

@pytest.mark.parametrize("params, halo", [(AffinityParams(), (2, 3, 3)), (WaterzParams(), (2, 3, 3)),
                                          (MutexParams(nhood=NHOODS["long"]), (2, 4, 5)),
                                          (WaterzParams(nhood=NHOODS["2d"]), (0, 3, 3))],
                         ids=["affinity", "waterz", "mutex long", "waterz 2d"])
def test_blockwise_segmentation_of_exact_affinities_equals_the_whole_volume(tmp_path, params, halo):
    from ekn_plugins.evaluation.blockwise_segmentation import segment_volume

    aff = seg_to_affgraph(box_cells(), np.array(params.nhood)).astype(np.float32)
    softmax = np.stack([1 - aff, aff], axis=1).reshape(2 * len(aff), *SHAPE)  # (disconnected, connected) per edge
    source = write(str(tmp_path / "aff.zarr"), softmax)
    summary = segment_volume(source, str(tmp_path / "seg.zarr"), params, block=(4, 8, 8), halo=halo, progress=False)
    assert summary["blocks"] == 18 and summary["merges"] > 0
    with open_volume(str(tmp_path / "seg.zarr")) as vol:
        assert same_partition(vol[...], params.segment(aff))
    with pytest.raises(ConfigError, match=rf"the input has {len(softmax)} channel\(s\), but affinities of the "
                       r"mutex parameters' nhood \(5 edges\) have 5 .* or 10"):
        segment_volume(source, str(tmp_path / "x.zarr"), MutexParams(nhood=NHOODS["long"][:5]), progress=False)


@pytest.mark.parametrize("base, grid, search_bytes", [
    (MutexParams(), {"threshold": [0.4, 0.5]}, 32 + 72 * 11),
    (WaterzParams(), {"threshold": [0.4, 0.5]}, 96),
    (WaterzParams(), {"threshold": [0.5], "scoring": ["mean", "hist_quant_75"]}, 1200),
    (WaterzParams(scoring="hist_quant_50"), {"threshold": [0.4, 0.5]}, 1200)])
def test_the_memory_check_counts_the_agglomeration(tmp_path, monkeypatch, base, grid, search_bytes):
    from ekn_plugins.evaluation.model_evaluation import evaluate_model
    from ekn_plugins.validation.spec import ValidationVolume

    class Memory:
        available = 2**20

    monkeypatch.setattr("psutil.virtual_memory", lambda: Memory())
    pred = write(str(tmp_path / "aff.zarr"), np.zeros((11, *SHAPE), np.float32))
    write(str(tmp_path / "ids.zarr"), box_cells())
    need = np.prod(SHAPE) * ((16 + 8 * 11) + search_bytes * 2) / 2**20  # box + 2 search processes, 11 edges
    with pytest.raises(EknError, match=rf"needs about {need:.0f} MiB, but 1 MiB are available"):
        evaluate_model(prediction=pred, volumes=[ValidationVolume(None, None, None, "a", str(tmp_path / "ids.zarr"))],
                       n_proc=2, out_dir=str(tmp_path), affinities=True, nhood="3d-aniso", base_params=base, grid=grid,
                       progress=False)
