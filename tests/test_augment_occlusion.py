"""Random erasing and blurry blobs (ELEKTRONN2's occlusion augmentations) and ELEKTRONN2's getbatch
arguments for them: boxes against brute force, fills, anisotropy, 2-D patches, option errors."""

import h5py
import numpy as np
import pytest
from scipy import ndimage

from ekn_core.errors import ConfigError
from ekn_plugins.augmenters.base import PatchContext
from ekn_plugins.augmenters.occlusion import BlurryBlobs, RandomErasing
from ekn_plugins.data.batch_args import ekn_check_config
from ekn_plugins.data.elektronn2_nga import NOISE_STD
from ekn_plugins.data.patches import PatchSource, elektronn2_pipeline

CONTEXTS = {"aniso": PatchContext((7, 24, 20), 2.0), "iso-output": PatchContext((7, 24, 20), 2.0, iso_output=True),
            "2d": PatchContext((1, 24, 20), 1.0)}


def changed_box(before, after):
    """The bounding box ``(z, y, x)`` extents of the voxels that differ (any channel)."""
    where = np.nonzero(np.any(before != after, axis=0))
    return tuple(int(w.max() - w.min() + 1) for w in where), tuple(slice(w.min(), w.max() + 1) for w in where)


@pytest.mark.parametrize("name", sorted(CONTEXTS))
def test_erased_voxels_are_those_of_a_brute_force_redraw(name):
    ctx = CONTEXTS[name]
    image = np.random.default_rng(7).random((2, *ctx.patch_shape), dtype=np.float32)
    aug = RandomErasing(fill=5.0, count=(2, 4), size=(3, 12))
    for seed in range(20):
        out = aug(image.copy(), np.random.default_rng(seed), ctx)
        rng, want = np.random.default_rng(seed), np.zeros(ctx.patch_shape, bool)  # the same draws, voxel by voxel
        for _ in range(rng.integers(2, 5)):
            side = rng.integers(3, 13)
            extent = [min(max(1, round(side / ctx.output_aniso)), ctx.patch_shape[0]),
                      min(side, ctx.patch_shape[1]), min(side, ctx.patch_shape[2])]
            corner = rng.integers(0, np.array(ctx.patch_shape) - extent + 1)
            for voxel in np.ndindex(*ctx.patch_shape):
                if all(c <= v < c + e for v, c, e in zip(voxel, corner, extent)):
                    want[voxel] = True
        for c in range(2):
            np.testing.assert_array_equal(out[c] == 5.0, want)
            np.testing.assert_array_equal(out[c][~want], image[c][~want])


@pytest.mark.parametrize("ctx, size, extent", [
    (PatchContext((9, 30, 30), 3.0), 12, (4, 12, 12)),  # 12 lateral voxels are 4 sections of 3
    (PatchContext((14, 30, 30), 3.0, iso_output=True), 12, (12, 12, 12)),  # isotropic output: a cube in voxels
    (PatchContext((1, 30, 30), 1.0), 12, (1, 12, 12)),  # 2-D patches: one section
    (PatchContext((5, 20, 30), 2.0), 25, (5, 20, 25)),  # larger than the patch: cut to it
])
def test_a_box_is_a_cube_in_physical_units_cut_to_the_patch(ctx, size, extent):
    image = np.zeros((1, *ctx.patch_shape), np.float32)
    for aug in (RandomErasing(fill=1.0, count=1, size=size), BlurryBlobs(sigma=2.0, count=1, size=size)):
        for seed in range(5):
            rng = np.random.default_rng(seed)
            noisy = image + rng.random(image.shape, dtype=np.float32)  # blurring changes every voxel of noise
            out = aug(noisy.copy(), rng, ctx)
            assert changed_box(noisy, out)[0] == extent


def test_box_positions_are_uniform_among_those_that_fit():
    shape, side, n = (1, 12, 9), 5, 6000
    aug, ctx = RandomErasing(fill=1.0, count=1, size=side), PatchContext(shape)
    rng = np.random.default_rng(0)
    covered = sum(aug(np.zeros((1, *shape), np.float32), rng, ctx)[0, 0] for _ in range(n)) / n

    def coverage(length):  # chance that position i lies in a box whose start is uniform in [0, length - side]
        starts = np.arange(length - side + 1)
        return np.array([np.mean((starts <= i) & (i < starts + side)) for i in range(length)])

    want = np.outer(coverage(shape[1]), coverage(shape[2]))
    assert np.abs(covered - want).max() < 4 * np.sqrt(want * (1 - want) / n).max()


def test_fills_mean_and_noise_and_channels():
    ctx = PatchContext((4, 16, 16), 1.0)
    image = np.random.default_rng(0).random((3, 4, 16, 16), dtype=np.float32) * np.float32([[[[1]]], [[[2]]], [[[3]]]])
    out = RandomErasing(fill="mean", count=3, size=6, channels=[0, 2])(image.copy(), np.random.default_rng(1), ctx)
    np.testing.assert_array_equal(out[1], image[1])
    for c in (0, 2):  # the channel's mean before erasing, also where boxes overlap
        assert set(out[c][out[c] != image[c]].tolist()) == {float(image[c].mean())}
    whole = RandomErasing(fill="noise", noise_range=(0.2, 0.6), count=1, size=40)
    noise = whole(image.copy(), np.random.default_rng(2), ctx)  # the whole patch, each channel its own noise
    assert noise.min() >= 0.2 and noise.max() <= 0.6
    assert abs(noise.mean() - 0.4) < 0.01 and abs(noise.std() - 0.4 / np.sqrt(12)) < 0.005
    assert abs(np.corrcoef(noise[0].ravel(), noise[1].ravel())[0, 1]) < 0.1


def test_a_blurry_blob_is_its_box_blurred_alone():
    ctx = PatchContext((8, 30, 30), 2.0)
    image = np.random.default_rng(0).random((2, 8, 30, 30), dtype=np.float32)
    for seed in range(5):
        out = BlurryBlobs(sigma=1.5, count=1, size=10)(image.copy(), np.random.default_rng(seed), ctx)
        extent, box = changed_box(image, out)
        assert extent == (5, 10, 10)
        for c in range(2):
            want = ndimage.gaussian_filter(image[c][box], (0.75, 1.5, 1.5), mode="reflect")
            np.testing.assert_allclose(out[c][box], want, atol=1e-6)
    sigmas = np.arange(0.5, 3.55, 0.05)  # a blob's sigma, found by trying: uniform in the range, drawn for each blob
    fitted = []
    for seed in range(20):
        out = BlurryBlobs(sigma=(1, 3), count=1, size=10)(image.copy(), np.random.default_rng(seed), ctx)
        box = changed_box(image, out)[1]
        errors = [np.abs(out[0][box] - ndimage.gaussian_filter(image[0][box], (s / 2, s, s))).max() for s in sigmas]
        fitted.append(sigmas[np.argmin(errors)])
    assert 0.95 <= min(fitted) and max(fitted) <= 3.05 and np.std(fitted) > 0.35
    blobs = BlurryBlobs(sigma=(1, 5), count=(5, 14))(image.copy(), np.random.default_rng(1), ctx)
    changed = blobs != image
    assert changed.any() and np.abs(np.diff(blobs, axis=-1)).mean() < np.abs(np.diff(image, axis=-1)).mean()


def test_deterministic_for_a_seed_and_labels_untouched_through_the_pipeline():
    from ekn_plugins.augmenters.base import Pipeline

    pipe = Pipeline([{"type": "random_erasing", "fill": "noise", "probability": 1.0},
                     {"type": "blurry_blobs", "probability": 1.0}])
    image, ctx = np.random.default_rng(0).random((1, 6, 40, 40), dtype=np.float32), PatchContext((6, 40, 40), 2.0)
    runs = [pipe.augment_image(image.copy(), np.random.default_rng(seed), ctx) for seed in (3, 3, 4)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2]) and not np.array_equal(runs[0], image)


@pytest.mark.parametrize("cls, kwargs, message", [
    (RandomErasing, {"fill": "zero"}, "random_erasing: fill must be a number, 'mean' or 'noise', got 'zero'"),
    (RandomErasing, {"fill": [0]}, "random_erasing: fill must be a number, got [0]"),
    (RandomErasing, {"noise_range": (0, 1)}, "random_erasing: noise_range is used only with fill='noise'"),
    (RandomErasing, {"fill": "noise", "noise_range": (1, 0)}, "random_erasing: noise_range must be a number or"),
    (RandomErasing, {"size": (0, 4)}, "random_erasing: size must be a whole number >= 1 or a (low, high) range"),
    (RandomErasing, {"count": 2.5}, "random_erasing: count must be a whole number >= 0"),
    (BlurryBlobs, {"sigma": -1}, "blurry_blobs: sigma must be a number or a (low, high) range"),
    (BlurryBlobs, {"count": (3, 2)}, "blurry_blobs: count must be a whole number >= 0"),
    (BlurryBlobs, {"probability": 2}, "BlurryBlobs: probability must be in"),
], ids=["fill-name", "fill-type", "noise-range-unused", "noise-range", "size", "count", "sigma", "count-range",
        "probability"])
def test_option_errors_name_augmenter_and_option(cls, kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        cls(**kwargs)


def test_elektronn2_arguments_build_the_augmenters_in_its_order():
    pipe = elektronn2_pipeline(True, {}, [0], nga_blur_noise_probability=True, blurry_blobs_probability=0.3,
                               blurry_blobs_args={"diffuseness": 2, "num_blob_range": (3, 6),
                                                  "blob_size_range": (8, 12)},
                               noisy_random_erasing_probability=0.2, noisy_random_erasing_args={"noise_range": (0, .5)},
                               uniform_random_erasing_probability=0.1, uniform_random_erasing_args={"value": 0.25})
    flip, warp, grey, noise, blobs, uniform, noisy = pipe.augmenters
    assert [type(a).__name__ for a in (noise, blobs, uniform, noisy)] == ["Noise", "BlurryBlobs", "RandomErasing",
                                                                          "RandomErasing"]
    assert (noise.distribution, noise.probability) == ("uniform", 1.0)
    assert (blobs.sigma, blobs.count, blobs.size, blobs.probability) == ((2.0, 2.0), (3, 5), (8, 11), 0.3)
    assert (uniform.fill, uniform.count, uniform.size, uniform.probability) == (0.25, (5, 14), (10, 31), 0.1)
    assert (noisy.fill, noisy.noise_range, noisy.probability) == ("noise", (0.0, 0.5), 0.2)
    random_sigma = elektronn2_pipeline(blurry_blobs_probability=1, blurry_blobs_args={"diffuseness": None})
    assert random_sigma.augmenters[-1].sigma == (1.0, 5.0)  # ELEKTRONN2: a random diffuseness in 1..5
    elektronn2 = 0.15 * (np.random.default_rng(0).random(200000) - 0.5)  # ELEKTRONN2's noise_augment
    added = noise(np.zeros((1, 20, 100, 100), np.float32), np.random.default_rng(1), PatchContext((20, 100, 100)))
    assert abs(added.std() - elektronn2.std()) < 1e-3 and abs(added.std() - NOISE_STD) < 1e-3
    assert np.abs(added).max() <= 0.075 + 1e-7 and np.abs(added).max() > 0.0749


@pytest.mark.parametrize("kwargs, message", [
    ({"blurry_blobs_probability": 1, "blurry_blobs_args": {"diffusenes": 2}},
     "blurry_blobs_args ['diffusenes'] are not supported; known: ['blob_size_range', 'diffuseness', 'num_blob_range']"),
    ({"uniform_random_erasing_probability": 0.5}, "uniform_random_erasing_args needs 'value'"),
    ({"noisy_random_erasing_probability": 1.5}, "noisy_random_erasing_probability must be a probability in [0, 1]"),
    ({"noisy_random_erasing_args": {"num_blob_range": (5, 5)}},  # checked even with probability 0
     "noisy_random_erasing_args: num_blob_range is drawn from [low, high) as in ELEKTRONN2, so high must exceed low"),
    ({"blurry_blobs_probability": 1, "blurry_blobs_args": {"diffuseness": -2}},
     "blurry_blobs_args: blurry_blobs: sigma must be a number or a (low, high) range with 0 <= low <= high, got -2 "
     "(ELEKTRONN2's keys set these options: diffuseness → sigma"),
    ({"uniform_random_erasing_probability": 1, "uniform_random_erasing_args": 0.5},
     "uniform_random_erasing_args must be a dict of ['blob_size_range', 'num_blob_range', 'value'], got 0.5"),
], ids=["unknown-key", "no-value", "probability", "empty-range", "bad-value", "not-a-dict"])
def test_elektronn2_argument_errors(kwargs, message):
    with pytest.raises(ConfigError) as err:
        elektronn2_pipeline(**kwargs)
    assert message in str(err.value)


def constant_source(tmp_path, value=0.5, **kwargs):
    with h5py.File(tmp_path / "raw.h5", "w") as f:
        f["raw"] = np.full((12, 40, 40), value, np.float32)
    with h5py.File(tmp_path / "lab.h5", "w") as f:
        f["lab"] = np.random.default_rng(0).integers(0, 3, (12, 40, 40)).astype(np.int16)
    return PatchSource(patch_size=(6, 24, 24), offsets=(1, 4, 4), strides=(1, 2, 2), aniso_factor=2.0, seed=0,
                       d_path=str(tmp_path), l_path=str(tmp_path), d_files=[("raw.h5", "raw")] * 2,
                       l_files=[("lab.h5", "lab")] * 2, valid_cubes=[1], **kwargs)


def test_getbatch_takes_elektronn2_erasing_and_noise_arguments(tmp_path):
    src = constant_source(tmp_path)
    uniform = dict(uniform_random_erasing_probability=1.0,
                   uniform_random_erasing_args={"value": 0.9, "num_blob_range": (1, 2), "blob_size_range": (6, 9)})
    erased = 0
    for seed in range(10):
        img, target = src.getbatch(1, rng=np.random.default_rng(seed), **uniform)
        plain_img, plain_target = src.getbatch(1, rng=np.random.default_rng(seed),  # flips only (its *_args alone
                                               warp_args={"lock_z": True})  # do nothing; warp_args: ELEKTRONN2's flip)
        np.testing.assert_array_equal(target, plain_target)  # labels are untouched
        assert set(np.unique(img).tolist()) <= {0.5, np.float32(0.9)} and np.all(plain_img == 0.5)
        extent, _ = changed_box(plain_img[0], img[0])
        assert extent[1] == extent[2] in (6, 7, 8) and extent[0] == round(extent[1] / 2)  # one box, 2 pixels a section
        erased += int((img == np.float32(0.9)).sum())
    assert erased > 0
    valid, _ = src.getbatch(2, "valid", **uniform)
    assert np.all(valid == 0.5)  # validation examples are not augmented
    noise, _ = src.getbatch(4, nga_blur_noise_probability=True)  # ELEKTRONN2: 0.15 * (U(0, 1) - 0.5)
    assert np.abs(noise - 0.5).max() <= 0.075 + 1e-6 and abs((noise - 0.5).std() - 0.15 / np.sqrt(12)) < 2e-3


def test_config_check_takes_the_arguments_and_refuses_misspellings(tmp_path):
    args = {"warp": 0.5, "warp_args": {}, "blurry_blobs_probability": 0.3, "blurry_blobs_args": {"diffuseness": 2},
            "noisy_random_erasing_probability": 0.1, "uniform_random_erasing_probability": 0.1,
            "uniform_random_erasing_args": {"value": 0}, "nga_blur_noise_probability": 0.2}
    config = {"data_class": "BatchCreatorImage", "data_batch_args": args}
    assert ekn_check_config(config) == []
    misspelt = {**args, "blury_blobs_args": args["blurry_blobs_args"]}
    assert ekn_check_config({**config, "data_batch_args": misspelt})[0].startswith(
        "data_batch_args: getbatch takes no argument 'blury_blobs_args' (did you mean 'blurry_blobs_args'?)")
    bad_key = {**args, "uniform_random_erasing_args": {"val": 0}}
    assert ekn_check_config({**config, "data_batch_args": bad_key}) == [
        "data_batch_args: uniform_random_erasing_args ['val'] are not supported; known: ['blob_size_range', "
        "'num_blob_range', 'value']"]
    from ekn_core.trainer.config import ExperimentConfig

    path = tmp_path / "exp.py"
    path.write_text("data_class = 'BatchCreatorImage'\ndata_init_kwargs = {}\n"
                    "data_batch_args = {'warp': 0.5, 'warp_args': {}, 'noisy_random_erasing_probability': 0.5,\n"
                    "                   'noisy_random_erasing_args': {'noise_range': (0, 1), 'blob_size': 3}}\n"
                    "def create_model():\n    pass\n")
    with pytest.raises(ConfigError, match=r"noisy_random_erasing_args \['blob_size'\] are not supported"):
        ExperimentConfig.from_file(str(path))


def test_elektronn2_augmentation_beside_augmenters_is_refused_and_its_args_alone_do_nothing(tmp_path):
    src = constant_source(tmp_path, augmenters=[{"type": "warp", "rotation": 30}, {"type": "grey"}])
    blobs = {"blurry_blobs_args": {"diffuseness": 2}}
    for args in (blobs, {**blobs, "blurry_blobs_probability": 0}):  # no probability: the configured pipeline
        for got, plain in zip(src.getbatch(3, rng=np.random.default_rng(1), **args),
                              src.getbatch(3, rng=np.random.default_rng(1))):
            np.testing.assert_array_equal(got, plain)
    spec = "{'type': 'blurry_blobs', 'sigma': 2, 'probability': 0.3}"
    for args, acting in (({**blobs, "blurry_blobs_probability": 0.3}, "['blurry_blobs_probability']"),
                         ({"warp": 0.5}, "['warp']"), ({"grey_augment_channels": [0]}, "['grey_augment_channels']")):
        with pytest.raises(ConfigError, match=r"data_batch_args " + acting.replace("[", r"\[").replace("]", r"\]")
                           + r" \(ELEKTRONN2's augmentation\) and data_init_kwargs 'augmenters' both set"):
            src.getbatch(1, **args)
        config = {"data_class": "BatchCreatorImage", "data_batch_args": args,
                  "data_init_kwargs": {"augmenters": [{"type": "grey"}]}}
        assert [p.split(" (")[0] for p in ekn_check_config(config)] == [f"data_batch_args {acting}"]
        assert ekn_check_config({**config, "data_init_kwargs": {}}) == []  # without augmenters they build them
    problem = ekn_check_config({**config, "data_batch_args": {**blobs, "blurry_blobs_probability": 0.3}})[0]
    tail = (f"Remove ['blurry_blobs_probability', 'blurry_blobs_args'] from data_batch_args and add what they build to "
            f"'augmenters': [{spec}]; or leave 'augmenters' out")
    assert problem.endswith(tail)
    with pytest.raises(ConfigError) as err:
        src.getbatch(1, **blobs, blurry_blobs_probability=0.3)
    assert str(err.value) == problem  # getbatch names only the arguments given, too
    assert ekn_check_config({**config, "data_batch_args": blobs}) == []
    # a source without augmenters: *_args alone do not switch ELEKTRONN2's flips on either
    (tmp_path / "plain").mkdir()
    plain = constant_source(tmp_path / "plain", value=0.25)
    for got, expected in zip(plain.getbatch(3, rng=np.random.default_rng(1), **blobs),
                             plain.getbatch(3, rng=np.random.default_rng(1))):
        np.testing.assert_array_equal(got, expected)
    assert list(plain._compat.values()) == [None]
