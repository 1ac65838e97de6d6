"""Out-of-core predict_volume: equals predict_dense, bounded blocks, resume after a crash."""

import json
import os

import h5py
import numpy as np
import pytest

from ekn_core.errors import ConfigError, ShapeError
from ekn_core.prediction import predict_dense
from ekn_core.prediction.blockwise import ProgressLog, make_plan, predict_volume, progress_path
from ekn_core.prediction.source import mirror_index, read_window
from ekn_core.prediction.tiling import TileGeometry
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


def test_progress_log_ignores_torn_line(tmp_path):
    path = str(tmp_path / "x.ekn-progress")
    with ProgressLog(path, {"a": 1}) as plog:
        plog.mark(0)
        plog.mark(5)
    with open(path, "a") as f:
        f.write("done 1")  # no newline: still a complete number; "don" would be torn
        f.write("\ndon")
    assert ProgressLog(path, {"a": 1}).done == {0, 5, 1}


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
    with pytest.raises(ConfigError, match="already exists"):
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
