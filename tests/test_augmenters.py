"""Augmenters: resampling kernels against scipy, geometric properties, intensity ranges, config errors."""

import numpy as np
import pytest
from scipy import ndimage

from ekn_core.errors import ConfigError, UnknownPluginError
from ekn_plugins.augmenters import sampling
from ekn_plugins.augmenters import transform as T
from ekn_plugins.augmenters.base import PatchContext, Pipeline
from ekn_plugins.augmenters.defects import LowContrast, MissingSection
from ekn_plugins.augmenters.geometric import Elastic, Flip, Misalignment, Warp
from ekn_plugins.augmenters.intensity import Blur, Grey, Histogram, Noise, standard_normal

CTX = PatchContext((8, 16, 16), aniso_factor=2.0)
NUMBA = [pytest.param(True, marks=pytest.mark.skipif(not sampling.HAVE_NUMBA, reason="numba not installed")), False]


def crop_matrix(transform, patch, start, aniso=2.0):
    return T.voxel_matrix(transform, patch, aniso, start=start)


def random_source(rng, shape, order):
    """Random images (float32, order 1) or labels (int16, order 0) in 0..100."""
    src = rng.random(shape, dtype=np.float32) * 100
    return src if order else src.astype(np.int16)


@pytest.mark.parametrize("use_numba", NUMBA)
def test_affine_warp_matches_scipy_affine_transform(use_numba):
    rng = np.random.default_rng(0)
    src = rng.random((2, 20, 40, 40), dtype=np.float32)
    m = crop_matrix(T.Transform(T.random_rotation(rng, 0.7, True) @ T.random_affine(rng, 0.1, 0.1, True)),
                    (6, 16, 16), (7, 12, 12))
    out = sampling.warp(src, m, (6, 16, 16), order=1, use_numba=use_numba)
    for c in range(2):
        ref = ndimage.affine_transform(src[c].astype(np.float64), m[:3, :3], m[:3, 3], output_shape=(6, 16, 16),
                                       order=1, prefilter=False)
        np.testing.assert_allclose(out[c], ref, atol=1e-5)


@pytest.mark.skipif(not sampling.HAVE_NUMBA, reason="numba not installed")
@pytest.mark.parametrize("order", [0, 1])
def test_numba_kernel_matches_reference_with_all_parts(order):
    rng = np.random.default_rng(1)
    src = random_source(rng, (1, 30, 60, 60), order)
    t = T.Transform(T.random_rotation(rng, 3.0, True) @ T.random_perspective(rng, 0.002, True),
                    displacement=rng.normal(0, 2, (3, 3, 4, 5)), spacing=(4.0, 6.0, 5.0),
                    slice_shift=rng.normal(0, 1, (10, 2)))
    m = crop_matrix(t, (10, 24, 24), (10, 18, 18))
    kw = dict(order=order, origin=(1, 2, 3), step=(1, 2, 2), displacement=t.displacement, spacing=t.spacing,
              slice_shift=t.slice_shift)
    fast = sampling.warp(src, m, (8, 10, 10), use_numba=True, **kw)
    ref = sampling.warp(src, m, (8, 10, 10), use_numba=False, **kw)
    assert fast.dtype == (np.int16 if order == 0 else np.float32)
    np.testing.assert_allclose(fast, ref, atol=1e-3)


def test_reference_coordinates_against_brute_force():
    rng = np.random.default_rng(2)
    disp = rng.normal(0, 2, (3, 3, 3, 4))
    spacing = (3.0, 4.0, 3.0)
    shift = rng.normal(0, 1, (7, 2))
    m = T.random_perspective(rng, 0.01, False) @ T.translate(1, 2, 3)
    crd = sampling.coordinates(m, (3, 4, 5), origin=(1, 0, 2), step=(2, 3, 1), displacement=disp, spacing=spacing,
                               slice_shift=shift)
    for idx in [(0, 0, 0), (2, 3, 4), (1, 2, 3)]:
        p = np.array([1, 0, 2]) + np.array([2, 3, 1]) * np.array(idx)
        g = np.minimum(p / spacing, np.array(disp.shape[1:]) - 1)  # trilinear, clamped at the grid edge
        lo = np.minimum(np.floor(g).astype(int), np.array(disp.shape[1:]) - 2)
        f = g - lo
        d = np.zeros(3)
        for corner in np.ndindex(2, 2, 2):
            w = np.prod([f[a] if corner[a] else 1 - f[a] for a in range(3)])
            d += w * disp[(slice(None), *(lo + corner))]
        q = p + d + np.r_[0, shift[p[0]]]
        h = m @ np.r_[q, 1]
        np.testing.assert_allclose(crd[(slice(None), *idx)], h[:3] / h[3], rtol=1e-10)


def test_flip_twice_is_identity_and_rot90():
    rng = np.random.default_rng(3)
    img = rng.random((1, 5, 12, 12), dtype=np.float32)
    for _ in range(8):  # a random reflection applied twice gives the input back exactly
        t = Flip(swap=False).transform(rng, CTX)
        m = crop_matrix(t, (5, 12, 12), (0, 0, 0))
        np.testing.assert_array_equal(sampling.warp(sampling.warp(img, m, (5, 12, 12)), m, (5, 12, 12)), img)
        t = Flip().transform(rng, CTX)  # with a y/x swap: the inverse transform undoes it
        inv = T.Transform(np.linalg.inv(t.linear))
        once = sampling.warp(img, crop_matrix(t, (5, 12, 12), (0, 0, 0)), (5, 12, 12))
        np.testing.assert_array_equal(sampling.warp(once, crop_matrix(inv, (5, 12, 12), (0, 0, 0)), (5, 12, 12)), img)
    flips = T.Transform(T.scale(1, -1, 1))
    m = crop_matrix(flips, (5, 12, 12), (0, 0, 0))
    np.testing.assert_array_equal(sampling.warp(img, m, (5, 12, 12)), img[:, :, ::-1])
    rot = T.Transform(T.rotate(0, np.pi / 2))
    out = sampling.warp(img, crop_matrix(rot, (5, 12, 12), (0, 0, 0)), (5, 12, 12))
    np.testing.assert_allclose(out, np.rot90(img, k=1, axes=(3, 2)), atol=1e-5)


def test_label_sets_preserved_by_warps():
    rng = np.random.default_rng(4)
    labels = rng.choice(np.array([0, 3, 7, 1000], np.int32), size=(1, 16, 40, 40))
    pipe = Pipeline([{"type": "warp", "perspective": 0.002}, {"type": "elastic", "alpha": 3, "spacing": 8},
                     {"type": "misalignment", "probability": 1.0}])
    for _ in range(4):
        t = pipe.sample_transform(rng, PatchContext((8, 16, 16), 2.0))
        out = sampling.warp(labels, crop_matrix(t, (8, 16, 16), (4, 12, 12)), (8, 16, 16), order=0,
                            displacement=t.displacement, spacing=t.spacing, slice_shift=t.slice_shift)
        assert out.dtype == np.int32 and set(np.unique(out)) <= {0, 3, 7, 1000}


def test_transforms_are_deterministic_for_a_seed():
    pipe = Pipeline([{"type": "warp"}, {"type": "elastic"}, {"type": "misalignment", "mode": "slip"}, {"type": "noise"}])
    img = np.zeros((1, 8, 16, 16), np.float32)
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    ta, tb = pipe.sample_transform(a, CTX), pipe.sample_transform(b, CTX)
    np.testing.assert_array_equal(ta.linear, tb.linear)
    np.testing.assert_array_equal(ta.displacement, tb.displacement)
    np.testing.assert_array_equal(pipe.augment_image(img.copy(), a, CTX), pipe.augment_image(img.copy(), b, CTX))


def test_warp_parts_respect_lock_z_and_aniso():
    rng = np.random.default_rng(6)
    for _ in range(10):
        lin = Warp(perspective=0.002).transform(rng, CTX).linear
        assert abs(abs(lin[0, 0]) - 1) < 1e-12 and np.allclose(lin[0, 1:3], 0) and np.allclose(lin[1:3, 0], 0)
        assert lin[3, 0] == 0
    t = Elastic(alpha=2.0, spacing=8, lock_z=True).transform(rng, CTX)
    assert np.all(t.displacement[0] == 0) and t.spacing == (4.0, 8.0, 8.0)
    shift = Misalignment(max_shift=3, mode="slip", probability=1).transform(rng, CTX).slice_shift
    assert (np.abs(shift).sum(axis=1) > 0).sum() == 1 and np.abs(shift).max() <= 3
    assert Warp(sample_aniso=False).transform(rng, CTX).iso_output


def test_intensity_ranges():
    rng = np.random.default_rng(7)
    img = rng.random((2, 6, 16, 16), dtype=np.float32)
    out = Grey(channels=[1])(img.copy(), rng, CTX)
    np.testing.assert_array_equal(out[0], img[0])
    assert 0 <= out.min() and out.max() <= 1
    for _ in range(5):
        h = Histogram(strength=0.4)(img.copy(), rng, CTX)
        assert 0 <= h.min() and h.max() <= 1
        order = np.argsort(img[0].ravel())
        assert np.all(np.diff(h[0].ravel()[order]) >= -1e-6)  # monotone tone curve keeps grey-value order
    n = Noise(std=0.2)(np.zeros((1, 20, 50, 50), np.float32), rng, CTX)
    assert abs(n.std() - 0.2) < 0.01 and abs(n.mean()) < 0.01
    u = Noise(std=0.2, distribution="uniform", clip=True)(np.full((1, 20, 50, 50), 0.5, np.float32), rng, CTX)
    assert abs(u.std() - 0.2) < 0.01 and u.max() <= 0.5 + 0.2 * np.sqrt(3) + 1e-6
    b = Blur(sigma=(1.0, 1.0))(img.copy(), rng, CTX)
    assert b.std() < img.std() and abs(b.mean() - img.mean()) < 0.01
    np.testing.assert_allclose(b[0], ndimage.gaussian_filter(img[0], (0.5, 1, 1), mode="reflect"), atol=1e-6)


def test_noise_samples_follow_scipys_distributions_and_the_seed():
    """The Box–Muller normal (odd size) against scipy's: KS distance, moments, tails, and the two
    samples of each pair uncorrelated (also their squares); the uniform noise against scipy's
    uniform; the same seed gives the same noise, another seed other noise."""
    from scipy import stats

    z = standard_normal(np.random.default_rng(12), (2001, 1001))
    assert z.dtype == np.float32 and z.shape == (2001, 1001)
    flat = z.ravel().astype(np.float64)
    n = flat.size
    assert stats.kstest(flat, "norm").statistic < 1.5e-3  # 5 % critical value 1.36 / sqrt(n) = 9.6e-4
    assert abs(flat.mean()) < 3e-3 and abs(flat.std() - 1) < 2e-3
    assert abs(stats.skew(flat)) < 1e-2 and abs(stats.kurtosis(flat)) < 2e-2
    for k, tol in ((2, 0.03), (3, 0.06), (4, 0.4)):
        want = 2 * stats.norm.sf(k) * n
        assert abs((np.abs(flat) > k).sum() - want) < tol * want, k
    m = (n + 1) // 2  # sample i and i + m come from one draw
    for a, b in ((flat[:n - m], flat[m:]), (flat[:n - m] ** 2, flat[m:] ** 2), (flat[:-1], flat[1:])):
        assert abs(np.corrcoef(a, b)[0, 1]) < 5e-3
    np.testing.assert_array_equal(standard_normal(np.random.default_rng(12), (2001, 1001)), z)
    assert not np.array_equal(standard_normal(np.random.default_rng(13), (5, 7)),
                              standard_normal(np.random.default_rng(12), (5, 7)))
    half = 0.2 * np.sqrt(3)
    u = Noise(std=0.2, distribution="uniform")(np.zeros((1, 20, 100, 100), np.float32), np.random.default_rng(3), CTX)
    assert -half <= u.min() and u.max() < half
    assert stats.kstest(u.ravel().astype(np.float64), stats.uniform(-half, 2 * half).cdf).statistic < 5e-3
    g = Noise(std=0.2)(np.zeros((1, 20, 100, 100), np.float32), np.random.default_rng(3), CTX)
    assert stats.kstest(g.ravel().astype(np.float64), stats.norm(0, 0.2).cdf).statistic < 5e-3


def test_defects():
    rng = np.random.default_rng(8)
    img = rng.random((1, 10, 8, 8), dtype=np.float32)
    out = MissingSection(max_sections=3, fill=0.0, probability=1)(img.copy(), rng, CTX)
    blank = np.all(out[0] == 0, axis=(1, 2))
    assert 1 <= blank.sum() <= 3 and np.array_equal(out[0, ~blank], img[0, ~blank])
    low = LowContrast(factor=(0.5, 0.5), probability=1)(img.copy(), rng, CTX)
    z = np.flatnonzero(np.any(low[0] != img[0], axis=(1, 2)))
    assert len(z) == 1
    np.testing.assert_allclose(low[0, z].std(), 0.5 * img[0, z].std(), rtol=1e-4)
    np.testing.assert_allclose(low[0, z].mean(), img[0, z].mean(), atol=1e-5)


def test_config_errors():
    with pytest.raises(ConfigError, match="no option"):
        Pipeline([{"type": "noise", "sigma": 1}])
    with pytest.raises(UnknownPluginError, match="warp"):
        Pipeline([{"type": "wrap"}])
    with pytest.raises(ConfigError, match="type"):
        Pipeline([{"std": 1}])
    with pytest.raises(ConfigError, match="probability"):
        Noise(probability=2)
    with pytest.raises(ConfigError, match="only one"):
        Pipeline([{"type": "elastic"}, {"type": "elastic"}]).sample_transform(np.random.default_rng(0), CTX)
    with pytest.raises(ConfigError, match="channels"):
        Grey(channels=[3])(np.zeros((1, 2, 2, 2), np.float32), np.random.default_rng(0), CTX)


def test_warp_check_bounds_the_perspective_where_patches_fold():
    ctx = PatchContext((5, 41, 41), aniso_factor=2.0)  # centred isotropic half extents: z 4, y 20, x 20
    plain = dict(rotation=0, shear=0, stretch=0)

    def folds(warp, n=300):
        count = 0
        for seed in range(n):
            m = T.voxel_matrix(warp.transform(np.random.default_rng(seed), ctx), ctx.patch_shape, ctx.aniso_factor)
            try:
                T.source_bounds(m, (0, 0, 0), np.array(ctx.patch_shape) - 1)
            except T.FoldError:
                count += 1
        return count

    below, above = Warp(perspective=0.024, **plain), Warp(perspective=0.03, **plain)
    below.check(ctx)
    assert folds(below) == 0
    with pytest.raises(ConfigError, match=r"perspective\*amount = 0.03 folds .* from 1/40 = 0.025 on"):
        above.check(ctx)
    assert folds(above) > 0  # brute force: such draws really fold some patches
    with pytest.raises(ConfigError, match="from 1/40 = 0.025 on"):
        Warp(perspective=0.0125, amount=2).check(ctx)
    Warp(perspective=0.0235, lock_z=False, sample_aniso=False).check(ctx)  # isotropic output: z half extent 2, 1/42
    with pytest.raises(ConfigError, match="from 1/44 = "):
        Warp(perspective=0.0235, lock_z=False).check(ctx)


@pytest.mark.parametrize("use_numba", NUMBA)
def test_section_shifts_beyond_the_patch_take_the_nearest_sections_shift(use_numba):
    """A target grid one section beyond the patch on each side (negative z offsets): sections -1
    and 6 take the shifts of sections 0 and 5, never another section's or memory past the array."""
    src = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in (20, 40, 40)], indexing="ij"))
    shift = np.zeros((6, 2))
    shift[3:] = (2.0, -3.0)  # 'shift' mode from section 3 on
    m = np.eye(4)
    m[:3, 3] = (5, 10, 10)
    out = sampling.warp(src, m, (8, 4, 4), order=1, origin=(-1, 0, 0), slice_shift=shift, use_numba=use_numba)
    np.testing.assert_array_equal(out[1, :, 0, 0] - 10, [0, 0, 0, 0, 2, 2, 2, 2])
    np.testing.assert_array_equal(out[2, :, 0, 0] - 10, [0, 0, 0, 0, -3, -3, -3, -3])
    np.testing.assert_array_equal(out[0, :, 0, 0], np.arange(4, 12))


@pytest.mark.parametrize("order", [0, 1])
def test_reflections_and_swaps_are_copied_as_slices_with_the_kernels_values(order):
    rng = np.random.default_rng(9)
    src = random_source(rng, (2, 24, 24, 24), order)
    seen = set()
    for _ in range(12):
        lin = T.random_reflection(rng, (0, 1, 2)) @ T.random_swap(rng, lock_z=bool(rng.random() < 0.5))
        m = T.voxel_matrix(T.Transform(lin), (8, 12, 12), 1.0, start=rng.integers(0, 10, 3))
        kw = dict(order=order, origin=(1, 2, 2), step=(1, 2, 3))
        sliced = sampling.grid_slice(m, (6, 5, 3), src.shape[1:], kw["origin"], kw["step"])
        assert sliced is not None
        seen.add(sliced[0])
        fast = sampling.warp(src, m, (6, 5, 3), **kw)
        ref = np.empty_like(fast)
        sampling._warp_scipy(src, m, (6, 5, 3), order, kw["origin"], kw["step"], None, None, None, ref)
        assert fast.dtype == ref.dtype
        np.testing.assert_array_equal(fast, ref)  # bit-identical to the interpolating kernel
    assert len(seen) > 2  # several axis orders
    rot = T.voxel_matrix(T.Transform(T.rotate(0, 0.3)), (8, 12, 12), 1.0, start=(2, 9, 9))
    shifted = np.zeros((8, 2)); shifted[4:] = 1.0
    assert sampling.grid_slice(rot, (8, 12, 12), src.shape[1:]) is None
    assert sampling.grid_slice(np.eye(4), (8, 12, 12), src.shape[1:], origin=(0.5, 0, 0)) is None
    assert sampling.grid_slice(np.eye(4), (30, 12, 12), src.shape[1:]) is None  # would read past the array
    moved = sampling.warp(src.astype(np.float32), np.eye(4), (8, 12, 12), slice_shift=shifted)  # interpolated
    np.testing.assert_array_equal(moved[:, 4:], src[:, 4:8, 1:13, 1:13])


def test_reach_is_the_box_of_every_displaced_and_shifted_point():
    rng = np.random.default_rng(10)
    for trial in range(6):
        mode = ("slip", "shift")[trial % 2]
        pipe = Pipeline([{"type": "elastic", "alpha": 3, "spacing": 8},
                         {"type": "misalignment", "probability": 1.0, "max_shift": 4, "mode": mode}])
        t = pipe.sample_transform(rng, PatchContext((7, 31, 31), 2.0))
        for origin, step, shape in (((0, 0, 0), (1, 1, 1), (7, 31, 31)), ((-1, 3, 5), (1, 2, 3), (9, 13, 9))):
            axes = [o + s * np.arange(n) for o, s, n in zip(origin, step, shape)]
            q = T.displace(np.stack(np.meshgrid(*axes, indexing="ij")), t.displacement, t.spacing, t.slice_shift)
            lo, hi = t.reach(origin, step, shape)
            brute_lo, brute_hi = q.reshape(3, -1).min(axis=1), q.reshape(3, -1).max(axis=1)
            assert np.all(lo <= brute_lo + 1e-9) and np.all(hi >= brute_hi - 1e-9)
            if step == (1, 1, 1):  # the grid holds every node of the coarse grid: exact
                np.testing.assert_allclose(lo, brute_lo, atol=1e-9)
                np.testing.assert_allclose(hi, brute_hi, atol=1e-9)
            margin = np.abs(t.displacement).reshape(3, -1).max(axis=1) + np.r_[0, np.abs(t.slice_shift).max(axis=0)]
            assert np.all(hi - lo < np.asarray(shape) * step + 2 * margin)  # tighter than a global margin


def test_histogram_tone_curve_against_brute_force():
    x = np.linspace(0, 1, 1001, dtype=np.float32).reshape(1, 1, 1, -1)
    for strength, n_points in ((0.4, 4), (0.4, 19), (0.05, 1)):
        aug, largest = Histogram(strength=strength, n_points=n_points), 0.0
        nodes = np.linspace(0, 1, n_points + 2)
        for seed in range(200):
            ys = aug.curve(np.random.default_rng(seed))
            out = aug(x.copy(), np.random.default_rng(seed), CTX)
            np.testing.assert_allclose(out[0, 0, 0], np.interp(x[0, 0, 0], nodes, ys), atol=2e-6)
            largest = max(largest, float(np.abs(ys - nodes).max()))
            assert np.all(np.diff(ys) > 0)
        assert 0.9 * strength < largest <= strength + 1e-5  # nodes move by up to `strength` grey values
    img = np.random.default_rng(1).random((2, 3, 4, 4), dtype=np.float32)
    out = Histogram(strength=0.3, channels=[1])(img.copy(), np.random.default_rng(2), CTX)
    np.testing.assert_array_equal(out[0], img[0])
    assert np.abs(out[1] - img[1]).max() > 0.01


def test_missing_sections_are_uniform_and_refused_for_2d_patches():
    rng = np.random.default_rng(11)
    counts = np.zeros(10)
    aug = MissingSection(max_sections=2, fill=-1.0, probability=1)
    for _ in range(3000):
        out = aug(np.zeros((1, 10, 2, 2), np.float32), rng, CTX)
        counts += np.all(out[0] == -1, axis=(1, 2))
    expected = 3000 * 1.5 / 10  # 1 or 2 sections, each section equally likely
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 27.9  # chi-squared, 9 degrees of freedom, p = 0.001
    iso = PatchContext((10, 4, 4), aniso_factor=2.0, iso_output=True)  # a data section is 2 output sections
    for _ in range(20):
        out = MissingSection(probability=1)(np.ones((1, 10, 4, 4), np.float32), rng, iso)
        blank = np.flatnonzero(np.all(out[0] == 0, axis=(1, 2)))
        assert len(blank) == 2 and blank[0] % 2 == 0 and blank[1] == blank[0] + 1
    with pytest.raises(ConfigError, match="missing_section: the patches are one section thick"):
        Pipeline([{"type": "missing_section"}]).check(PatchContext((1, 64, 64)))


def test_isotropic_output_makes_elastic_and_blur_isotropic_in_physical_units():
    for sample_aniso in (True, False):
        pipe = Pipeline([{"type": "warp", "rotation": 0, "shear": 0, "stretch": 0, "flip": False, "swap": False,
                          "sample_aniso": sample_aniso, "probability": 0.0},
                         {"type": "elastic", "alpha": 3, "spacing": 8}])
        ctx = pipe.context((9, 33, 33), 2.0)
        assert ctx.iso_output is (not sample_aniso)
        dz, dy = [], []
        for seed in range(150):
            t = pipe.sample_transform(np.random.default_rng(seed), ctx)
            assert t.iso_output is (not sample_aniso)  # also when the warp does not act
            m = T.voxel_matrix(t, ctx.patch_shape, ctx.aniso_factor)
            moved = sampling.coordinates(m, ctx.patch_shape, displacement=t.displacement, spacing=t.spacing)
            still = sampling.coordinates(m, ctx.patch_shape)
            dz.append((moved[0] - still[0]).ravel() * ctx.aniso_factor)  # source z voxels → lateral units
            dy.append((moved[1] - still[1]).ravel())
        assert abs(np.std(np.concatenate(dz)) / np.std(np.concatenate(dy)) - 1) < 0.1
        img = np.random.default_rng(1).random((1, 9, 20, 20), dtype=np.float32)
        blurred = Blur(sigma=1.0)(img.copy(), np.random.default_rng(0), ctx)
        z_sigma = 0.5 if sample_aniso else 1.0
        np.testing.assert_allclose(blurred[0], ndimage.gaussian_filter(img[0], (z_sigma, 1, 1), mode="reflect"),
                                   atol=1e-6)
        for seed in range(10):  # a slipped data section is 1 output section thick, or 2 with isotropic output
            shift = Misalignment(mode="slip", probability=1).transform(np.random.default_rng(seed), ctx).slice_shift
            slipped = np.flatnonzero(np.abs(shift).sum(axis=1))
            assert len(slipped) == min(1 if sample_aniso else 2, 9 - slipped[0])


def test_scalar_options_and_clear_option_errors():
    assert Blur(sigma=1.0).sigma == (1.0, 1.0) and LowContrast(factor=0.5).factor == (0.5, 0.5)
    assert Flip(axes=2).axes == (2,) and Grey(channels=0).channels == [0]
    for spec, message in [
        ({"type": "warp", "rotation": "30"}, "warp: rotation must be a number, got '30'"),
        ({"type": "blur", "sigma": "wide"}, r"blur: sigma must be a number or a \(low, high\) range"),
        ({"type": "low_contrast", "factor": (0.6, 0.2)}, r"low_contrast: factor must be .* got \(0.6, 0.2\)"),
        ({"type": "flip", "axes": "zy"}, "flip: axes must be an index or a list of indices"),
        ({"type": "noise", "std": None}, "noise: std must be a number, got None"),
        ({"type": "histogram", "n_points": 2.5}, "histogram: n_points must be a whole number"),
        ({"type": "grey", "channels": "0"}, "Grey: channels must be an index or a list of indices"),
        ({"type": "elastic", "alpha": -1}, "elastic: alpha must be a number >= 0, got -1"),
    ]:
        with pytest.raises(ConfigError, match=message):
            Pipeline([spec])


def test_flip_permutes_all_axes_without_lock_z():
    rng = np.random.default_rng(12)
    orders = {tuple(np.abs(Flip(lock_z=False).transform(rng, CTX).linear[:3, :3]).argmax(axis=1)) for _ in range(200)}
    assert len(orders) == 6
    orders = {tuple(np.abs(Flip().transform(rng, CTX).linear[:3, :3]).argmax(axis=1)) for _ in range(100)}
    assert orders == {(0, 1, 2), (0, 2, 1)}
