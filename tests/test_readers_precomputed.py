"""Neuroglancer precomputed reader against chunk files written and decoded here, per the format spec.

Spec (raw encoding, unsharded): ``info`` JSON with ``scales[*].key/size/chunk_sizes/voxel_offset``;
chunk ``<key>/<x0>-<x1>_<y0>-<y1>_<z0>-<z1>`` (absolute voxel coordinates, clipped to the volume)
holds the (x, y, z, channel) block in Fortran order (x fastest), little-endian.
"""

import gzip
import itertools
import json
import os
import re

import numpy as np
import pytest

from ekn_core.errors import EknError
from ekn_core.volumes import create_volume, open_volume
from ekn_plugins.readers.detect import ekn_get_reader

RNG = np.random.default_rng(0)


def chunk_boxes(size_xyz, chunk_xyz, offset_xyz):
    """Every chunk's (lo, hi) in absolute x, y, z coordinates."""
    starts = [range(o, o + s, c) for s, c, o in zip(size_xyz, chunk_xyz, offset_xyz)]
    for lo in itertools.product(*starts):
        yield lo, tuple(min(l + c, o + s) for l, c, o, s in zip(lo, chunk_xyz, offset_xyz, size_xyz))


def chunk_name(lo, hi):
    return "_".join(f"{a}-{b}" for a, b in zip(lo, hi))


def write_by_hand(folder, scales, volume_type="image", compress=False):
    """Writes ``scales`` = [(key, data (c, z, y, x), chunk_xyz, offset_xyz, resolution)] per the spec."""
    first = scales[0][1]
    info = {"@type": "neuroglancer_multiscale_volume", "type": volume_type, "data_type": first.dtype.name,
            "num_channels": first.shape[0], "scales": []}
    for key, data, chunk, offset, resolution in scales:
        size = data.shape[1:][::-1]
        info["scales"].append({"key": key, "size": list(size), "chunk_sizes": [list(chunk)], "encoding": "raw",
                               "voxel_offset": list(offset), "resolution": list(resolution)})
        os.makedirs(os.path.join(folder, key))
        xyzc = data.transpose(3, 2, 1, 0)
        for lo, hi in chunk_boxes(size, chunk, offset):
            block = xyzc[tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, offset))]
            raw = block.astype(block.dtype.newbyteorder("<")).tobytes(order="F")
            with open(os.path.join(folder, key, chunk_name(lo, hi)), "wb") as f:
                f.write(gzip.compress(raw) if compress else raw)
    with open(os.path.join(folder, "info"), "w") as f:
        json.dump(info, f)
    return str(folder)


def read_by_hand(folder):
    """Decodes scale 0 of a raw, unsharded volume into (c, z, y, x) per the spec."""
    with open(os.path.join(folder, "info")) as f:
        info = json.load(f)
    scale = info["scales"][0]
    size, offset, chunk = scale["size"], scale["voxel_offset"], scale["chunk_sizes"][0]
    out = np.zeros((*size, info["num_channels"]), np.dtype(info["data_type"]).newbyteorder("<"))
    for lo, hi in chunk_boxes(size, chunk, offset):
        path = os.path.join(folder, scale["key"], chunk_name(lo, hi))
        if os.path.exists(path):
            shape = (*(b - a for a, b in zip(lo, hi)), info["num_channels"])
            block = np.frombuffer(open(path, "rb").read(), out.dtype).reshape(shape, order="F")
            out[tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, offset))] = block
    return info, out.transpose(3, 2, 1, 0)


def test_reads_hand_written_scales(tmp_path):
    fine = RNG.integers(0, 2**16, (1, 7, 19, 23), dtype=np.uint16)
    coarse = RNG.integers(0, 2**16, (1, 7, 10, 12), dtype=np.uint16)
    folder = write_by_hand(tmp_path / "em", [("4_4_40", fine, (8, 8, 3), (5, -2, 100), (4, 4, 40)),
                                             ("8_8_40", coarse, (4, 4, 4), (0, 0, 0), (8, 8, 40))])
    assert ekn_get_reader(folder) == "precomputed"
    for path in (folder, "precomputed://file://" + folder, folder + ":0", folder + ":4_4_40"):
        with open_volume(path) as vol:
            assert vol.shape == (7, 19, 23) and vol.dtype == np.uint16 and vol.axes == "zyx"
            assert vol.chunks == (3, 8, 8) and vol.voxel_offset == (100, -2, 5)
            assert vol.voxel_size == (40.0, 4.0, 4.0)
            np.testing.assert_array_equal(vol[2:6, 3:17, -9:], fine[0, 2:6, 3:17, -9:])
            np.testing.assert_array_equal(vol[-1, ::-3, 4], fine[0, -1, ::-3, 4])
            np.testing.assert_array_equal(np.asarray(vol), fine[0])
    for key in ("1", "8_8_40"):
        with open_volume(f"precomputed://file://{folder}:{key}") as vol:
            np.testing.assert_array_equal(vol[:, 1:9, 2:], coarse[0, :, 1:9, 2:])


def test_reads_channels_and_segmentation(tmp_path):
    data = RNG.random((3, 4, 9, 10)).astype(np.float32)
    folder = write_by_hand(tmp_path / "multi", [("s0", data, (4, 4, 2), (0, 0, 0), (1, 1, 1))])
    with open_volume(folder) as vol:
        assert vol.shape == data.shape and vol.axes == "czyx" and vol.chunks == (3, 2, 4, 4)
        np.testing.assert_array_equal(vol[1:, 1:3, 2:7, ::2], data[1:, 1:3, 2:7, ::2])
    ids = RNG.integers(0, 2**40, (1, 5, 6, 7), dtype=np.uint64)
    folder = write_by_hand(tmp_path / "seg", [("s0", ids, (3, 3, 3), (0, 0, 0), (1, 1, 1))], "segmentation")
    np.testing.assert_array_equal(open_volume(folder)[:], ids[0])


@pytest.mark.parametrize("shape", [(6, 21, 17), (2, 6, 21, 17)])
def test_written_blocks_decode_by_hand(tmp_path, shape):
    url = "precomputed://file://" + str(tmp_path / "pred")
    full = RNG.random(shape).astype(np.float32)
    vol = create_volume(url, shape=shape, dtype="float32", chunks=(1, 4, 8, 8), resolution=(40, 8, 8),
                        voxel_offset=(10, 0, 3))
    assert vol.chunks == ((shape[0],) if len(shape) == 4 else ()) + (4, 8, 8)
    spatial = shape[-3:]
    for z, y, x in itertools.product(range(0, spatial[0], 3), range(0, spatial[1], 5), range(0, spatial[2], 6)):
        box = (..., slice(z, z + 3), slice(y, y + 5), slice(x, x + 6))  # not aligned with the chunks
        vol[box] = full[box]
    vol[..., 5, 0, :] = 2.5
    full[..., 5, 0, :] = 2.5
    vol.close()
    info, decoded = read_by_hand(str(tmp_path / "pred"))
    scale = info["scales"][0]
    assert (scale["key"], scale["size"], scale["chunk_sizes"], scale["voxel_offset"], scale["resolution"]) == \
        ("8_8_40", list(spatial[::-1]), [[8, 8, 4]], [3, 0, 10], [8, 8, 40])
    assert (info["type"], info["data_type"], info["num_channels"]) == ("image", "float32", decoded.shape[0])
    np.testing.assert_array_equal(decoded, full.reshape(decoded.shape))
    with open_volume(url, mode="r+") as back:
        np.testing.assert_array_equal(back[...], full)
        back[..., 0, 0, 0] = 9
    np.testing.assert_array_equal(read_by_hand(str(tmp_path / "pred"))[1][:, 0, 0, 0], 9)


def test_clear_errors(tmp_path):
    data = np.arange(24, dtype=np.uint8).reshape(1, 2, 3, 4)
    gz = write_by_hand(tmp_path / "gz", [("s0", data, (4, 3, 2), (0, 0, 0), (1, 1, 1))], compress=True)
    with pytest.raises(EknError, match="gzip-compressed.*gzip -dc"):
        open_volume(gz)
    ok = write_by_hand(tmp_path / "ok", [("s0", data, (4, 3, 2), (0, 0, 0), (1, 1, 1))])
    with pytest.raises(EknError, match=r"no scale '3'; its scales are \[0\] with keys \['s0'\]"):
        open_volume(ok + ":3")
    with pytest.raises(EknError, match="read-only"):
        open_volume(ok)[0] = 1
    with pytest.raises(EknError, match="no 'info' file"):
        open_volume("precomputed://file://" + str(tmp_path))
    with pytest.raises(EknError, match="not float64"):
        create_volume("precomputed://file://" + str(tmp_path / "f"), shape=(2, 2, 2), dtype="float64")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("user data")
    with pytest.raises(EknError, match="not empty and not a precomputed volume"):
        create_volume("precomputed://file://" + str(tmp_path / "busy"), shape=(2, 2, 2), dtype="uint8")
    assert os.listdir(tmp_path / "busy") == ["keep.txt"]


def test_volume_validation_and_view_read_the_new_formats(tmp_path, capsys):
    """The same validation on a TIFF stack + precomputed labels as on HDF5 copies; ekn view renders them."""
    from types import SimpleNamespace

    import h5py
    import tifffile

    from ekn_core.cli import main
    from ekn_plugins.validation.evaluate import VolumeValidator
    from ekn_plugins.validation.spec import parse_spec
    from prediction_testnets import make_net

    raw = RNG.integers(0, 255, (11, 41, 37), dtype=np.uint8)
    labels = (RNG.random((11, 41, 37)) > 0.5).astype(np.uint8)
    tifffile.imwrite(str(tmp_path / "raw.tif"), raw)
    labels_dir = write_by_hand(tmp_path / "labels", [("s0", labels[None], (16, 16, 4), (0, 0, 0), (1, 1, 1))],
                               "segmentation")
    with h5py.File(tmp_path / "copy.h5", "w") as f:
        f["raw"], f["lab"] = raw, labels
    model = SimpleNamespace(prediction_node=make_net())

    def validate(raw_path, lab_path):
        spec = parse_spec({"volumes": [{"raw": raw_path, "labels": lab_path}], "metrics": ["pixel_error", "f1"],
                           "memory_budget": "1M"}, history_freq=1)
        return VolumeValidator(spec).run(model)

    result = validate(str(tmp_path / "raw.tif"), labels_dir)
    assert result == validate(str(tmp_path / "copy.h5:raw"), str(tmp_path / "copy.h5:lab"))
    assert 0 < result["volume_pixel_error"] < 1
    png = str(tmp_path / "grid.png")
    assert main(["view", str(tmp_path / "raw.tif"), "--overlay", labels_dir + ":0", "--png", png, "-z", "3"]) == 0
    assert f"wrote {png} (z = 3)" in capsys.readouterr().out and os.path.getsize(png) > 1000


def test_reader_libraries_are_imported_on_use():
    import subprocess
    import sys

    script = ("import sys; from ekn_core.cli import main; main(['plugins']); "
              "print([m for m in ('tensorstore', 'tifffile', 'imageio') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_predict_cli_precomputed_to_precomputed(tmp_path, capsys):
    from ekn_core.cli import main
    from ekn_core.prediction.blockwise import progress_path
    from prediction_testnets import read_volume, write_raw_h5

    raw, raw_h5 = write_raw_h5(tmp_path, (9, 30, 28))
    write_by_hand(tmp_path / "em", [("8_8_40", raw[None], (16, 16, 4), (0, 0, 0), (8, 8, 40))])
    args = ["--tile", "model", "--memory-budget", "1M", "--no-progress"]
    reference, out = str(tmp_path / "ref.zarr"), "precomputed://file://" + str(tmp_path / "pred")
    assert main(["predict", "prediction_testnets:make_fast_net", raw_h5, reference, *args]) == 0
    for _ in range(2):  # the second run resumes: every block is done
        capsys.readouterr()
        assert main(["predict", "prediction_testnets:make_fast_net", str(tmp_path / "em:8_8_40"), out, *args]) == 0
    blocks, done = re.search(r"(\d+) blocks \((\d+) already done\)", capsys.readouterr().out).groups()
    assert blocks == done
    assert os.path.exists(str(tmp_path / "pred.ekn-progress"))
    np.testing.assert_array_equal(read_by_hand(str(tmp_path / "pred"))[1], read_volume(reference))
    with pytest.raises(EknError, match="not on a local disk"):
        progress_path("precomputed://gs://bucket/pred")


def test_creating_a_scale_keeps_the_other_scales(tmp_path):
    """Creating output in an existing volume adds a scale (or replaces only the scale of the same
    key) and never deletes the others: predicting into /data/em:pred must not wipe the raw data."""
    raw = RNG.integers(0, 255, (1, 4, 6, 8), dtype=np.uint8)
    folder = write_by_hand(tmp_path / "em", [("raw", raw, (8, 6, 4), (0, 0, 0), (8, 8, 40))])
    url = "precomputed://file://" + folder
    with create_volume(url, shape=(4, 6, 8), dtype="uint8", key="pred", resolution=(40, 8, 8)) as pred:
        pred[:] = 7
    info, decoded = read_by_hand(folder)
    assert [s["key"] for s in info["scales"]] == ["raw", "pred"]
    np.testing.assert_array_equal(decoded, raw)  # scale 0 is still the hand-written raw data
    np.testing.assert_array_equal(open_volume(url + ":raw")[:], raw[0])
    with create_volume(url, shape=(4, 6, 8), dtype="uint8", key="pred", resolution=(40, 8, 8)) as pred:
        pred[1:] = 3  # replaced: the old 7s are gone, z = 0 reads the fill value 0
    np.testing.assert_array_equal(open_volume(url + ":pred")[:], np.r_[np.zeros((1, 6, 8)), np.full((3, 6, 8), 3)])
    np.testing.assert_array_equal(read_by_hand(folder)[1], raw)
    with pytest.raises(EknError, match="one data type and channel count"):
        create_volume(url, shape=(4, 6, 8), dtype="float32", key="probs")
    np.testing.assert_array_equal(read_by_hand(folder)[1], raw)
