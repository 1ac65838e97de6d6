"""A grey range stated for training (``PatchSource(grey_range=...)``, per raw volume in its reader
options) scales training and validation patches, is recorded in the model file, and prediction on
raw of the same dtype uses it without ``--grey-range``.

References: the same data stored as float32 ``/ 4095`` (used as it is), and prediction with the
range stated explicitly.
"""

import logging
import os

import h5py
import numpy as np
import pytest

from ekn_core.errors import ConfigError

HERE = os.path.dirname(os.path.abspath(__file__))
AUGMENT = [{"type": "warp", "rotation": 20}, {"type": "grey"}]


def write_h5(path, data, key="raw"):
    with h5py.File(path, "w") as f:
        f[key] = data
    return os.path.basename(path)


@pytest.fixture
def twelve_bit(tmp_path):
    """Two 12-bit cubes in uint16 and their float32 copies divided by 4095, with labels."""
    rng = np.random.default_rng(3)
    for i in range(2):
        raw = rng.integers(0, 4096, (6, 32, 32)).astype(np.uint16)
        write_h5(str(tmp_path / f"u16_{i}.h5"), raw)
        write_h5(str(tmp_path / f"f32_{i}.h5"), raw.astype(np.float32) / np.float32(4095))
        write_h5(str(tmp_path / f"lab_{i}.h5"), rng.integers(0, 2, (4, 24, 24)).astype(np.int16), "lab")
    return tmp_path


def source(folder, raw_entries, **kw):
    from ekn_plugins.data.patches import PatchSource

    return PatchSource(patch_size=(4, 16, 16), offsets=(1, 3, 3), d_path=str(folder), l_path=str(folder),
                       d_files=raw_entries, l_files=[(f"lab_{i}.h5", "lab") for i in range(2)], valid_cubes=[1],
                       augmenters=AUGMENT, augment_valid=True, seed=5, **kw)


@pytest.mark.parametrize("in_memory", [True, False])
def test_patches_of_12_bit_data_with_its_range_equal_those_of_the_float_copy(twelve_bit, in_memory, caplog):
    with source(twelve_bit, [(f"f32_{i}.h5", "raw") for i in range(2)], in_memory=in_memory) as ref:
        expected = [ref.getbatch(3, "train"), ref.getbatch(2, "valid")]
    assert 0.9 < expected[0][0].max() <= 1.0  # the reference spans [0, 1]
    stated = [(f"u16_{i}.h5", "raw") for i in range(2)]
    per_volume = [(f"u16_{i}.h5", "raw", None, {"grey_range": [0, 4095]}) for i in range(2)]
    for kw in (dict(raw_entries=stated, grey_range=(0, 4095)), dict(raw_entries=per_volume)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, "ekn.data"):
            src = source(twelve_bit, in_memory=in_memory, **kw)
        assert "grey values" not in caplog.text  # 0..4095 of the stated 0..4095: no misfit warning
        with src:
            got = [src.getbatch(3, "train"), src.getbatch(2, "valid")]
            (scaling,) = src.training_data().input_scaling
        for batch, ref_batch in zip(got, expected):
            for a, b in zip(batch, ref_batch):
                np.testing.assert_array_equal(a, b)
        assert scaling.dtype == "uint16" and scaling.grey_range == (0.0, 4095.0) and len(scaling.volumes) == 2
    with caplog.at_level(logging.WARNING, "ekn.data"):
        plain = source(twelve_bit, stated, in_memory=in_memory)
    assert "use 6.2 % of the range 0..65535" in caplog.text  # without the range: the warning, /65535
    with plain:
        assert plain.getbatch(1)[0].max() < 0.07
    with pytest.raises(ConfigError, match=r"grey range \(4095, 0\): give two numbers LOW < HIGH"):
        source(twelve_bit, stated, grey_range=(4095, 0))


def test_the_grey_check_judges_raw_by_the_stated_range(tmp_path, caplog):
    rng = np.random.default_rng(4)
    for i in range(2):
        write_h5(str(tmp_path / f"u16_{i}.h5"), rng.integers(1000, 3001, (6, 32, 32)).astype(np.uint16))
        write_h5(str(tmp_path / f"lab_{i}.h5"), np.ones((4, 24, 24), np.int16), "lab")
    entries = [(f"u16_{i}.h5", "raw") for i in range(2)]
    with caplog.at_level(logging.WARNING, "ekn.data"):
        source(tmp_path, entries, grey_range=(1000, 3000)).close()  # values fill the stated range: no warning
        assert "grey values" not in caplog.text
        source(tmp_path, entries, grey_range=(0, 2000)).close()
    assert "reach beyond the grey range 0..2000 given for them" in caplog.text


def test_a_model_trained_with_a_grey_range_predicts_its_dtype_with_it(tmp_path, monkeypatch):
    from ekn_core.persistence import read_model_file
    from ekn_core.prediction import predict_volume
    from ekn_core.trainer.config import ExperimentConfig
    from ekn_core.trainer.loop import Trainer
    from ekn_plugins.data.synth import write_dataset
    from prediction_testnets import read_volume

    data = tmp_path / "data"
    write_dataset(str(data), n_volumes=3, shape=(6, 48, 48), label_margin=(2, 8, 8), seed=0)
    for i in range(3):  # 12-bit copies in uint16 of the uint8 raw
        with h5py.File(data / f"raw_{i}.h5", "r") as f:
            raw = f["raw"][()]
        write_h5(str(data / f"raw12_{i}.h5"), raw.astype(np.uint16) * 16 + 15)
    monkeypatch.setenv("EKN_TEST_DATA", str(data))
    kwargs = {"d_path": str(data), "l_path": str(data), "d_files": [(f"raw12_{i}.h5", "raw") for i in range(3)],
              "l_files": [(f"barrier_int16_{i}.h5", "lab") for i in range(3)], "valid_cubes": [2],
              "grey_range": (0, 4095)}
    cfg = ExperimentConfig.from_file(os.path.join(HERE, "trainer_files", "tiny2d_config.py"), [
        f"save_path={str(tmp_path)!r}", "save_name='run'", "n_steps=2", "history_freq=2", "preview_freq=100",
        "param_save_it=100", "tensorboard=False", f"data_init_kwargs={kwargs!r}"])
    trainer = Trainer(cfg)
    try:
        trainer.run()
    finally:
        trainer.close()
    model_file = trainer.run_dir.model_path("final")
    (scaling,) = read_model_file(model_file).training_data.input_scaling
    assert scaling.dtype == "uint16" and scaling.grey_range == (0.0, 4095.0) and len(scaling.volumes) == 3

    raw12 = str(data / "raw12_0.h5") + ":raw"
    floats = write_h5(str(tmp_path / "f32.h5"), read_raw(raw12).astype(np.float32) / np.float32(4095))
    kw = dict(tile=None, progress=False)
    predict_volume(model_file, raw12, str(tmp_path / "auto.zarr"), **kw)
    predict_volume(model_file, raw12, str(tmp_path / "stated.zarr"), grey_range=(0, 4095), **kw)
    predict_volume(model_file, str(tmp_path / floats) + ":raw", str(tmp_path / "float.zarr"), **kw)
    auto = read_volume(str(tmp_path / "auto.zarr"))
    np.testing.assert_array_equal(auto, read_volume(str(tmp_path / "stated.zarr")))
    np.testing.assert_allclose(auto, read_volume(str(tmp_path / "float.zarr")), atol=1e-6)
    predict_volume(model_file, raw12, str(tmp_path / "whole.zarr"), grey_range=(0, 65535), **kw)
    assert np.abs(read_volume(str(tmp_path / "whole.zarr")) - auto).max() > 1e-3  # an explicit range wins
    with pytest.raises(ConfigError, match=r"uint8 raw, whose range 0\.\.255 .* --grey-range 0 4095"):
        predict_volume(model_file, str(data / "raw_0.h5") + ":raw", str(tmp_path / "u8.zarr"), **kw)
    check_plugin_previews_use_the_range(trainer, read_raw(raw12), auto, tmp_path)


def check_plugin_previews_use_the_range(trainer, raw12, expected, tmp_path):
    """A KNOSSOS preview region (a plugin's ``ekn_preview_volumes``) of the uint16 raw is scaled by the
    range training stated: its prediction equals ``ekn predict``'s."""
    from ekn_core.trainer.preview import make_previewer
    from ekn_core.volumes import create_volume

    dataset = str(tmp_path / "em12" / "ds.k.toml")
    with create_volume(dataset, shape=raw12.shape, dtype="uint16", cube_shape=(16, 16, 8), name="ds") as vol:
        vol[...] = raw12
    z, y, x = raw12.shape
    trainer.config.knossos_preview = {"dataset": dataset, "offset": (0, 0, 0), "size": (x, y, z), "name": "k12"}
    trainer.config.preview_data_path = None
    previewer = make_previewer(trainer.model, trainer.config, str(tmp_path / "previews"))
    (block,) = [b for b in previewer.predict() if b.name == "k12"]
    np.testing.assert_allclose(block.prediction, expected, atol=1e-5)


def read_raw(path):
    from ekn_core.volumes import open_volume

    with open_volume(path) as vol:
        return np.asarray(vol[...])


def test_previews_scale_raw_by_the_range_training_stated(twelve_bit, caplog):
    from ekn_core.trainer.preview import load_preview_volumes
    from ekn_core.training_data import TrainingData, input_scalings

    path = str(twelve_bit / "u16_0.h5") + ":raw"
    with h5py.File(twelve_bit / "f32_0.h5") as f:
        expected = f["raw"][()]
    stated = TrainingData(input_scaling=input_scalings([("u16_0.h5", "uint16", (0, 4095))]))
    (preview,) = load_preview_volumes(path, stated)
    np.testing.assert_allclose(preview.data, expected, rtol=1e-6)
    (by_dtype,) = load_preview_volumes(path)  # no record: the dtype's range, as before
    np.testing.assert_allclose(by_dtype.data * 65535 / 4095, expected, rtol=1e-5)
    eight_bit = TrainingData(input_scaling=input_scalings([("raw8.h5", "uint8")]))
    with caplog.at_level(logging.WARNING, logger="ekn"):  # raw that training scaled otherwise: warned, not fatal
        (misfit,) = load_preview_volumes(path, eight_bit)
    np.testing.assert_array_equal(misfit.data, by_dtype.data)
    assert any("scaled otherwise than the net's training raw (uint8 raw mapped from 0..255)" in r.getMessage()
               for r in caplog.records)
