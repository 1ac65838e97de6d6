"""Partial section defects (``partial``) against numpy references, and the pipeline's per-augmenter
timings (exact call counts, sleep-based fakes, the patch source's log line, the benchmark table)."""

import os
import runpy
import time

import numpy as np
import pytest
from scipy.optimize import linprog

from ekn_core.errors import ConfigError
from ekn_plugins.augmenters.base import Augmenter, PatchContext, Pipeline
from ekn_plugins.augmenters.defects import LowContrast, MissingSection, side_of_line
from ekn_plugins.augmenters.transform import Transform
from ekn_plugins.data.patches import PatchSource
from ekn_plugins.data.synth import write_dataset

ANISO = PatchContext((8, 12, 16), aniso_factor=2.0)
ISO = PatchContext((8, 12, 16), aniso_factor=2.0, iso_output=True)  # a data section is 2 output sections
FLAT = PatchContext((1, 12, 16))  # 2-D patches
BENCH = os.path.join(os.path.dirname(__file__), "..", "bench", "bench_augment.py")


# --- references -------------------------------------------------------------------------------------------------

def old_sections(rng, n_z, max_sections, thickness):
    """The sections drawn before ``partial`` existed (index arrays)."""
    width = max(1, int(round(thickness)))
    n_sections = -(-n_z // width)
    count = int(rng.integers(1, min(max_sections, n_sections) + 1))
    return [np.arange(k * width, min((k + 1) * width, n_z)) for k in rng.choice(n_sections, size=count, replace=False)]


def old_missing_section(aug, image, rng, ctx):
    sections = np.concatenate(old_sections(rng, image.shape[1], aug.max_sections, ctx.section_thickness))
    for c in aug.selected(image):
        image[c, sections] = image[c].mean() if aug.fill == "mean" else aug.fill
    return image


def old_low_contrast(aug, image, rng, ctx):
    for z in old_sections(rng, image.shape[1], aug.max_sections, ctx.section_thickness):
        f = np.float32(rng.uniform(*aug.factor))
        for c in aug.selected(image):
            mean = image[c, z].mean()
            image[c, z] = (image[c, z] - mean) * f + mean
    return image


def reference_regions(rng, shape, max_sections, thickness, partial):
    """(output sections, (y, x) mask) of each defect, drawn in the documented order, masks voxel by voxel."""
    regions = []
    for z in old_sections(rng, shape[0], max_sections, thickness):
        mask = np.ones(shape[1:], bool)
        if rng.random() < partial:
            py, px = rng.uniform((0, 0), (shape[1] - 1, shape[2] - 1))
            angle = rng.uniform(0, 2 * np.pi)
            for y in range(shape[1]):
                for x in range(shape[2]):
                    mask[y, x] = np.cos(angle) * (y - py) + np.sin(angle) * (x - px) > 0
        regions.append((z, mask))
    return regions


def separable(inside, outside):
    """Whether two sets of (y, x) points lie strictly on either side of a straight line (a linear programme)."""
    points = np.concatenate([inside, outside]).astype(float)
    sign = np.concatenate([np.ones(len(inside)), -np.ones(len(outside))])
    # find w, b with sign * (w . p + b) >= 1
    a_ub = -sign[:, None] * np.column_stack([points, np.ones(len(points))])
    res = linprog(np.zeros(3), A_ub=a_ub, b_ub=-np.ones(len(points)), bounds=[(None, None)] * 3)
    return res.status == 0


def images(seed, shape=(2, 8, 12, 16)):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


# --- partial defects --------------------------------------------------------------------------------------------

def test_side_of_line_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        point, angle = rng.uniform(-2, 14, 2), rng.uniform(0, 2 * np.pi)
        expected = [[np.cos(angle) * (y - point[0]) + np.sin(angle) * (x - point[1]) > 0 for x in range(9)]
                    for y in range(7)]
        np.testing.assert_array_equal(side_of_line((7, 9), point, angle), expected)


@pytest.mark.parametrize("ctx", [ANISO, ISO], ids=["aniso", "iso"])
@pytest.mark.parametrize("options", [{}, {"fill": "mean", "max_sections": 3, "channels": [1]}])
def test_defaults_give_the_same_images_as_before(ctx, options):
    for seed in range(10):
        for aug, old in ((MissingSection(probability=1, **options), old_missing_section),
                         (LowContrast(probability=1, max_sections=options.get("max_sections", 1)), old_low_contrast)):
            rng_new, rng_old = np.random.default_rng(seed), np.random.default_rng(seed)
            new = aug(images(seed), rng_new, ctx)
            np.testing.assert_array_equal(new, old(aug, images(seed), rng_old, ctx))
            assert rng_new.random() == rng_old.random()  # nothing more drawn


@pytest.mark.parametrize("ctx", [ANISO, ISO], ids=["aniso", "iso"])
def test_partial_missing_sections_change_exactly_the_reference_voxels(ctx):
    aug = MissingSection(max_sections=3, fill=-1.0, partial=0.6, probability=1, channels=[0])
    n_partial = 0
    for seed in range(30):
        img = images(seed)
        out = aug(img.copy(), np.random.default_rng(seed), ctx)
        expected = img.copy()
        for z, mask in reference_regions(np.random.default_rng(seed), (8, 12, 16), 3, ctx.section_thickness, 0.6):
            expected[0, z[:, None, None], mask] = -1.0
            n_partial += not mask.all()
        np.testing.assert_array_equal(out, expected)
    assert 10 < n_partial  # partial and whole sections both occur


@pytest.mark.parametrize("ctx", [ANISO, ISO, FLAT], ids=["aniso", "iso", "2d"])
def test_partial_low_contrast_scales_the_reference_part_about_its_mean(ctx):
    aug = LowContrast(factor=(0.2, 0.6), max_sections=2, partial=1.0, probability=1)
    shape = (2, *ctx.patch_shape)
    for seed in range(20):
        img = images(seed, shape)
        out = aug(img.copy(), np.random.default_rng(seed), ctx)
        rng = np.random.default_rng(seed)
        expected = img.copy()
        regions = reference_regions(rng, ctx.patch_shape, 2, ctx.section_thickness, 1.0)
        for z, mask in regions:
            f = rng.uniform(0.2, 0.6)
            for c in range(2):
                part = expected[c][z[:, None, None], mask]
                expected[c][z[:, None, None], mask] = (part - part.mean()) * f + part.mean()
        np.testing.assert_allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("ctx", [ANISO, ISO, FLAT], ids=["aniso", "iso", "2d"])
def test_a_straight_line_splits_each_partly_missing_section(ctx):
    aug = LowContrast(factor=0.0, max_sections=2, partial=1.0, probability=1) if ctx is FLAT else \
        MissingSection(max_sections=2, fill=-1.0, partial=1.0, probability=1)
    width = int(ctx.section_thickness)
    grid = np.stack(np.meshgrid(np.arange(12), np.arange(16), indexing="ij"), -1)
    split = 0
    for seed in range(40):
        img = images(seed, (1, *ctx.patch_shape))
        changed = (aug(img.copy(), np.random.default_rng(seed), ctx) != img)[0]
        for k in range(0, ctx.patch_shape[0], width):  # the output sections of one data section change alike
            assert all(np.array_equal(changed[k], changed[j]) for j in range(k, min(k + width, len(changed))))
        for section in changed[::width]:
            if section.any() and not section.all():
                split += 1
                assert separable(grid[section], grid[~section])
    assert split > 30


def test_partial_is_checked_and_2d_patches_still_refuse_missing_sections():
    for cls, name in ((MissingSection, "missing_section"), (LowContrast, "low_contrast")):
        with pytest.raises(ConfigError, match=f"{name}: partial must be in \\[0, 1\\], got 1.5"):
            cls(partial=1.5)
        with pytest.raises(ConfigError, match=f"{name}: partial must be a number"):
            cls(partial="half")
    with pytest.raises(ConfigError, match="missing_section: the patches are one section thick"):
        Pipeline([{"type": "missing_section", "partial": 1.0}]).check(FLAT)


# --- timings ----------------------------------------------------------------------------------------------------

class Sleepy(Augmenter):
    """Intensity fake: sleeps ``seconds`` and counts its calls."""

    def __init__(self, seconds=0.0, probability=1.0):
        super().__init__(probability)
        self.seconds, self.calls = seconds, 0

    def __call__(self, image, rng, ctx):
        self.calls += 1
        time.sleep(self.seconds)
        return image


class SleepyWarp(Sleepy):
    """Geometric fake: sleeps in ``transform``."""

    geometric = True

    def transform(self, rng, ctx):
        self.calls += 1
        time.sleep(self.seconds)
        return Transform.identity()


def test_timings_count_calls_exactly_and_add_up_the_time_spent():
    slow, fast, half, never = Sleepy(0.005), Sleepy(), Sleepy(0.001, probability=0.5), Sleepy(probability=0)
    warp = SleepyWarp(0.002)
    pipe = Pipeline([warp, slow, fast, half, never, {"type": "noise"}, {"type": "noise"}])
    rng, ctx = np.random.default_rng(0), PatchContext((2, 4, 4))
    start = time.perf_counter()
    for _ in range(7):
        pipe.augment_image(np.zeros((1, 2, 4, 4), np.float32), rng, ctx)
        for _ in range(3):  # a data source drawing a refused transform again
            pipe.compose([warp], rng, ctx)
    wall = time.perf_counter() - start
    t = pipe.timings()
    assert list(t) == ["SleepyWarp", "Sleepy", "Sleepy#2", "Sleepy#3", "Sleepy#4", "noise", "noise#2"]
    assert [t[k]["calls"] for k in t] == [21, 7, 7, half.calls, 0, 7, 7] and 0 < half.calls < 7
    assert 21 * 0.002 <= t["SleepyWarp"]["seconds"] and 7 * 0.005 <= t["Sleepy"]["seconds"]
    assert half.calls * 0.001 <= t["Sleepy#3"]["seconds"] and t["Sleepy#4"]["seconds"] == 0
    assert t["Sleepy#2"]["seconds"] < t["Sleepy"]["seconds"]
    assert sum(v["seconds"] for v in t.values()) <= wall
    line = pipe.describe_timings(7)
    ms = float(line.split("Sleepy ")[1].split(",")[0])
    assert line.endswith(" ms per example") and ms == pytest.approx(1000 * t["Sleepy"]["seconds"] / 7, abs=6e-4)


def test_timings_survive_copies_foreign_augmenters_and_a_repeated_instance():
    """A pickled or deep-copied pipeline (as a worker may get it) still runs and times; compose()
    takes augmenters that are not the pipeline's (untimed); one instance listed twice is timed at
    each place it acts."""
    import copy
    import pickle

    noise = Pipeline([{"type": "noise", "probability": 1}]).augmenters[0]
    rng, ctx, image = np.random.default_rng(0), PatchContext((2, 4, 4)), np.zeros((1, 2, 4, 4), np.float32)
    for clone in (pickle.loads(pickle.dumps(Pipeline([noise]))), copy.deepcopy(Pipeline([noise]))):
        clone.augment_image(image.copy(), rng, ctx)
        assert clone.timings()["Noise"]["calls"] == 1
    foreign = SleepyWarp()
    pipe = Pipeline([SleepyWarp()])
    pipe.compose([foreign], rng, ctx)
    assert foreign.calls == 1 and pipe.timings()["SleepyWarp"]["calls"] == 0
    twice = Pipeline([noise, noise])
    twice.augment_image(image.copy(), rng, ctx)
    assert [t["calls"] for t in twice.timings().values()] == [1, 1]


def test_patch_source_counts_transforms_and_logs_augmenter_times(tmp_path, caplog):
    files = write_dataset(str(tmp_path), n_volumes=1, shape=(12, 60, 60), label_margin=(2, 8, 8), seed=1)
    src = PatchSource(patch_size=(5, 24, 24), offsets=(1, 4, 4), d_files=[f["raw"] for f in files],
                      l_files=[f["barrier"] for f in files], aniso_factor=2.0, seed=0,
                      augmenters=[{"type": "warp", "rotation": 45}, {"type": "grey", "probability": 0.5}])
    set_up = src.pipeline.timings()["warp"]["calls"]  # transforms drawn to check that warps fit the cubes
    src.getbatch(6)
    t = src.pipeline.timings()
    assert t["warp"]["calls"] - set_up == src.warp_stats["drawn"] >= 6 and 0 < t["grey"]["calls"] <= 6
    assert t["warp"]["seconds"] > 0 and t["grey"]["seconds"] > 0
    src.warp_stats["ok"] = 1023  # the next example is number 1024: statistics are logged
    with caplog.at_level("INFO", logger="ekn.data"):
        src.getbatch(1)
    lines = [r.getMessage() for r in caplog.records if "augmenter time" in r.getMessage()]
    assert len(lines) == 1 and f"process {os.getpid()} after 1024 examples" in lines[0]
    assert "warp 0.0" in lines[0] and ", grey " in lines[0] and lines[0].endswith("ms per example")


def test_bench_per_augmenter_prints_a_table_of_every_augmenter(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["bench_augment.py", "--per-augmenter", "--seconds", "0.2"])
    bench = runpy.run_path(BENCH, run_name="__main__")
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    names = [spec["type"] for spec in bench["PER_AUGMENTER"]]
    assert [r[0].strip() for r in rows[1:]] == names + ["rest (cutting, resampling, labels)"]
    assert all(float(r[1]) == 1.0 for r in rows[1:-1])  # each acts on every patch
    shares = [float(r[3].strip(" %")) for r in rows[1:]]
    assert sum(shares) == pytest.approx(100, abs=0.1 * len(shares)) and all(s >= 0 for s in shares)
