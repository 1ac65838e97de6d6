"""Image-stack reader: multi-page TIFFs and TIFF/PNG section directories against numpy and tifffile."""

import builtins
import os

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from ekn_core.errors import EknError
from ekn_core.volumes import create_volume, open_volume
from ekn_plugins.data.patches import PatchSource
from ekn_plugins.readers.detect import ekn_get_reader
from ekn_plugins.readers.image_files import write_section

RNG = np.random.default_rng(0)


def write_pngs(folder, data, name="s{}.png"):
    os.makedirs(folder, exist_ok=True)
    for z, section in enumerate(data):
        iio.imwrite(os.path.join(folder, name.format(z)), section)
    return str(folder)


def count_opens(monkeypatch):
    """Records the image files that Python opens from now on."""
    opened, real_open = [], builtins.open

    def spy(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and str(file).lower().endswith((".tif", ".png")):
            opened.append(os.path.basename(str(file)))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    return opened


def test_png_directory_reads_in_natural_order_and_lazily(tmp_path, monkeypatch):
    data = RNG.integers(0, 2**16, (12, 9, 7), dtype=np.uint16)
    folder = write_pngs(tmp_path / "sections", data)  # s0 ... s11: lexical order would put s10 after s1
    os.makedirs(tmp_path / "sections" / "notes")
    (tmp_path / "sections" / "README.txt").write_text("not a section")
    assert ekn_get_reader(folder) == "imagestack"
    with open_volume(folder) as vol:
        assert vol.shape == data.shape and vol.dtype == np.uint16 and vol.axes == "zyx"
        assert vol.chunks == (1, 9, 7)
        opened = count_opens(monkeypatch)
        np.testing.assert_array_equal(vol[10], data[10])
        assert opened == ["s10.png"]
        np.testing.assert_array_equal(vol[2:11:4, 1:-1, ::-2], data[2:11:4, 1:-1, ::-2])
        assert opened == ["s10.png", "s2.png", "s6.png", "s10.png"]
        np.testing.assert_array_equal(np.asarray(vol), data)
    with open_volume(str(tmp_path / "sections" / "s1*.png")) as vol:  # a glob: s1, s10, s11
        np.testing.assert_array_equal(vol[:], data[[1, 10, 11]])


def test_multipage_tiff_pages_and_memmap(tmp_path, monkeypatch):
    data = RNG.random((6, 10, 11)).astype(np.float32)
    plain, packed = str(tmp_path / "vol.tif"), str(tmp_path / "packed.tiff")
    tifffile.imwrite(plain, data)
    tifffile.imwrite(packed, data, compression="zlib")  # compressed pages: no memory map
    for path in (plain, packed):
        with open_volume(path) as vol:
            assert vol.shape == data.shape and vol.dtype == np.float32
            np.testing.assert_array_equal(vol[3, 2:5], data[3, 2:5])
            np.testing.assert_array_equal(vol[-1:0:-2, :, 4], data[-1:0:-2, :, 4])
    with open_volume(packed) as vol:
        calls = []
        real = vol._tif.asarray
        monkeypatch.setattr(vol._tif, "asarray", lambda **kw: calls.append(kw["key"]) or real(**kw))
        vol[4:6, 0, 0]
        assert calls == [4, 5]


@pytest.mark.parametrize("layout", ["imagej", "zlib"])
def test_hyperstack_with_channels(tmp_path, layout):
    data = RNG.integers(0, 255, (2, 4, 5, 6), dtype=np.uint8)  # (c, z, y, x)
    path = str(tmp_path / "hyper.tif")
    if layout == "imagej":  # pages in z, c order, memory-mapped
        tifffile.imwrite(path, data.transpose(1, 0, 2, 3), imagej=True, metadata={"axes": "ZCYX"})
    else:  # pages in c, z order, read page by page
        tifffile.imwrite(path, data, compression="zlib", photometric="minisblack", metadata={"axes": "CZYX"})
    with open_volume(path) as vol:
        assert vol.shape == data.shape and vol.axes == "czyx"
        np.testing.assert_array_equal(vol[:], data)
        np.testing.assert_array_equal(vol[1, 2:], data[1, 2:])


@pytest.mark.parametrize("shape", [(5, 13, 17), (2, 5, 13, 17)])
def test_created_tiff_stack_partial_block_writes(tmp_path, shape):
    full = RNG.random(shape).astype(np.float32)
    vol = create_volume(str(tmp_path / "out" / "*.tif"), shape=shape, dtype="float32", chunks=(1, 4, 4, 4))
    assert ekn_get_reader(str(tmp_path / "out" / "*.tif")) == "imagestack"
    expected = np.zeros(shape, np.float32)
    spatial = shape[-3:]
    for z in range(0, spatial[0], 2):  # blocks cover parts of sections and cross section boundaries
        for y in range(0, spatial[1], 6):
            for x in range(0, spatial[2], 7):
                box = (..., slice(z, z + 2), slice(y, y + 6), slice(x, x + 7))
                vol[box] = full[box]
                expected[box] = full[box]
                np.testing.assert_array_equal(vol[...], expected)
    vol[..., 3, 0, :] = 5  # broadcasting, an int on the z-axis
    expected[..., 3, 0, :] = 5
    vol.close()
    names = sorted(os.listdir(tmp_path / "out"))
    assert names == [f"{z:04d}.tif" for z in range(spatial[0])]
    for z, name in enumerate(names):  # independent reader: every file is a TIFF Fiji opens
        section = tifffile.imread(str(tmp_path / "out" / name))
        np.testing.assert_array_equal(section, expected[..., z, :, :])
    with open_volume(str(tmp_path / "out")) as back:
        assert back.shape == shape and back.axes == ("zyx" if len(shape) == 3 else "czyx")
        np.testing.assert_array_equal(back[...], expected)
        with pytest.raises(EknError, match="read-only"):
            back[0] = 1


def test_rewrite_is_atomic_per_section(tmp_path, monkeypatch):
    folder = write_pngs(tmp_path / "pngs", np.zeros((3, 4, 5), np.uint8))
    vol = open_volume(folder, mode="r+")
    vol[1, 1:3, 2:] = 200
    assert sorted(os.listdir(folder)) == ["s0.png", "s1.png", "s2.png"]  # no temporary files left
    np.testing.assert_array_equal(iio.imread(os.path.join(folder, "s1.png"))[1:3, 2:], 200)

    def torn_write(path, *args, **kwargs):  # writes part of the file, then fails
        with open(path, "wb") as f:
            f.write(b"\x89PNG torn")
        raise OSError("disk full")

    monkeypatch.setattr(iio, "imwrite", torn_write)
    with pytest.raises(OSError, match="disk full"):
        vol[1] = 7
    np.testing.assert_array_equal(open_volume(folder)[1, 1:3, 2:], 200)  # the old section survives
    assert sorted(os.listdir(folder)) == ["s0.png", "s1.png", "s2.png"]


def test_create_replaces_its_own_sections_only(tmp_path):
    folder = tmp_path / "out"
    create_volume(str(folder / "s*.tif"), shape=(4, 3, 3), dtype="uint8").close()
    create_volume(str(folder / "s*.tif"), shape=(2, 3, 3), dtype="uint8").close()
    assert sorted(os.listdir(folder)) == ["s0000.tif", "s0001.tif"]
    tifffile.imwrite(str(folder / "scan.tif"), np.zeros((3, 3), np.uint8))
    with pytest.raises(EknError, match="already holds other files"):
        create_volume(str(folder / "s*.tif"), shape=(2, 3, 3), dtype="uint8")
    created = create_volume(str(tmp_path / "plain"), shape=(1, 2, 2), dtype="uint16", reader="imagestack")
    assert os.listdir(tmp_path / "plain") == ["section_0000.tif"] and created[...].sum() == 0


def test_clear_errors(tmp_path):
    os.makedirs(tmp_path / "empty")
    with pytest.raises(EknError, match="matches no .tif"):
        open_volume(str(tmp_path / "empty"), reader="imagestack")
    mixed = write_pngs(tmp_path / "mixed", np.zeros((2, 4, 5), np.uint8))
    iio.imwrite(os.path.join(mixed, "s2.png"), np.zeros((4, 6), np.uint8))
    with pytest.raises(EknError, match=r"sections differ: .*s0.png.* is uint8 \(4, 5\), .*s2.png.* is uint8 \(4, 6\)"):
        open_volume(mixed)
    iio.imwrite(os.path.join(mixed, "s2.png"), np.zeros((4, 5), np.uint16))
    with pytest.raises(EknError, match="sections differ"):
        open_volume(mixed)
    rgb = write_pngs(tmp_path / "rgb", np.zeros((2, 4, 5, 3), np.uint8))
    with pytest.raises(EknError, match="colour image.*rgb2gray"):
        open_volume(rgb)
    os.makedirs(tmp_path / "rgb_tifs")
    tifffile.imwrite(str(tmp_path / "rgb_tifs" / "s0.tif"), np.zeros((4, 5, 3), np.uint8), photometric="rgb")
    with pytest.raises(EknError, match="colour image.*Fiji"):
        open_volume(str(tmp_path / "rgb_tifs"))
    tifffile.imwrite(str(tmp_path / "rgb.tif"), np.zeros((2, 4, 5, 3), np.uint8), photometric="rgb")
    with pytest.raises(EknError, match="colour image.*Fiji"):
        open_volume(str(tmp_path / "rgb.tif"))
    tifffile.imwrite(str(tmp_path / "t.tif"), np.zeros((2, 3, 4, 5), np.uint8), photometric="minisblack",
                     metadata={"axes": "TZYX"})
    with pytest.raises(EknError, match="one stack per time point"):
        open_volume(str(tmp_path / "t.tif"))
    with pytest.raises(EknError, match="does not exist"):
        open_volume(str(tmp_path / "missing"), reader="imagestack")
    with pytest.raises(EknError, match="single TIFF file, which ekn only reads"):
        open_volume(str(tmp_path / "rgb.tif"), mode="r+")
    with pytest.raises(EknError, match="directory of sections"):
        create_volume(str(tmp_path / "new.tif"), shape=(2, 3, 3), dtype="uint8")
    with pytest.raises(EknError, match="one '\\*' in the file name"):
        create_volume(str(tmp_path / "o" / "*.png"), shape=(2, 3, 3), dtype="uint8")
    with pytest.raises(EknError, match="PNG holds uint8 or uint16"):
        write_section(str(tmp_path / "f.png"), np.ones((2, 2), np.float32))


def test_patch_source_reads_tiff_stacks(tmp_path):
    raw = RNG.integers(0, 255, (6, 20, 20), dtype=np.uint8)
    labels = (raw > 127).astype(np.uint8)
    raw_dir = write_pngs(tmp_path / "raw", raw)
    tifffile.imwrite(str(tmp_path / "lab.tif"), labels)
    source = PatchSource(patch_size=(4, 8, 8), offsets=(0, 0, 0), strides=(1, 1, 1),
                         d_files=[raw_dir], l_files=[str(tmp_path / "lab.tif")], target_dtype="int16")
    images, targets = source.getbatch(3, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(targets[:, 0], (images[:, 0] * 255 > 127.5).astype(np.int16))


def test_predict_cli_tiff_stack_to_tiff_stack(tmp_path, monkeypatch, capsys):
    from ekn_core.cli import main
    from prediction_testnets import read_volume, write_raw_h5

    monkeypatch.syspath_prepend(os.path.dirname(os.path.abspath(__file__)))
    raw, raw_h5 = write_raw_h5(tmp_path, (9, 30, 28))
    os.makedirs(tmp_path / "raw")
    for z, section in enumerate(raw):
        tifffile.imwrite(str(tmp_path / "raw" / f"z{z}.tif"), section)
    args = ["--tile", "model", "--memory-budget", "1M", "--no-progress"]
    reference, out = str(tmp_path / "ref.zarr"), str(tmp_path / "pred" / "*.tif")
    assert main(["predict", "prediction_testnets:make_fast_net", raw_h5, reference, *args]) == 0
    assert main(["predict", "prediction_testnets:make_fast_net", str(tmp_path / "raw"), out, *args]) == 0
    expected = read_volume(reference)
    assert expected.shape == (2, 9, 30, 28)
    np.testing.assert_array_equal(read_volume(str(tmp_path / "pred")), expected)
    np.testing.assert_array_equal(tifffile.imread(str(tmp_path / "pred" / "0004.tif")), expected[:, 4])
    capsys.readouterr()
    assert main(["predict", "prediction_testnets:make_fast_net", str(tmp_path / "raw"), out, *args]) == 0
    assert "already done" in capsys.readouterr().out  # resumed: reopened with mode='r+'


def test_opening_reads_two_headers_and_reading_checks_each_section(tmp_path, monkeypatch):
    """Opening a stack reads the first and last section headers only; a different section in between
    is reported when it is read, naming it."""
    folder = write_pngs(tmp_path / "s", np.zeros((5, 4, 5), np.uint8))
    iio.imwrite(os.path.join(folder, "s2.png"), np.zeros((4, 6), np.uint8))
    opened = count_opens(monkeypatch)
    vol = open_volume(folder)
    assert sorted(opened) == ["s0.png", "s4.png"]
    np.testing.assert_array_equal(vol[:2], 0)
    with pytest.raises(EknError, match=r"section 2 of .* is uint8 \(4, 6\), the stack is uint8 \(4, 5\)"):
        vol[1:4]


@pytest.mark.parametrize("compression, code", [(None, 1), ("zlib", 8)])
def test_created_sections_use_the_requested_compression(tmp_path, compression, code):
    """Sections the prediction never writes keep the compression asked for (none by default)."""
    vol = create_volume(str(tmp_path / "out" / "*.tif"), shape=(3, 4, 5), dtype="uint8", compression=compression)
    vol[1] = 7
    vol.close()
    for name in sorted(os.listdir(tmp_path / "out")):
        with tifffile.TiffFile(str(tmp_path / "out" / name)) as tif:
            assert int(tif.pages[0].compression) == code, name
