"""Stored axis orders: HDF5, zarr and N5 datasets whose ``axes`` attribute names another order of
c, z, y, x are read (and written) as ekn's (c, z, y, x); other names are refused. References are
numpy transposes of the stored arrays."""

import json
import os

import h5py
import numpy as np
import pytest

from ekn_core.errors import EknError
from ekn_core.volumes import create_volume, open_volume
from ekn_plugins.data.lazy import open_view

STORED = np.random.default_rng(0).integers(0, 255, (10, 2, 12, 9)).astype(np.uint8)  # (z, c, y, x)
EKN = STORED.transpose(1, 0, 2, 3)  # (c, z, y, x)
INDICES = [(Ellipsis,), (1, slice(2, 9), slice(None, None, -3), 4), (slice(None), 3), (0, 0, 0, 0),
           (slice(1, 2), slice(9, 0, -4), slice(3, 3)), (Ellipsis, slice(2, 7))]


def _hdf5(tmp_path, names):
    path = str(tmp_path / "a.h5")
    with h5py.File(path, "w") as f:
        f["raw"] = STORED
        f["raw"].attrs["axes"] = names
    return f"{path}:raw"


def _zarr(tmp_path, names):
    import zarr

    path = str(tmp_path / "a.zarr")
    array = zarr.create_array(store=path, name="raw", shape=STORED.shape, chunks=(4, 1, 6, 6), dtype="uint8")
    array[...] = STORED
    array.attrs["axes"] = names
    return f"{path}:raw"


def _n5(tmp_path, names):
    path = str(tmp_path / "a.n5")
    with create_volume(f"{path}:raw", shape=STORED.shape, dtype="uint8", chunks=(4, 1, 6, 6)) as vol:
        vol[...] = STORED  # stored as written, labelled czyx
    attributes_file = os.path.join(path, "raw", "attributes.json")
    with open(attributes_file) as f:
        attributes = json.load(f)
    attributes["axes"] = list(names)[::-1] if not isinstance(names, str) else list(names[::-1])  # N5: x first
    with open(attributes_file, "w") as f:
        json.dump(attributes, f)
    return f"{path}:raw"


WRITERS = {"hdf5": _hdf5, "zarr": _zarr, "n5": _n5}


@pytest.mark.parametrize("names", ["zcyx", ["z", "c", "y", "x"], "ZCYX"])
@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_other_axis_orders_are_read_as_czyx(tmp_path, fmt, names):
    path = WRITERS[fmt](tmp_path, names)
    with open_volume(path) as vol:
        assert (vol.axes, vol.shape, vol.dtype) == ("czyx", EKN.shape, np.uint8)
        for index in INDICES:
            np.testing.assert_array_equal(vol[index], EKN[index], err_msg=str(index))
        np.testing.assert_array_equal(np.asarray(vol), EKN)
    assert open_view(path, ndim=4).shape == EKN.shape  # what the patch source sees


@pytest.mark.parametrize("names", ["zcyx", "yxcz"])
@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_writes_through_the_transposed_view_land_in_storage_order(tmp_path, fmt, names):
    path = WRITERS[fmt](tmp_path, names)
    expected = STORED.copy()
    view = expected.transpose([names.index(a) for a in "czyx"])  # a numpy view in ekn's order
    with open_volume(path, mode="r+") as vol:
        assert vol.shape == view.shape
        for index in [(1, slice(2, 5), slice(None), slice(1, 2)), (0, 1), (Ellipsis, slice(1, 2), slice(0, 2))]:
            value = np.random.default_rng(len(index)).integers(0, 255, view[index].shape).astype(np.uint8)
            vol[index] = value
            view[index] = value
        with pytest.raises(IndexError, match="step 1"):
            vol[0, ::2] = 1
    with open_volume(path) as vol:
        np.testing.assert_array_equal(vol[...], view)
    np.testing.assert_array_equal(_stored(path, fmt), expected)


def _stored(path, fmt):
    """The array as stored, read without ekn."""
    base, key = path.rsplit(":", 1)
    if fmt == "hdf5":
        with h5py.File(base, "r") as f:
            return f[key][...]
    if fmt == "zarr":
        import zarr

        return zarr.open(base, mode="r")[key][...]
    import tensorstore as ts

    return ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": os.path.join(base, key)}}).result().T.read().result()


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_axis_names_ekn_cannot_order_are_refused(tmp_path, fmt):
    path = WRITERS[fmt](tmp_path, "tzyx")
    with pytest.raises(EknError, match="names its 4 axes 'tzyx'; ekn reads volumes whose axes are c") as refused:
        open_volume(path)
    if fmt == "hdf5":  # the refused file was closed again (while the error lives on): it can be written
        create_volume(path.replace(":raw", ":other"), shape=(2, 2), dtype="uint8").close()
    assert refused.value


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_volumes_are_created_only_in_ekn_order(tmp_path, fmt):
    path = str(tmp_path / f"out.{'h5' if fmt == 'hdf5' else fmt}:pred")
    with pytest.raises(EknError, match="axes='czyx' and the data transposed"):
        create_volume(path, shape=(10, 2, 4, 4), dtype="float32", axes="zcyx")
    create_volume(path, shape=(2, 10, 4, 4), dtype="float32", axes="czyx").close()
    assert open_volume(path).axes == "czyx"
