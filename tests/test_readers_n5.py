"""N5 reader against block files encoded and decoded by hand from the N5 specification
(uncompressed header: uint16 mode, uint16 rank, uint32 block shape x first; then the big-endian
data, x fastest, compressed as the dataset says)."""

import gzip
import itertools
import json
import os
import struct

import numpy as np
import pytest

from ekn_core.errors import EknError
from ekn_core.volumes import create_volume, open_volume


def _write_block(dataset, grid_position_xyz, block_zyx):
    """One raw N5 block of a (z, y, x) array, as a Java writer lays it out."""
    header = struct.pack(">HH", 0, block_zyx.ndim) + struct.pack(f">{block_zyx.ndim}I", *block_zyx.shape[::-1])
    path = os.path.join(dataset, *map(str, grid_position_xyz))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(header + block_zyx.astype(block_zyx.dtype.newbyteorder(">")).tobytes())


def _read_block(path):
    """The (z, y, x) array of an N5 block file with gzip-compressed data (the header is not compressed)."""
    data = open(path, "rb").read()
    mode, rank = struct.unpack(">HH", data[:4])
    shape_xyz = struct.unpack(f">{rank}I", data[4:4 + 4 * rank])
    return mode, np.frombuffer(gzip.decompress(data[4 + 4 * rank:]), dtype=">u2").reshape(shape_xyz[::-1])


def test_reads_hand_written_java_layout_blocks_in_zyx_order(tmp_path):
    data = np.random.default_rng(1).integers(0, 60000, (5, 7, 9)).astype(np.uint16)
    block = (2, 3, 4)  # (z, y, x)
    root = tmp_path / "em.n5"
    dataset = root / "volumes" / "raw"
    os.makedirs(dataset)
    (root / "attributes.json").write_text(json.dumps({"n5": "2.0.0"}))
    (dataset / "attributes.json").write_text(json.dumps({
        "dimensions": [9, 7, 5], "blockSize": [4, 3, 2], "dataType": "uint16", "compression": {"type": "raw"}}))
    for gz, gy, gx in itertools.product(*(range(-(-s // b)) for s, b in zip(data.shape, block))):
        box = data[gz * 2:(gz + 1) * 2, gy * 3:(gy + 1) * 3, gx * 4:(gx + 1) * 4]
        _write_block(str(dataset), (gx, gy, gz), box)
    vol = open_volume(str(root))  # the container's only dataset
    assert (vol.shape, vol.chunks, vol.axes) == ((5, 7, 9), (2, 3, 4), "zyx")
    np.testing.assert_array_equal(vol[...], data)
    np.testing.assert_array_equal(vol[1:4, ::-2, 3], data[1:4, ::-2, 3])
    np.testing.assert_array_equal(open_volume(f"{root}:volumes/raw")[4], data[4])


def test_written_blocks_follow_the_specification(tmp_path):
    data = np.arange(4 * 6 * 10, dtype=np.uint16).reshape(4, 6, 10)
    path = str(tmp_path / "out.n5")
    with create_volume(f"{path}:pred", shape=data.shape, dtype="uint16", chunks=(2, 6, 8)) as out:
        out[:, :, :5] = data[:, :, :5]
        out[:, :, 5:] = data[:, :, 5:]
    assert json.load(open(os.path.join(path, "attributes.json")))["n5"]
    attributes = json.load(open(os.path.join(path, "pred", "attributes.json")))
    assert (attributes["dimensions"], attributes["blockSize"]) == ([10, 6, 4], [8, 6, 2])
    mode, block = _read_block(os.path.join(path, "pred", "1", "0", "1"))  # x block 1, y 0, z 1: the edge block
    assert mode == 0 and block.shape in ((2, 6, 2), (2, 6, 8))  # tensorstore writes edge blocks whole
    np.testing.assert_array_equal(block[:, :, :2], data[2:4, 0:6, 8:10])
    reopened = open_volume(f"{path}:pred", mode="r+")
    reopened[0, 0, 0] = 7
    assert int(open_volume(f"{path}:pred")[0, 0, 0]) == 7


def test_axes_are_the_reversed_n5_axes_attribute(tmp_path):
    path = str(tmp_path / "c.n5")
    create_volume(f"{path}:probs", shape=(2, 3, 4, 5), dtype="float32", axes="czyx").close()
    create_volume(f"{path}:raw", shape=(3, 4, 5), dtype="uint8", axes="zyx").close()
    assert json.load(open(os.path.join(path, "probs", "attributes.json")))["axes"] == ["x", "y", "z", "c"]
    assert open_volume(f"{path}:probs").axes == "czyx"
    assert json.load(open(os.path.join(path, "raw", "attributes.json")))["axes"] == ["x", "y", "z"]
    assert open_volume(f"{path}:raw").axes == "zyx"


def test_clear_errors(tmp_path):
    path = str(tmp_path / "two.n5")
    for key in ("a", "b/c"):
        create_volume(f"{path}:{key}", shape=(2, 2, 2), dtype="uint8").close()
    with pytest.raises(EknError, match=r"datasets \['a', 'b/c'\]; name one"):
        open_volume(path)
    with pytest.raises(EknError, match="no N5 dataset 'b'"):
        open_volume(f"{path}:b")
    with pytest.raises(EknError, match="does not exist"):
        open_volume(str(tmp_path / "missing.n5"))
    with pytest.raises(EknError, match="read-only"):
        open_volume(f"{path}:a")[0] = 1
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "x.txt").write_text("x")
    with pytest.raises(EknError, match="not an N5 container"):
        create_volume(str(tmp_path / "notes"), shape=(2, 2), dtype="uint8", reader="n5")


@pytest.mark.parametrize("path", ["c.n5:raw", "precomputed://file://{tmp}/vol"])
def test_read_only_tensorstore_volumes_have_a_chunk_cache_that_sees_other_writers(tmp_path, path):
    from ekn_plugins.readers.tensorstore_volume import READ_CACHE_BYTES

    path = path.format(tmp=tmp_path) if "{" in path else str(tmp_path / path)
    create_volume(path, shape=(4, 8, 8), dtype="uint8", chunks=(2, 4, 4)).close()
    vol = open_volume(path)
    context = vol._view.spec(retain_context=True).to_json()["context"]
    assert context["cache_pool"]["total_bytes_limit"] == READ_CACHE_BYTES
    assert int(vol[1, 2, 3]) == 0  # now cached
    writer = open_volume(path, mode="r+")
    writer[1, 2, 3] = 9
    assert int(vol[1, 2, 3]) == 9  # revalidated on read
