"""Zarr reader: round trips through open_volume/create_volume, groups, chunked writes, errors."""

import numpy as np
import pytest

from ekn_core.errors import EknError
from ekn_core.volumes import create_volume, open_volume


def test_roundtrip_through_open_volume(tmp_path):
    data = np.random.default_rng(0).integers(0, 255, (5, 17, 23), dtype=np.uint8)
    with create_volume(str(tmp_path / "v.zarr") + ":raw", shape=data.shape, dtype=data.dtype, chunks=(2, 8, 8)) as vol:
        vol[:] = data
    with open_volume(str(tmp_path / "v.zarr:raw")) as vol:
        assert vol.shape == data.shape and vol.dtype == np.uint8 and vol.axes == "zyx"
        assert vol.chunks == (2, 8, 8)
        np.testing.assert_array_equal(vol[1:4, 3:11, ::2], data[1:4, 3:11, ::2])
        np.testing.assert_array_equal(np.asarray(vol), data)


def test_chunked_block_writes_match_whole_array(tmp_path):
    shape = (3, 40, 50)
    full = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    vol = create_volume(str(tmp_path / "out.zarr"), shape=shape, dtype="float32", axes="zyx")
    assert vol.chunks == (3, 40, 50)  # default chunks are clipped to the shape
    vol = create_volume(str(tmp_path / "out.zarr"), shape=shape, dtype="float32", chunks=(1, 16, 16))
    for y in range(0, 40, 13):  # blocks not aligned with the chunks
        for x in range(0, 50, 21):
            vol[:, y:y + 13, x:x + 21] = full[:, y:y + 13, x:x + 21]
    np.testing.assert_array_equal(open_volume(str(tmp_path / "out.zarr"))[:], full)


def test_group_with_several_arrays_needs_a_key(tmp_path):
    path = str(tmp_path / "g.zarr")
    create_volume(path + ":a", shape=(2, 2), dtype="uint8")
    create_volume(path + ":b", shape=(3, 3), dtype="uint8")
    with pytest.raises(EknError, match="name one"):
        open_volume(path)
    with pytest.raises(EknError, match="no array 'c'"):
        open_volume(path + ":c")
    assert open_volume(path + ":b").shape == (3, 3)


def test_read_only_and_missing(tmp_path):
    path = str(tmp_path / "r.zarr")
    create_volume(path, shape=(2, 2), dtype="uint8")
    vol = open_volume(path)
    with pytest.raises(EknError, match="read-only"):
        vol[0, 0] = 1
    with pytest.raises(EknError, match="does not exist"):
        open_volume(str(tmp_path / "missing.zarr"))
    with pytest.raises(EknError, match="one entry per axis"):
        create_volume(path, shape=(2, 2), dtype="uint8", chunks=(1,))


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_read_only_volumes_read_through_tensorstore_exactly_as_numpy(tmp_path, zarr_format):
    import zarr

    data = np.random.default_rng(0).integers(0, 60000, (9, 20, 30)).astype(np.uint16)
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w", zarr_format=zarr_format)
    group.create_array("nested/raw", shape=data.shape, chunks=(4, 8, 8), dtype=data.dtype)[:] = data
    vol = open_volume(str(tmp_path / "g.zarr:nested/raw"))
    assert vol._fast_view is not None
    for index in [(slice(2, 7), slice(None), slice(3, 25)), (4,), (1, 2, 3), (Ellipsis, slice(None, None, -3)),
                  (slice(8, 0, -2), 5), (slice(3, 3),)]:
        np.testing.assert_array_equal(vol[index], data[index], err_msg=str(index))
    group["nested/raw"][0, 0, 0] = 7  # a write by another handle is seen on the next read (no stale cache)
    assert int(vol[0, 0, 0]) == 7
    assert open_volume(str(tmp_path / "g.zarr:nested/raw"), mode="r+")._fast_view is None


def test_arrays_tensorstore_cannot_open_are_read_through_zarr_python(tmp_path, monkeypatch):
    import tensorstore

    data = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    with create_volume(str(tmp_path / "a.zarr"), shape=data.shape, dtype=data.dtype) as out:
        out[...] = data

    def refuse(*args, **kwargs):
        raise ValueError("unsupported codec")

    monkeypatch.setattr(tensorstore, "open", refuse)
    vol = open_volume(str(tmp_path / "a.zarr"))
    assert vol._fast_view is None
    np.testing.assert_array_equal(vol[1:, ::2], data[1:, ::2])
