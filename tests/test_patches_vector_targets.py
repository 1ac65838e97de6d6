"""Vector-field targets (target_vec_ix) and neighbourhood targets (nhood_targets) of the patch source.

The vector targets are checked against independent references: the gradient of a known quadratic
function, warped by rotations, reflections and axis swaps, must equal the gradient (finite
differences over the output grid, in physical units) of the warped function; under shear,
perspective and elastic warps the vectors must map back onto the source vectors through the local
Jacobian of the sampling coordinates (finite differences of the coordinates the sampler reads).
"""

import h5py
import numpy as np
import pytest

from ekn_core.errors import ConfigError
from ekn_plugins.augmenters import sampling
from ekn_plugins.augmenters.sampling import coordinates
from ekn_plugins.augmenters.transform import Transform, random_perspective, rotate, scale, voxel_matrix
from ekn_plugins.augmenters.vectors import displacement_gradient, vector_matrices
from ekn_plugins.data.batch_args import ekn_check_config
from ekn_plugins.data.image import NHOOD_TARGETS_3D, make_nhood_targets
from ekn_plugins.data.patches import IGNORE_VALUE, PatchSource

ANISO = 2.0
RAW_SHAPE, LAB_SHAPE = (24, 48, 48), (16, 40, 40)
Q = np.array([[0.02, 0.01, -0.005], [0.01, -0.03, 0.02], [-0.005, 0.02, 0.04]])  # f(X) = X·QX/2 + b·X
B = np.array([0.3, -0.2, 0.5])


def physical(s):
    """Source voxel coordinates (3, ...) of the label cube → physical (lateral-voxel) lengths."""
    return np.stack([ANISO * s[0], s[1], s[2]])


def f(s):
    x = physical(s)
    return 0.5 * np.einsum("i...,ij,j...->...", x, Q, x) + np.einsum("i,i...->...", B, x)


def grad_f(s):
    return np.einsum("ij,j...->i...", Q, physical(s)) + B[(slice(None),) + (None,) * (s.ndim - 1)]


def write_cube(path, ignore_at=None):
    """Labels: channels 0-2 the gradient of f (physical units), 3-5 each voxel's own coordinates."""
    s = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in LAB_SHAPE], indexing="ij"))
    labels = np.concatenate([grad_f(s), s]).astype(np.float32)
    if ignore_at is not None:
        labels[0][ignore_at] = IGNORE_VALUE  # an unlabelled z component
    with h5py.File(path / "raw.h5", "w") as h5:
        h5["raw"] = np.random.default_rng(0).integers(0, 255, RAW_SHAPE, dtype=np.uint8)
    with h5py.File(path / "lab.h5", "w") as h5:
        h5["lab"] = labels
    return dict(d_path=str(path), l_path=str(path), d_files=[("raw.h5", "raw")], l_files=[("lab.h5", "lab")])


def vector_source(files, augmenters, patch=(5, 14, 14), offsets=(1, 2, 2), strides=(1, 1, 1), **kwargs):
    """A source of the cube of :func:`write_cube`; every channel trilinear unless told otherwise."""
    return PatchSource(patch_size=patch, offsets=offsets, strides=strides, target_dtype="float32",
                       aniso_factor=ANISO, augmenters=augmenters, target_vec_ix=[(0, 1, 2)], seed=4,
                       **{"target_discrete_ix": [], **files, **kwargs})


ROTATIONS = {
    "rotate-z": [{"type": "warp", "rotation": 180, "shear": 0, "stretch": 0, "flip": False, "swap": False}],
    "rotate-3d": [{"type": "warp", "rotation": 180, "shear": 0, "stretch": 0, "lock_z": False}],
    "rotate-3d-iso": [{"type": "warp", "rotation": 180, "shear": 0, "stretch": 0, "lock_z": False,
                       "sample_aniso": False}],
    "flip-swap-zyx": [{"type": "flip", "swap": True, "lock_z": False}],
}


@pytest.mark.parametrize("strides", [(1, 1, 1), (1, 2, 2)], ids=["dense", "strided"])
@pytest.mark.parametrize("name", sorted(ROTATIONS))
def test_turned_gradients_are_the_gradients_of_the_turned_function(tmp_path, name, strides):
    """Anisotropic data (z sections twice as thick): the vectors are physical, so under any
    rotation, reflection and axis swap the turned gradient field is the gradient of the turned
    function in physical output units (z steps of the output: aniso_factor, or 1 when sampled
    isotropically)."""
    patch = (7, 17, 17) if strides == (1, 2, 2) else (5, 14, 14)
    src = vector_source(write_cube(tmp_path), ROTATIONS[name], patch=patch, strides=strides)
    _, target = src.getbatch(6)
    a_out = 1.0 if src.ctx.iso_output else ANISO
    spacing = (a_out * strides[0], strides[1], strides[2])
    turned = 0
    for t in target:
        s, v = t[3:].astype(np.float64), t[:3]
        reference = np.stack(np.gradient(f(s), *spacing))  # exact for a quadratic in the output coordinates
        inner = (slice(None), slice(1, -1), slice(1, -1), slice(1, -1))
        np.testing.assert_allclose(v[inner], reference[inner], rtol=0, atol=5e-5)
        turned += not np.allclose(v, grad_f(s), atol=1e-3)
    assert turned >= 4  # the vectors did turn (the field is not invariant)


def test_reflections_and_swaps_on_the_sliced_fast_path_turn_the_vectors(tmp_path, monkeypatch):
    """Flips and y↔x swaps are cut as slices (grid_slice), never interpolated: the vectors are
    reflected and swapped all the same."""
    def no_interpolation(*args, **kwargs):
        raise AssertionError("the fast path (grid_slice) should have cut this patch")

    monkeypatch.setattr(sampling, "_warp_scipy", no_interpolation)
    monkeypatch.setattr(sampling, "_warp_numba", no_interpolation)
    src = vector_source(write_cube(tmp_path), [{"type": "flip", "swap": True}])
    _, target = src.getbatch(8)
    seen = set()
    for t in target:
        s, v = t[3:].astype(np.float64), t[:3].astype(np.float64)
        corner = s[:, 0, 0, 0]
        steps = np.stack([s[:, 1, 0, 0] - corner, s[:, 0, 1, 0] - corner, s[:, 0, 0, 1] - corner], axis=1)
        source_to_out = np.linalg.inv(steps)  # a signed permutation: reflected / swapped axes
        np.testing.assert_allclose(v, np.einsum("ij,j...->i...", source_to_out, grad_f(s)), atol=1e-5)
        seen.add(tuple(np.round(source_to_out).astype(int).ravel()))
    assert len(seen) >= 4


@pytest.mark.parametrize("name", ["rotate-3d", "rotate-3d-iso"])
def test_validation_patches_keep_their_vectors(tmp_path, name):
    """Unwarped patches: a plain crop, or, when the pipeline samples isotropically, z resampled; the
    physical vectors stay as they are."""
    files = write_cube(tmp_path)
    files = {**files, "d_files": files["d_files"] * 2, "l_files": files["l_files"] * 2}
    src = vector_source(files, ROTATIONS[name], valid_cubes=[1])
    _, target = src.getbatch(3, source="valid")
    with h5py.File(tmp_path / "lab.h5", "r") as h5:
        labels = h5["lab"][()]
    for t in target:
        if src.ctx.iso_output:
            np.testing.assert_allclose(t[:3], grad_f(t[3:].astype(np.float64)), rtol=0, atol=1e-5)
            continue
        start = t[3:, 0, 0, 0].astype(int)
        crop = labels[(slice(None), *(slice(a, a + n) for a, n in zip(start, t.shape[1:])))]
        np.testing.assert_array_equal(t, crop)


def forward_check(target, a_out, mask=None):
    """Displacement-style reference: the output vector, in output voxels and mapped through the
    Jacobian of the sampling coordinates (central differences over the output grid), is the source
    vector in source voxels. Returns the largest deviation (relative to the vectors' size)."""
    worst = 0.0
    for t in target:
        s, v = t[3:].astype(np.float64), t[:3].astype(np.float64)
        jac = np.stack([(np.roll(s, -1, axis=1 + b) - np.roll(s, 1, axis=1 + b)) / 2 for b in range(3)], axis=1)
        out_voxels = v / np.array([a_out, 1, 1])[:, None, None, None]
        mapped = np.einsum("ab...,b...->a...", jac, out_voxels)
        source_voxels = grad_f(s) / np.array([ANISO, 1, 1])[:, None, None, None]
        inner = np.zeros(s.shape[1:], bool)
        inner[1:-1, 1:-1, 1:-1] = True
        inner &= True if mask is None else mask
        worst = max(worst, np.abs(mapped - source_voxels)[:, inner].max() / np.abs(source_voxels).max())
    return worst


def test_shear_and_stretch_carry_vectors_by_the_inverse_linear_part(tmp_path):
    src = vector_source(write_cube(tmp_path), [{"type": "warp", "rotation": 180, "shear": 0.15, "stretch": 0.15,
                                                "lock_z": False}])
    _, target = src.getbatch(6)
    assert forward_check(target, ANISO) < 1e-4


def test_elastic_warps_turn_vectors_by_the_local_jacobian(tmp_path):
    """Elastic spacing 9.7 (z: 4.85) puts no node plane on the integer output grid; central
    differences that stay inside one cell of the field are exact for its multilinear pieces."""
    patch, offsets = (9, 22, 22), (1, 2, 2)
    src = vector_source(write_cube(tmp_path), [{"type": "warp", "rotation": 180, "shear": 0.1, "stretch": 0.1},
                                               {"type": "elastic", "alpha": 2.0, "spacing": 9.7}],
                        patch=patch, offsets=offsets)
    _, target = src.getbatch(4)
    spacing = (9.7 / ANISO, 9.7, 9.7)
    grid = np.meshgrid(*[o + np.arange(p - 2 * o) for o, p in zip(offsets, patch)], indexing="ij")
    mask = np.ones(grid[0].shape, bool)
    for p, sp in zip(grid, spacing):
        mask &= np.floor((p - 1) / sp) == np.floor((p + 1) / sp)
    assert mask[1:-1, 1:-1, 1:-1].sum() > 100
    assert forward_check(target, ANISO, mask=mask) < 1e-4


@pytest.mark.parametrize("case", ["perspective", "elastic", "elastic-perspective-iso", "misaligned"])
def test_vector_matrices_invert_the_jacobian_of_the_sampling_coordinates(case):
    """Per output point, the matrices are A_out · J⁻¹ · A_src⁻¹ with J the Jacobian of the
    coordinates the sampler reads (finite differences of sampling.coordinates, off the node planes
    and section borders)."""
    rng = np.random.default_rng(1)
    linear = rotate(0, 0.4) @ rotate(1, 0.2)
    if "perspective" in case:
        linear = random_perspective(rng, 0.004, lock_z=False) @ linear
    kwargs = {}
    if "elastic" in case:
        kwargs = dict(displacement=rng.normal(0, 2.0, (3, 3, 4, 4)), spacing=(4.3, 7.1, 7.1))
    if case == "misaligned":
        kwargs = dict(slice_shift=rng.uniform(-3, 3, (8, 2)))
    transform = Transform(linear, iso_output="iso" in case, **kwargs)
    matrix = voxel_matrix(transform, (8, 20, 20), ANISO, start=(5, 9, 9))
    shape, origin, h = (4, 6, 6), (0.37, 0.41, 0.53), 1e-5
    ks = vector_matrices(transform, matrix, ANISO, shape, origin, (1.5, 2.5, 2.5))
    columns = []
    for b in range(3):
        plus, minus = (np.add(origin, np.eye(3)[b] * d) for d in (h, -h))
        args = dict(out_shape=shape, step=(1.5, 2.5, 2.5), **kwargs)
        columns.append((coordinates(matrix, origin=plus, **args) - coordinates(matrix, origin=minus, **args)) / (2 * h))
    jac = np.moveaxis(np.stack(columns, axis=1), (0, 1), (-2, -1))  # (*shape, 3, 3)
    a_out = np.diag([1.0 if transform.iso_output else ANISO, 1, 1])
    product = ks @ np.diag([ANISO, 1, 1]) @ jac @ np.linalg.inv(a_out)
    np.testing.assert_allclose(product, np.broadcast_to(np.eye(3), product.shape), atol=1e-6)
    if case == "misaligned":  # shifts turn nothing: one matrix, the linear part's inverse
        np.testing.assert_allclose(ks, np.linalg.inv(linear[:3, :3]), atol=1e-12)


def test_affine_vector_matrices_are_the_inverse_linear_part_in_physical_space():
    theta = 0.7
    rot = vector_matrices(Transform(rotate(0, theta)), np.eye(4), ANISO, (1, 1, 1))
    np.testing.assert_allclose(rot, rotate(0, -theta)[:3, :3], atol=1e-14)  # Rᵀ: content turned the other way
    free = rotate(2, 0.3) @ rotate(1, -1.1) @ rotate(0, theta)
    np.testing.assert_allclose(vector_matrices(Transform(free), np.eye(4), ANISO, (1, 1, 1)), free[:3, :3].T,
                               atol=1e-12)  # anisotropy does not enter: the vectors are physical
    flip = scale(-1, 1, -1)
    assert vector_matrices(Transform(flip), np.eye(4), ANISO, (1, 1, 1)).tolist() == np.diag([-1.0, 1, -1]).tolist()
    assert np.array_equal(vector_matrices(Transform.identity(iso_output=True), np.eye(4), ANISO, (1, 1, 1)), np.eye(3))


def test_displacement_gradient_matches_finite_differences_of_the_field():
    from ekn_plugins.augmenters.transform import displace

    rng = np.random.default_rng(2)
    field, spacing = rng.normal(0, 2, (3, 3, 4, 5)), (3.3, 5.1, 4.7)
    points = rng.uniform(-2, 20, (3, 200))  # also beyond the grid, where the field is constant
    h = 1e-6
    moved = [h * np.eye(3)[b][:, None] for b in range(3)]
    fd = np.stack([(displace(points + d, field, spacing) - displace(points - d, field, spacing)) / (2 * h)
                   for d in moved], axis=1)
    np.testing.assert_allclose(displacement_gradient(points, field, spacing), fd - np.eye(3)[:, :, None], atol=1e-6)


def test_a_vector_with_an_unlabelled_component_is_unlabelled_in_all_three(tmp_path):
    ignore_at = (slice(6, 9), slice(15, 25), slice(10, 30))
    src = vector_source(write_cube(tmp_path, ignore_at), ROTATIONS["rotate-3d"])
    _, target = src.getbatch(10)
    vectors = target[:, :3]
    unlabelled = vectors == IGNORE_VALUE
    assert unlabelled.any()
    assert np.array_equal(unlabelled.any(axis=1), unlabelled.all(axis=1))
    assert not np.any(target[:, 3:] == IGNORE_VALUE)  # the coordinate channels are not vectors


def test_vector_channels_default_to_trilinear_and_other_channels_to_nearest(tmp_path):
    files, rotation = write_cube(tmp_path), ROTATIONS["rotate-z"]
    _, target = vector_source(files, rotation, target_discrete_ix=None).getbatch(4, rng=np.random.default_rng(0))
    _, stated = vector_source(files, rotation, target_discrete_ix=[3, 4, 5]).getbatch(4, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(target, stated)
    coords = target[:, 3:]
    assert np.array_equal(coords, np.round(coords))  # not in target_vec_ix: nearest neighbour (the default)


def test_misused_vector_channels_are_config_errors(tmp_path):
    files = write_cube(tmp_path)
    cases = [
        (dict(target_vec_ix=[(0, 1)]), "list of channel triples"),
        (dict(target_vec_ix=[(0, 1, 2.5)]), "list of channel triples"),
        (dict(target_vec_ix=(0, 1, 2)), "list of channel triples"),
        (dict(target_vec_ix=[(4, 5, 6)]), r"beyond the 6 target channel\(s\) \(0..5\)"),
        (dict(target_vec_ix=[(0, 1, 2), (2, 3, 4)]), "names a channel twice"),
        (dict(target_vec_ix=[(0, 1, 2)], target_discrete_ix=[2, 3]), r"channels \[2\] are in target_vec_ix and in "
                                                                     "target_discrete_ix"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConfigError, match=message):
            PatchSource(patch_size=(5, 14, 14), offsets=(1, 2, 2), **{"target_dtype": "float32", **kwargs, **files})
    (tmp_path / "ids").mkdir()
    with pytest.raises(ConfigError, match="needs mode 'img-img' and a float target_dtype"):
        PatchSource(patch_size=(5, 14, 14), offsets=(1, 2, 2), target_dtype="int16", target_vec_ix=[(0, 1, 2)],
                    **id_files(tmp_path / "ids", channels=3))


# ------------------------------------------------------------------------------------------ nhood targets
def brute_force_nhood(target, nhood, fill):
    out = np.full((target.shape[0], len(nhood), *target.shape[2:]), fill, dtype=target.dtype)
    for b in range(target.shape[0]):
        for i, off in enumerate(nhood):
            for p in np.ndindex(*target.shape[2:]):
                q = np.subtract(p, off)
                if np.all(q >= 0) and np.all(q < target.shape[2:]):
                    out[(b, i, *p)] = target[(b, 0, *q)]
    return out


def test_make_nhood_targets_against_a_brute_force_loop():
    rng = np.random.default_rng(3)
    target = rng.integers(-2, 4, (2, 1, 4, 5, 6)).astype(np.int16)  # ids <= 0 are copied as they are
    nhood = np.concatenate([NHOOD_TARGETS_3D, [[2, -3, 1], [4, 0, 0], [0, -5, 0], [-1, 2, 6], [3, 4, 5]]])
    np.testing.assert_array_equal(make_nhood_targets(target, nhood), brute_force_nhood(target, nhood, -1))
    floats = rng.normal(size=(1, 1, 3, 4, 4))
    np.testing.assert_array_equal(make_nhood_targets(floats, nhood, fill=-666.0),
                                  brute_force_nhood(floats, nhood, -666.0))


def id_files(path, channels=2, dtype=np.int16):
    rng = np.random.default_rng(5)
    with h5py.File(path / "raw.h5", "w") as h5:
        h5["raw"] = rng.integers(0, 255, (14, 44, 44), dtype=np.uint8)
    with h5py.File(path / "ids.h5", "w") as h5:
        h5["lab"] = rng.integers(-1, 6, (channels, 10, 36, 36)).astype(dtype)
    return dict(d_path=str(path), l_path=str(path), d_files=[("raw.h5", "raw")], l_files=[("ids.h5", "lab")])


@pytest.mark.parametrize("force_dense", [False, True], ids=["strided", "dense"])
@pytest.mark.parametrize("nhood", [True, [[0, 0, 0], [0, 2, -1], [1, 0, 3]]], ids=["default", "given"])
def test_getbatch_nhood_targets_shift_the_dense_first_channel_then_stride(tmp_path, nhood, force_dense):
    src = PatchSource(patch_size=(6, 20, 20), offsets=(1, 4, 4), strides=(1, 2, 2), target_dtype="int16",
                      augmenters=[{"type": "warp", "rotation": 30}], seed=0, **id_files(tmp_path))
    _, dense = src.getbatch(3, force_dense=True, rng=np.random.default_rng(7))
    _, got = src.getbatch(3, force_dense=force_dense, nhood_targets=nhood, rng=np.random.default_rng(7))
    offsets = NHOOD_TARGETS_3D if nhood is True else np.array(nhood)
    reference = np.concatenate([brute_force_nhood(dense[:, :1], offsets, -1), dense[:, 1:]], axis=1)
    if not force_dense:
        reference = reference[:, :, :, ::2, ::2]
    np.testing.assert_array_equal(got, reference)
    assert got.shape[1] == len(offsets) + 1
    batch = src.getbatch(3, force_dense=force_dense, nhood_targets=nhood)
    assert src.batch_spec(3, force_dense=force_dense, nhood_targets=nhood) == [(a.shape, a.dtype) for a in batch]


def test_nhood_targets_of_float_targets_and_2d_nets(tmp_path):
    files = id_files(tmp_path, channels=1, dtype=np.float32)
    src = PatchSource(patch_size=(6, 20, 20), offsets=(1, 4, 4), target_dtype="float32", seed=0, **files)
    _, dense = src.getbatch(2, force_dense=True, rng=np.random.default_rng(1))
    _, got = src.getbatch(2, nhood_targets=[[0, 0, 1]], force_dense=True, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(got, brute_force_nhood(dense, [[0, 0, 1]], IGNORE_VALUE))  # the losses ignore it
    flat = PatchSource(patch_size=(20, 20), offsets=(4, 4), target_dtype="int16", seed=0, input_tags="b,f,y,x",
                       **id_files(tmp_path, channels=1))
    _, dense = flat.getbatch(2, rng=np.random.default_rng(2))
    _, got = flat.getbatch(2, nhood_targets=True, rng=np.random.default_rng(2))
    offsets = [[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1]]
    np.testing.assert_array_equal(got, brute_force_nhood(dense, offsets, -1))


def test_misused_nhood_targets_are_config_errors(tmp_path):
    src = PatchSource(patch_size=(6, 20, 20), offsets=(1, 4, 4), target_dtype="int16", seed=0, **id_files(tmp_path))
    for value in ([[0, 1]], [[0, 0, 0.5]], [[0, 1, 2], [3]], "all", []):
        with pytest.raises(ConfigError, match=r"whole-number offsets of shape \(n, 3\)"):
            src.getbatch(1, nhood_targets=value)
    unsigned = PatchSource(patch_size=(6, 20, 20), offsets=(1, 4, 4), target_dtype="uint8", seed=0,
                           **id_files(tmp_path, channels=1, dtype=np.uint8))
    with pytest.raises(ConfigError, match="a signed target_dtype"):
        unsigned.getbatch(1, nhood_targets=True)
    malis = PatchSource(patch_size=(6, 20, 20), offsets=(1, 4, 4), target_dtype="int16", affinities="malis", seed=0,
                        **id_files(tmp_path, channels=1))
    with pytest.raises(ConfigError, match="no affinities"):
        malis.getbatch(1, nhood_targets=True)
    (tmp_path / "v").mkdir()
    vectors = vector_source(write_cube(tmp_path / "v"), None)
    with pytest.raises(ConfigError, match="which target_vec_ix holds as a vector component"):
        vectors.getbatch(1, nhood_targets=True)


def test_the_config_check_accepts_nhood_targets():
    config = {"data_class": "BatchCreatorImage", "data_batch_args": {"warp": 0.5, "nhood_targets": True}}
    assert ekn_check_config(config) == []
