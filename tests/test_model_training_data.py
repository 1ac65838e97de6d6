"""Model files record what their net was trained on, and prediction uses it; outputs no ekn job
wrote are not replaced unless asked.

* The patch source records the grey scaling of its raw dtypes (ranges checked against np.iinfo)
  and the nhood of affinity targets; ``model.save`` keeps it as JSON, ``modelload`` restores it,
  files without it load as before.
* Prediction (dense, blockwise, Dask, ``ekn predict``) refuses raw whose dtype range differs from
  training's unless ``--grey-range`` states it; reference: a uint16 copy (and a 12-bit copy) of
  uint8 data predicted with the stated range equals the prediction of the uint8 data.
* Affinity TTA takes the recorded offsets; reference: the whole-image restored TTA of
  test_prediction_tta_affinities with the offsets given.
* ``ekn predict`` / ``ekn segment`` refuse an output no ekn job wrote unless ``--overwrite``.
"""

import json
import logging
import os
import types

import h5py
import numpy as np
import pytest
import zarr

from ekn_core.cli import main
from ekn_core.errors import ConfigError, EknError
from ekn_core.prediction import predict_dense, predict_volume
from ekn_core.prediction.blockwise import progress_path
from ekn_core.training_data import InputScaling, TrainingData, input_scalings
from ekn_core.volumes import create_volume
from prediction_testnets import make_fast_net, read_volume
from test_prediction_tta_affinities import NHOOD3D, reference, scalar_mean, strided_net

HERE = os.path.dirname(os.path.abspath(__file__))
UINT8 = TrainingData(input_scalings([("train.h5:raw", "uint8")]))
FAST = dict(tile=None, memory_budget="1M", progress=False)


def with_record(net, record):
    """A test net whose model carries ``record`` (what modelload gives a loaded model)."""
    net.model = types.SimpleNamespace(training_data=record)
    return net


def make_uint8_net(**options):
    """``make_fast_net`` of a model trained on uint8 raw (a factory for ``module:factory`` / Dask)."""
    return with_record(make_fast_net(**options), UINT8)


def error_lines(capsys):
    """The lines of ``ekn``'s error messages on stderr (the log may say more)."""
    return [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]


def write_h5(path, data):
    with h5py.File(path, "w") as f:
        f["raw"] = data
    return f"{path}:raw"


@pytest.fixture
def raws(tmp_path):
    """uint8 data and its uint16 and 12-bit (x 16) copies, as HDF5 volumes."""
    raw = np.random.default_rng(7).integers(0, 256, (9, 45, 41)).astype(np.uint8)
    return raw, {name: write_h5(str(tmp_path / f"{name}.h5"), data) for name, data in
                 (("u8", raw), ("u16", raw.astype(np.uint16)), ("b12", raw.astype(np.uint16) * 16))}


@pytest.fixture(scope="module")
def nm():
    import ekn_core.neuromancer as nm

    before = set(nm.model_manager.models)
    yield nm
    for name in set(nm.model_manager.models) - before:
        nm.model_manager.remove(name)


def tiny_model(nm, name, n_out=2, tags="b,f,z,y,x", target_f=1):
    model = nm.model_manager.newmodel(name)
    inp = nm.Input((None, 1, 3, 11, 11), tags, name="raw")
    out = nm.Conv(nm.Conv(inp, 4, (1, 3, 3)), n_out, (1, 1, 1), activation_func="sigmoid")
    target = nm.Input_like(out, override_f=target_f, dtype="int16", name="target")
    model.designate_nodes(input_node=inp, target_node=target, prediction_node=out)
    return model


# --------------------------------------------------------------------------------------- recording
def test_the_patch_source_records_its_scaling_and_the_model_file_keeps_it(tmp_path, nm):
    from ekn_core.persistence import read_model_file
    from ekn_plugins.data.patches import PatchSource

    rng = np.random.default_rng(0)
    cubes = {"a.h5": rng.integers(0, 256, (5, 24, 24)).astype(np.uint8),
             "b.h5": rng.random((5, 24, 24)).astype(np.float32),
             "c.h5": rng.integers(0, 65536, (5, 24, 24)).astype(np.uint16)}
    for name, raw in cubes.items():
        write_h5(str(tmp_path / name), raw)
        with h5py.File(tmp_path / f"lab_{name}", "w") as f:
            f["lab"] = np.ones(raw.shape, np.int16)
    model = tiny_model(nm, "recorded")
    assert model.training_data is None
    PatchSource.from_nodes(model.input_node, model.target_node, d_path=str(tmp_path), l_path=str(tmp_path),
                           d_files=[(n, "raw") for n in cubes], l_files=[(f"lab_{n}", "lab") for n in cubes],
                           valid_cubes=[2])
    by_dtype = {s.dtype: s for s in model.training_data.input_scaling}
    assert sorted(by_dtype) == ["float32", "uint16", "uint8"] and model.training_data.affinity_offsets is None
    for dtype, volume in (("uint8", "a.h5"), ("uint16", "c.h5")):  # the validation cube counts too
        info = np.iinfo(dtype)
        assert by_dtype[dtype].grey_range == (float(info.min), float(info.max))
        assert [os.path.basename(v) for v in by_dtype[dtype].volumes] == [f"{volume}:raw"]
    assert by_dtype["float32"].grey_range is None  # float raw: used as it is

    path = model.save(str(tmp_path / "m.mdl"))
    with h5py.File(path) as f:  # plain JSON beside the other attributes, no pickle
        stored = json.loads(f.attrs["training_data"])
    assert stored["input_scaling"][0]["grey_range"] == [0.0, 255.0]
    assert read_model_file(path).training_data == model.training_data
    assert nm.modelload(path, override_mfp_to_active=True).training_data == model.training_data
    assert nm.rebuild_model(model, imposed_patch_size=(3, 13, 13)).training_data == model.training_data
    with h5py.File(path, "a") as f:  # a file of an earlier ekn
        del f.attrs["training_data"]
    assert nm.modelload(path).training_data is None


def test_affinity_targets_record_their_nhood_in_the_inputs_axis_order(tmp_path, nm):
    from ekn_plugins.data.patches import PatchSource

    rng = np.random.default_rng(1)
    write_h5(str(tmp_path / "raw.h5"), rng.integers(0, 256, (5, 24, 24)).astype(np.uint8))
    with h5py.File(tmp_path / "ids.h5", "w") as f:
        f["lab"] = rng.integers(1, 4, (5, 24, 24)).astype(np.int16)
    nhood = [[-1, 0, 0], [0, 0, -2], [0, -1, 0]]  # in the order of the input's axes z, x, y
    model = tiny_model(nm, "affinities", n_out=3, tags="b,f,z,x,y", target_f=3)
    kwargs = dict(d_path=str(tmp_path), l_path=str(tmp_path), d_files=[("raw.h5", "raw")],
                  l_files=[("ids.h5", "lab")], affinities="affinity")
    PatchSource.from_nodes(model.input_node, model.target_node, nhood=nhood, **kwargs)
    record = model.training_data
    assert record.affinity_offsets == tuple(map(tuple, nhood)) and record.affinity_axes == "zxy"
    assert TrainingData.from_json(json.loads(json.dumps(record.to_json()))) == record

    flat = nm.model_manager.newmodel("flat")  # a 2-D net: rows of (x, y), without the graph's z column
    inp = nm.Input((None, 1, 11, 11), "b,f,x,y", name="raw")
    out = nm.Conv(inp, 2, (3, 3), activation_func="sigmoid")
    target = nm.Input_like(out, override_f=2, dtype="int16", name="target")
    flat.designate_nodes(input_node=inp, target_node=target, prediction_node=out)
    PatchSource.from_nodes(inp, target, nhood=[[-1, 0], [0, -1]], **kwargs)
    assert flat.training_data.affinity_offsets == ((-1, 0), (0, -1)) and flat.training_data.affinity_axes == "xy"


# --------------------------------------------------------------------------------------- grey scaling
def test_predict_dense_refuses_another_dtype_range_unless_the_range_is_stated(raws, caplog):
    raw = raws[0][:, :30, :30]
    net = with_record(make_fast_net(), UINT8)
    expected = predict_dense(net, raw, pad_raw=True)
    with pytest.raises(ConfigError, match=r"predict_dense: uint16 raw, whose range 0\.\.65535 would be mapped to "
                                          r"\[0, 1\], but the net was trained on uint8 raw mapped from 0\.\.255 .*"
                                          r"--grey-range 0 255 \(grey_range=\(0, 255\)\)"):
        predict_dense(net, raw.astype(np.uint16), pad_raw=True)
    np.testing.assert_array_equal(predict_dense(net, raw.astype(np.uint16), pad_raw=True, grey_range=(0, 255)),
                                  expected)
    np.testing.assert_allclose(predict_dense(net, raw.astype(np.uint16) * 16, pad_raw=True, grey_range=[0, 4080]),
                               expected, atol=1e-6)
    grey = raw / np.float32(255)  # float raw: used as it is, for every net
    np.testing.assert_allclose(predict_dense(net, grey, pad_raw=True), expected, atol=1e-6)
    with pytest.raises(ConfigError, match="give two numbers LOW < HIGH"):
        predict_dense(net, raw, grey_range=(255, 0))
    old = make_fast_net()  # no record (an earlier model file): the dtype's range, as before
    assert not np.allclose(predict_dense(old, raw.astype(np.uint16), pad_raw=True), expected, atol=1e-3)
    floats = with_record(make_fast_net(), TrainingData(input_scalings([("f.h5", "float32")])))
    with caplog.at_level(logging.WARNING, logger="ekn"):
        np.testing.assert_array_equal(predict_dense(floats, raw, pad_raw=True), expected)
    assert any("trained on float32 raw used as it is" in r.getMessage() for r in caplog.records)


def test_a_uint16_copy_predicts_like_the_uint8_data_with_the_model_files_scaling(tmp_path, raws, nm, monkeypatch,
                                                                                 capsys):
    raw, paths = raws
    model = nm.model_manager.newmodel("scaled")
    inp = nm.Input((None, 1, 3, 11, 11), "b,f,z,y,x", name="raw")
    model.designate_nodes(input_node=inp, prediction_node=nm.Conv(inp, 2, (1, 3, 3), activation_func="sigmoid"))
    model.training_data = UINT8
    path = model.save(str(tmp_path / "m.mdl"))
    kw = dict(tile=None, progress=False)
    predict_volume(path, paths["u8"], str(tmp_path / "u8.zarr"), **kw)
    expected = read_volume(str(tmp_path / "u8.zarr"))
    assert np.ptp(expected) > 0.05
    with pytest.raises(ConfigError, match=r"u16\.h5:raw: uint16 raw, whose range 0\.\.65535 .* --grey-range 0 255"):
        predict_volume(path, paths["u16"], str(tmp_path / "u16.zarr"), **kw)
    assert not os.path.exists(tmp_path / "u16.zarr") and not os.path.exists(progress_path(str(tmp_path / "u16.zarr")))
    predict_volume(path, paths["u16"], str(tmp_path / "u16.zarr"), grey_range=(0, 255), **kw)
    np.testing.assert_array_equal(read_volume(str(tmp_path / "u16.zarr")), expected)
    again = predict_volume(path, paths["u16"], str(tmp_path / "u16.zarr"), grey_range=(0, 255), **kw)
    assert again["skipped"] == again["blocks"]  # the stated range is part of the job: the rerun resumes it
    other = predict_volume(path, paths["u16"], str(tmp_path / "u16.zarr"), grey_range=(0, 256), **kw)
    assert other["skipped"] == 0  # ... and another range is another job
    args = ["predict", path, paths["b12"], str(tmp_path / "b12.zarr"), "--tile", "model", "--no-progress"]
    assert main(args) == 2
    (error,) = error_lines(capsys)
    assert "b12.h5:raw: uint16 raw" in error and "--grey-range 0 4095" in error
    assert main(args + ["--grey-range", "0", "4080"]) == 0
    np.testing.assert_allclose(read_volume(str(tmp_path / "b12.zarr")), expected, atol=1e-6)


def test_dask_workers_scale_with_the_stated_range(tmp_path, raws, monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.setenv("PYTHONPATH", HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.syspath_prepend(HERE)
    raw, paths = raws
    factory = "test_model_training_data:make_uint8_net"
    predict_volume(factory, paths["u8"], str(tmp_path / "one.zarr"), **FAST)
    out = str(tmp_path / "dask.zarr")
    summary = predict_volume(factory, paths["u16"], out, workers=1, grey_range=(0, 255), **FAST)
    assert summary["blocks"] > 1
    np.testing.assert_array_equal(read_volume(out), read_volume(str(tmp_path / "one.zarr")))


# --------------------------------------------------------------------------------------- affinities
def test_affinity_tta_takes_the_offsets_the_model_file_records():
    raw = np.random.default_rng(0).random((7, 23, 22)).astype(np.float32)
    names = ["", "z", "yx"]
    expected = reference(strided_net(3), raw, names, NHOOD3D, (1, 1, 1))
    recorded = with_record(strided_net(3), TrainingData(affinity_offsets=tuple(map(tuple, NHOOD3D)),
                                                        affinity_axes="zyx"))
    got = predict_dense(recorded, raw, pad_raw=True, tta=names)
    np.testing.assert_allclose(got, expected, atol=2e-6)
    assert np.abs(got - scalar_mean(strided_net(3), raw, names)).max() > 1e-2  # without the record: scalars
    zxy = with_record(strided_net(3), TrainingData(affinity_offsets=tuple(map(tuple, NHOOD3D[:, [0, 2, 1]])),
                                                   affinity_axes="zxy"))  # columns in another axis order
    np.testing.assert_allclose(predict_dense(zxy, raw, pad_raw=True, tta=names), expected, atol=2e-6)
    np.testing.assert_array_equal(predict_dense(recorded, raw, pad_raw=True, tta=names, affinity_offsets=NHOOD3D),
                                  got)
    with pytest.raises(ConfigError, match=r"\(--nhood\) .* contradict the offsets .* that the model file records"):
        predict_dense(recorded, raw, pad_raw=True, tta=names, affinity_offsets=NHOOD3D[::-1])


# --------------------------------------------------------------------------------------- outputs
def _foreign(path):
    """A volume at ``path`` that no ekn job wrote."""
    with create_volume(path, shape=(2, 3, 4), dtype="uint8") as vol:
        vol[...] = 7
    return path


@pytest.mark.parametrize("name", ["pred.zarr", "pred.h5:probs", "sections/*.tif"])
def test_predict_refuses_an_output_no_ekn_job_wrote_unless_overwrite(tmp_path, raws, name, capsys):
    raw, paths = raws
    net, out = make_fast_net(), _foreign(str(tmp_path / name))
    with pytest.raises(ConfigError, match=r"already holds a uint8 volume of shape \(2, 3, 4\) that no ekn job wrote "
                                          r".*--overwrite \(overwrite=True in Python\)"):
        predict_volume(net, paths["u8"], out, **FAST)
    assert read_volume(out).tolist() == np.full((2, 3, 4), 7).tolist()
    predict_volume(net, paths["u8"], out, overwrite=True, **FAST)
    expected = predict_dense(make_fast_net(), raw, pad_raw=True)
    np.testing.assert_allclose(read_volume(out), expected, atol=1e-6)
    # an ekn job's output: another job replaces it, the same job resumes it, both without --overwrite
    summary = predict_volume(net, paths["u8"], out, roi=((0, 0, 0), (9, 20, 20)), **FAST)
    assert summary["skipped"] == 0 and read_volume(out).shape == (2, 9, 20, 20)
    again = predict_volume(net, paths["u8"], out, roi=((0, 0, 0), (9, 20, 20)), **FAST)
    assert again["skipped"] == again["blocks"]


def test_overwrite_also_replaces_a_group_of_arrays(tmp_path, raws):
    out = str(tmp_path / "pred.zarr")
    _foreign(f"{out}:other")
    with pytest.raises(EknError, match="no ekn job wrote"):  # a group of one array reads as that array
        predict_volume(make_fast_net(), raws[1]["u8"], out, **FAST)
    _foreign(f"{out}:more")
    with pytest.raises(EknError, match=r"holds the arrays \['more', 'other'\]"):  # the container's own rule
        predict_volume(make_fast_net(), raws[1]["u8"], out, **FAST)
    predict_volume(make_fast_net(), raws[1]["u8"], out, overwrite=True, **FAST)
    assert read_volume(out).shape == (2, 9, 45, 41)


def test_cli_overwrite(tmp_path, raws, monkeypatch, capsys):
    monkeypatch.syspath_prepend(HERE)
    out = _foreign(str(tmp_path / "pred.zarr"))
    args = ["predict", "prediction_testnets:make_fast_net", raws[1]["u8"], out, "--tile", "model", "--no-progress"]
    assert main(args) == 2
    (error,) = error_lines(capsys)
    assert "no ekn job wrote" in error
    assert main(args + ["--overwrite"]) == 0
    assert read_volume(out).shape == (2, 9, 45, 41)


def test_segment_refuses_an_output_no_ekn_job_wrote_before_any_block(tmp_path, monkeypatch, capsys):
    from ekn_plugins.evaluation.blockwise_segmentation import segment_volume, work_folder

    probs = str(tmp_path / "probs.zarr")
    zarr.save_array(probs, np.random.default_rng(2).random((8, 30, 30)).astype(np.float32))
    out = _foreign(str(tmp_path / "seg.zarr"))
    with pytest.raises(ConfigError, match="no ekn job wrote"):
        segment_volume(probs, out, block=(8, 16, 16), progress=False)
    assert not os.path.exists(work_folder(out)) and read_volume(out).max() == 7
    args = ["segment", probs, out, "--block", "8,16,16", "--no-progress"]
    assert main(args) == 2 and "--overwrite" in error_lines(capsys)[0]
    assert main(args + ["--overwrite"]) == 0
    first = read_volume(out)
    assert first.shape == (8, 30, 30) and first.max() >= 1
    assert main(args) == 0  # its own output now: the same job finds it done
    np.testing.assert_array_equal(read_volume(out), first)


def test_input_scaling_describes_the_dtype_range():
    assert InputScaling.of("int16").describe() == "int16 raw mapped from -32768..32767"
    assert InputScaling.of("bool").grey_range == (0.0, 1.0)


def test_a_trained_model_file_records_the_raw_it_was_trained_on(tmp_path, monkeypatch):
    from ekn_core.persistence import read_model_file
    from ekn_core.trainer.config import ExperimentConfig
    from ekn_core.trainer.loop import Trainer
    from ekn_plugins.data.synth import write_dataset

    write_dataset(str(tmp_path / "data"), n_volumes=3, shape=(6, 48, 48), label_margin=(2, 8, 8), seed=0)
    monkeypatch.setenv("EKN_TEST_DATA", str(tmp_path / "data"))
    cfg = ExperimentConfig.from_file(os.path.join(HERE, "trainer_files", "tiny2d_config.py"), [
        f"save_path={str(tmp_path)!r}", "save_name='run'", "n_steps=2", "history_freq=2", "preview_freq=100",
        "param_save_it=100", "tensorboard=False"])
    trainer = Trainer(cfg)
    try:
        trainer.run()
    finally:
        trainer.close()
    (scaling,) = read_model_file(trainer.run_dir.model_path("final")).training_data.input_scaling
    assert scaling.grey_range == (0.0, 255.0) and len(scaling.volumes) == 3  # training and validation cubes
