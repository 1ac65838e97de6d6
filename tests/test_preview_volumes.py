"""Previews as volumes: zarr/HDF5 snapshots and KNOSSOS .k.zip overlays, checked against dense
predictions computed independently (numpy reference nets, the engine on the whole volume)."""

import os
from types import SimpleNamespace

import numpy as np
import pytest

import ekn_core.volumes
from ekn_core.errors import ConfigError
from ekn_core.prediction import predict_dense
from ekn_core.trainer.preview import PreviewVolume, Previewer
from ekn_core.volumes import create_volume, open_volume
from ekn_plugins.trainer_hooks import knossos_preview, preview_snapshots
from ekn_plugins.trainer_hooks.preview_snapshots import snapshot_path, snapshot_steps

from prediction_testnets import make_fast_net

HERE = os.path.dirname(os.path.abspath(__file__))


def _trainer(folder, **config):
    settings = {"preview_snapshot": None, "knossos_preview": None, **config}
    return SimpleNamespace(config=SimpleNamespace(**settings), run_dir=SimpleNamespace(previews=str(folder)))


@pytest.mark.parametrize("fmt, max_z_pred", [("zarr", "all"), ("h5", 3)])
def test_snapshot_steps_hold_the_dense_prediction_of_the_preview_volume(tmp_path, fmt, max_z_pred):
    net = make_fast_net()
    vol = np.random.default_rng(1).random((9, 30, 33)).astype(np.float32)
    previewer = Previewer(net, [PreviewVolume("v", vol, offset=(4, 0, 0))], str(tmp_path), max_z_pred=max_z_pred)
    trainer = _trainer(tmp_path, preview_snapshot=fmt)
    for step in (5, 10):
        preview_snapshots.ekn_on_preview(trainer, step, previewer.predict())
    full = predict_dense(net, vol, pad_raw=True)  # the whole volume at once, mirrored by the engine
    z0, n = (0, 9) if max_z_pred == "all" else (3, 3)
    path = snapshot_path(str(tmp_path), fmt)
    assert snapshot_steps(path) == [5, 10]
    for step in (5, 10):
        with open_volume(f"{path}:step{step}/pred_v") as pred:
            assert pred.shape == (2, n, 30, 33) and pred.axes == "czyx"
            np.testing.assert_allclose(pred[...], full[:, z0:z0 + n], atol=1e-5)
    with open_volume(f"{path}:raw_v") as raw:
        np.testing.assert_array_equal(raw[...], vol[z0:z0 + n])


def test_a_step_killed_while_written_is_not_reported(tmp_path, monkeypatch):
    vol = np.random.default_rng(2).random((4, 30, 30)).astype(np.float32)
    blocks = Previewer(make_fast_net(), [("v", vol)], str(tmp_path), max_z_pred=2).predict()
    path = snapshot_path(str(tmp_path), "zarr")
    preview_snapshots.write_snapshot(path, 5, blocks, set())
    real = ekn_core.volumes.create_volume

    def dies_on_predictions(target, *args, **kwargs):
        if "/pred_" in target:
            raise KeyboardInterrupt("killed")
        return real(target, *args, **kwargs)

    monkeypatch.setattr(ekn_core.volumes, "create_volume", dies_on_predictions)
    for step in (10, 5):  # a new step, and step 5 written again after a resume
        with pytest.raises(KeyboardInterrupt):
            preview_snapshots.write_snapshot(path, step, blocks, set())
    assert snapshot_steps(path) == []
    monkeypatch.setattr(ekn_core.volumes, "create_volume", real)
    preview_snapshots.write_snapshot(path, 10, blocks, set())
    assert snapshot_steps(path) == [10]


def test_hdf5_snapshots_are_never_written_in_place_so_a_kill_keeps_earlier_steps(tmp_path, monkeypatch):
    import h5py

    vol = np.random.default_rng(3).random((4, 30, 30)).astype(np.float32)
    blocks = Previewer(make_fast_net(), [("v", vol)], str(tmp_path), max_z_pred=2).predict()
    path = snapshot_path(str(tmp_path), "h5")
    preview_snapshots.write_snapshot(path, 5, blocks, set())
    index_before = open(path, "rb").read()
    real_create, real_file = ekn_core.volumes.create_volume, h5py.File

    def dies_on_predictions(target, *args, **kwargs):
        if "pred_" in target:
            raise KeyboardInterrupt("killed")
        return real_create(target, *args, **kwargs)

    monkeypatch.setattr(ekn_core.volumes, "create_volume", dies_on_predictions)
    with pytest.raises(KeyboardInterrupt):
        preview_snapshots.write_snapshot(path, 10, blocks, set())
    assert open(path, "rb").read() == index_before and snapshot_steps(path) == [5]
    monkeypatch.setattr(ekn_core.volumes, "create_volume", real_create)
    final_files = {os.path.abspath(path)} | {os.path.abspath(os.path.join(path + ".d", name))
                                              for name in ("raw.h5", "step5.h5", "step10.h5")}
    opened_for_writing = []

    def spy(name, mode="r", *args, **kwargs):
        if mode != "r" and os.path.abspath(str(name)) in final_files:
            opened_for_writing.append(name)
        return real_file(name, mode, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", spy)
    for step in (10, 5):  # a new step, and step 5 again after a resume (raw written again)
        preview_snapshots.write_snapshot(path, step, blocks, set())
    monkeypatch.setattr(h5py, "File", real_file)
    assert opened_for_writing == [] and snapshot_steps(path) == [5, 10]
    for step in (5, 10):
        with open_volume(f"{path}:step{step}/pred_v") as pred:
            np.testing.assert_array_equal(pred[...], blocks[0].prediction)
    with open_volume(f"{path}:raw_v") as raw:
        np.testing.assert_array_equal(raw[...], blocks[0].raw)
    assert sorted(os.listdir(path + ".d")) == ["raw.h5", "step10.h5", "step5.h5"]  # no temporary files left


def test_preview_option_mistakes_get_one_clear_error_each(tmp_path, monkeypatch):
    net, vol = make_fast_net(), np.zeros((4, 30, 30), np.float32)
    with pytest.raises(ConfigError, match="max_z_pred must be a positive integer or 'all', got 'al'"):
        Previewer(net, [("v", vol)], str(tmp_path), max_z_pred="al")
    with pytest.raises(ConfigError, match="distinct names"):
        Previewer(net, [("v", vol), ("v", vol)], str(tmp_path))
    monkeypatch.setattr("ekn_core.trainer.preview.MAX_ALL_Z_VOXELS", 4 * 30 * 30 - 1)
    Previewer(net, [("v", vol)], str(tmp_path), max_z_pred=3)  # only the central slices: no limit
    with pytest.raises(ConfigError, match="too large to predict in full"):
        Previewer(net, [("v", vol)], str(tmp_path), max_z_pred="all")
    assert preview_snapshots.ekn_check_config({"preview_snapshot": "zar"}) == [
        "preview_snapshot must be None, 'zarr' or 'h5', got 'zar'"]
    assert preview_snapshots.ekn_check_config({"preview_snapshot": "h5"}) is None
    found = knossos_preview.problems({"dataset": 3, "offset": (1, 2, 4), "size": (8, 8, 8), "mag": 2,
                                      "channel": -1, "threshold": "0.5", "name": "a/b"})
    assert found == ["knossos_preview dataset must be the path of a KNOSSOS config, got 3",
                     "knossos_preview offset (1, 2, 4) must be a multiple of mag 2 on every axis",
                     "knossos_preview channel must be an integer >= 0, got -1",
                     "knossos_preview threshold must be a number or None (argmax), got '0.5'",
                     "knossos_preview name must be a file-name-safe string (letters, digits, _ . -), got 'a/b'"]
    assert knossos_preview.problems({"offset": (0, 0, 0)}) == ["knossos_preview needs 'dataset'",
                                                               "knossos_preview needs 'size'"]


def test_config_reports_the_preview_settings_mistakes(tmp_path):
    from ekn_core.trainer.config import ExperimentConfig

    path = tmp_path / "exp.py"
    path.write_text("data_class = 'MNISTData'\nn_steps = 10\npreview_snapshot = 'tif'\n"
                    "knossos_preview = {'dataset': 'em.k.toml', 'offset': (0, 0, 0)}\n"
                    "def create_model():\n    return None\n")
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_file(str(path))
    assert "preview_snapshot must be None, 'zarr' or 'h5', got 'tif'" in str(err.value)
    assert "knossos_preview needs 'size'" in str(err.value)


@pytest.mark.parametrize("threshold", [0.5, None])
def test_knossos_overlay_reads_back_as_the_thresholded_prediction_at_its_global_place(tmp_path, threshold):
    from ekn_plugins.readers.knossos.cubes import decode_cube
    from ekn_plugins.readers.knossos.kzip import read_kzip

    raw = (np.random.default_rng(3).random((12, 40, 44)) * 255).astype(np.uint8)  # (z, y, x)
    dataset = str(tmp_path / "em" / "ds.k.toml")
    cube = (16, 16, 8)  # x, y, z
    with create_volume(dataset, shape=raw.shape, dtype="uint8", cube_shape=cube, name="ds") as vol:
        vol[...] = raw
    offset, size = (6, 10, 2), (24, 20, 8)  # x, y, z
    net = make_fast_net()
    expected_pred = predict_dense(net, raw[2:10, 10:30, 6:30].astype(np.float32) / 255, pad_raw=True)
    if threshold is not None:
        threshold = float(np.median(expected_pred[1]))  # a mix of ids 0 and 1
        region = (expected_pred[1] > threshold).astype(np.uint64)
    else:
        region = np.argmax(expected_pred, axis=0).astype(np.uint64)  # this net: class 1 everywhere
    assert region.any() and (threshold is None or not region.all())
    setting = {"dataset": dataset, "offset": offset, "size": size, "channel": 1, "threshold": threshold,
               "name": "mem"}

    volumes = knossos_preview.ekn_preview_volumes({"knossos_preview": setting})
    blocks = Previewer(net, volumes, str(tmp_path / "previews"), max_z_pred=1).predict()
    knossos_preview.ekn_on_preview(_trainer(tmp_path / "previews", knossos_preview=setting), 7, blocks)

    kz = read_kzip(str(tmp_path / "previews" / "mem-step7.k.zip"))
    assert kz.experiment == "ds"
    canvas = np.zeros((16, 48, 48), np.uint64)  # whole cubes around the data set, (z, y, x)
    canvas[2:10, 10:30, 6:30] = region
    for (mag, x, y, z), payload in kz.seg_cubes.items():
        assert mag == 1
        got = decode_cube(payload, ".seg.sz", cube, np.uint64, name="cube")
        np.testing.assert_array_equal(got, canvas[z * 8:(z + 1) * 8, y * 16:(y + 1) * 16, x * 16:(x + 1) * 16])
    stored = {(x, y, z) for _, x, y, z in kz.seg_cubes}
    assert stored == {(x, y, z) for x in range(3) for y in range(3) for z in range(2)
                      if canvas[z * 8:(z + 1) * 8, y * 16:(y + 1) * 16, x * 16:(x + 1) * 16].any()}
    read, read_offset = kz.segmentation(mag=1, cube_shape=cube, offset=(0, 0, 0), size=(44, 40, 12))
    assert read_offset == (0, 0, 0)
    np.testing.assert_array_equal(read, canvas[:12, :40, :44])


def test_knossos_region_outside_the_dataset_is_a_config_error(tmp_path):
    dataset = str(tmp_path / "ds.k.toml")
    with create_volume(dataset, shape=(8, 16, 16), dtype="uint8", cube_shape=(16, 16, 8)):
        pass
    setting = {"dataset": dataset, "offset": (8, 0, 0), "size": (16, 16, 8)}
    with pytest.raises(ConfigError, match="leaves the data set"):
        knossos_preview.ekn_preview_volumes({"knossos_preview": setting})


def test_training_writes_snapshots_at_its_preview_steps_and_trains_as_without(tmp_path):
    pytest.importorskip("tensorflow")
    from ekn_core.trainer.config import ExperimentConfig
    from ekn_core.trainer.loop import Trainer
    from ekn_plugins.data.synth import write_dataset

    write_dataset(str(tmp_path / "data"), n_volumes=3, shape=(6, 48, 48), label_margin=(2, 8, 8), seed=0)
    os.environ["EKN_TEST_DATA"] = str(tmp_path / "data")
    weights = {}
    for name, extra in (("with", ["preview_snapshot='zarr'", "preview_kwargs={'max_z_pred': 'all'}"]),
                        ("without", ["preview_freq=None", "initial_prev_h=1e6"])):
        cfg = ExperimentConfig.from_file(os.path.join(HERE, "trainer_files", "tiny2d_config.py"), [
            f"save_path={str(tmp_path)!r}", f"save_name={name!r}", "n_steps=4", "preview_freq=2", "plot_on=False",
            "tensorboard=False", "batch_picture=False", *extra])
        trainer = Trainer(cfg)
        try:
            assert trainer.run() == "finished"
        finally:
            trainer.close()
        weights[name] = trainer.model.get_param_values()
        if name == "with":
            assert snapshot_steps(snapshot_path(trainer.run_dir.previews, "zarr")) == [2, 4]
    for node, params in weights["with"].items():
        for key, value in params.items():
            np.testing.assert_array_equal(weights["without"][node][key], value, err_msg=f"{node}/{key}")


def test_preview_of_a_knossos_config_is_named_after_its_data_set(tmp_path):
    """`vol_2.k.toml:LAYER` previews as `vol_2` (not `vol_2.k`) in PNG names and snapshot groups; a
    legacy `mag1/knossos.conf` as its data-set folder; a clash with a plugin's region names both."""
    from ekn_core.trainer.preview import load_preview_volumes

    from ekn_plugins.readers.knossos.writer import create_dataset

    raw = (np.random.default_rng(0).random((4, 32, 32)) * 255).astype(np.uint8)
    for root, configs in ((tmp_path / "vol_2.k.toml", ("toml", "pyk")), (tmp_path / "legacy", ("legacy",))):
        array = create_dataset(str(root), raw.shape, "uint8", cube_shape=(16, 16, 16), configs=configs,
                               mag_convention="power_of_two")
        array[...] = raw
        array.close()
    assert (tmp_path / "legacy" / "mag1" / "knossos.conf").is_file()
    names = [load_preview_volumes(spec)[0].name for spec in
             (f"{tmp_path}/vol_2.k.toml:vol_2", str(tmp_path / "vol_2.pyk.conf"), str(tmp_path / "legacy/mag1/knossos.conf"))]
    assert names == ["vol_2", "vol_2", "legacy"]
    volumes = load_preview_volumes(f"{tmp_path}/vol_2.k.toml:vol_2")
    np.testing.assert_array_equal(volumes[0].data, raw / np.float32(255))
    previewer = Previewer(make_fast_net(), volumes, str(tmp_path / "previews"), max_z_pred=1)
    blocks = previewer.predict()
    written = previewer.write(5, blocks)
    assert sorted(os.path.basename(p) for p in written) == ["vol_2-pred-c0-z1-step5.png", "vol_2-pred-c1-z1-step5.png",
                                                            "vol_2-raw-z1.png"]
    path = snapshot_path(str(tmp_path / "previews"), "zarr")
    preview_snapshots.ekn_on_preview(_trainer(tmp_path / "previews", preview_snapshot="zarr"), 5, blocks)
    with open_volume(f"{path}:step5/pred_vol_2") as pred:
        np.testing.assert_array_equal(pred[...], blocks[0].prediction)
    region = PreviewVolume("vol_2", raw.astype(np.float32), source="a plugin region")
    with pytest.raises(ConfigError, match=r"distinct names \('vol_2': .*vol_2.k.toml:vol_2, a plugin region\); rename"):
        Previewer(make_fast_net(), volumes + [region], str(tmp_path / "previews"))
