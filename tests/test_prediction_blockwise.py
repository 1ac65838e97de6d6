"""Out-of-core predict_volume: equals predict_dense, bounded blocks, resume after a crash."""

import json
import os

import h5py
import numpy as np
import pytest

from ekn_core.errors import ConfigError, ShapeError
from ekn_core.prediction import predict_dense
from ekn_core.prediction.blockwise import ProgressLog, make_plan, prediction_status, predict_volume, progress_path
from ekn_core.prediction.source import mirror_index, read_window
from ekn_core.prediction.tiling import TileGeometry, box_window
from prediction_testnets import NumpyNet, make_fast_net, make_net, random_layers, read_volume, write_raw_h5

MB = 2**20


@pytest.fixture
def raw_h5(tmp_path):
    return write_raw_h5(tmp_path, (11, 41, 37))


def test_mirror_read_matches_numpy_pad():
    a = np.random.default_rng(1).random((2, 5, 6, 7))
    padded = np.pad(a, [(0, 0), (3, 4), (5, 2), (0, 6)], mode="symmetric")
    np.testing.assert_array_equal(read_window(a, (-3, -5, 0), (9, 8, 13)), padded)
    np.testing.assert_array_equal(read_window(a, (1, 2, 3), (4, 5, 6)), a[:, 1:4, 2:5, 3:6])
    assert mirror_index(np.array([-1, 5, 10]), 5).tolist() == [0, 4, 0]


def test_volume_equals_predict_dense_with_small_blocks(tmp_path, raw_h5):
    raw, src = raw_h5
    net = make_net()
    whole = predict_dense(net, raw, pad_raw=True)
    out = str(tmp_path / "pred.zarr")
    summary = predict_volume(make_net(), src, out, tile=None, memory_budget=1 * MB, progress=False)
    assert summary["blocks"] > 4 and summary["skipped"] == 0
    pred = read_volume(out)
    assert pred.shape == (2, 11, 41, 37)
    np.testing.assert_allclose(pred, whole, atol=1e-6)
    # valid mode and a ROI
    valid = predict_volume(make_net(), src, str(tmp_path / "valid.zarr"), tile=None, pad=False,
                           memory_budget=1 * MB, progress=False)
    np.testing.assert_allclose(read_volume(str(tmp_path / "valid.zarr")), predict_dense(net, raw), atol=1e-6)
    assert valid["shape"] == (2, 9, 27, 23)
    predict_volume(make_net(), src, str(tmp_path / "roi.h5:p"), roi=((2, 5, 30), (9, 40, 37)), tile=None,
                   channel=1, as_uint8=True, progress=False)
    roi = read_volume(str(tmp_path / "roi.h5:p"))
    assert roi.dtype == np.uint8 and roi.shape == (7, 35, 7)
    ref = np.clip(np.rint(whole[1, 2:9, 5:40, 30:37] * 255), 0, 255)
    assert np.abs(roi.astype(int) - ref).max() <= 1  # ROI context is real data, as in the whole run


def test_auto_tile_and_mfp_give_the_same_result(tmp_path, raw_h5):
    raw, src = raw_h5
    ref = predict_dense(make_net(), raw, pad_raw=True)
    for name, kwargs in [("auto", {"tile": "auto"}), ("mfp", {"mfp": True, "tile": (7, 23, 23)})]:
        out = str(tmp_path / f"{name}.zarr")
        predict_volume("prediction_testnets:make_net", src, out, memory_budget=2 * MB, progress=False, **kwargs)
        np.testing.assert_allclose(read_volume(out), ref, atol=1e-5)


class Crash(Exception):
    pass


def test_resume_after_crash_is_identical_and_skips_done_blocks(tmp_path, raw_h5):
    _, src = raw_h5
    full = str(tmp_path / "full.zarr")
    predict_volume(make_fast_net(), src, full, tile=None, memory_budget=1 * MB, progress=False)
    out = str(tmp_path / "resumed.zarr")
    seen = []

    def crash_after_three(index):
        seen.append(index)
        if len(seen) == 3:
            raise Crash

    with pytest.raises(Crash):
        predict_volume(make_fast_net(), src, out, tile=None, memory_budget=1 * MB, progress=False,
                       on_block=crash_after_three)
    summary = predict_volume(make_fast_net(), src, out, tile=None, memory_budget=1 * MB, progress=False)
    assert summary["skipped"] == 3
    np.testing.assert_array_equal(read_volume(out), read_volume(full))
    again = predict_volume(make_fast_net(), src, out, tile=None, memory_budget=1 * MB, progress=False)
    assert again["skipped"] == again["blocks"]
    # another job (other budget → other blocks) into the same output starts over
    other = predict_volume(make_fast_net(), src, out, tile=None, memory_budget=4 * MB, progress=False)
    assert other["skipped"] == 0
    with open(progress_path(out)) as f:
        assert json.loads(f.readline())["plan"]["block"] != []


def test_progress_log_counts_only_complete_lines(tmp_path):
    path = str(tmp_path / "x.ekn-progress")
    with ProgressLog(path, {"a": 1}) as plog:
        plog.mark(0)
        plog.mark(5)
    with open(path, "a") as f:
        f.write("done 1")  # torn: "done 12" cut short by a crash reads as block 1
    assert ProgressLog(path, {"a": 1}).done == {0, 5}
    with ProgressLog(path, {"a": 1}) as plog:  # the resumed run starts a line of its own
        plog.mark(7)
    assert ProgressLog(path, {"a": 1}).done == {0, 5, 7}
    with open(path) as f:
        assert f.read().endswith("\ndone 1 (torn)\ndone 7\n")


def test_2d_net_over_stack_volume(tmp_path):
    rng = np.random.default_rng(3)
    net = NumpyNet(random_layers(rng, [("conv", 2, (4, 4)), ("pool", (2, 2)), ("conv", 2, (3, 3))]), (15, 15))
    stack = rng.random((3, 30, 26)).astype(np.float32)
    path = str(tmp_path / "stack.h5")
    with h5py.File(path, "w") as f:
        f["raw"] = stack
    predict_volume(net, path + ":raw", str(tmp_path / "out.zarr"), tile=None, memory_budget=MB, progress=False)
    np.testing.assert_allclose(read_volume(str(tmp_path / "out.zarr")), predict_dense(net, stack, pad_raw=True),
                               atol=1e-6)


def test_plan_bounds_block_memory_and_rejects_bad_roi():
    g = TileGeometry((23, 185, 185), (5, 21, 21), (2, 4, 4))
    small = make_plan(g, (64, 512, 512), 1, 2, memory_budget=64 * MB)
    large = make_plan(g, (6400, 51200, 51200), 1, 2, memory_budget=64 * MB)
    assert small.block == large.block  # block size depends on the budget, not on the volume
    assert all(b % s == 0 for b, s in zip(large.block, large.grid.step))
    window = np.prod([b + t for b, t in zip(large.block, g.tile_in)])
    assert 4 * 2 * window <= 32 * MB
    with pytest.raises(ConfigError, match="ROI"):
        make_plan(g, (64, 512, 512), 1, 2, roi=((0, 0, 0), (65, 10, 10)))
    with pytest.raises(ShapeError, match="full context"):
        make_plan(g, (10, 512, 512), 1, 2, pad=False)


def test_peak_memory_is_flat_in_the_volume_size(tmp_path):
    import tracemalloc

    net = NumpyNet(random_layers(np.random.default_rng(4), [("conv", 2, (1, 1, 1))]), (4, 16, 16))
    peaks = []
    for size in (64, 256):  # input 0.25 MB vs 4 MB; output 2 MB vs 32 MB of float32
        path = str(tmp_path / f"raw{size}.h5")
        with h5py.File(path, "w") as f:
            f.create_dataset("raw", data=np.random.default_rng(5).integers(0, 255, (16, size, size), np.uint8),
                             chunks=(8, 64, 64))
        tracemalloc.start()
        predict_volume(net, path + ":raw", str(tmp_path / f"out{size}.zarr"), tile=None, memory_budget=2 * MB,
                       progress=False)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 4 * MB, peaks
    assert peaks[1] < 1.5 * peaks[0] + MB, peaks


def test_knossos_output_of_one_channel_resumes(tmp_path, raw_h5):
    raw, src = raw_h5
    out = str(tmp_path / "k" / "barrier.k.toml")
    with pytest.raises(Crash):
        predict_volume(make_fast_net(), src, out, tile=None, channel=1, as_uint8=True, memory_budget=MB,
                       progress=False, on_block=lambda i: (_ for _ in ()).throw(Crash) if i == 2 else None)
    summary = predict_volume(make_fast_net(), src, out, tile=None, channel=1, as_uint8=True, memory_budget=MB,
                             progress=False)
    assert summary["skipped"] == 3
    ref = np.clip(np.rint(predict_dense(make_fast_net(), raw, pad_raw=True)[1] * 255), 0, 255)
    assert np.abs(read_volume(out).astype(int) - ref).max() <= 1


def test_another_job_into_a_knossos_output_starts_over(tmp_path, raw_h5):
    raw, src = raw_h5
    out = str(tmp_path / "k" / "barrier.k.toml")
    predict_volume(make_fast_net(), src, out, tile=None, channel=1, progress=False)
    summary = predict_volume(make_fast_net(), src, out, tile=None, channel=0, roi=((0, 0, 0), (11, 20, 20)),
                             progress=False)  # another channel and region: as with zarr, it replaces the output
    assert summary["skipped"] == 0
    ref = np.clip(np.rint(predict_dense(make_fast_net(), raw, pad_raw=True)[0, :, :20, :20] * 255), 0, 255)
    assert np.abs(read_volume(out).astype(int) - ref).max() <= 1
    foreign = str(tmp_path / "em" / "raw.k.toml")  # a data set no prediction wrote is never replaced
    predict_volume(make_fast_net(), src, foreign, tile=None, channel=1, progress=False)
    os.remove(progress_path(foreign))
    with pytest.raises(ConfigError, match="no ekn job wrote .* --overwrite"):
        predict_volume(make_fast_net(), src, foreign, tile=None, channel=0, progress=False)


def test_blended_blocks_equal_one_blended_image(tmp_path):
    from prediction_testnets import SamePadConv

    raw = np.random.default_rng(6).random((3, 4, 70)).astype(np.float32)
    path = str(tmp_path / "raw.h5")
    with h5py.File(path, "w") as f:
        f["raw"] = raw
    net = SamePadConv(12)  # tile borders differ: only blending over all overlapping tiles agrees
    whole = predict_dense(net, raw, pad_raw=True, overlap=6)
    summary = predict_volume(net, path + ":raw", str(tmp_path / "o.zarr"), tile=None, overlap=6,
                             memory_budget=2**13, batch_size=3, progress=False)
    assert summary["blocks"] > 3
    np.testing.assert_allclose(read_volume(str(tmp_path / "o.zarr")), whole, atol=1e-6)


def test_an_interrupted_replacement_leaves_no_old_record_over_the_new_output(tmp_path, raw_h5, monkeypatch):
    """Job B replaces job A's output and is stopped before it writes its own log header: rerunning
    job A must not take B's new (empty) output for its finished one."""
    from ekn_core.prediction import blockwise

    _, src = raw_h5
    out, kw = str(tmp_path / "out.zarr"), dict(tile=None, progress=False, memory_budget=MB)
    first = predict_volume("prediction_testnets:make_fast_net", src, out, **kw)
    expected = read_volume(out)
    start = blockwise.ProgressLog.start

    def stop(self):
        raise Crash

    monkeypatch.setattr(blockwise.ProgressLog, "start", stop)
    with pytest.raises(Crash):
        predict_volume("prediction_testnets:make_net", src, out, **kw)  # job B: another model
    monkeypatch.setattr(blockwise.ProgressLog, "start", start)
    again = predict_volume("prediction_testnets:make_fast_net", src, out, **kw)
    assert again["skipped"] == 0 and first["blocks"] == again["blocks"]
    np.testing.assert_array_equal(read_volume(out), expected)


def test_a_deleted_output_is_predicted_anew(tmp_path, raw_h5, caplog):
    import shutil

    _, src = raw_h5
    out, kw = str(tmp_path / "out.zarr"), dict(tile=None, progress=False, memory_budget=MB)
    predict_volume(make_fast_net(), src, out, **kw)
    expected = read_volume(out)
    shutil.rmtree(out)  # the progress log stays
    summary = predict_volume(make_fast_net(), src, out, **kw)
    assert summary["skipped"] == 0 and "is gone" in caplog.text
    np.testing.assert_array_equal(read_volume(out), expected)


def test_resume_needs_the_same_input_data_and_factory_weights(tmp_path, monkeypatch):
    raw, src = write_raw_h5(tmp_path, (11, 41, 37), seed=1)
    kw = dict(tile=None, progress=False, memory_budget=MB)

    def crash(index):
        raise Crash

    def stop_and_resume(out, change):
        with pytest.raises(Crash):
            predict_volume("prediction_testnets:make_fast_net", src, out, on_block=crash, **kw)
        change()
        return predict_volume("prediction_testnets:make_fast_net", src, out, **kw)

    other = (np.random.default_rng(2).random(raw.shape) * 255).astype(np.uint8)
    os.utime(src.split(":")[0], ns=(0, 0))  # the new data carries another modification time

    def new_data():
        with h5py.File(src.split(":")[0], "w") as f:
            f["raw"] = other

    out = str(tmp_path / "new_data.zarr")
    assert stop_and_resume(out, new_data)["skipped"] == 0
    np.testing.assert_allclose(read_volume(out), predict_dense(make_fast_net(), other, pad_raw=True), atol=1e-6)
    out = str(tmp_path / "new_weights.zarr")  # the same factory with other weights
    assert stop_and_resume(out, lambda: monkeypatch.setenv("EKN_TESTNET_SEED", "8"))["skipped"] == 0
    np.testing.assert_allclose(read_volume(out), predict_dense(make_fast_net(), other, pad_raw=True), atol=1e-6)
    assert stop_and_resume(str(tmp_path / "same.zarr"), lambda: None)["skipped"] == 1  # nothing changed


@pytest.mark.parametrize("name", ["{tmp}/out.h5:p", "precomputed://file://{tmp}/out"])
def test_blocks_are_synced_to_disk_before_they_are_recorded(tmp_path, raw_h5, monkeypatch, name):
    _, src = raw_h5
    out = name.format(tmp=tmp_path)
    recorded_at_sync = []

    def sync(path):
        assert os.path.dirname(path) == str(tmp_path)  # the output's file system (not the URL's)
        with open(progress_path(out)) as f:
            recorded_at_sync.append(sum(line.startswith("done ") for line in f))

    from ekn_core.prediction import blockwise

    monkeypatch.setattr(blockwise, "sync_file_system", sync)
    summary = predict_volume(make_fast_net(), src, out, tile=None, progress=False, memory_budget=MB)
    assert recorded_at_sync == list(range(summary["blocks"]))  # sync k comes before the k-th record


UNET_LIKE = TileGeometry((14, 14, 16), (6, 6, 8), (1, 1, 1), (2, 2, 2))  # tiles (6, 6, 8) on a lattice of 2


@pytest.mark.parametrize("geometry, shape, roi, budget, n_blocks, n_lattice", [
    # a ROI off the lattice of tiles of 8 voxels (0, 8, 16, ...): blocks of 24 from 0, 24, 48
    (TileGeometry((44, 44, 44), (1, 1, 1), (8, 8, 8)), (60, 60, 60), ((3, 3, 3), (51, 51, 51)), 2**23, 27, 27),
    # the last tiles are moved back across a seam of the block lattice (whole volume, ROI off the lattice)
    (UNET_LIKE, (9, 50, 47), None, MB, 4, 8), (UNET_LIKE, (11, 41, 37), ((1, 3, 2), (10, 40, 36)), MB, 4, 8),
], ids=["roi-off-lattice", "end-off-step", "roi-end-off-step"])
def test_blocks_cut_only_between_tiles_and_hold_each_tile_once(tmp_path, geometry, shape, roi, budget, n_blocks,
                                                               n_lattice):
    from collections import Counter

    plan = make_plan(geometry, shape, 1, 1, roi=roi, memory_budget=budget)
    grid, blocks = plan.grid, plan.blocks()
    assert (len(blocks), int(np.prod(plan.lattice_counts))) == (n_blocks, n_lattice)
    covered = np.zeros(plan.out_shape, int)
    for lo, hi in blocks:
        covered[box_window(lo, hi, plan.origin)] += 1
    assert (covered == 1).all()  # the blocks partition the region
    if grid.base == plan.origin:  # blocks write whole chunks (or end at the region's end)
        chunks = plan.chunks()
        assert all((l - o) % c == 0 and (h == e or (h - o) % c == 0) for lo, hi in blocks
                   for l, h, o, e, c in zip(lo, hi, plan.origin, plan.end, chunks))
    tiles = [start for lo, hi in blocks for start in grid.tiles(lo, hi)]  # what the blocks predict
    assert Counter(tiles).most_common(1)[0][1] == 1  # no tile twice
    assert sorted(tiles) == sorted(grid.tiles(plan.origin, plan.end))  # and every tile once
    fingerprint = {"input": "raw.h5", "input_shape": [1, *shape], "plan": plan.to_json()}
    out = str(tmp_path / "pred.zarr")  # the record of the finished job counts all its blocks
    with ProgressLog(progress_path(out), fingerprint) as plog:
        for index in range(len(blocks)):
            plog.mark(index)
    assert prediction_status(out)[1:] == (len(blocks), len(blocks))
    # a record without block_counts in its plan (written before the last tile was kept in one block)
    # counts the blocks of the whole lattice, and a job of the new layout does not resume it
    earlier = dict(fingerprint, plan={k: v for k, v in plan.to_json().items() if k != "block_counts"})
    os.remove(progress_path(out))
    with ProgressLog(progress_path(out), earlier) as plog:
        for index in range(len(blocks)):
            plog.mark(index)
    assert prediction_status(out)[1:] == (n_blocks, n_lattice)
    assert ProgressLog(progress_path(out), fingerprint).resumed == (n_lattice == n_blocks)


def _2d_net(dense):
    return NumpyNet(random_layers(np.random.default_rng(3), [("conv", 2, (4, 4)), ("pool", (2, 2)),
                                                            ("conv", 2, (3, 3))]), (15, 15), dense=dense)


def _unet():
    from prediction_testnets import UNetLite

    return UNetLite(np.random.default_rng(4), (14, 14, 16))


@pytest.mark.parametrize("net, shape, roi", [
    (make_net, (9, 50, 47), None), (make_net, (11, 41, 37), ((1, 3, 2), (10, 40, 36))),
    (make_fast_net, (20, 30, 30), None), (make_fast_net, (11, 41, 37), ((1, 3, 2), (10, 40, 36))),
    (lambda: _2d_net(False), (6, 42, 42), None), (lambda: _2d_net(False), (8, 45, 45), ((1, 3, 2), (7, 44, 44))),
    (lambda: _2d_net(True), (6, 45, 45), None), (lambda: _2d_net(True), (8, 48, 48), ((1, 3, 2), (7, 47, 47))),
    (_unet, (9, 50, 47), None), (_unet, (11, 41, 37), ((1, 3, 2), (10, 40, 36))),
], ids=["3d-plain", "3d-plain-roi", "3d-mfp", "3d-mfp-roi", "2d-plain", "2d-plain-roi", "2d-mfp", "2d-mfp-roi",
        "unet", "unet-roi"])
def test_each_tile_is_predicted_once_also_where_the_region_ends_off_the_tile_step(tmp_path, monkeypatch, net,
                                                                                   shape, roi):
    """Counts the tiles each block predicts (one input read per tile): once each, also where tiles
    overlap without blending (MFP: steps of the shift period, shorter than the tile; each voxel keeps
    the tile that starts last at or before it, so a block leaves out the tiles of its neighbour that
    only reach into it), and every block holds a tile start."""
    from collections import Counter

    from ekn_core.prediction import blockwise

    raw, src = write_raw_h5(tmp_path, shape)
    whole = predict_dense(net(), raw, pad_raw=True)
    reads = []

    def counted(engine, read, grid, lo, hi, **options):
        def logged(a, b):
            reads.append(((lo, hi), tuple(x + c for x, c in zip(a, grid.geometry.context_lo))))
            return read(a, b)

        return predict_region(engine, logged, grid, lo, hi, **options)

    predict_region = blockwise.predict_region
    monkeypatch.setattr(blockwise, "predict_region", counted)
    out = str(tmp_path / "pred.zarr")
    summary = predict_volume(net(), src, out, tile=None, roi=roi, memory_budget=MB, progress=False)
    lo, hi = roi or ((0, 0, 0), shape)
    np.testing.assert_allclose(read_volume(out), whole[(slice(None), *(slice(a, b) for a, b in zip(lo, hi)))],
                               atol=1e-6)
    with open(progress_path(out)) as f:
        record = json.loads(f.readline())["plan"]
    plan = blockwise.Plan(TileGeometry(**record.pop("geometry")),
                          **{k: v for k, v in record.items() if k != "block_counts"})
    g, blocks = plan.geometry, {b for b, _ in reads}
    assert summary["blocks"] == len(blocks) > 1
    assert plan.block_counts != plan.lattice_counts  # the last tile starts before a seam of the block lattice
    counts = Counter(start for _, start in reads)
    assert set(counts) == set(plan.grid.tiles(plan.origin, plan.end))
    assert max(counts.values()) == 1, counts.most_common(3)  # no overlap asked: written over, not blended
    for block in blocks:  # each block predicts a tile that starts in it (the first one: at the region start)
        assert any(all(s >= l or l == o for s, l, o in zip(start, block[0], plan.origin))
                   for b, start in reads if b == block), block


def test_a_unet_roi_equals_that_part_of_the_whole_volume(tmp_path):
    from prediction_testnets import UNetLite

    raw, src = write_raw_h5(tmp_path, (20, 30, 30))
    net = UNetLite(np.random.default_rng(4), (14, 14, 16))
    for pad in (True, False):
        whole = str(tmp_path / f"whole{pad}.zarr")
        predict_volume(net, src, whole, tile=None, pad=pad, progress=False)
        offset = (0, 0, 0) if pad else tuple(f // 2 for f in net.shape.fov)
        for lo in [(1, 3, 0), (5, 6, 7)]:
            roi = (lo, (18, 28, 26))
            part = str(tmp_path / f"roi{pad}{lo}.zarr")
            predict_volume(net, src, part, tile=None, roi=roi, pad=pad, memory_budget=MB, progress=False)
            lo_v = tuple(max(a, o) for a, o in zip(lo, offset))  # valid: no voxel before the context
            ref = read_volume(whole)[(slice(None), *(slice(a - o, b - o) for a, b, o in zip(lo_v, roi[1], offset)))]
            np.testing.assert_allclose(read_volume(part), ref, atol=1e-6, err_msg=f"pad {pad}, ROI start {lo}")


def test_chunks_stay_large_for_a_tile_of_prime_length(tmp_path):
    import zarr

    net = NumpyNet(random_layers(np.random.default_rng(5), [("conv", 2, (1, 1, 3))]), (1, 1, 133))
    assert net.shape.spatial_shape == (1, 1, 131)  # 131 is prime
    raw = np.random.default_rng(6).random((2, 3, 900)).astype(np.float32)
    path = str(tmp_path / "raw.h5")
    with h5py.File(path, "w") as f:
        f["raw"] = raw
    out = str(tmp_path / "o.zarr")
    summary = predict_volume(net, path + ":raw", out, tile=None, memory_budget=2**16, progress=False)
    assert summary["blocks"] > 1
    with open(progress_path(out)) as f:
        block = json.loads(f.readline())["plan"]["block"]
    chunks = zarr.open_array(out, mode="r").chunks
    assert block[2] < 900 and block[2] % chunks[3] == 0 and chunks[3] >= 64, (block, chunks)
    np.testing.assert_allclose(read_volume(out), predict_dense(net, raw, pad_raw=True), atol=1e-6)


def test_bad_factories_and_tiles_of_node_objects_are_clear_errors(tmp_path, raw_h5, caplog):
    from ekn_core.errors import EknError

    _, src = raw_h5
    out = str(tmp_path / "o.zarr")
    with pytest.raises(EknError, match="did you mean 'make_net'"):
        predict_volume("prediction_testnets:make_nett", src, out, progress=False)
    with pytest.raises(EknError, match=f"importing 'no_such_nets' failed .*directory '{os.getcwd()}'.*PYTHONPATH"):
        predict_volume("no_such_nets:make", src, out, progress=False)
    with pytest.raises(EknError, match="takes no override_mfp_to_active.*imposed_batch_size"):
        predict_volume("prediction_testnets:read_volume", src, out, progress=False)
    with pytest.raises(ConfigError, match="node object .* give tile=None"):
        predict_volume(make_fast_net(), src, out, tile=(7, 31, 31), progress=False)
    predict_volume(make_fast_net(), src, out, tile="auto", memory_budget=MB, progress=False)
    assert "predicts with its own patch" in caplog.text


def test_default_memory_budget_keeps_to_the_limits_of_its_own_cgroup(tmp_path, monkeypatch):
    import psutil

    from ekn_core.prediction import blockwise

    machine = min(8 * 2**30, psutil.virtual_memory().total // 4)
    v2, v1, own = tmp_path / "v2", tmp_path / "v1", tmp_path / "cgroup"
    monkeypatch.setattr(blockwise, "CGROUP_SELF", str(own))
    monkeypatch.setattr(blockwise, "CGROUP_MOUNTS", {"memory.max": str(v2), "memory.limit_in_bytes": str(v1)})

    def limit(folder, text):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ("memory.max" if v2 in [folder, *folder.parents] else "memory.limit_in_bytes")).write_text(text)

    assert blockwise.default_memory_budget() == machine  # no cgroup files
    limit(v2, "max\n")
    limit(v1, f"{2**63 - 4096}\n")  # cgroup v1 without a limit
    assert blockwise.default_memory_budget() == machine
    own.write_text("0::/slurm/job_7/step_0\n")  # cgroup v2: a Slurm job step
    limit(v2 / "slurm" / "job_7" / "step_0", "max\n")
    limit(v2 / "slurm" / "job_7", f"{2**31}\n")  # the job's limit
    limit(v2 / "slurm", f"{2**32}\n")
    limit(v2 / "other_job", f"{2**20}\n")  # another group's limit is not this process's
    assert blockwise.default_memory_budget() == 2**29
    own.write_text("5:cpuacct,memory:/docker/abc\n3:cpu:/elsewhere\n0::/\n")  # cgroup v1: a container
    limit(v1 / "docker" / "abc", f"{2**30}\n")
    limit(v1 / "elsewhere", f"{2**20}\n")
    assert blockwise.default_memory_budget() == 2**28
    own.unlink()  # no record of the group: the limits at the mount points (a cgroup namespace)
    limit(v2, f"{2**29}\n")
    assert blockwise.default_memory_budget() == 2**27


@pytest.mark.parametrize("patch, period", [((10, 14, 10), (4, 4, 4)), ((10, 10, 10), (4, 4, 2)),
                                           ((10, 13, 10), (2, 3, 6)), ((10, 13, 10), (1, 4, 2))])
def test_a_square_auto_patch_has_one_size_on_both_lattices(patch, period):
    from ekn_core.prediction.tiling import choose_patch

    g = TileGeometry(patch, (1, 1, 1), period)  # strides = shift period
    got = choose_patch(g, (64, 128, 128), 4000, 2**32, square=True).patch
    common = [s for s in range(max(patch[1:]), 1000) if (s - patch[1]) % period[1] == (s - patch[2]) % period[2] == 0]
    if not common:  # 13 + 4k is odd, 10 + 2k even: the net's own patch
        assert got == patch
    else:
        assert got[1] == got[2] in common[1:] and (got[0] - patch[0]) % period[0] == 0, got


def test_plan_refuses_an_overlap_without_a_step():
    g = TileGeometry((23, 185, 185), (5, 21, 21), (2, 4, 4))  # tile_out (10, 84, 84)
    with pytest.raises(ShapeError, match=r"largest usable overlap is \(8, 80, 80\)"):
        make_plan(g, (64, 512, 512), 1, 2, overlap=(0, 84, 0))
    assert make_plan(g, (64, 512, 512), 1, 2, overlap=(8, 80, 80)).grid.step == (2, 4, 4)


def test_jobs_whose_tiles_overlap_only_through_the_period_keep_the_fingerprint_of_earlier_versions():
    """Earlier versions blended (blend = the mode asked for) tiles that overlap only because their
    step keeps to the shift period; they are written over now, and the plan's fingerprint still
    names the mode, so an unfinished job of such a net resumes (the output is the same)."""
    rounded = TileGeometry((9, 9, 9), (5, 5, 5), (1, 1, 1), (2, 2, 2))  # tiles of 5, step 4
    for mode in ("gaussian", "linear"):
        plan = make_plan(rounded, (30, 30, 30), 1, 2, memory_budget=MB, blend=mode)
        assert plan.blend is None and plan.to_json()["blend"] == mode
        assert "blend_asked" not in plan.to_json()
        asked = make_plan(rounded, (30, 30, 30), 1, 2, memory_budget=MB, blend=mode, overlap=2)
        assert asked.blend == asked.to_json()["blend"] == mode
    exact = make_plan(TileGeometry((8, 8, 8), (4, 4, 4), (1, 1, 1), (2, 2, 2)), (30, 30, 30), 1, 2, memory_budget=MB)
    assert exact.blend is None and exact.to_json()["blend"] is None  # no overlap at all: as before
