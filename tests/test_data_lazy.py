"""Lazy reading of PatchSource cubes (``in_memory=False``): bit-identical batches, bounded reads, errors."""

import functools

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
                              l_files=[("c1.zarr", "lab", ((0, 2, 2), (14, 50, 50))), ("c1.zarr", "lab")],
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
              l_files=[("c1.zarr", "lab"), ("c1.zarr", "lab", ((0, 0, 0), (16, 40, 52)))])
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
    need = np.prod(RAW) * 4 + np.prod(LAB) * 2  # float32 raw + int16 labels
    for available, in_memory in ((need / patches.AUTO_MEMORY_SHARE, True), (need / patches.AUTO_MEMORY_SHARE - 1, False)):
        monkeypatch.setattr(psutil, "virtual_memory", lambda a=available: type("M", (), {"available": a}))
        with PatchSource(**kw) as src:
            assert src.in_memory is in_memory
            assert isinstance(src.train_cubes[0].raw, np.ndarray) is in_memory


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
