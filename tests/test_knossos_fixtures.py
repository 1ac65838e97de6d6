"""KNOSSOS golden fixtures (shared/fixtures/knossos) read exactly as their README's formulas say."""

import logging
import os
import shutil

import numpy as np
import pytest

from ekn_core.errors import ConfigError
from ekn_core.volumes import open_volume
from ekn_plugins.readers.knossos import KnossosReader, open_array
from ekn_plugins.readers.knossos.config import read_config
from ekn_plugins.readers.knossos.cubes import CubeError
from knossos_formulas import mag2, raw_mag1, seg_mag1

@pytest.fixture
def kdir(shared_dir):
    return os.path.join(shared_dir, "fixtures", "knossos")


def check_boxes(arr, expected, rng, count=6):
    """Random sub-boxes crossing cube and data-set borders, plus ints and steps."""
    for _ in range(count):
        lo = [int(rng.integers(0, s)) for s in expected.shape]
        hi = [int(rng.integers(l + 1, s + 1)) for l, s in zip(lo, expected.shape)]
        box = tuple(slice(l, h) for l, h in zip(lo, hi))
        np.testing.assert_array_equal(arr[box], expected[box])
    np.testing.assert_array_equal(arr[-1, 3, ::-3], expected[-1, 3, ::-3])
    np.testing.assert_array_equal(arr[..., 5], expected[..., 5])


@pytest.mark.parametrize("config", ["kfix.k.toml", "kfix.no_server_format.k.toml", "kfix.pyk.conf",
                                    "mag1/knossos.conf"])
def test_raw_classic_every_dialect(kdir, config):
    rng = np.random.default_rng(0)
    path = os.path.join(kdir, "raw_classic", config)
    expected = raw_mag1()
    with open_volume(path) as arr:
        assert arr.shape == (40, 70, 80) and arr.dtype == np.uint8 and arr.axes == "zyx"
        np.testing.assert_array_equal(arr[:], expected)
        check_boxes(arr, expected, rng)
    with open_volume(path, mag=2) as arr:
        assert arr.shape == (20, 35, 40)
        np.testing.assert_array_equal(arr[:], mag2(expected))
    assert read_config(path)[0].voxel_sizes == [(10.0, 12.0, 15.0), (20.0, 24.0, 30.0)]


@pytest.mark.parametrize("config", ["kfix.k.toml", "kfix.pyk.conf"])
def test_aniso_cubes(kdir, config):
    path = os.path.join(kdir, "raw_aniso_cube", config)
    expected = raw_mag1(extent=(40, 20, 10), cube=(16, 8, 4), missing={(1, 1, 1)})
    arr = open_array(path, prefetch=0)
    assert arr.chunks == (4, 8, 16)
    np.testing.assert_array_equal(arr[:], expected)
    check_boxes(arr, expected, np.random.default_rng(1))
    np.testing.assert_array_equal(open_array(path, mag=2)[:], mag2(expected))


@pytest.mark.parametrize("config", ["kfix.k.toml", "kfix.pyk.conf"])
def test_png(kdir, config):
    path = os.path.join(kdir, "png", config)
    np.testing.assert_array_equal(open_array(path)[:], raw_mag1())
    np.testing.assert_array_equal(open_array(path, mag=2)[:], mag2(raw_mag1()))


def test_legacy_png_default_128_cubes(kdir):
    path = os.path.join(kdir, "legacy128_png")
    layer = read_config(path)[0]
    assert layer.cube_shape == (128, 128, 128) and layer.extension == ".png" and layer.dialect == "legacy"
    expected = raw_mag1(extent=(150, 140, 20), cube=(128, 128, 128), missing={(1, 1, 0)})
    with open_volume(path) as arr:
        np.testing.assert_array_equal(arr[:], expected)
    with open_volume(path, mag=2) as arr:
        np.testing.assert_array_equal(arr[:], mag2(expected))


@pytest.mark.parametrize("config", ["kfix.k.toml", "kfix.pyk.conf"])
def test_jpg_within_lossy_tolerance(kdir, config):
    path = os.path.join(kdir, "jpg", config)
    assert read_config(path)[0].extension == ".jpg"
    for mag, expected in ((1, raw_mag1()), (2, mag2(raw_mag1()))):
        got = open_array(path, mag=mag)[:]
        err = np.abs(got.astype(int) - expected.astype(int))
        assert err.mean() < 2 and err.max() < 40
    got = open_array(path)[:]
    assert not got[0:32, 32:64, 32:64].any()  # missing cube (x, y, z) = (1, 1, 0) is exactly 0


@pytest.mark.parametrize("config", ["kfix_seg.k.toml", "kfix_seg.pyk.conf"])
def test_segmentation_uint64_exact(kdir, config):
    path = os.path.join(kdir, "seg", config)
    arr = open_array(path)
    assert arr.dtype == np.uint64
    got = arr[:]
    np.testing.assert_array_equal(got, seg_mag1())
    assert (got >= np.uint64(2**63)).any()
    np.testing.assert_array_equal(open_array(path, mag=2)[:], mag2(seg_mag1()))


def test_fill_value_for_missing_cubes(kdir):
    arr = open_array(os.path.join(kdir, "raw_classic", "kfix.k.toml"), fill_value=7)
    assert (arr[0:32, 32:64, 32:64] == 7).all()
    assert arr[0, 0, 1] == 1  # present cube unaffected


def test_stacked_channels(kdir):
    raw = os.path.join(kdir, "raw_classic", "kfix.k.toml")
    with open_volume(raw, channels=[os.path.join(kdir, "png", "kfix.k.toml")]) as arr:
        assert arr.shape == (2, 40, 70, 80) and arr.axes == "czyx"
        np.testing.assert_array_equal(arr[:, 3:40, 60:70, 5:50], np.stack([raw_mag1()[3:40, 60:70, 5:50]] * 2))
        np.testing.assert_array_equal(arr[1, 0], raw_mag1()[0])
    with pytest.raises(ConfigError, match="same shape"):
        open_array(raw, channels=[os.path.join(kdir, "raw_aniso_cube", "kfix.k.toml")])


def test_unquoted_legacy_name_read_leniently(kdir, caplog):
    with caplog.at_level(logging.WARNING):
        layer = read_config(os.path.join(kdir, "quirks", "knossos_utils_legacy_writer.k.conf"))[0]
    assert layer.name == "kfix" and layer.extent == (80, 70, 40) and "double quotes" in caplog.text


def test_directory_with_two_tomls_is_ambiguous(kdir):
    with pytest.raises(ConfigError, match="several configs"):
        open_volume(os.path.join(kdir, "raw_classic"))
    assert KnossosReader.open(os.path.join(kdir, "png")).shape == (40, 70, 80)


def _copy(kdir, tmp_path, name):
    target = tmp_path / name
    shutil.copytree(os.path.join(kdir, name), target)
    for folder, _, files in os.walk(target):
        os.chmod(folder, 0o755)
        for f in files:
            os.chmod(os.path.join(folder, f), 0o644)
    return str(target)


@pytest.mark.parametrize("name, config, cube", [
    ("raw_classic", "kfix.k.toml", "mag1/x0000/y0000/z0000/kfix_mag1_x0000_y0000_z0000.raw"),
    ("png", "kfix.k.toml", "mag1/x0000/y0000/z0000/kfix_mag1_x0000_y0000_z0000.png"),
    ("jpg", "kfix.k.toml", "mag1/x0000/y0000/z0000/kfix_mag1_x0000_y0000_z0000.jpg"),
    ("seg", "kfix_seg.k.toml", "mag1/x0000/y0000/z0000/kfix_seg_mag1_x0000_y0000_z0000.seg.sz.zip"),
])
@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_cube_names_the_file(kdir, tmp_path, name, config, cube, damage):
    root = _copy(kdir, tmp_path, name)
    path = os.path.join(root, cube)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 50)
    arr = open_array(os.path.join(root, config), prefetch=0)
    with pytest.raises(CubeError, match=os.path.basename(cube).replace(".", r"\.")):
        arr[0:2, 0:2, 0:2]
    assert arr[35:40, 35:40, 35:40].shape == (5, 5, 5)  # other cubes still read
