"""ELEKTRONN2's patch-source options at their edges: ``zxy=False`` (volumes stored (x, y, z)),
``force_dense`` for a strided net, and what ``describe_batches`` logs of the augmentation."""

import json

import h5py
import numpy as np
import pytest

from ekn_core.errors import ConfigError
from ekn_plugins.data.patches import BatchCreatorImage, PatchSource, stored_xyz

GEOMETRY = dict(patch_size=(4, 16, 16), offsets=(1, 3, 3), strides=(1, 2, 2))
WARP = [{"type": "warp", "rotation": 20, "probability": 0.7}, {"type": "grey"}]


class Node:  # what BatchCreatorImage reads of a model's node
    def __init__(self, shape, dtype="float32"):
        self.shape, self.dtype = shape, dtype


def elektronn2_nodes():
    """Input and target nodes of a net of GEOMETRY, tagged as ELEKTRONN2's (z, x, y)."""
    from ekn_core.shapes import TaggedShape

    inp = TaggedShape((None, 1, *GEOMETRY["patch_size"]), "b,f,z,x,y")
    out = TaggedShape((None, 1, 2, 5, 5), "b,f,z,x,y").updatefov((3, 7, 7)).updatestrides(GEOMETRY["strides"])
    return Node(inp), Node(out, "int16")


def write_volumes(folder, raw_zyx, lab_zyx, xyz):
    """Raw and label files of one cube, stored (z, y, x) or, with ``xyz``, as numpy's transpose to
    (x, y, z) of ELEKTRONN2's (z, x, y) (the inverse of its ``xyz2zxy``), channels first."""
    def stored(a):
        return a.transpose(*range(a.ndim - 3), a.ndim - 2, a.ndim - 1, a.ndim - 3) if xyz else a

    with h5py.File(folder / "raw.h5", "w") as f:
        f["raw"] = stored(raw_zyx)
    with h5py.File(folder / "lab.h5", "w") as f:
        f["lab"] = stored(lab_zyx)
    return dict(d_path=str(folder), l_path=str(folder), d_files=[("raw.h5", "raw")], l_files=[("lab.h5", "lab")])


@pytest.mark.parametrize("in_memory", [True, False], ids=["in_memory", "lazy"])
@pytest.mark.parametrize("channels", [0, 2], ids=["zyx", "czyx"])
def test_zxy_false_reads_xyz_files_as_elektronn2_did_raw_and_labels_aligned(tmp_path, in_memory, channels):
    rng = np.random.default_rng(0)
    lead = (channels,) if channels else ()
    raw = rng.integers(0, 256, (*lead, 8, 30, 26), dtype=np.uint8)  # z, y, x of unequal sizes
    lab = rng.integers(0, 3, (6, 20, 18), dtype=np.int16)  # smaller, centred
    (tmp_path / "zyx").mkdir()
    (tmp_path / "xyz").mkdir()
    reference = PatchSource(**GEOMETRY, **write_volumes(tmp_path / "zyx", raw, lab, False), augmenters=WARP,
                            in_memory=in_memory, seed=0)
    transposed = BatchCreatorImage(*elektronn2_nodes(), **write_volumes(tmp_path / "xyz", raw, lab, True),
                                   augmenters=WARP, in_memory=in_memory, seed=0, zxy=False)
    assert (transposed.patch_size, transposed.offsets, transposed.strides) == tuple(GEOMETRY.values())
    with h5py.File(tmp_path / "xyz" / "raw.h5") as f:
        assert f["raw"].shape == (*lead, 30, 26, 8)
    for seed in range(3):
        want = reference.getbatch(3, rng=np.random.default_rng(seed))
        got = transposed.getbatch(3, rng=np.random.default_rng(seed))
        for a, b in zip(want, got):
            np.testing.assert_array_equal(a, b)
    assert (transposed.train_cubes[0].raw.shape, transposed.train_cubes[0].label.shape) == (
        (max(channels, 1), 8, 30, 26), (1, 6, 20, 18))


def test_stored_xyz_is_numpys_xyz2zxy_for_any_box():
    from ekn_core.volumes import VolumeBase

    class Stored(VolumeBase):
        def __init__(self, data):
            self.data, self.shape, self.dtype, self.axes = data, data.shape, data.dtype, None

        def __getitem__(self, index):
            return self.data[index]

    for stored, order in ((np.arange(5 * 6 * 7).reshape(5, 6, 7), (2, 0, 1)),
                          (np.arange(2 * 5 * 6 * 7).reshape(2, 5, 6, 7), (0, 3, 1, 2))):
        want = stored.transpose(order)  # ELEKTRONN2's xyz2zxy
        view = stored_xyz(Stored(stored), "v.h5:raw")
        assert view.shape == want.shape
        box = (..., slice(1, 6), slice(2, 4), slice(0, 5))
        np.testing.assert_array_equal(view[box], want[box])
        np.testing.assert_array_equal(view[(slice(None),) * want.ndim], want)


@pytest.mark.parametrize("names", ["yxz", "zyx", ["z", "y", "x"]], ids=["other_order", "ekn_order", "list"])
def test_zxy_false_refuses_volumes_that_name_their_axes_or_have_no_three_spatial_axes(tmp_path, names):
    raw = np.zeros((8, 30, 26), np.uint8)
    files = write_volumes(tmp_path, raw, np.ones((6, 20, 18), np.int16), True)
    with h5py.File(tmp_path / "raw.h5", "a") as f:
        f["raw"].attrs["axes"] = names
    with pytest.raises(ConfigError, match=r"zxy=False reads every volume as stored \(x, y, z\), but .*raw.h5:raw "
                                          r"names its axes '(yxz|zyx)' .*leave zxy out"):
        PatchSource(**GEOMETRY, **files, zxy=False)
    with h5py.File(tmp_path / "raw.h5", "w") as f:
        f["raw"] = np.zeros((30, 26), np.uint8)
    with pytest.raises(ConfigError, match=r"raw.h5:raw has shape \(30, 26\), not \(x, y, z\)"):
        PatchSource(**GEOMETRY, **files, zxy=False)
    with pytest.raises(ConfigError, match="zxy must be True .* or False"):
        PatchSource(**GEOMETRY, **files, zxy="no")


@pytest.mark.parametrize("suffix", [".h5", ".zarr", ".n5"])
def test_readers_tell_declared_axes_from_default_ones(tmp_path, suffix):
    from ekn_core.volumes import create_volume, open_volume

    for i, (axes, declared) in enumerate([(None, None), ("zyx", "zyx"), ("czyx", "czyx")]):
        path = f"{tmp_path / f'v{i}'}{suffix}:raw"
        with create_volume(path, shape=(2, 3, 4) if axes != "czyx" else (1, 2, 3, 4), dtype="uint8", axes=axes):
            pass
        if axes is None and suffix == ".n5":  # ekn's N5 datasets always name their axes; other tools' may not
            attributes = tmp_path / f"v{i}.n5" / "raw" / "attributes.json"
            attributes.write_text(json.dumps({k: v for k, v in json.loads(attributes.read_text()).items()
                                              if k != "axes"}))
        with open_volume(path) as vol:
            assert (vol.axes, vol.declared_axes) == (axes or "zyx", declared)
        if axes is None:
            assert isinstance(stored_xyz(open_volume(path), path).shape, tuple)  # undeclared: read as (x, y, z)
        else:
            with pytest.raises(ConfigError, match=f"names its axes '{declared}'"):
                stored_xyz(open_volume(path), path)


@pytest.mark.parametrize("reader, path", [("knossos", "k"), (None, "precomputed://file://{}/p"),
                                          ("imagestack", "s")])
def test_formats_that_fix_the_axis_order_declare_it_and_zxy_false_refuses_them(tmp_path, reader, path):
    """KNOSSOS, Neuroglancer precomputed and image stacks store x, y, z in a fixed way, which their
    readers already turn into ekn's order: zxy=False must not transpose them again."""
    from ekn_core.volumes import create_volume, open_volume

    path = path.format(tmp_path) if "://" in path else str(tmp_path / path)
    options = {"reader": reader} if reader else {}
    with create_volume(path, shape=(2, 64, 64), dtype="uint8", **options):
        pass
    with open_volume(path, **options) as vol:
        assert (vol.axes, vol.declared_axes) == ("zyx", "zyx")
    with pytest.raises(ConfigError, match="names its axes 'zyx' .*a format with a fixed order"):
        stored_xyz(open_volume(path, **options), path)


@pytest.fixture
def cube(tmp_path):
    rng = np.random.default_rng(1)
    return write_volumes(tmp_path, rng.integers(0, 256, (8, 30, 26), dtype=np.uint8),
                         rng.integers(0, 2, (6, 20, 18), dtype=np.int16), False)


def test_force_dense_is_refused_for_strided_nets_naming_it_and_what_fits(cube):
    strided = PatchSource(**GEOMETRY, **cube)
    dense_shape = strided.getbatch(1, force_dense=True)[1].shape[2:]  # getbatch itself still gives them
    assert dense_shape == (2, 10, 10) and strided.target_shape == (2, 5, 5)
    with pytest.raises(ConfigError, match=r"force_dense=True gives targets at every voxel of the output region, "
                                          r"\(2, 10, 10\), but the net's output has strides \(1, 2, 2\).* "
                                          r"\(2, 5, 5\)\. Remove force_dense from data_batch_args"):
        strided.describe_batches({"force_dense": True})
    assert "strides (1, 2, 2)" in strided.describe_batches({"force_dense": False})
    unstrided = PatchSource(**{**GEOMETRY, "strides": (1, 1, 1)}, **cube)
    assert unstrided.describe_batches({"force_dense": True}).startswith("PatchSource(img-img")


def test_describe_batches_names_the_augmenters_that_act(cube):
    plain = PatchSource(**GEOMETRY, **cube)
    args = {"warp": 0.5, "warp_args": {"sample_aniso": True, "perspective": True}, "grey_augment_channels": [0]}
    assert "augmenters: none" in repr(plain)
    assert "augmenters from data_batch_args: Flip, Warp(p=0.5), Grey," in plain.describe_batches(args)
    assert "augmenters: none" in plain.describe_batches({"blurry_blobs_args": {"diffuseness": 2}})  # does not act
    own = PatchSource(**GEOMETRY, **cube, augmenters=WARP)
    assert "augmenters: Warp(p=0.7), Grey," in own.describe_batches({}) and "Warp(p=0.7), Grey," in repr(own)
    with pytest.raises(ConfigError, match="both set the augmentation"):
        own.describe_batches(args)
    built = dict(plain._compat)  # the pipelines described are those getbatch uses: built once
    plain.getbatch(1, rng=np.random.default_rng(0), **args)
    assert plain._compat == built
