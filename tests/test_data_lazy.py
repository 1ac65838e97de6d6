"""Lazy reading of PatchSource cubes (``in_memory=False``): bit-identical batches, bounded reads, errors."""

import functools
import re

import h5py
import numpy as np
import pytest
from forbidding_volume import Forbidding

import ekn_core.volumes
from ekn_core.errors import ConfigError, ShapeError
from ekn_core.volumes import create_volume
from ekn_plugins.data.lazy import LazyView
from ekn_plugins.data.patches import PatchSource
from ekn_plugins.data.workers import BackgroundBatches, batch_rng

RAW, LAB = (20, 64, 64), (16, 52, 52)
AUGMENT = [{"type": "warp", "rotation": 30, "perspective": 0.002}, {"type": "elastic", "alpha": 1.5, "spacing": 8},
           {"type": "grey"}]


@pytest.fixture
def files(tmp_path):
    """Two uint8 raw cubes (HDF5 and zarr) with uint16 ids (three channels in the HDF5 one)."""
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (2, *RAW), dtype=np.uint8)
    ids = rng.integers(0, 4, (2, 3, *LAB), dtype=np.uint16)
    with h5py.File(tmp_path / "c0.h5", "w") as f:
        f["raw"], f["lab"] = raw[0], ids[0]
    for name, data in (("raw", raw[1]), ("lab", ids[1, :1])):
        with create_volume(str(tmp_path / f"c1.zarr:{name}"), data.shape, data.dtype, chunks=(1, 8, 16, 16)[-data.ndim:]) as vol:
            vol[...] = data
    return dict(d_path=str(tmp_path), l_path=str(tmp_path))


def forbid(monkeypatch, share):
    """Every volume opened from now on refuses reads of more than ``share`` of the raw cube."""
    real, opened = ekn_core.volumes.open_volume, []

    def open_forbidding(path):
        opened.append(Forbidding(real(path), limit=int(share * np.prod(RAW))))
        return opened[-1]

    monkeypatch.setattr(ekn_core.volumes, "open_volume", open_forbidding)
    return opened


def assert_same_batches(lazy, memory, n=3, **kwargs):
    for step in range(n):
        got = lazy.getbatch(3, rng=np.random.default_rng(step), **kwargs)
        want = memory.getbatch(3, rng=np.random.default_rng(step), **kwargs)
        assert len(got) == len(want)
        for x, y in zip(got, want):
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(x, y)


CASES = {
    "three-channel-labels": dict(d_files=[("c0.h5", "raw")], l_files=[("c0.h5", "lab")], target_discrete_ix=[0, 2],
                               target_dtype="float32"),
    "regions-and-cubes": dict(d_files=[("c0.h5", "raw", ((2, 4, 0), (20, 60, 64))), ("c1.zarr", "raw")],
                              l_files=[("c1.zarr", "lab", ((3, 6, 10), (16, 50, 50))), ("c1.zarr", "lab")],
                              valid_cubes=[1], augment_valid=True),
    "malis": dict(d_files=[("c1.zarr", "raw")], l_files=[("c1.zarr", "lab")], affinities="malis", strides=(1, 1, 1)),
}


@pytest.mark.parametrize("case", CASES)
def test_lazy_batches_equal_in_memory_batches_reading_only_boxes(files, monkeypatch, case):
    kw = dict(patch_size=(6, 24, 24), offsets=(1, 4, 4), strides=(1, 2, 2), augmenters=AUGMENT, aniso_factor=2.0,
              **files)
    kw.update(CASES[case])
    memory = PatchSource(in_memory=True, **kw)
    if case == "regions-and-cubes":  # the region, scaled, independently of the lazy views
        with h5py.File(files["d_path"] + "/c0.h5") as f:
            want = f["raw"][2:20, 4:60, 0:64].astype(np.float32) / np.float32(255)
        np.testing.assert_array_equal(memory.train_cubes[0].raw, want[None])
    opened = forbid(monkeypatch, 0.4)
    with PatchSource(in_memory=False, **kw) as lazy:
        assert not lazy.in_memory and isinstance(lazy.train_cubes[0].raw, LazyView)
        with pytest.raises(MemoryError):
            lazy.train_cubes[0].raw.read()
        assert_same_batches(lazy, memory)
        if lazy.valid_cubes:
            assert_same_batches(lazy, memory, source="valid")
        assert_same_batches(lazy, memory, n=1, force_dense=True)
    assert opened and all(v.closed for v in opened)


def test_background_workers_open_their_own_lazy_volumes(files):
    kw = dict(patch_size=(6, 24, 24), offsets=(1, 4, 4), strides=(1, 2, 2), augmenters=AUGMENT, **files,
              d_files=[("c0.h5", "raw"), ("c1.zarr", "raw", ((1, 0, 0), (19, 64, 64)))],
              l_files=[("c1.zarr", "lab"), ("c1.zarr", "lab", ((2, 4, 6), (16, 40, 52)))])
    memory = PatchSource(in_memory=True, **kw)
    factory = functools.partial(PatchSource, in_memory=False, **kw)
    with BackgroundBatches(factory, batch_size=3, n_workers=2, seed=5) as batches:
        for index in range(3):
            for x, y in zip(batches.get(), memory.getbatch(3, rng=batch_rng(5, index))):
                np.testing.assert_array_equal(x, y)


def test_auto_reads_into_memory_only_what_fits(files, monkeypatch):
    import psutil

    from ekn_plugins.data import patches

    kw = dict(patch_size=(6, 24, 24), offsets=(1, 4, 4), strides=(1, 2, 2), d_files=[("c1.zarr", "raw")],
              l_files=[("c1.zarr", "lab")], **files)
    need = np.prod(RAW) * 1 + np.prod(LAB) * 2  # uint8 raw (held as stored) + int16 labels
    for available, in_memory in ((need / patches.AUTO_MEMORY_SHARE, True), (need / patches.AUTO_MEMORY_SHARE - 1, False)):
        monkeypatch.setattr(psutil, "virtual_memory", lambda a=available: type("M", (), {"available": a}))
        with PatchSource(**kw) as src:
            assert src.in_memory is in_memory
            assert isinstance(src.train_cubes[0].raw.volume, np.ndarray) is in_memory
            assert isinstance(src.train_cubes[0].label, np.ndarray) is in_memory
    for copies, in_memory in ((3, True), (4, False)):  # each of `copies` processes gets an equal part of the share
        available = 3 * need / patches.AUTO_MEMORY_SHARE
        monkeypatch.setattr(psutil, "virtual_memory", lambda a=available: type("M", (), {"available": a}))
        with PatchSource(copies=copies, **kw) as src:
            assert src.in_memory is in_memory
    with pytest.raises(ConfigError, match="copies must be a whole number >= 1"):
        PatchSource(copies=0, **kw)


def test_lazy_errors_are_clear(files, tmp_path):
    kw = dict(patch_size=(6, 24, 24), offsets=(1, 4, 4), strides=(1, 2, 2), **files)
    with pytest.raises(ConfigError, match="in_memory must be True, False or 'auto', got 'yes'"):
        PatchSource(d_files=[("c1.zarr", "raw")], l_files=[("c1.zarr", "lab")], in_memory="yes", **kw)
    with pytest.raises(ShapeError, match=r"region .* does not fit into the volume's spatial shape \(20, 64, 64\)"):
        PatchSource(d_files=[("c1.zarr", "raw", ((0, 0, 0), (21, 64, 64)))], l_files=[("c1.zarr", "lab")],
                    in_memory=False, **kw)
    with h5py.File(tmp_path / "big.h5", "w") as f:
        f["raw"] = np.zeros(RAW, np.uint8)
        f["lab"] = np.full(LAB, 300, np.uint16)
    entries = dict(d_files=[("big.h5", "raw")], l_files=[("big.h5", "lab")], target_dtype="uint8")
    with pytest.raises(ShapeError, match="big.h5:lab: label values \\[300, 300\\] do not fit the target dtype uint8"):
        PatchSource(in_memory=True, **entries, **kw)
    with PatchSource(in_memory=False, **entries, **kw) as lazy:  # lazily: checked per read box
        with pytest.raises(ShapeError, match="big.h5:lab: label values \\[300, 300\\] do not fit"):
            lazy.getbatch(1)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_float_raw_is_used_as_it_is(dtype):
    import ml_dtypes

    values = np.array([0.0, 0.25, 0.5, 1.0, 3.0], np.float32).reshape(1, 1, 5)  # exact in every float dtype
    raw = values.astype(getattr(ml_dtypes, dtype) if dtype == "bfloat16" else dtype)
    view = LazyView(raw, ndim=4, grey=True)
    np.testing.assert_array_equal(view.read(), values[None])
    np.testing.assert_array_equal(LazyView(values.astype(np.uint8), ndim=4, grey=True).read(),
                                  values[None].astype(np.uint8) / np.float32(255))  # integer raw is scaled


def test_fractional_float_labels_are_an_error(files, tmp_path):
    kw = dict(patch_size=(6, 24, 24), offsets=(1, 4, 4), strides=(1, 2, 2), **files)
    labels = np.zeros(LAB, np.float32)
    with h5py.File(tmp_path / "soft.h5", "w") as f:
        f["raw"] = np.zeros(RAW, np.uint8)
        f["lab"] = labels
        labels[3, 10, 10] = 0.5
        f["soft"] = labels
    whole = dict(d_files=[("soft.h5", "raw")], l_files=[("soft.h5", "lab")], target_dtype="int16")
    with PatchSource(in_memory=True, **whole, **kw) as src:  # whole-number float labels are fine
        assert src.getbatch(1)[1].dtype == np.int16
    entries = dict(whole, l_files=[("soft.h5", "soft")])
    message = "soft.h5:soft: label value 0.5 is not a whole number, but the target dtype int16 holds class ids"
    with pytest.raises(ShapeError, match=message):
        PatchSource(in_memory=True, **entries, **kw)
    with PatchSource(in_memory=False, **entries, **kw) as lazy:  # lazily: checked per read box
        with pytest.raises(ShapeError, match=message):
            for step in range(50):
                lazy.getbatch(4, rng=np.random.default_rng(step))
    with PatchSource(in_memory=True, **dict(entries, target_dtype="float32"), **kw) as soft:  # soft targets
        assert soft.getbatch(1)[1].dtype == np.float32


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int8", "int16", "bool"])
def test_integer_raw_is_mapped_to_0_1_by_its_dtype_range(dtype):
    low, high = (0, 1) if dtype == "bool" else (np.iinfo(dtype).min, np.iinfo(dtype).max)
    values = np.array([low, high, (low + high) // 2, low + 1], dtype=dtype).reshape(1, 1, 4)
    got = LazyView(values, ndim=4, grey=True).read()
    want = (values.astype(np.float64) - low) / (high - low)
    assert got.dtype == np.float32 and got.min() == 0 and got.max() == 1
    np.testing.assert_allclose(got, want[None], rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype, values, problem", [
    ("uint8", (0, 256), None),
    ("uint16", (0, 4096), r"uint16 grey values 0..409\d use 6.2 % of the range 0..65535 .* rescaled to the uint16 range"),
    ("int16", (0, 4000), r"int16 grey values 0..399\d use 6.1 % of the range -32768..32767"),
    ("float32", (0, 2), None),
    ("float32", (0, 256), r"float grey values reach 0..255, outside \[0, 1\]"),
])
def test_grey_values_that_do_not_fit_their_scaling_are_warned_about(tmp_path, caplog, dtype, values, problem):
    raw = np.random.default_rng(0).integers(*values, RAW).astype(dtype)
    with h5py.File(tmp_path / "raw.h5", "w") as f:
        f["raw"], f["lab"] = raw, np.zeros(LAB, np.int16)
    kw = dict(patch_size=(6, 24, 24), d_path=str(tmp_path), l_path=str(tmp_path), d_files=[("raw.h5", "raw")],
              l_files=[("raw.h5", "lab")])
    for in_memory in (True, False):
        caplog.clear()
        with caplog.at_level("WARNING", logger="ekn.data"), PatchSource(in_memory=in_memory, **kw) as src:
            img = src.getbatch(2)[0]
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        if problem is None:
            assert not warnings and 0 <= img.min() and img.max() <= 1
        else:
            assert len(warnings) == 1 and re.search(problem, warnings[0]), warnings
            assert warnings[0].startswith(f"{tmp_path}/raw.h5:raw: ")


def test_float64_raw_is_held_as_float32_and_counted_so(tmp_path, monkeypatch):
    """float64 grey values are used in float32 (``to_grey``): held so in memory, batches stay those
    of lazy reading, and ``'auto'`` counts 4 bytes a voxel for them."""
    import psutil

    from ekn_plugins.data import patches

    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "f64.h5", "w") as f:
        f["raw"], f["lab"] = rng.random(RAW), rng.integers(0, 4, LAB).astype(np.int16)
    kw = dict(patch_size=(6, 24, 24), offsets=(1, 4, 4), strides=(1, 2, 2), augmenters=AUGMENT, aniso_factor=2.0,
              d_path=str(tmp_path), l_path=str(tmp_path), d_files=[("f64.h5", "raw")], l_files=[("f64.h5", "lab")])
    with PatchSource(in_memory=True, **kw) as memory, PatchSource(in_memory=False, **kw) as lazy:
        held = memory.train_cubes[0].raw.volume
        assert held.dtype == np.float32 and held.nbytes == 4 * np.prod(RAW)
        assert memory.train_cubes[0].raw_dtype == np.float64  # what the model file records
        assert_same_batches(lazy, memory)
    enough = (np.prod(RAW) * 4 + np.prod(LAB) * 2) / patches.AUTO_MEMORY_SHARE  # float32 raw, int16 labels
    for available, in_memory in ((enough, True), (enough - 1, False)):
        monkeypatch.setattr(psutil, "virtual_memory", lambda a=available: type("M", (), {"available": a}))
        with PatchSource(**kw) as src:
            assert src.in_memory is in_memory
