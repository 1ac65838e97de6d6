"""KNOSSOS end to end through the CLI: train from KNOSSOS data sets, predict into a new one.

The data sets are written by ``examples/knossos_neuro3d_lite.py`` (its ``write_knossos_volumes``),
training runs that example config with a tiny net (``ekn train`` in a subprocess), and
``ekn predict`` reads the raw layer of a KNOSSOS data set and writes uint8 probabilities into a new
KNOSSOS data set in several blocks that do not align with its cubes. The reference is
``predict_dense`` of the same saved model on the same raw data.
"""

import os
import re
import runpy
import subprocess
import sys

import h5py
import numpy as np
import pytest

from ekn_core.volumes import open_volume

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "..", "examples", "knossos_neuro3d_lite.py")
SHAPE = (16, 64, 64)
TINY_NET = "model_load_args={'patch_size': (11, 47, 47), 'width': 0.02}"


def write_volumes(folder, **kwargs):
    return runpy.run_path(EXAMPLE)["write_knossos_volumes"](folder, **kwargs)


def ekn(*args, env):
    proc = subprocess.run([sys.executable, "-m", "ekn_core.cli", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env, timeout=600)
    return proc.returncode, proc.stdout


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("knossos_e2e") / "data")
    configs = write_volumes(folder, n_volumes=3, shape=SHAPE, cube_shape=(24, 40, 6))
    assert configs == [os.path.join(folder, f"vol_{i}", f"vol_{i}.k.toml") for i in range(3)]
    return folder


def test_example_writes_two_layer_data_sets(data_dir):
    from ekn_plugins.data.synth import synth_volume

    expected = synth_volume(SHAPE, np.random.default_rng(np.random.SeedSequence([0, 1])))
    config = os.path.join(data_dir, "vol_1", "vol_1.k.toml")
    with open_volume(config + ":raw") as raw, open_volume(config + ":barrier") as barrier:
        assert raw.dtype == np.uint8 and barrier.dtype == np.uint8
        np.testing.assert_array_equal(raw[...], expected.raw)
        np.testing.assert_array_equal(barrier[...], expected.barrier)
        assert raw.chunks == (6, 40, 24)  # cube_shape (x, y, z) as (z, y, x)
    files = sorted(f for f in os.listdir(os.path.dirname(config)) if "." in f)
    assert files == [".barrier.ekn-write.lock", ".raw.ekn-write.lock", "vol_1.k.toml"]  # the layers' write locks


def test_patch_source_over_knossos_equals_hdf5_copy(data_dir, tmp_path):
    """The patch source reads KNOSSOS layers like any other volume: same seed, same batches as HDF5."""
    from ekn_plugins.data.patches import PatchSource

    h5_files = []
    for i in range(3):
        config = os.path.join(data_dir, f"vol_{i}", f"vol_{i}.k.toml")
        path = str(tmp_path / f"vol_{i}.h5")
        with h5py.File(path, "w") as f, open_volume(config + ":raw") as raw, open_volume(config + ":barrier") as lab:
            f["raw"], f["lab"] = raw[...], lab[...]
        h5_files.append(path)
    common = dict(patch_size=(11, 47, 47), offsets=(2, 19, 19), strides=(2, 4, 4), valid_cubes=[2], seed=3,
                  augmenters=[{"type": "warp", "rotation": 15}, {"type": "grey"}])
    kn = PatchSource(d_path=data_dir, l_path=data_dir, d_files=[(f"vol_{i}/vol_{i}.k.toml", "raw") for i in range(3)],
                     l_files=[(f"vol_{i}/vol_{i}.k.toml", "barrier") for i in range(3)], **common)
    h5 = PatchSource(d_files=[(p, "raw") for p in h5_files], l_files=[(p, "lab") for p in h5_files], **common)
    for source in ("train", "valid"):
        a, b = kn.getbatch(3, source=source), h5.getbatch(3, source=source)
        assert a[0].shape == (3, 1, 11, 47, 47) and a[1].shape == (3, 1, 4, 3, 3)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_patch_source_reads_regions_of_large_volumes(data_dir, tmp_path):
    """``(file, key, ((z0, y0, x0), (z1, y1, x1)))`` loads only that box: same batches as a cropped copy."""
    from ekn_plugins.data.patches import PatchSource

    config = os.path.join(data_dir, "vol_0", "vol_0.k.toml")
    raw_box, lab_box = ((1, 3, 5), (14, 60, 57)), ((3, 11, 13), (12, 52, 49))  # labels centred in the raw box
    path = str(tmp_path / "crop.h5")
    with h5py.File(path, "w") as f, open_volume(config + ":raw") as raw, open_volume(config + ":barrier") as lab:
        f["raw"] = raw[1:14, 3:60, 5:57]
        f["lab"] = lab[3:12, 11:52, 13:49]
    common = dict(patch_size=(11, 47, 47), offsets=(2, 19, 19), strides=(2, 4, 4), seed=5)
    region = PatchSource(d_files=[(config, "raw", raw_box)], l_files=[(config, "barrier", lab_box)], **common)
    crop = PatchSource(d_files=[(path, "raw")], l_files=[(path, "lab")], **common)
    assert region.train_cubes[0].raw.shape == (1, 13, 57, 52)
    assert region.train_cubes[0].label_offset == crop.train_cubes[0].label_offset == (2, 8, 8)
    for x, y in zip(region.getbatch(4), crop.getbatch(4)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("box, message", [(((0, 0, 0), (17, 64, 64)), "does not fit"),
                                          (((0, 9, 0), (16, 9, 64)), "0 <= start < stop"),
                                          (((0, 0), (16, 64)), "((z0, y0, x0), (z1, y1, x1))")])
def test_bad_regions_are_explained(data_dir, box, message):
    from ekn_core.errors import EknError
    from ekn_plugins.data.patches import PatchSource

    config = os.path.join(data_dir, "vol_0", "vol_0.k.toml")
    with pytest.raises(EknError, match=re.escape(message)):
        PatchSource(patch_size=(5, 9, 9), d_files=[(config, "raw", box)], l_files=[(config, "barrier")])


@pytest.mark.slow
def test_train_from_knossos_and_predict_into_knossos(data_dir, tmp_path):
    from ekn_core.persistence import modelload
    from ekn_core.prediction.dense import predict_dense

    env = {**os.environ, "EKN_KNOSSOS_DIR": data_dir, "TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": "1"}
    runs = str(tmp_path / "runs")
    rc, out = ekn("train", EXAMPLE, "--set", f"save_path={runs!r}", "--set", "save_name='kn'", "--set", TINY_NET,
                  "--set", "n_steps=4", "--set", "history_freq=2", "--set", "monitor_batch_size=1",
                  "--set", "background_processes=False", "--set", "preview_data_path=None",
                  "--set", "tensorboard=False", "--set", "plot_on=False",
                  "--set", "data_init_kwargs.augmenters=[{'type': 'flip'}, {'type': 'grey'}]", env=env)
    assert rc == 0, out[-3000:]
    assert "2 train / 1 valid cubes" in out and "status: finished, step 4" in out, out[-3000:]
    model = os.path.join(runs, "kn", "models", "final.mdl")
    raw_path = os.path.join(data_dir, "vol_2", "vol_2.k.toml") + ":raw"
    pred_path = str(tmp_path / "pred" / "barrier.k.toml")
    predict = ("predict", model, raw_path, pred_path, "--memory-budget", "6M", "--no-progress")
    rc, out = ekn(*predict, env=env)  # KNOSSOS output: uint8 probabilities without asking
    assert rc == 0, out[-3000:]
    n_blocks = int(re.search(r"(\d+) blocks \(0 already done\)", out).group(1))
    assert n_blocks > 1, out[-2000:]
    rc, out = ekn(*predict, env=env)  # a rerun reopens the two class layers and skips every block
    assert rc == 0 and f"{n_blocks} blocks ({n_blocks} already done)" in out, out[-3000:]

    with open_volume(raw_path) as raw:
        expected = predict_dense(modelload(model).prediction_node, raw[...], as_uint8=True, pad_raw=True)
    assert expected.shape == (2, *SHAPE)
    with open_volume(raw_path) as raw, open_volume(pred_path) as pred:
        assert pred.arrays[0].voxel_size == raw.voxel_size  # the output keeps the input's voxel size
    with open_volume(pred_path) as pred, open_volume(pred_path + ":barrier_c1") as barrier:
        assert pred.shape == (2, *SHAPE) and pred.dtype == np.uint8
        got = pred[...]
        np.testing.assert_array_equal(barrier[...], got[1])
    diff = np.abs(got.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99, (diff.max(), (diff == 0).mean())
    assert np.abs(got.astype(int).sum(0) - 255).max() <= 1  # two-class softmax: p0 + p1 = 1
    assert got[1].std() > 0  # the net's output varies over the volume
