"""OME-Zarr images (NGFF 0.4 and 0.5), written by hand with zarr and the spec's JSON metadata, read
through open_volume: the level, the axes without a singleton t, the voxel size, and the refusals."""

import numpy as np
import pytest

from ekn_core.errors import EknError
from ekn_core.volumes import open_volume

UM = {"type": "space", "unit": "micrometer"}


def axes(names, unit=UM):
    kinds = {"t": {"type": "time", "unit": "second"}, "c": {"type": "channel"}}
    return [{"name": n, **kinds.get(n, unit)} for n in names]


def write_image(path, levels, names, scales, version="0.4", image_scale=None, unit=UM):
    """An OME-Zarr image group at ``path`` with one array per level (``"0"``, ``"1"``, ...)."""
    import zarr

    fmt = 2 if version == "0.4" else 3
    group = zarr.open_group(path, mode="w", zarr_format=fmt)
    image = {"axes": axes(names, unit), "datasets": [
        {"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": list(s)},
                                                       {"type": "translation", "translation": [0.5] * len(s)}]}
        for i, s in enumerate(scales)]}
    if image_scale is not None:
        image["coordinateTransformations"] = [{"type": "scale", "scale": list(image_scale)}]
    if version == "0.4":
        group.attrs["multiscales"] = [{"version": "0.4", **image}]
    else:
        group.attrs["ome"] = {"version": "0.5", "multiscales": [image]}
    for i, data in enumerate(levels):
        extra = {"dimension_names": list(names)} if fmt == 3 else {}
        group.create_array(str(i), shape=data.shape, dtype=data.dtype, chunks=(1,) * (data.ndim - 2) + (8, 8),
                           **extra)[...] = data
    return group


@pytest.fixture
def tczyx(tmp_path):
    rng = np.random.default_rng(0)
    level0 = rng.integers(0, 255, (1, 2, 6, 20, 24), dtype=np.uint8)
    level1 = level0[:, :, :, ::2, ::2].copy()
    path = str(tmp_path / "img.ome.zarr")
    write_image(path, [level0, level1], "tczyx", [(1, 1, 0.03, 0.008, 0.008), (1, 1, 0.03, 0.016, 0.016)])
    return path, level0, level1


def test_ngff_04_image_opens_at_level_0_as_czyx_with_its_voxel_size(tczyx):
    path, level0, _ = tczyx
    with open_volume(path) as vol:
        assert (vol.shape, vol.axes, vol.chunks) == ((2, 6, 20, 24), "czyx", (1, 1, 8, 8))
        np.testing.assert_array_equal(vol[...], level0[0])
        np.testing.assert_array_equal(vol[1, 2:5, ::3, 7], level0[0, 1, 2:5, ::3, 7])
        np.testing.assert_allclose(vol.voxel_size, (30.0, 8.0, 8.0))


@pytest.mark.parametrize("name", ["{path}:1", "{path}/1"])
def test_a_level_is_chosen_by_key_or_by_its_folder(tczyx, name):
    path, _, level1 = tczyx
    with open_volume(name.format(path=path)) as vol:
        assert vol.shape == (2, 6, 10, 12) and vol.axes == "czyx"
        np.testing.assert_array_equal(vol[...], level1[0])
        np.testing.assert_allclose(vol.voxel_size, (30.0, 16.0, 16.0))


def test_writing_through_zarr_python_lands_at_time_point_0(tczyx):
    import zarr

    path, level0, _ = tczyx
    with open_volume(path, mode="r+") as vol:
        np.testing.assert_array_equal(vol[0, 1], level0[0, 0, 1])
        vol[1, 3, 4:6] = 7
    expected = level0.copy()
    expected[0, 1, 3, 4:6] = 7
    np.testing.assert_array_equal(zarr.open_array(path + "/0", mode="r")[...], expected)


def test_ngff_05_image_multiplies_the_image_wide_scale_and_converts_units(tmp_path):
    data = np.arange(1 * 4 * 16 * 16, dtype=np.uint16).reshape(1, 4, 16, 16)
    path = str(tmp_path / "img.zarr")
    write_image(path, [data], "tzyx", [(1, 2, 0.5, 0.5)], version="0.5", image_scale=(1, 20, 10, 10),
                unit={"type": "space", "unit": "angstrom"})
    with open_volume(path) as vol:
        assert vol.shape == (4, 16, 16) and vol.axes == "zyx"
        np.testing.assert_array_equal(vol[:, 3], data[0, :, 3])
        np.testing.assert_allclose(vol.voxel_size, (4.0, 0.5, 0.5))  # 40 Å, 5 Å, 5 Å


def test_an_image_stored_in_another_axis_order_keeps_its_voxel_size_in_ekns_order(tmp_path):
    data = np.random.default_rng(2).integers(0, 255, (2, 5, 12, 10), dtype=np.uint8)  # c, z, x, y
    path = str(tmp_path / "img.zarr")
    write_image(path, [data], "czxy", [(1, 0.03, 0.004, 0.008)])
    with open_volume(path) as vol:
        assert vol.axes == "czyx" and vol.shape == (2, 5, 10, 12)
        np.testing.assert_array_equal(vol[...], data.transpose(0, 1, 3, 2))
        np.testing.assert_allclose(vol.voxel_size, (30.0, 8.0, 4.0))  # z, y, x


def test_labels_image_inside_an_image_and_no_units(tmp_path):
    import zarr

    path = str(tmp_path / "img.zarr")
    write_image(path, [np.zeros((3, 16, 16), np.uint8)], "zyx", [(1, 1, 1)])
    ids = np.random.default_rng(1).integers(0, 9, (3, 16, 16)).astype(np.uint32)
    labels = zarr.open_group(path, mode="r+").create_group("labels")
    write_image(f"{path}/labels/cells", [ids], "zyx", [(1, 1, 1)], unit={"type": "space"})
    assert isinstance(labels, zarr.Group)
    with open_volume(path + ":labels/cells") as vol:
        np.testing.assert_array_equal(vol[...], ids)
        assert vol.axes == "zyx" and vol.voxel_size is None


def test_several_time_points_are_refused_with_what_to_do(tmp_path):
    path = str(tmp_path / "movie.zarr")
    write_image(path, [np.zeros((3, 4, 16, 16), np.uint8)], "tzyx", [(1, 1, 1, 1)])
    with pytest.raises(EknError, match=r"3 time points .*ekn reads one volume.*Save the time point"):
        open_volume(path)


def test_unreadable_axes_are_refused(tmp_path):
    import zarr

    path = str(tmp_path / "odd.zarr")
    group = write_image(path, [np.zeros((2, 16, 16), np.uint8)], "zyx", [(1, 1, 1)])
    group.attrs["multiscales"] = [{**group.attrs["multiscales"][0],
                                   "axes": [{"name": "angle", "type": "angle"}, *axes("yx")]}]
    with pytest.raises(EknError, match="axes of type time, channel, and space.*'angle'"):
        open_volume(path)
    group.attrs["multiscales"] = [{**group.attrs["multiscales"][0], "axes": axes("czyx")}]
    with pytest.raises(EknError, match=r"name 4 axes \('czyx'\) for an array of shape \(2, 16, 16\)"):
        open_volume(path)
    assert isinstance(zarr.open_group(path, mode="r"), zarr.Group)


def test_plain_groups_and_arrays_are_read_as_before(tmp_path):
    import zarr

    group = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    group.create_array("raw", shape=(1, 2, 8, 8), dtype="uint8")
    with open_volume(str(tmp_path / "plain.zarr")) as vol:
        assert vol.shape == (1, 2, 8, 8) and vol.axes == "czyx" and vol.voxel_size is None
