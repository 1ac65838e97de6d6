"""Patch source: target/output alignment for strided nets and U-Nets, warps, modes, layouts, errors."""

import logging
import re

import h5py
import numpy as np
import pytest

from ekn_core.errors import ConfigError, ShapeError
from ekn_plugins.augmenters.sampling import coordinates
from ekn_plugins.augmenters.transform import Transform, source_bounds, voxel_matrix
from ekn_plugins.data.patches import MAX_WARP_TRIES, BatchCreatorImage, PatchSource

RAW_SHAPE, LAB_SHAPE = (12, 40, 40), (8, 30, 30)
LAB_OFF = np.array([2, 5, 5])
WARPS = [
    None,
    [{"type": "warp", "rotation": 0, "shear": 0, "stretch": 0, "flip": False, "swap": False}],  # identity = crop
    [{"type": "warp", "rotation": 30, "perspective": 0.002}],
    [{"type": "warp", "rotation": 180, "lock_z": False, "sample_aniso": False}],
    [{"type": "flip"}, {"type": "elastic", "alpha": 1.5, "spacing": 8},
     {"type": "misalignment", "max_shift": 2, "probability": 1.0}],
]


def write_coords(path, raw_shape, lab_shape):
    """Raw channels hold their own z, y, x coordinates, label channels those of the label cube."""
    raw = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in raw_shape], indexing="ij"))
    lab = np.stack(np.meshgrid(*[np.arange(s, dtype=np.int32) for s in lab_shape], indexing="ij"))
    with h5py.File(path / "raw.h5", "w") as f:
        f["raw"] = raw
    with h5py.File(path / "lab.h5", "w") as f:
        f["lab"] = lab
    return dict(d_path=str(path), l_path=str(path), d_files=[("raw.h5", "raw")], l_files=[("lab.h5", "lab")])


@pytest.fixture
def coord_files(tmp_path):
    return write_coords(tmp_path, RAW_SHAPE, LAB_SHAPE)


def check_alignment(img, target, offsets, strides, exact):
    """Target voxel idx must hold the label at the input voxel offsets + strides*idx."""
    for b in range(img.shape[0]):
        grid = tuple(slice(o, o + s * n, s) for o, s, n in zip(offsets, strides, target.shape[2:]))
        raw_coords = img[b][(slice(None), *grid)]
        label_coords = target[b] + LAB_OFF[:, None, None, None]
        if exact:
            np.testing.assert_array_equal(raw_coords, label_coords)
        else:  # nearest-neighbour labels are within half a voxel of the trilinear coordinate
            assert np.abs(raw_coords - label_coords).max() <= 0.5 + 1e-3


@pytest.mark.parametrize("augmenters", WARPS, ids=["crop", "identity-warp", "warp", "free-3d", "elastic"])
@pytest.mark.parametrize("geometry", [((6, 20, 20), (1, 4, 4), (1, 2, 2)), ((8, 24, 24), (2, 6, 6), (1, 1, 1))],
                         ids=["strided", "unet"])
def test_targets_align_with_output_centres(coord_files, geometry, augmenters):
    ps, off, st = geometry
    src = PatchSource(patch_size=ps, offsets=off, strides=st, target_dtype="int32", augmenters=augmenters,
                      aniso_factor=2.0, seed=3, **coord_files)
    img, target = src.getbatch(4)
    assert img.shape == (4, 3, *ps)
    assert target.shape == (4, 3, *[-(-(p - 2 * o) // s) for p, o, s in zip(ps, off, st)])
    exact = augmenters is None or augmenters == WARPS[1]
    check_alignment(img, target, off, st, exact)
    if exact:  # a plain crop: coordinates are consecutive integers
        np.testing.assert_array_equal(np.diff(img[:, 2], axis=-1), 1)


def test_dense_targets_and_warp_never_reads_outside(coord_files):
    src = PatchSource(patch_size=(6, 20, 20), offsets=(1, 4, 4), strides=(1, 2, 2), target_dtype="int32",
                      augmenters=[{"type": "warp", "rotation": 45, "perspective": 0.003},
                                  {"type": "elastic", "alpha": 2, "spacing": 6, "lock_z": True}], seed=1, **coord_files)
    img, target = src.getbatch(2, force_dense=True)
    assert target.shape == (2, 3, 4, 12, 12)
    check_alignment(img, target, (1, 4, 4), (1, 1, 1), exact=False)
    rng = np.random.default_rng(0)
    cube, placed_count = src.train_cubes[0], 0
    for _ in range(30):  # brute force: every coordinate the image and the targets are read at
        t = src.pipeline.sample_transform(rng, src.ctx)
        placed = src._place(cube, t, (src.target_shape, src.strides), rng)
        if placed is None:
            continue
        placed_count += 1
        parts = dict(displacement=t.displacement, spacing=t.spacing, slice_shift=t.slice_shift)
        crd = coordinates(placed.matrix, src.patch_size, **parts).reshape(3, -1)
        assert np.all(crd >= -1e-6) and np.all(crd <= np.array(RAW_SHAPE)[:, None] - 1 + 1e-6)
        m_lab = placed.matrix.copy()
        m_lab[:3] -= np.outer(LAB_OFF, placed.matrix[3])
        crd = coordinates(m_lab, src.target_shape, src.offsets, src.strides, **parts).reshape(3, -1)
        assert np.all(crd >= -1e-6) and np.all(crd <= np.array(LAB_SHAPE)[:, None] - 1 + 1e-6)
    assert placed_count > 5


def test_examples_whose_warps_never_fit_are_cut_unwarped_and_counted(coord_files, caplog):
    """The patch is as big as the raw cube: no elastic deformation fits, each example falls back to
    the plain crop (the only position), with one warning; nothing raises mid-training."""
    src = PatchSource(patch_size=(12, 40, 40), offsets=(2, 5, 5), target_dtype="int32", seed=0,
                      augmenters=[{"type": "elastic", "alpha": 3}, {"type": "grey", "probability": 0}], **coord_files)
    assert "(patch (12, 40, 40), labels {(8, 30, 30): 1}): elastic: 0 % of 200 fit, probability 1 → 0." in caplog.text
    caplog.clear()
    img, target = src.getbatch(3)
    assert src.warp_stats == {"ok": 3, "drawn": 3 * MAX_WARP_TRIES, "redrawn": 3 * MAX_WARP_TRIES, "fallback": 3}
    check_alignment(img, target, (2, 5, 5), (1, 1, 1), exact=True)
    np.testing.assert_array_equal(img[:, 0, :, 0, 0], np.broadcast_to(np.arange(12), (3, 12)))  # the plain crop
    src.getbatch(2)
    assert caplog.text.count("are cut unwarped and counted in the warp statistics") == 1
    src.warp_stats["ok"] = 1023  # the statistics are logged after 1024, 2048, ... examples
    with caplog.at_level(logging.INFO, logger="ekn.data"):
        src.getbatch(1)
    records = [r for r in caplog.records if "warp statistics of" in r.getMessage()]
    assert len(records) == 1 and records[0].relay  # relayed from background workers
    assert "after 1024 examples: 300 transforms drawn, 0.0 % fitted (300 drawn again), 6 examples" in records[0].getMessage()


@pytest.mark.parametrize("offsets, strides", [((2, 5, 5), (1, 1, 1)), ((1, 4, 4), (1, 2, 2)), ((3, 7, 7), (1, 3, 3))])
def test_a_patch_that_fits_no_cube_is_refused_when_the_source_is_made(coord_files, offsets, strides):
    """Brute force: a crop fits if some start puts the patch inside the raw cube and every target
    voxel (offsets + strides * i) on the label cube (at LAB_OFF); else the constructor refuses."""
    def fits(ps):
        n_t = [-(-(p - 2 * o) // s) for p, o, s in zip(ps, offsets, strides)]
        return all(any(start + ps[a] <= RAW_SHAPE[a] and LAB_OFF[a] <= start + offsets[a] and
                       start + offsets[a] + (n_t[a] - 1) * strides[a] < LAB_OFF[a] + LAB_SHAPE[a]
                       for start in range(RAW_SHAPE[a])) for a in range(3))

    seen = set()
    for ps in [(12, 40, 40), (11, 38, 40), (13, 20, 20), (6, 41, 20), (10, 36, 36), (12, 30, 42)]:
        if min(p - 2 * o for p, o in zip(ps, offsets)) < 1:
            continue
        seen.add(fits(ps))
        if fits(ps):
            PatchSource(patch_size=ps, offsets=offsets, strides=strides, **coord_files).getbatch(1)
        else:
            with pytest.raises(ShapeError, match=r"raw.h5:raw: a patch of .* does not fit this cube .*even without"):
                PatchSource(patch_size=ps, offsets=offsets, strides=strides, **coord_files)
    assert seen == {True, False}


class _Shape:  # a TaggedShape stand-in (duck typing)
    def __init__(self, spatial, tags, offsets=(0, 0, 0), strides=(1, 1, 1)):
        self.spatial_shape, self.tags, self.offsets, self.strides = spatial, tags.split(","), offsets, strides
        self.ndim = len(spatial)


class _Node:
    def __init__(self, shape, dtype=None):
        self.shape, self.dtype = shape, dtype


def test_batchcreatorimage_from_nodes_and_layout(coord_files):
    inp = _Node(_Shape((6, 20, 20), "b,z,y,x,f"))
    tgt = _Node(_Shape((4, 6, 6), "b,z,y,x,f", offsets=(1, 4, 4), strides=(1, 2, 2)), dtype="int32")
    src = BatchCreatorImage(inp, tgt, aniso_factor=2, zxy=True, **coord_files)
    img, target = src.getbatch(2)
    assert img.shape == (2, 6, 20, 20, 3) and target.shape == (2, 4, 6, 6, 3)
    check_alignment(np.moveaxis(img, -1, 1), np.moveaxis(target, -1, 1), (1, 4, 4), (1, 2, 2), exact=True)
    assert src.batch_spec(2) == [((2, 6, 20, 20, 3), np.float32), ((2, 4, 6, 6, 3), np.int32)]
    bad = _Node(_Shape((5, 6, 6), "b,z,y,x,f", offsets=(1, 4, 4), strides=(1, 2, 2)), dtype="int32")
    with pytest.raises(ShapeError, match="does not match"):
        BatchCreatorImage(inp, bad, **coord_files)


def test_with_real_tagged_shape(coord_files):
    from ekn_core.shapes import TaggedShape

    inp = TaggedShape((None, 3, 6, 20, 20), "b,f,z,x,y")
    out = TaggedShape((None, 3, 4, 6, 6), "b,f,z,x,y").updatefov((3, 9, 9)).updatestrides((1, 2, 2))
    src = BatchCreatorImage(_Node(inp), _Node(out, "int32"), **coord_files)
    assert src.offsets == (1, 4, 4)
    img, target = src.getbatch(1)
    check_alignment(img, target, (1, 4, 4), (1, 2, 2), exact=True)


def test_sparse_classes_weights_valid_and_determinism(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(2):
        with h5py.File(tmp_path / f"raw_{i}.h5", "w") as f:
            f["raw"] = rng.integers(0, 256, (10, 30, 30), dtype=np.uint8)
        with h5py.File(tmp_path / f"lab_{i}.h5", "w") as f:
            f["lab"] = rng.integers(0, 3, (6, 20, 20)).astype(np.int16)
    kw = dict(patch_size=(4, 16, 16), offsets=(1, 2, 2), strides=(1, 2, 2), d_path=str(tmp_path), l_path=str(tmp_path),
              d_files=[(f"raw_{i}.h5", "raw") for i in range(2)], l_files=[(f"lab_{i}.h5", "lab") for i in range(2)],
              valid_cubes=[1], class_weights=[0.5, 1.0, 2.0], augmenters=[{"type": "warp"}, {"type": "grey"}])
    src = PatchSource(seed=7, **kw)
    img, target, weights = src.getbatch(3)
    assert img.dtype == np.float32 and 0 <= img.min() and img.max() <= 1
    assert set(np.unique(target)) <= {0, 1, 2}
    np.testing.assert_array_equal(weights, np.array([0.5, 1.0, 2.0], np.float32)[target])
    again = PatchSource(seed=7, **kw).getbatch(3)
    for a, b in zip((img, target, weights), again):
        np.testing.assert_array_equal(a, b)
    v_img, v_target, _ = src.getbatch(2, "valid")
    with h5py.File(tmp_path / "raw_1.h5") as f:  # validation patches are plain crops of cube 1
        raw1 = f["raw"][:] / np.float32(255)
    for patch in v_img[:, 0]:
        hits = [(z, y, x) for z in range(7) for y in range(15) for x in range(15)
                if np.array_equal(raw1[z:z + 4, y:y + 16, x:x + 16], patch)]
        assert len(hits) == 1
    with pytest.raises(ConfigError, match="source must be"):
        src.getbatch(1, "test")


def test_img_scalar_mode_and_2d(tmp_path):
    with h5py.File(tmp_path / "img.h5", "w") as f:
        f["raw"] = np.full((1, 12, 12), 0.25, np.float32)
    with h5py.File(tmp_path / "cls.h5", "w") as f:
        f["lab"] = np.array([7], np.int16)
    src = PatchSource(patch_size=(10, 10), mode="img-scalar", d_path=str(tmp_path), l_path=str(tmp_path),
                      d_files=[("img.h5", "raw")], l_files=[("cls.h5", "lab")], input_tags="b,f,y,x")
    img, target = src.getbatch(2)
    assert img.shape == (2, 1, 10, 10) and target.shape == (2, 1) and target.tolist() == [[7], [7]]


def test_errors(coord_files, tmp_path):
    with pytest.raises(ShapeError, match="smaller than the field of view"):
        PatchSource(patch_size=(6, 8, 8), offsets=(1, 4, 4), **coord_files)
    with pytest.raises(ConfigError, match="equally long"):
        PatchSource(patch_size=(6, 20, 20), d_files=coord_files["d_files"], l_files=[])
    with pytest.raises(ConfigError, match="valid_cubes"):
        PatchSource(patch_size=(6, 20, 20), valid_cubes=[3], **coord_files)
    with h5py.File(tmp_path / "odd.h5", "w") as f:
        f["lab"] = np.zeros((7, 30, 30), np.int16)
        f["big"] = np.full((8, 30, 30), 1000, np.int16)
    with pytest.raises(ShapeError, match="do not fit the target dtype"):
        PatchSource(patch_size=(6, 20, 20), target_dtype="int8", d_path=coord_files["d_path"],
                    d_files=coord_files["d_files"], l_files=[str(tmp_path / "odd.h5:big")])
    with pytest.raises(ShapeError, match="even"):
        PatchSource(patch_size=(6, 20, 20), d_path=coord_files["d_path"], d_files=coord_files["d_files"],
                    l_files=[str(tmp_path / "odd.h5:lab")])


def test_elektronn2_batch_args(coord_files):
    src = PatchSource(patch_size=(6, 20, 20), offsets=(1, 4, 4), strides=(1, 2, 2), target_dtype="int32", seed=2,
                      **coord_files)
    img, target = src.getbatch(3, warp=True, warp_args={"perspective": True, "warp_amount": 0.5})
    check_alignment(img, target, (1, 4, 4), (1, 2, 2), exact=False)
    assert np.any(np.diff(img[:, 2], axis=-1) != 1)  # really warped
    img, _ = src.getbatch(2, warp=0.5, grey_augment_channels=[0])
    assert 0 <= img[:, 0].min() and img[:, 0].max() <= 1  # grey augmentation clips channel 0 to [0, 1]
    assert img[:, 1].max() > 1  # other channels untouched
    with pytest.raises(ConfigError, match="not supported"):
        src.getbatch(1, warp=True, warp_args={"twist": 1})
    with pytest.raises(ConfigError, match=r"warp_args\['aniso_factor'\] \(5\) is not used: .* set aniso_factor in "
                                          "data_init_kwargs"):
        src.getbatch(1, warp=True, warp_args={"aniso_factor": 5})


@pytest.mark.parametrize("in_memory", [True, False])
@pytest.mark.parametrize("augmenters", [None, [{"type": "warp", "rotation": 20}]], ids=["crop", "warp"])
def test_label_region_sits_where_it_lies_in_the_raw_region(tmp_path, in_memory, augmenters):
    """Regions in both entries are boxes of one frame: labels need not be centred in the raw box."""
    coords = np.stack(np.meshgrid(*[np.arange(s) for s in RAW_SHAPE], indexing="ij"))
    with h5py.File(tmp_path / "vol.h5", "w") as f:  # raw and labels hold their own absolute coordinates
        f["raw"], f["lab"] = coords.astype(np.float32), coords.astype(np.int32)
    raw_box, lab_box = ((1, 2, 3), (12, 40, 38)), ((2, 10, 5), (7, 30, 30))  # even size differences, not centred
    src = PatchSource(patch_size=(4, 16, 16), offsets=(1, 4, 4), strides=(1, 2, 2), target_dtype="int32", seed=0,
                      d_path=str(tmp_path), l_path=str(tmp_path), d_files=[("vol.h5", "raw", raw_box)],
                      l_files=[("vol.h5", "lab", lab_box)], augmenters=augmenters, in_memory=in_memory)
    assert src.train_cubes[0].label_offset == (1, 8, 2)
    img, target = src.getbatch(6)
    centres = img[(slice(None), slice(None), slice(1, 3), slice(4, 12, 2), slice(4, 12, 2))]
    assert np.abs(centres - target).max() <= (0 if augmenters is None else 0.5 + 1e-3)
    assert np.all(target >= np.array(lab_box[0])[:, None, None, None])  # only labelled voxels are targets
    assert np.all(target < np.array(lab_box[1])[:, None, None, None])
    outside = ((2, 10, 5), (7, 30, 39))
    with pytest.raises(ShapeError, match=r"label region \(\(2, 10, 5\), \(7, 30, 39\)\) of .*vol.h5:lab is not inside "
                                         r"the raw region \(\(1, 2, 3\), \(12, 40, 38\)\) of .*vol.h5:raw"):
        PatchSource(patch_size=(4, 16, 16), offsets=(1, 4, 4), d_path=str(tmp_path), l_path=str(tmp_path),
                    d_files=[("vol.h5", "raw", raw_box)], l_files=[("vol.h5", "lab", outside)], in_memory=in_memory)


def test_class_weights_with_unlabelled_voxels(tmp_path):
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "vol.h5", "w") as f:
        f["raw"] = rng.integers(0, 256, (10, 30, 30), dtype=np.uint8)
        f["lab"] = rng.integers(-1, 3, (10, 30, 30)).astype(np.int16)  # -1 = unlabelled
    kw = dict(patch_size=(4, 16, 16), offsets=(1, 2, 2), strides=(1, 2, 2), d_path=str(tmp_path),
              l_path=str(tmp_path), d_files=[("vol.h5", "raw")], l_files=[("vol.h5", "lab")], seed=0)
    img, target, weights = PatchSource(class_weights=[0.5, 1.0, 3.0], **kw).getbatch(4)
    assert {-1, 0, 1, 2} <= set(np.unique(target).tolist())
    expected = np.select([target == 0, target == 1, target == 2], [0.5, 1.0, 3.0], 0.0)
    np.testing.assert_array_equal(weights, expected.astype(np.float32))
    with pytest.raises(ShapeError, match=r"targets hold class 2, but class_weights has 2 entries \(classes 0..1\); "
                                         r"add weights for classes 2..2"):
        PatchSource(class_weights=[0.5, 1.0], **kw).getbatch(4)


def test_perspective_that_folds_is_refused_or_redrawn(coord_files):
    kw = dict(patch_size=(5, 31, 31), offsets=(1, 5, 5), target_dtype="int32", seed=0, **coord_files)
    with pytest.raises(ConfigError, match=r"warp: perspective\*amount = 0.04 folds patches of shape \(5, 31, 31\) "
                                          r"\(w <= 0 at their corners\) from 1/30 = 0.0333 on; use at most about 0.017"):
        PatchSource(augmenters=[{"type": "warp", "perspective": 0.04}], **kw)
    src = PatchSource(augmenters=[{"type": "warp", "perspective": 0.02}], **kw)
    folding = Transform(np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0.05, 0.05, 1]], dtype=np.float64))
    with pytest.raises(ShapeError, match="folds the patch"):
        source_bounds(voxel_matrix(folding, src.patch_size, src.aniso_factor), (0, 0, 0), (4, 30, 30))
    assert src._place(src.train_cubes[0], folding, (src.target_shape, src.strides), np.random.default_rng(0)) is None


def test_elastic_keeps_2d_patches_in_their_section(coord_files):
    src = PatchSource(patch_size=(20, 20), offsets=(4, 4), target_dtype="int32", seed=1, aniso_factor=1.0,
                      augmenters=[{"type": "elastic", "alpha": 2, "spacing": 8}], **coord_files)
    img, target = src.getbatch(6)
    assert img.shape == (6, 3, 20, 20)
    for z_image, z_label in zip(img[:, 0], target[:, 0]):
        assert np.ptp(z_image) == 0 and z_image[0, 0] == np.round(z_image[0, 0])  # one section, not interpolated
        np.testing.assert_array_equal(z_label + LAB_OFF[0], z_image[4:16, 4:16])
    assert np.any(np.diff(img[:, 2], axis=-1) != 1)  # really deformed laterally


def test_reader_options_reach_the_volumes(tmp_path):
    from ekn_core.volumes import create_volume, open_volume

    data = np.random.default_rng(0).integers(0, 256, (16, 64, 64), dtype=np.uint8)
    root = str(tmp_path / "ds.k.toml")
    with create_volume(root, shape=data.shape, dtype="uint8", cube_shape=(16, 16, 16), num_mags=2) as arr:
        arr[...] = data
    with open_volume(root, mag=2) as mag2:
        want = mag2[...].astype(np.float32) / np.float32(255)
    with h5py.File(tmp_path / "lab.h5", "w") as f:
        f["lab"] = np.zeros(want.shape, np.int16)
    kw = dict(patch_size=(4, 16, 16), d_path=str(tmp_path), l_path=str(tmp_path), l_files=[("lab.h5", "lab")])
    src = PatchSource(d_files=[("ds.k.toml", None, None, {"mag": 2})], in_memory=True, **kw)
    assert want.shape == (8, 32, 32)
    np.testing.assert_array_equal(src.train_cubes[0].raw, want[None])
    with PatchSource(d_files=[("ds.k.toml", None, ((0, 0, 0), (8, 32, 32)), {"mag": 2})], in_memory=False, **kw) as lazy:
        np.testing.assert_array_equal(lazy.train_cubes[0].raw.read(), want[None])
    with pytest.raises(ConfigError, match=r"ds.k.toml: the fourth entry holds the reader's options as a dict, e.g. "
                                          r"\{'mag': 2\}, got 2"):
        PatchSource(d_files=[("ds.k.toml", None, None, 2)], **kw)


def test_warps_that_do_not_fit_keep_the_warp_probability(coord_files, caplog):
    """The rotated patch barely fits the raw cube: most rotations are drawn again, but whether an
    example is warped is drawn once, so the warped share stays the configured probability."""
    src = PatchSource(patch_size=(6, 36, 36), offsets=(1, 4, 4), strides=(1, 2, 2), target_dtype="int32", seed=0,
                      augmenters=[{"type": "warp", "probability": 0.5, "shear": 0, "stretch": 0, "flip": False,
                                   "swap": False}], **coord_files)
    share = float(re.search(r"warp: (\d+) % of 200 fit", caplog.text).group(1)) / 100
    rng, n = np.random.default_rng(1), 800
    warped = sum(not np.allclose(src._transform(src.train_cubes[0], src.pipeline, src.ctx, rng,
                                                (src.target_shape, src.strides)).transform.linear, np.eye(4))
                 for _ in range(n))
    stats = src.warp_stats
    assert stats["fallback"] < 0.02 * n and 0.03 < 1 - stats["redrawn"] / stats["drawn"] < 0.2
    assert abs(1 - stats["redrawn"] / stats["drawn"] - share) < 0.1  # the estimate when the source was built
    assert abs(warped / n - 0.5) < 4 * np.sqrt(0.25 / n)


def test_unlabelled_and_nan_targets_are_never_blended(tmp_path):
    """Float targets, left part unlabelled (-666 in channel 0, NaN in channel 1), resampled
    trilinearly under rotations: a target voxel is -666 exactly where its stencil reaches the
    unlabelled part (label x < 15, from the raw's x coordinate channel), else the label."""
    files = write_coords(tmp_path, RAW_SHAPE, LAB_SHAPE)
    x = np.arange(LAB_SHAPE[2])
    with h5py.File(tmp_path / "lab.h5", "w") as f:
        f["lab"] = np.stack([np.broadcast_to(np.where(x < 15, -666.0, 0.5), LAB_SHAPE),
                             np.broadcast_to(np.where(x < 15, np.nan, 0.25), LAB_SHAPE)]).astype(np.float32)
    kw = dict(patch_size=(6, 20, 20), offsets=(1, 4, 4), strides=(1, 2, 2), target_dtype="float32", aniso_factor=2.0,
              augmenters=[{"type": "warp", "rotation": 30}], **files)
    img, target = PatchSource(target_discrete_ix=[], seed=0, **kw).getbatch(16)
    label_x = img[:, 2, 1:5, 4:16:2, 4:16:2] - LAB_OFF[2]  # the label cube's x where each target sits
    unlabelled, clear = label_x < 15 - 1e-3, label_x > 15 + 1e-3
    assert unlabelled.sum() > 100 and clear.sum() > 100
    for channel, value in ((0, 0.5), (1, 0.25)):
        assert np.all(target[:, channel][unlabelled] == -666) and np.all(target[:, channel][clear] == value)
    _, target = PatchSource(target_discrete_ix=[1], seed=0, **kw).getbatch(8)  # nearest neighbour: NaN → -666
    assert set(np.unique(target[:, 1]).tolist()) == {-666.0, 0.25}


def test_negative_z_offsets_with_misalignment(tmp_path):
    """Target sections beyond the patch (offset -1) move with the nearest patch section."""
    src = PatchSource(patch_size=(6, 21, 21), offsets=(-1, 0, 0), target_dtype="int32", aniso_factor=2.0, seed=0,
                      augmenters=[{"type": "misalignment", "probability": 1, "max_shift": 3}],
                      **write_coords(tmp_path, (20, 80, 80), (12, 60, 60)))
    img, target = src.getbatch(12)
    assert target.shape == (12, 3, 8, 21, 21)
    np.testing.assert_array_equal(target[:, 1:, 0], target[:, 1:, 1])
    np.testing.assert_array_equal(target[:, 1:, -1], target[:, 1:, -2])
    assert np.any(target[:, 1:, 1] != target[:, 1:, -2])  # really shifted


def test_a_perspective_that_folds_the_targets_beyond_the_patch(tmp_path):
    files = write_coords(tmp_path, (20, 80, 80), (12, 60, 60))
    kw = dict(patch_size=(5, 21, 21), offsets=(0, -8, -8), target_dtype="int32", aniso_factor=2.0, seed=0, **files)
    with pytest.raises(ConfigError, match=r"perspective\*amount = 0.04 folds patches of shape \(5, 21, 21\) with their "
                                          r"targets beyond them .* from 1/36 = 0.0278 on"):
        PatchSource(augmenters=[{"type": "warp", "perspective": 0.04, "rotation": 0}], **kw)
    src = PatchSource(augmenters=[{"type": "warp", "perspective": 0.025, "rotation": 0}], **kw)
    for _ in range(5):
        src.getbatch(4)
    folding = Transform(np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0.04, 0.04, 1]], dtype=np.float64))
    m = voxel_matrix(folding, src.patch_size, src.aniso_factor)
    source_bounds(m, (0, 0, 0), (4, 20, 20))  # the patch does not fold, its targets do:
    assert src._place(src.train_cubes[0], folding, (src.target_shape, src.strides), np.random.default_rng(0)) is None


def test_isotropic_sampling_holds_for_every_patch_of_the_pipeline(coord_files):
    files = dict(coord_files, d_files=coord_files["d_files"] * 2, l_files=coord_files["l_files"] * 2)
    src = PatchSource(patch_size=(6, 20, 20), offsets=(1, 4, 4), strides=(1, 2, 2), target_dtype="int32", seed=0,
                      aniso_factor=2.0, valid_cubes=[0], augmenters=[{"type": "warp", "probability": 0.0,
                                                                       "sample_aniso": False}], **files)
    for source in ("train", "valid"):  # warp never acts, validation is not augmented: still isotropic
        img, target = src.getbatch(3, source)
        np.testing.assert_allclose(np.diff(img[:, 0], axis=1), 0.5)  # z step: half a data section
        check_alignment(img, target, (1, 4, 4), (1, 2, 2), exact=False)


def test_elektronn2_batch_args_draw_perspective_and_swaps_as_elektronn2():
    from ekn_plugins.augmenters.base import PatchContext
    from ekn_plugins.data.patches import elektronn2_pipeline

    pipe = elektronn2_pipeline(True, {"perspective": True, "warp_amount": 2, "lock_z": False})
    pipe.check(PatchContext((23, 185, 185), 2.0))  # ELEKTRONN2 ran this: coefficients are clipped to 0.003
    rng = np.random.default_rng(0)
    flip, warp = pipe.augmenters
    linear = [warp.transform(rng, PatchContext((23, 185, 185), 2.0)).linear for _ in range(2000)]
    p = np.array([m[3, :3] @ np.linalg.inv(m[:3, :3]) for m in linear])  # the perspective row drawn: P @ affine
    assert np.abs(p).max() <= 0.003 + 1e-12
    assert 0.65 < np.mean(np.abs(p) > 0.003 - 1e-12) < 0.75  # U(±0.01) clipped at ±0.003: 70 % at the bound
    orders = {tuple(np.abs(flip.transform(rng, None).linear[:3, :3]).argmax(axis=1)) for _ in range(200)}
    assert len(orders) == 6  # lock_z=False: every axis order, as ELEKTRONN2's swaps


def test_raw_is_held_in_its_stored_dtype(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (10, 30, 30), dtype=np.uint8)
    with h5py.File(tmp_path / "u8.h5", "w") as f:
        f["raw"], f["lab"] = raw, rng.integers(0, 3, (10, 30, 30)).astype(np.int16)
    with h5py.File(tmp_path / "f32.h5", "w") as f:
        f["raw"] = raw.astype(np.float32) / np.float32(255)
    kw = dict(patch_size=(4, 16, 16), offsets=(1, 2, 2), strides=(1, 2, 2), d_path=str(tmp_path), l_path=str(tmp_path),
              l_files=[("u8.h5", "lab")], in_memory=True,
              augmenters=[{"type": "flip"}, {"type": "warp", "rotation": 20}])
    held = PatchSource(d_files=[("u8.h5", "raw")], **kw)
    assert held.train_cubes[0].raw.volume.dtype == np.uint8 and held.train_cubes[0].raw.volume.nbytes == raw.nbytes
    scaled = PatchSource(d_files=[("f32.h5", "raw")], **kw)  # the same grey values, scaled before
    for step in range(3):
        want = scaled.getbatch(2, rng=np.random.default_rng(step))
        for a, b in zip(held.getbatch(2, rng=np.random.default_rng(step)), want):
            np.testing.assert_array_equal(a, b)



@pytest.mark.parametrize("use_numba", [True, False], ids=["numba", "scipy"])
@pytest.mark.parametrize("offsets", [(1, 4, 4), (-1, -2, -2)], ids=["valid", "padded"])
def test_sparse_nan_labels_mark_only_the_target_voxels_that_blend_them(tmp_path, monkeypatch, offsets, use_numba):
    """Float targets with 1 % scattered NaN and a block of -666, rotated with lock_z (whole
    sections): a target voxel is -666 exactly where a label that its trilinear stencil weighs above
    0 is unlabelled (brute force, from the label coordinates it got), else the blend of the labels.
    NaN reaches no voxel that gives it weight 0 (``a + (NaN - a) · 0`` is NaN), e.g. the section above."""
    from ekn_plugins.augmenters import sampling

    if use_numba and not sampling.HAVE_NUMBA:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(sampling, "HAVE_NUMBA", use_numba)
    rng, shape = np.random.default_rng(5), (14, 56, 56)
    value = rng.normal(size=shape).astype(np.float32)
    value[:, 20:30, 20:30] = -666
    value[rng.random(shape) < 0.01] = np.nan
    unlabelled = np.isnan(value) | (value == -666)
    coords = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    with h5py.File(tmp_path / "lab.h5", "w") as f:
        f["lab"] = np.concatenate([coords, value[None]])
    with h5py.File(tmp_path / "raw.h5", "w") as f:
        f["raw"] = rng.integers(0, 256, (20, 70, 70), dtype=np.uint8)
    src = PatchSource(patch_size=(6, 24, 24), offsets=offsets, strides=(1, 1, 1), target_dtype="float32",
                      target_discrete_ix=[], aniso_factor=2.0, seed=3, augmenters=[{"type": "warp", "rotation": 30}],
                      d_path=str(tmp_path), l_path=str(tmp_path), d_files=[("raw.h5", "raw")],
                      l_files=[("lab.h5", "lab")])
    _, target = src.getbatch(16)
    crd = np.moveaxis(target[:, :3], 1, 0).reshape(3, -1).astype(np.float64)
    got = target[:, 3].ravel()
    assert np.all(crd[0] == np.round(crd[0]))  # lock_z: sections are not interpolated
    must, may, blend = np.zeros(got.shape, bool), np.zeros(got.shape, bool), np.zeros(got.shape)
    for near in (0, 1e-4, -1e-4):  # a coordinate this close to a whole number may fall on either side of it
        lo = np.floor(crd + near).astype(np.int64)
        frac = crd - lo
        for corner in np.ndindex(2, 2, 2):
            idx = tuple(np.minimum(lo[a] + corner[a], shape[a] - 1) for a in range(3))
            weight = np.prod([frac[a] if corner[a] else 1 - frac[a] for a in range(3)], axis=0)
            may |= unlabelled[idx] & (weight > 0)
            if near == 0:
                must |= unlabelled[idx] & (weight > 1e-4)
                blend += weight * np.where(unlabelled, 0, value)[idx]
    ignored = got == -666
    assert not np.isnan(got).any() and must.sum() > 500 and (~may).sum() > 0.5 * got.size
    assert np.all(ignored[must]) and not np.any(ignored & ~may)
    np.testing.assert_allclose(got[~ignored], blend[~ignored], atol=1e-4)


def test_the_fit_estimate_leaves_out_draws_that_only_reflect_or_permute(tmp_path, caplog):
    """flip acts on every example, warp (rotations only) on half of them, and a rotated patch
    barely fits the raw cube: the fit share is that of the draws warp acts in (the reflections
    and swaps alone all fit), and the probabilities the warning gives for flip and warp, after
    the examples whose 50 draws all fail are cut unwarped, are those measured. The label shapes
    of the cubes are listed once, with counts."""
    files = write_coords(tmp_path, (8, 104, 104), (6, 98, 98))
    files.update(d_files=files["d_files"] * 2, l_files=files["l_files"] * 2)
    src = PatchSource(patch_size=(4, 101, 101), offsets=(1, 4, 4), strides=(1, 2, 2), target_dtype="int32", seed=0,
                      augmenters=[{"type": "flip"}, {"type": "warp", "probability": 0.5, "shear": 0, "stretch": 0,
                                                     "flip": False, "swap": False}], **files)
    found = re.search(r"\(patch \(4, 101, 101\), labels \{\(6, 98, 98\): 2\}\): flip: (\d+) % of (\d+) fit "
                      r"\(\+ (\d+) that only reflect or permute\), probability 1 → ([\d.]+); warp: (\d+) % of (\d+) "
                      r"fit, probability 0.5 → ([\d.]+)\.", caplog.text)
    flip_share, flip_drawn, plain, flip_p, warp_share, warp_drawn, warp_p = map(float, found.groups())
    assert flip_share == warp_share < 5 and flip_drawn == warp_drawn == 200 and 0.7 < plain / 200 < 1.4
    rng, n = np.random.default_rng(1), 400
    linear = [src._transform(src.train_cubes[0], src.pipeline, src.ctx, rng, (src.target_shape, src.strides))
              .transform.linear[:3, :3] for _ in range(n)]
    warped = np.mean([not np.allclose(np.abs(m), np.round(np.abs(m))) for m in linear])
    flipped = 1 - src.warp_stats["fallback"] / n  # flip acts on every example that is not cut unwarped
    assert warped < 0.45 and abs(warp_p - warped) < 0.1 and abs(flip_p - flipped) < 0.1


def test_the_fit_estimate_stops_early_when_the_pipeline_only_reflects_and_permutes(tmp_path, monkeypatch):
    """A flip-only pipeline fits wherever the plain crop fits: the estimate stops after
    WARP_FIT_DRAWS draws instead of drawing 100 times as many (seconds per new source)."""
    from ekn_plugins.augmenters.base import Pipeline
    from ekn_plugins.data import patches

    composed = []
    compose = Pipeline.compose
    monkeypatch.setattr(Pipeline, "compose", lambda self, *a: composed.append(1) or compose(self, *a))
    PatchSource(patch_size=(4, 40, 40), offsets=(1, 4, 4), strides=(1, 2, 2), target_dtype="int32", seed=0,
                augmenters=[{"type": "flip"}], **write_coords(tmp_path, (8, 64, 64), (6, 56, 56)))
    assert 0 < len(composed) <= patches.WARP_FIT_DRAWS


@pytest.mark.usefixtures("scratch_model")
def test_unlabelled_float_labels_are_warned_about_unless_the_losses_ignore_them(tmp_path, caplog):
    """Float labels with NaN or -666: the source built for a model's target names the loss nodes
    whose ignore_value is not -666 (in memory and lazily, once each); one built without the
    losses known says that they need it; labels without them, or losses that ignore -666: no word."""
    import ekn_core.neuromancer as nm

    files = write_coords(tmp_path, RAW_SHAPE, LAB_SHAPE)
    labels = np.random.default_rng(0).random((1, *LAB_SHAPE)).astype(np.float32)
    inp = nm.Input((None, 3, 6, 20, 20), "b,f,z,y,x", name="raw")
    pred = nm.Conv(inp, 1, (3, 9, 9), activation_func="lin")
    plain, ignoring = (nm.Input_like(pred, dtype="float32", name=name) for name in ("target", "target_ignoring"))
    nm.SquaredLoss(pred, plain, name="se_plain")
    nm.AbsLoss(pred, ignoring, ignore_value=-666, name="abs_ignoring")

    def warnings(labels, target, **extra):
        with h5py.File(tmp_path / "lab.h5", "w") as f:
            f["lab"] = labels
        caplog.clear()
        for in_memory in (True, False):
            PatchSource.from_nodes(inp, target, in_memory=in_memory, aniso_factor=2.0, **files, **extra).close()
        said = [r.getMessage() for r in caplog.records if "hold unlabelled voxels" in r.getMessage()]
        assert len(said) in (0, 2) and len(set(said)) <= 1
        return said[:1]

    assert warnings(labels, plain) == []  # every voxel labelled
    labels[0, 4, 10:20, 10:20] = np.nan  # in the centre box that a lazy source looks at
    said = warnings(labels, plain)
    assert said and said[0] == (
        f"the float labels of {tmp_path}/raw.h5:raw hold unlabelled voxels (NaN or -666), which are -666 in the "
        "targets, but the loss node(s) 'se_plain' take them with ignore_value None, so they learn -666 as a target "
        "value; give them ignore_value=-666 (e.g. nm.SquaredLoss(pred, target, ignore_value=-666))")
    assert warnings(labels, ignoring) == []
    labels[0, 4, 10:20, 10:20] = -666
    assert warnings(labels, plain) == said
    assert warnings(labels, ignoring, loss_ignore_values=None)[0].endswith(
        "which are -666 in the targets; give the loss nodes that take them ignore_value=-666 (e.g. "
        "nm.SquaredLoss(pred, target, ignore_value=-666)): with their default ignore_value=None they learn -666 as a "
        "target value")
