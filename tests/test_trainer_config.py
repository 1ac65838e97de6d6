"""Experiment configs: every setting, defaults, unknown names, overrides, paths (no TensorFlow)."""

import os
import re
import types

import pytest

from ekn_core import hookimpl
from ekn_core.errors import ConfigError
from ekn_core.trainer.config import (
    IGNORED,
    REQUIRED,
    SETTINGS,
    ExperimentConfig,
    Setting,
    all_settings,
    parse_override,
    settings_table,
)

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.join(HERE, "..", "docs", "training.md")

MINIMAL = "data_class = 'MNISTData'\nn_steps = 10\n\ndef create_model():\n    return None\n"


def write(tmp_path, text, name="exp.py"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_minimal_config_gets_defaults(tmp_path):
    cfg = ExperimentConfig.from_file(write(tmp_path, MINIMAL))
    assert cfg.n_steps == 10 and cfg.data_class == "MNISTData"
    for name, setting in SETTINGS.items():
        if setting.default is not REQUIRED and name not in ("create_model",):
            expected = {} if setting.default is None and isinstance(getattr(cfg, name), dict) else setting.default
            if name == "save_path":
                expected = os.path.expanduser(setting.default)
            assert getattr(cfg, name) == expected, name
    assert cfg.effective_checkpoint_freq == cfg.history_freq == 200


def test_unknown_name_suggests_the_closest_setting(tmp_path):
    path = write(tmp_path, MINIMAL + "histroy_freq = 5\nmonitor_batchsize = 3\n")
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_file(path)
    text = str(err.value)
    assert "unknown setting 'histroy_freq' (did you mean 'history_freq'?)" in text
    assert "unknown setting 'monitor_batchsize' (did you mean 'monitor_batch_size'?)" in text


def test_helpers_modules_and_private_names_are_not_settings(tmp_path):
    text = "import os\nfrom math import floor\n_x = 3\ndef helper():\n    pass\n" + MINIMAL
    cfg = ExperimentConfig.from_file(write(tmp_path, text))
    assert "helper" not in cfg.as_dict() and "_x" not in cfg.as_dict()


def test_missing_create_model_suggests_a_misspelt_function(tmp_path):
    path = write(tmp_path, "data_class = 'X'\nn_steps = 1\ndef create_modle():\n    pass\n")
    with pytest.raises(ConfigError, match="did you mean 'create_model'"):
        ExperimentConfig.from_file(path)


def test_model_load_args_unknown_to_create_model_are_named(tmp_path):
    text = "data_class = 'MNISTData'\nn_steps = 1\ndef create_model(patch_size=(5, 5), width=1.0):\n    pass\n"
    path = write(tmp_path, text + "model_load_args = {'patch_sise': (3, 3), 'width': 2}\n")
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_file(path)
    assert ("model_load_args: create_model takes no argument 'patch_sise' (did you mean 'patch_size'?); "
            "it takes patch_size, width") in str(err.value)
    assert "'width'" not in str(err.value)
    kwargs = write(tmp_path, text.replace("width=1.0", "**kwargs") + "model_load_args = {'anything': 1}\n", "k.py")
    loaded = write(tmp_path, text + "model_load_path = 'm.mdl'\nmodel_load_args = {'imposed_batch_size': 1}\n", "m.py")
    assert ExperimentConfig.from_file(kwargs).model_load_args == {"anything": 1}
    assert ExperimentConfig.from_file(loaded).model_load_args == {"imposed_batch_size": 1}


def test_required_and_invalid_values_are_listed_together(tmp_path):
    path = write(tmp_path, "def create_model():\n    pass\nhistory_freq = -1\nnan_response = 'panic'\n"
                           "batch_timeout_s = 0\n")
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_file(path)
    text = str(err.value)
    for piece in ("data_class is required", "n_steps is required", "history_freq must be an integer >= 0",
                  "nan_response must be 'lower_lr' or 'stop'", "batch_timeout_s must be None or a number of seconds > 0"):
        assert piece in text


def test_overrides_literals_strings_and_dict_keys(tmp_path):
    path = write(tmp_path, MINIMAL + "optimiser_params = {'lr': 0.1, 'mom': 0.9}\n")
    cfg = ExperimentConfig.from_file(path, ["n_steps=100", "save_name=run_b", "optimiser_params.lr=1e-3",
                                            "data_init_kwargs.valid_cubes=[2]", "max_runtime=None"])
    assert cfg.n_steps == 100 and cfg.save_name == "run_b" and cfg.max_runtime is None
    assert cfg.optimiser_params == {"lr": 1e-3, "mom": 0.9}
    assert cfg.data_init_kwargs == {"valid_cubes": [2]}
    assert cfg.overrides[0] == "n_steps=100"
    with pytest.raises(ConfigError, match="did you mean 'n_steps'"):
        ExperimentConfig.from_file(path, ["nsteps=3"])
    with pytest.raises(ConfigError, match="name=value"):
        parse_override("n_steps")
    with pytest.raises(ConfigError, match="n_steps must be an integer"):
        ExperimentConfig.from_file(path, ["n_steps='many'"])


def test_home_is_expanded_and_relative_data_file_resolved(tmp_path):
    (tmp_path / "mydata.py").write_text("class D: pass\n")
    text = MINIMAL.replace("'MNISTData'", "('mydata.py', 'D')") + "save_path = '~/runs'\npreview_data_path = ('~/p.h5', 'raw')\n"
    cfg = ExperimentConfig.from_file(write(tmp_path, text))
    assert cfg.save_path == os.path.expanduser("~/runs")
    assert cfg.preview_data_path == (os.path.expanduser("~/p.h5"), "raw")
    assert cfg.data_class == (str(tmp_path / "mydata.py"), "D")


def test_legacy_names_warn_and_tracing_names_fail(tmp_path, caplog):
    cfg = ExperimentConfig.from_file(write(tmp_path, MINIMAL + "lr_schedule = None\ngui_plot = True\n"))
    assert "lr_schedule" not in cfg.as_dict()
    assert "is ignored" in caplog.text
    with pytest.raises(ConfigError, match="sequence_training"):
        ExperimentConfig.from_file(write(tmp_path, MINIMAL + "sequence_training = 3\n"))


def test_main_block_does_not_run_and_errors_name_the_file(tmp_path):
    cfg = ExperimentConfig.from_file(write(tmp_path, MINIMAL + "if __name__ == '__main__':\n    raise SystemExit(1)\n"))
    assert cfg.n_steps == 10
    with pytest.raises(ConfigError, match="exp.py failed to execute: ZeroDivisionError"):
        ExperimentConfig.from_file(write(tmp_path, MINIMAL + "x = 1 / 0\n"))


def test_settings_are_assignable_and_checked(tmp_path):
    cfg = ExperimentConfig.from_file(write(tmp_path, MINIMAL))
    cfg.history_freq = 7
    assert cfg.history_freq == 7
    with pytest.raises(ConfigError, match="did you mean 'history_freq'"):
        cfg.histroy_freq = 3


def test_docs_describe_every_setting():
    text = open(DOCS, encoding="utf-8").read()
    documented = set(re.findall(r"^\| `([a-z_0-9]+)` \|", text, flags=re.M))
    builtin = {name for name, s in all_settings().items() if s.distribution in ("", "ekn")}
    assert set(SETTINGS) < builtin <= documented, sorted(builtin - documented)
    assert settings_table() in text, "docs/training.md's settings table is out of date: paste settings_table()"
    assert set(IGNORED) <= set(re.findall(r"`([A-Za-z_0-9]+)`", text)), sorted(set(IGNORED) - documented)


def _docs_plugin():
    """The plugin of the ``ekn_settings`` example in docs/hooks.md, as a module."""
    text = open(os.path.join(HERE, "..", "docs", "hooks.md"), encoding="utf-8").read()
    code = re.search(r"### `ekn_settings\(\)`.*?```python\n(.*?)```", text, flags=re.S).group(1)
    module = types.ModuleType("blob_plugin")
    exec(compile(code, "docs/hooks.md", "exec"), module.__dict__)
    return module


@pytest.fixture
def docs_plugin():
    from ekn_core.hooks import host

    module = _docs_plugin()
    host().register(module, name="blob_plugin")
    yield module
    host().unregister(module)


def test_plugin_settings_join_the_config_while_the_plugin_is_loaded(tmp_path, docs_plugin):
    """The docs' example plugin: its setting gets its default, is set by the file and --set, is
    suggested for a misspelt name and checked by its ekn_check_config; unknown once it is gone."""
    from ekn_core.hooks import host

    path = write(tmp_path, MINIMAL)
    assert ExperimentConfig.from_file(path).blob_threshold == 0.5
    assert ExperimentConfig.from_file(write(tmp_path, MINIMAL + "blob_threshold = 0.7\n", "b.py")).blob_threshold == 0.7
    cfg = ExperimentConfig.from_file(path, ["blob_threshold=0.25"])
    assert cfg.blob_threshold == 0.25 and cfg.as_dict()["blob_threshold"] == 0.25
    cfg.blob_threshold = 0.3
    with pytest.raises(ConfigError, match=r"unknown setting 'blob_treshold' \(did you mean 'blob_threshold'\?\)"):
        ExperimentConfig.from_file(write(tmp_path, MINIMAL + "blob_treshold = 0.7\n", "c.py"))
    with pytest.raises(ConfigError, match=r"--set blob_treshold: unknown setting 'blob_treshold' \(did you mean"):
        ExperimentConfig.from_file(path, ["blob_treshold=0.7"])
    with pytest.raises(ConfigError, match=r"blob_threshold must be a number in \(0, 1\), got 2.0"):
        ExperimentConfig.from_file(path, ["blob_threshold=2.0"])
    host().unregister(docs_plugin)
    try:
        with pytest.raises(ConfigError, match=r"unknown setting 'blob_threshold'.*installed and loaded"):
            ExperimentConfig.from_file(write(tmp_path, MINIMAL + "blob_threshold = 0.7\n", "d.py"))
    finally:
        host().register(docs_plugin, name="blob_plugin")


def test_plugin_settings_are_new_in_ekn_unless_marked(docs_plugin):
    """The docs' example plugin declares Setting(default, doc): not one of ELEKTRONN2's settings."""
    settings = all_settings()
    assert settings["blob_threshold"].origin == "ekn"
    row = ("| `blob_threshold` | `0.5` | Probability above which a voxel counts as a blob. "
           "*(ekn; plugin `blob_plugin`)* |")
    assert row in settings_table(distributions=("",)).splitlines()
    assert (settings["n_steps"].origin, settings["seed"].origin) == ("ELEKTRONN2", "ekn")


def test_plugin_defaults_are_not_shared_between_configs(tmp_path):
    from ekn_core.hooks import host

    declared = {"blob_ids": Setting([], "ids")}  # one object, as a module constant would be

    class Listing:
        @hookimpl
        def ekn_settings(self):
            return declared

    plugin = Listing()
    host().register(plugin)
    try:
        first = ExperimentConfig.from_file(write(tmp_path, MINIMAL))
        first.blob_ids.append(7)
        assert ExperimentConfig.from_file(write(tmp_path, MINIMAL)).blob_ids == []
    finally:
        host().unregister(plugin)


@pytest.mark.parametrize("name,setting,message", [
    ("n_steps", Setting(3, "x"), "'n_steps', a name ekn's core uses"),
    ("lr_schedule", Setting(3, "x"), "'lr_schedule', a name ekn's core uses"),
    ("_blob", Setting(3, "x"), "'_blob': a setting must be a Python name not starting with '_'"),
    ("blob", Setting(REQUIRED, "x"), "'blob' as .*: give a Setting\\(default, description\\) with a default"),
    ("blob", 3, "'blob' as 3: give a Setting"),
])
def test_bad_plugin_settings_are_one_clear_error(tmp_path, name, setting, message):
    from ekn_core.errors import EknError
    from ekn_core.hooks import host

    class Bad:
        @hookimpl
        def ekn_settings(self):
            return {name: setting}

    plugin = Bad()
    host().register(plugin, name="bad_plugin")
    try:
        with pytest.raises(EknError, match=f"plugin bad_plugin declares the config setting {message}"):
            ExperimentConfig.from_file(write(tmp_path, MINIMAL))
    finally:
        host().unregister(plugin)


def test_core_table_holds_only_core_settings_and_blocking_a_plugin_drops_its_setting(tmp_path, monkeypatch):
    from ekn_core import plugins

    by_plugin = {"knossos_preview": "ekn_trainer_knossos_preview", "preview_snapshot": "ekn_trainer_preview_snapshots",
                 "volume_validation": "ekn_trainer_volume_validation"}
    assert not set(by_plugin) & set(SETTINGS)
    assert {name: all_settings()[name].plugin for name in by_plugin} == by_plugin
    assert all(all_settings()[name].distribution == "ekn" for name in by_plugin)
    path = write(tmp_path, MINIMAL + "knossos_preview = None\n")
    assert ExperimentConfig.from_file(path).knossos_preview is None
    monkeypatch.setenv("EKN_BLOCK_PLUGINS", "plugins:ekn_trainer_knossos_preview")
    plugins.reset()
    try:
        with pytest.raises(ConfigError, match="unknown setting 'knossos_preview'"):
            ExperimentConfig.from_file(path)
    finally:
        monkeypatch.undo()
        plugins.reset()


def test_train_command_resolves_new_and_resumed_runs(tmp_path):
    from ekn_core.trainer.rundir import RunDir
    from ekn_plugins.commands.train import load_for_run

    with pytest.raises(ConfigError, match="give a CONFIG"):
        load_for_run(None, [], None)
    with pytest.raises(ConfigError, match="needs the CONFIG"):
        load_for_run(None, [], "latest")
    path = write(tmp_path, MINIMAL + f"save_path = {str(tmp_path / 'runs')!r}\n")
    cfg, rd = load_for_run(path, ["n_steps=20"], None)
    assert cfg.n_steps == 20 and os.path.dirname(rd.path) == str(tmp_path / "runs") and rd.name.startswith("exp__")
    with pytest.raises(ConfigError, match="no run directory"):
        load_for_run(path, [], "latest")
    # a run started with --set n_steps=20 and history_freq=5, its config edited since
    run = RunDir(str(tmp_path / "runs" / "exp__24-01-01_00-00-00"))
    run.create()
    open(run.config_copy, "w").write(open(path).read())
    run.write_run_json({"overrides": ["n_steps=20", "history_freq=5"], "config_path": path})
    open(path, "a").write("history_freq = 99\n")
    cfg, rd = load_for_run(path, ["n_steps=40"], "latest")
    assert rd.path == run.path and cfg.n_steps == 40 and cfg.history_freq == 5 and cfg.save_name == run.name
    cfg2, rd2 = load_for_run(None, [], run.path)
    assert rd2.path == run.path and cfg2.n_steps == 20 and cfg2.path == path


def test_resume_latest_says_how_to_resume_runs_with_another_save_name(tmp_path, caplog):
    """`--resume latest` finds only `<stem>__<date>` runs: its error says so and lists this config's
    other runs; resuming one by its directory works (and warns when it failed before any checkpoint)."""
    import logging
    import shutil

    from ekn_core.trainer.rundir import RunDir
    from ekn_plugins.commands.train import load_for_run

    path = write(tmp_path, MINIMAL + f"save_path = {str(tmp_path / 'runs')!r}\n")
    mine, other = RunDir(str(tmp_path / "runs" / "my_run")), RunDir(str(tmp_path / "runs" / "someone_else"))
    for run, config in ((mine, path), (other, str(tmp_path / "other.py"))):
        run.create()
        shutil.copyfile(path, run.config_copy)
        run.write_run_json({"config_path": config, "overrides": ["save_name='my_run'"], "status": "error"})
    with pytest.raises(ConfigError) as err:
        load_for_run(path, [], "latest")
    message = str(err.value)
    assert "finds the runs named exp__<date>, the default save_name" in message
    assert "`ekn train --resume RUN_DIR`; this config's runs: " + mine.path + ")" in message
    assert "someone_else" not in message
    with caplog.at_level(logging.WARNING, logger="ekn"):
        cfg, rd = load_for_run(None, [], mine.path)
    assert rd.path == mine.path and cfg.save_name == "my_run"
    assert f"run `ekn train CONFIG --set save_name=my_run`" in caplog.text
    assert load_for_run(path, ["save_name='my_run'"], "latest")[1].path == mine.path


def test_plugin_names_optimiser_params_and_the_device_are_checked_before_a_run_directory_exists(tmp_path):
    """Typos that used to fail only in the run's set-up, after its directory was made, are config
    errors: one message for all of them, with the closest names; a bad --gpu fails in the Trainer
    before it makes the directory."""
    from ekn_core.trainer.loop import Trainer

    runs = tmp_path / "runs"
    path = write(tmp_path, MINIMAL + f"save_path = {str(runs)!r}\n")
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_file(path, ["data_class=MNISTDta", "optimiser=Adma", "device=gpu7"])
    text = str(err.value)
    for piece in ("data_class: no data plugin named 'MNISTDta'. Did you mean 'mnist_data'?",
                  "optimiser: no optimisers plugin named 'adma'. Did you mean 'adam'",
                  "device: --gpu must be a GPU number, 'auto' or 'cpu', got 'gpu7'"):
        assert piece in text
    with pytest.raises(ConfigError, match=r"optimiser_params: \['lrr'\] are not meta-parameters of SGD \(did you "
                                          r"mean 'lr'\?\); it takes lr, mom, wd, beta2 \(without the others: \{'wd': -1\}\); "
                                          r"optimiser_params: wd must be"):
        ExperimentConfig.from_file(path, ["optimiser=SGD", "optimiser_params.lrr=0.1", "optimiser_params.wd=-1"])
    with pytest.raises(ConfigError, match="data_class file .*nowhere.py does not exist"):
        ExperimentConfig.from_file(path, ["data_class=('nowhere.py', 'Data')"])
    with pytest.raises(ConfigError, match=r"data_init_kwargs augmenters: no augmenters plugin named 'wrap'.*'warp'"):
        ExperimentConfig.from_file(path, ["data_init_kwargs.augmenters=[{'type': 'wrap'}]"])
    for fine in ("data_init_kwargs={'d_path': 'data/'}", "data_init_kwargs.augmenters=[{'type': 'warp'}]"):
        ExperimentConfig.from_file(path, [fine])  # no augmenters, or known ones: no problem
    cfg = ExperimentConfig.from_file(path, ["optimiser=adam", "optimiser_params.beta2=0.99"])
    with pytest.raises(ConfigError, match="--gpu must be a GPU number"):
        Trainer(cfg, device="first")
    assert not runs.exists()


def test_text_settings_take_numbers_as_typed_and_refuse_other_values(tmp_path):
    path = write(tmp_path, MINIMAL)
    cfg = ExperimentConfig.from_file(path, ["save_name=20240501", "save_path=1"])
    assert (cfg.save_name, os.path.basename(cfg.save_path), cfg.default_save_name()) == ("20240501", "1", "20240501")
    assert ExperimentConfig.from_file(path, ["save_name=0.5"]).save_name == "0.5"
    with pytest.raises(ConfigError, match=r"save_name must be text, got 20240501 \(quote it in the config: "
                                          r"save_name = '20240501'\); save_path must be text or a pathlib.Path, "
                                          r"got None"):
        ExperimentConfig.from_file(write(tmp_path, MINIMAL + "save_name = 20240501\nsave_path = None\n"))
    paths = ("import pathlib\nsave_path = pathlib.Path('~') / 'runs'\nsave_name = pathlib.PurePath('r7')\n"
             "model_load_path = pathlib.Path('~/m.mdl')\n")
    cfg = ExperimentConfig.from_file(write(tmp_path, MINIMAL + paths))
    home = os.path.expanduser("~")
    assert (cfg.save_path, cfg.save_name, cfg.model_load_path) == (os.path.join(home, "runs"), "r7",
                                                                   os.path.join(home, "m.mdl"))


def test_precision_is_a_checked_setting(tmp_path):
    path = write(tmp_path, MINIMAL)
    assert ExperimentConfig.from_file(path).precision == "float32"
    assert ExperimentConfig.from_file(path, ["precision=mixed_bfloat16"]).precision == "mixed_bfloat16"
    with pytest.raises(ConfigError, match="precision must be one of 'float32', 'mixed_bfloat16', 'mixed_float16', "
                                          "got 'bf16'"):
        ExperimentConfig.from_file(path, ["precision=bf16"])


def test_a_volume_metric_to_monitor_names_the_setting_that_measures_it(tmp_path):
    path = write(tmp_path, MINIMAL + "history_freq = 5\n")
    with pytest.raises(ConfigError, match=r"monitor_metric 'volume_f1' is measured by validation on whole volumes, "
                                          r"which is off: set volume_validation = \{'volumes': \[\.\.\.\], 'metrics': "
                                          r"\['f1', \.\.\.\]\} \(docs/training.md, 'Validation on whole volumes'\)"):
        ExperimentConfig.from_file(path, ["monitor_metric='volume_f1'"])
    spec = "volume_validation={'volumes': [{'raw': 'v.h5:raw', 'labels': 'v.h5:lab'}], 'metrics': ['mse']}"
    with pytest.raises(ConfigError, match="monitor_metric 'volume_iou_c1': volume_validation measures mse; add 'iou' "
                                          "to its 'metrics'"):
        ExperimentConfig.from_file(path, [spec, "monitor_metric='volume_iou_c1'"])
    with pytest.raises(ConfigError) as err:  # no metric of validation on whole volumes: only the core's message
        ExperimentConfig.from_file(path, ["monitor_metric='volume_foo'"])
    assert "volume_validation" not in str(err.value)


def test_the_optimiser_setting_names_every_built_in_optimiser():
    from ekn_core.plugins import BUILTIN_DISTRIBUTION, discovered

    names = {ep.name for ep in discovered()["optimisers"] if ep.distribution == BUILTIN_DISTRIBUTION}
    described = {name.lower() for name in re.findall(r"'(\w+)'", SETTINGS["optimiser"].doc)}
    assert names and names <= described, names - described
