"""Readers refuse options they do not take (one error: option, reader, closest, all it takes);
the generic callers pass every reader only options it takes."""

import inspect
import os
import re

import h5py
import numpy as np
import pytest

from ekn_core.errors import ConfigError
from ekn_core.plugins import registry
from ekn_core.volumes import create_volume, open_volume, reopen_options

#: (reader, method, misspelt option, the option meant, every option the method takes).
TYPOS = [
    ("hdf5", "open", "mdoe", "mode", {"mode"}),
    ("hdf5", "create", "compresion", "compression", {"compression", "axes", "overwrite"}),
    ("zarr", "open", "mdoe", "mode", {"mode"}),
    ("zarr", "create", "fill_vaule", "fill_value", {"axes", "fill_value", "overwrite"}),
    ("n5", "open", "mdoe", "mode", {"mode"}),
    ("n5", "create", "axis", "axes", {"axes", "overwrite"}),
    ("precomputed", "open", "mdoe", "mode", {"mode"}),
    ("precomputed", "create", "resolutions", "resolution", {"resolution", "voxel_offset", "volume_type"}),
    ("imagestack", "open", "compresion", "compression", {"mode", "compression"}),
    ("imagestack", "create", "compresion", "compression", {"compression"}),
    ("knossos", "open", "fill_vaule", "fill_value",
     {"mode", "mag", "fill_value", "cache_mb", "prefetch", "threads", "channels", "mag_convention", "cube_shape"}),
    ("knossos", "create", "voxelsize", "voxel_size",
     {"name", "voxel_size", "cube_shape", "extension", "num_mags", "mag_convention", "configs", "description",
      "overwrite", "downsample", "jpeg_quality", "write_empty", "cache_mb"}),
]


def test_every_reader_is_covered():
    assert {reader for reader, *_ in TYPOS} == set(registry("readers").names())


@pytest.mark.parametrize("reader, method, typo, meant, takes", TYPOS, ids=[f"{r}.{m}" for r, m, *_ in TYPOS])
def test_an_unknown_option_is_refused_with_the_closest(tmp_path, reader, method, typo, meant, takes):
    path = str(tmp_path / "vol")
    with pytest.raises(ConfigError) as err:
        if method == "open":
            open_volume(path, reader=reader, **{typo: 1})
        else:
            create_volume(path, shape=(2, 3, 4), dtype="uint8", reader=reader, **{typo: 1})
    message = str(err.value)
    assert f"the {reader} reader of {path!r}" in message and f"takes no argument {typo!r}" in message
    assert f"(did you mean {meant!r}?)" in message
    listed = re.search(r"; it takes (.*)$", message).group(1).split(", ")
    assert set(listed) == takes
    assert not os.path.exists(path)  # refused before the reader touched anything


@pytest.mark.parametrize("method", ["open", "create"])
def test_no_reader_swallows_unknown_options(method):
    for name in registry("readers").names():
        params = inspect.signature(getattr(registry("readers").get(name), method)).parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in params):  # passes its options on: checks them itself
            assert (name, method) == ("knossos", "create")


def test_a_reader_called_directly_refuses_unknown_options_too(tmp_path):
    from ekn_plugins.readers.hdf5 import HDF5Reader
    from ekn_plugins.readers.knossos import KnossosReader

    with pytest.raises(ConfigError, match=r"create_dataset takes no argument 'voxelsize' \(did you mean 'voxel_size'"):
        KnossosReader.create(str(tmp_path / "k.k.toml"), (2, 3, 4), "uint8", voxelsize=(1, 1, 1))
    with pytest.raises(TypeError, match="fill_vaule"):
        HDF5Reader.open(str(tmp_path / "a.h5"), fill_vaule=3)


def test_several_unknown_options_are_each_named(tmp_path):
    with pytest.raises(ConfigError) as err:
        open_volume(str(tmp_path / "a.zarr"), mgs=2, fill_vaule=3)
    assert "'mgs'" in str(err.value) and "'fill_vaule'" in str(err.value) and "it takes mode" in str(err.value)


def test_reopening_keeps_the_options_open_takes(tmp_path):
    assert reopen_options("out.h5:pred", {"axes": "zyx", "compression": "lzf"}) == {}
    assert reopen_options("out.zarr", {"reader": "zarr", "fill_value": 3}) == {"reader": "zarr"}
    kept = reopen_options("ds.k.toml", {"voxel_size": (8, 8, 30), "cache_mb": 64, "overwrite": True})
    assert kept == {"cache_mb": 64}
    with pytest.raises(ConfigError, match=r"create takes no argument 'compresion' \(did you mean 'compression'"):
        reopen_options("out.h5", {"compresion": "lzf"})


def test_patch_source_entries_with_a_misspelt_option_are_refused(tmp_path):
    from ekn_plugins.data.patches import PatchSource

    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["raw"], f["lab"] = np.zeros((8, 24, 24), np.uint8), np.zeros((8, 24, 24), np.int16)
    kw = dict(patch_size=(4, 16, 16), d_path=str(tmp_path), l_path=str(tmp_path), l_files=[("d.h5", "lab")])
    with pytest.raises(ConfigError, match=r"the hdf5 reader of .*d\.h5'.*no argument 'mag'; it takes mode"):
        PatchSource(d_files=[("d.h5", "raw", None, {"mag": 2})], **kw)
    with PatchSource(d_files=[("d.h5", "raw", None, {"mode": "r"})], **kw) as src:  # one it takes
        assert src.getbatch(1)[0].shape == (1, 1, 4, 16, 16)


def test_a_resumed_prediction_reopens_its_output_with_creation_options(tmp_path):
    """Creation-only options (HDF5 compression, a KNOSSOS output's voxel size) do not reach ``open``."""
    from ekn_core.prediction.blockwise import predict_volume
    from prediction_testnets import make_fast_net, read_volume, write_raw_h5

    class Crash(Exception):
        pass

    def crash(index):
        if index == 2:
            raise Crash

    raw, src = write_raw_h5(tmp_path, (11, 41, 37))
    out = str(tmp_path / "out.h5:pred")
    run = dict(tile=None, memory_budget=2**20, progress=False, output_options={"compression": "lzf"})
    with pytest.raises(Crash):
        predict_volume(make_fast_net(), src, out, on_block=crash, **run)
    assert predict_volume(make_fast_net(), src, out, **run)["skipped"] == 3
    with h5py.File(tmp_path / "out.h5") as f:
        assert f["pred"].compression == "lzf"
    whole = str(tmp_path / "whole.zarr")
    predict_volume(make_fast_net(), src, whole, tile=None, memory_budget=2**20, progress=False)
    np.testing.assert_array_equal(read_volume(out), read_volume(whole))
