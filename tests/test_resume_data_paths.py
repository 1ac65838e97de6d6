"""A resumed run trains on the data files it started with: run.json records the files the data
source reads (absolute paths, size and modification time) and the data folder variables; a resume
whose files resolve elsewhere (another EKN_DATA_DIR, another working directory) is refused unless
its own --set accepts them, a changed file gives a warning, and a run.json without the record
resumes unchecked."""

import json
import logging
import os
import re
import shutil

import numpy as np
import pytest

from ekn_core.errors import ConfigError
from ekn_core.trainer.data_files import (DATA_DIR_VARIABLES, DataFilesRefused, check_resume_data, data_files_record,
                                        fingerprint_file)
from ekn_core.trainer.rundir import RunDir

pytest.importorskip("tensorflow")

from toy_training import assert_same_params, params  # noqa: E402

#: A tiny 2-D barrier net on ``raw_<i>.h5`` / ``barrier_int16_<i>.h5`` in $EKN_DATA_DIR, as the examples find theirs.
CONFIG = '''
import os

_data = os.environ.get("EKN_DATA_DIR", "~/ekn_data/neuro_data_zxy")
data_class = "BatchCreatorImage"
data_init_kwargs = {"d_path": _data, "l_path": _data, "valid_cubes": [1],
                    "d_files": [(f"raw_{i}.h5", "raw") for i in range(2)],
                    "l_files": [(f"barrier_int16_{i}.h5", "lab") for i in range(2)]}
n_steps = 2
history_freq = 0
checkpoint_freq = 2
batch_size = 2
optimiser = "Adam"
optimiser_params = {"lr": 3e-3}
tensorboard = False
background_processes = False
batch_picture = False


def create_model():
    import ekn_core.neuromancer as nm

    inp = nm.Input((None, 1, 13, 13), "b,f,y,x", name="raw")
    out = nm.Conv(inp, 3, (3, 3))
    out = nm.Conv(out, 2, (1, 1), activation_func="lin")
    probs = nm.Softmax(out)
    target = nm.Input_like(probs, override_f=1, dtype="int16", name="target")
    loss = nm.AggregateLoss(nm.MultinoulliNLL(probs, target, target_is_sparse=True, name="nll"), name="loss")
    model = nm.model_manager.getmodel()
    model.designate_nodes(input_node=inp, target_node=target, loss_node=loss, prediction_node=probs)
    return model
'''


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """The config file, a data folder ``a`` and an identical copy ``b``; no data folder variable set."""
    from ekn_plugins.data.synth import write_dataset

    for name in DATA_DIR_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    write_dataset(str(tmp_path / "a"), n_volumes=2, shape=(2, 24, 24), label_margin=(0, 2, 2), seed=0)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    config = tmp_path / "tiny.py"
    config.write_text(CONFIG)
    return tmp_path, str(config)


def train(config=None, *overrides, resume=None, save_path=None):
    """``ekn train CONFIG|--resume RUN_DIR --set ...`` in-process; returns the closed trainer."""
    from ekn_core.trainer.loop import Trainer
    from ekn_plugins.commands.train import load_for_run

    cfg, run_dir = load_for_run(config, list(overrides), resume, save_path)
    trainer = Trainer(cfg, run_dir=run_dir, resume=resume is not None)
    try:
        assert trainer.run() == "finished"
    finally:
        trainer.close()
    return trainer


def volumes(folder):
    """The four volume paths of the config's data in ``folder``, in the data source's order."""
    return [os.path.join(folder, name) for i in range(2) for name in (f"raw_{i}.h5:raw", f"barrier_int16_{i}.h5:lab")]


def data_record(run_dir):
    return json.load(open(run_dir.run_json))["data_files"]


def test_a_resume_on_another_data_dir_is_refused_unless_its_own_set_accepts_the_new_files(setup, monkeypatch, caplog):
    tmp_path, config = setup
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    monkeypatch.setenv("EKN_DATA_DIR", a)
    first = train(config, "save_name='run'", save_path=str(tmp_path / "runs"))
    run, run_dir = first.run_dir.path, first.run_dir
    record = data_record(run_dir)
    assert record["environment"]["EKN_DATA_DIR"] == a
    assert [f["path"] for f in record["files"]] == volumes(a)
    for entry, path in zip(record["files"], volumes(a)):
        stat = os.stat(path.rsplit(":", 1)[0])
        assert (entry["stat_of"], entry["size"], entry["mtime_ns"]) == (path.rsplit(":", 1)[0], stat.st_size,
                                                                        stat.st_mtime_ns)

    monkeypatch.setenv("EKN_DATA_DIR", b)
    with pytest.raises(ConfigError, match=re.escape(
            f"cannot resume {run}: its data source reads other files than the run trained on: "
            f"'{a}/raw_0.h5:raw' is now '{b}/raw_0.h5:raw' (and 3 more). "
            f"EKN_DATA_DIR was '{a}' when the run started, now '{b}'. To resume on the run's files: "
            f"`EKN_DATA_DIR={a} ekn train --resume {run}`. To train on the new files on purpose, resume with "
            "--set accept_new_data=True.")):
        train(None, "n_steps=4", resume=run)
    assert json.load(open(run_dir.run_json))["status"] == "finished"  # a refused resume is no failed run
    caplog.set_level(logging.WARNING, logger="ekn")
    accepted = train(None, "n_steps=4", "accept_new_data=True", resume=run)
    assert accepted.step == 4
    assert (f"the run trained on other data files: '{a}/raw_0.h5:raw' is now '{b}/raw_0.h5:raw'" in caplog.text
            and "it continues on the new ones, as --set accept_new_data=True asks" in caplog.text)
    assert [f["path"] for f in data_record(run_dir)["files"]] == volumes(b)  # the new files are the run's now
    caplog.clear()
    assert train(None, "n_steps=6", resume=run).step == 6  # on them: no question, no warning
    assert "data file" not in caplog.text
    monkeypatch.setenv("EKN_DATA_DIR", a)  # run.json's overrides hold the earlier acceptance: it does not count
    with pytest.raises(ConfigError, match=re.escape(f"'{b}/raw_0.h5:raw' is now '{a}/raw_0.h5:raw'")):
        train(None, "n_steps=8", resume=run)
    with pytest.raises(ConfigError, match="accept_new_data must be True or False, got 'yes'"):
        train(None, "n_steps=8", "accept_new_data='yes'", resume=run)


def test_accepted_identical_files_resume_exactly_and_a_variable_unset_at_the_start_is_named(setup, monkeypatch):
    """The same content in another folder, accepted: the run ends as the uninterrupted one. The run
    started without EKN_DATA_DIR (the config's default folder, under a temporary home): the way
    back unsets it."""
    tmp_path, config = setup
    monkeypatch.setenv("EKN_DATA_DIR", str(tmp_path / "a"))
    whole = train(config, "n_steps=4", "save_name='whole'", save_path=str(tmp_path / "runs"))
    monkeypatch.delenv("EKN_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    shutil.copytree(tmp_path / "a", tmp_path / "home" / "ekn_data" / "neuro_data_zxy")
    run = train(config, "save_name='part'", save_path=str(tmp_path / "runs")).run_dir.path
    assert [f["path"] for f in data_record(RunDir(run))["files"]] == volumes(
        str(tmp_path / "home" / "ekn_data" / "neuro_data_zxy"))
    monkeypatch.setenv("EKN_DATA_DIR", str(tmp_path / "b"))
    with pytest.raises(ConfigError, match=re.escape(
            f"EKN_DATA_DIR was None when the run started, now '{tmp_path / 'b'}'. To resume on the run's files: "
            f"`env -u EKN_DATA_DIR ekn train --resume {run}`. To train")):
        train(None, "n_steps=4", resume=run)
    resumed = train(None, "n_steps=4", "accept_new_data=True", resume=run)
    assert_same_params(params(whole), params(resumed))


def test_relative_data_paths_resumed_in_another_directory_are_refused_with_the_run_s_directory(setup, monkeypatch):
    tmp_path, config = setup
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EKN_DATA_DIR", "a")  # relative: to the working directory
    run = train(config, "save_name='run'", save_path=str(tmp_path / "runs")).run_dir.path
    (tmp_path / "elsewhere").mkdir()
    shutil.copytree(tmp_path / "a", tmp_path / "elsewhere" / "a")
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match=re.escape(
            f"'{tmp_path}/a/raw_0.h5:raw' is now '{tmp_path}/elsewhere/a/raw_0.h5:raw'") + ".*" + re.escape(
            f"The run started in {tmp_path} (relative data paths refer to the working directory). To resume on the "
            f"run's files: `ekn train --resume {run}` in {tmp_path}. To train on the new files on purpose")):
        train(None, "n_steps=4", resume=run)
    monkeypatch.chdir(tmp_path)
    assert train(None, "n_steps=4", resume=run).step == 4


def test_a_changed_data_file_gives_one_warning_naming_it(setup, monkeypatch, caplog):
    tmp_path, config = setup
    monkeypatch.setenv("EKN_DATA_DIR", str(tmp_path / "a"))
    run = train(config, "save_name='run'", save_path=str(tmp_path / "runs")).run_dir.path
    changed = str(tmp_path / "a" / "barrier_int16_1.h5")
    before = os.stat(changed)
    os.utime(changed, ns=(before.st_atime_ns, before.st_mtime_ns + 7 * 10**9))  # touched
    caplog.set_level(logging.WARNING, logger="ekn")
    assert train(None, "n_steps=4", resume=run).step == 4
    warnings = [r.getMessage() for r in caplog.records if "changed since the run recorded it" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith(
        f"the data file {changed} changed since the run recorded it (size {before.st_size} -> {before.st_size} bytes, "
        "modified ")
    caplog.clear()
    assert train(None, "n_steps=6", resume=run).step == 6
    assert "changed since" not in caplog.text  # the record holds the file as it is now


def test_a_run_json_without_the_record_resumes_unchecked_and_gets_it(setup, monkeypatch, caplog):
    tmp_path, config = setup
    monkeypatch.setenv("EKN_DATA_DIR", str(tmp_path / "a"))
    run_dir = train(config, "save_name='run'", save_path=str(tmp_path / "runs")).run_dir
    info = json.load(open(run_dir.run_json))
    del info["data_files"]  # as written before ekn recorded the data files
    run_dir.write_run_json(info)
    monkeypatch.setenv("EKN_DATA_DIR", str(tmp_path / "b"))
    caplog.set_level(logging.INFO, logger="ekn")
    assert train(None, "n_steps=4", resume=run_dir.path).step == 4
    assert (f"run.json of {run_dir.path} records no data files (the run started before ekn recorded them): the data "
            "of this resume is not checked against the run's") in caplog.text
    assert [f["path"] for f in data_record(run_dir)["files"]] == volumes(str(tmp_path / "b"))


def test_a_resume_whose_data_source_cannot_be_built_says_why_and_keeps_the_status(setup, monkeypatch):
    """The common "data moved" case: the files are missing where the config now points (the
    check after the build never ran) or gone from where the run read them; a symlink left at the
    old place points elsewhere (accepted on purpose), a path to where they are now is the same files."""
    tmp_path, config = setup
    a = str(tmp_path / "a")
    monkeypatch.setenv("EKN_DATA_DIR", a)
    run_dir = train(config, "save_name='run'", save_path=str(tmp_path / "runs")).run_dir
    run = run_dir.path
    missing = str(tmp_path / "c")
    monkeypatch.setenv("EKN_DATA_DIR", missing)
    with pytest.raises(DataFilesRefused) as err:
        train(None, "n_steps=4", resume=run)
    assert str(err.value).startswith(f"cannot resume {run}: its data source could not be built (")
    assert str(err.value).endswith(
        f"/raw_0.h5' does not exist). EKN_DATA_DIR was '{a}' when the run started, now '{missing}'. To resume on "
        f"the run's files: `EKN_DATA_DIR={a} ekn train --resume {run}`")
    assert json.load(open(run_dir.run_json))["status"] == "finished"  # refused, not failed
    os.rename(a, missing)  # moved: the config's paths still point to the old folder
    monkeypatch.setenv("EKN_DATA_DIR", a)
    with pytest.raises(DataFilesRefused, match=re.escape(
            f"the run's data files '{a}/raw_0.h5:raw' (and 3 more) no longer exist. Put them back, or point the "
            "config's data paths to where they are now and resume with --set accept_new_data=True")):
        train(None, "n_steps=4", resume=run)
    assert json.load(open(run_dir.run_json))["status"] == "finished"
    os.symlink(missing, a)  # the old path now a link to another place: the run's files or copies, not told apart
    with pytest.raises(DataFilesRefused, match=re.escape(
            f"'{a}/raw_0.h5:raw' points to '{missing}/raw_0.h5/raw' now, to '{a}/raw_0.h5/raw' when the run started "
            "(a symbolic link on its way points elsewhere) (and 3 more)")):
        train(None, "n_steps=4", resume=run)
    assert train(None, "n_steps=4", "accept_new_data=True", resume=run).step == 4
    monkeypatch.setenv("EKN_DATA_DIR", missing)
    assert train(None, "n_steps=6", resume=run).step == 6


def test_set_up_errors_around_the_data_source_are_not_blamed_on_moved_data(setup, monkeypatch):
    """A resume in another data folder whose class_weights (checked before the source is built) or
    data_batch_args (checked after) are wrong gets their own error, not "could not be built"."""
    tmp_path, _ = setup
    strided = tmp_path / "strided.py"
    strided.write_text(CONFIG.replace("nm.Conv(inp, 3, (3, 3))", "nm.Conv(inp, 3, (2, 2), pool_shape=(2, 2))"))
    monkeypatch.setenv("EKN_DATA_DIR", str(tmp_path / "a"))
    run = train(str(strided), "save_name='run'", save_path=str(tmp_path / "runs")).run_dir.path
    monkeypatch.setenv("EKN_DATA_DIR", str(tmp_path / "b"))
    for override, error in [("class_weights=[0.3, 0.7]", r"^class_weights = \[0.3, 0.7\] \(a config setting\) feeds"),
                            ("data_batch_args={'force_dense': True}", "^data_batch_args force_dense=True gives")]:
        with pytest.raises(ConfigError, match=error) as err:
            train(None, "n_steps=4", override, resume=run)
        assert not isinstance(err.value, DataFilesRefused) and "could not be built" not in str(err.value)


def test_paths_and_working_directories_are_compared_with_their_links_resolved(tmp_path, monkeypatch):
    real, other = tmp_path / "real", tmp_path / "other"
    for folder in (real, other):
        folder.mkdir()
        (folder / "raw.h5").write_bytes(b"1234")
    (tmp_path / "link").symlink_to(real)

    class Source:
        def __init__(self, path):
            self.path = str(path)

        def data_files(self):
            return [self.path + ":raw"]

    linked = data_files_record(Source(tmp_path / "link" / "raw.h5"))
    assert linked["files"][0]["place"] == str(real / "raw.h5" / "raw")
    check_resume_data(linked, data_files_record(Source(real / "raw.h5")), "RUN", accepted=False)  # the same file
    old = {**linked, "files": [{k: v for k, v in f.items() if k != "place"} for f in linked["files"]]}
    check_resume_data(old, data_files_record(Source(real / "raw.h5")), "RUN", accepted=False)  # recorded without it
    monkeypatch.chdir(real)
    elsewhere = data_files_record(Source(other / "raw.h5"))
    with pytest.raises(DataFilesRefused, match=re.escape(f"The run started in {tmp_path / 'cwd'} (relative")):
        check_resume_data(linked, elsewhere, "RUN", accepted=False, cwd=str(tmp_path / "cwd"))
    (tmp_path / "cwd").symlink_to(real)  # the run's working directory, reached through a link
    with pytest.raises(DataFilesRefused) as err:
        check_resume_data(linked, elsewhere, "RUN", accepted=False, cwd=str(tmp_path / "cwd"))
    assert "The run started in" not in str(err.value)


def test_a_link_re_pointed_to_copies_of_the_same_size_and_time_is_another_file(tmp_path):
    real, copy = tmp_path / "real", tmp_path / "copy"
    real.mkdir()
    (real / "raw.h5").write_bytes(b"1234")
    shutil.copytree(real, copy)  # copy2: the same size and modification time
    assert os.stat(copy / "raw.h5").st_mtime_ns == os.stat(real / "raw.h5").st_mtime_ns
    (tmp_path / "current").symlink_to(real)

    class Source:
        def data_files(self):
            return [str(tmp_path / "current" / "raw.h5") + ":raw"]

    recorded = data_files_record(Source())
    check_resume_data(recorded, data_files_record(Source()), "RUN", accepted=False)  # the link unchanged: fine
    (tmp_path / "current").unlink()
    (tmp_path / "current").symlink_to(copy)
    with pytest.raises(DataFilesRefused, match=re.escape(
            f"'{tmp_path}/current/raw.h5:raw' points to '{copy}/raw.h5/raw' now, to '{real}/raw.h5/raw' when the run "
            "started (a symbolic link on its way points elsewhere). To resume on the run's files, make the config's "
            "data paths point to them again")):
        check_resume_data(recorded, data_files_record(Source()), "RUN", accepted=False)
    old = {**recorded, "files": [{k: v for k, v in f.items() if k != "place"} for f in recorded["files"]]}
    check_resume_data(old, data_files_record(Source()), "RUN", accepted=False)  # recorded without it: not known


@pytest.mark.parametrize("layout, path, expected", [
    (["em.zarr/.zgroup", "em.zarr/raw/.zarray"], "em.zarr:raw", "em.zarr/raw/.zarray"),
    (["em.zarr/zarr.json", "em.zarr/lab/zarr.json"], "em.zarr:raw", "em.zarr/zarr.json"),  # no such key folder
    (["em.n5/attributes.json", "em.n5/raw/attributes.json"], "em.n5:raw", "em.n5/raw/attributes.json"),
    (["em/info", "em/8_8_40/0-1"], "precomputed://file://{tmp}/em", "em/info"),  # Neuroglancer precomputed
    (["em/ds.k.toml", "em/mag1/x"], "em", "em/ds.k.toml"),  # KNOSSOS
    (["em/a.png", "em/b.png"], "em", "em"),  # an image stack: the folder itself
    (["em/a.png", "em/b.png"], "em/*.png", "em"),  # and that of a pattern
    (["raw.h5"], "raw.h5:raw", "raw.h5"),
])
def test_a_volume_is_fingerprinted_by_its_file_or_its_metadata_file(tmp_path, layout, path, expected):
    for name in layout:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    where = path.format(tmp=tmp_path) if "{tmp}" in path else str(tmp_path / path)
    assert fingerprint_file(where) == str(tmp_path / expected)
    assert fingerprint_file(str(tmp_path / "missing.h5:raw")) is None


def test_tracing_data_names_its_volume_and_skeleton_files_not_arrays(tmp_path):
    from ekn_plugins.data.synth import write_tube_dataset
    from ekn_plugins.data.tracing import TracingData
    from ekn_plugins.utils.skeleton import TubeSkeleton

    write_tube_dataset(str(tmp_path), n_volumes=2, shape=(12, 16, 24))
    tube = TubeSkeleton.from_path([[6, 8, 2], [6, 8, 20]], radius=2.0)
    data = TracingData((3, 5, 5), [("tube_0.h5", "raw"), np.zeros((12, 16, 24), np.float32), "tube_1.h5:raw"],
                       ["tube_0.nml", [tube], ["tube_1.nml", tube]], d_path=str(tmp_path))
    assert data.data_files() == [str(tmp_path / name) for name in
                                 ("tube_0.h5:raw", "tube_0.nml", "tube_1.h5:raw", "tube_1.nml")]
