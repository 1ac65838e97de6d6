"""Every hook spec: fired through the typed facade with its documented arguments.

The meta tests at the end fail when a hookspec has no ``test_hook_<name>`` here or no entry in
docs/hooks.md with its exact arguments.
"""

import inspect
import os
import re
import sys

import numpy as np
import pytest

from ekn_core import hookimpl, hookspecs
from ekn_core.errors import EknError
from ekn_core.hooks import Hooks

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs", "hooks.md")


class Recorder:
    """A plugin that records every call it gets."""

    def __init__(self):
        self.calls = []

    @hookimpl
    def ekn_configure(self, config):
        self.calls.append(("configure", config))

    @hookimpl
    def ekn_report_header(self, config):
        return ["line one", "line two"]

    @hookimpl
    def ekn_check_config(self, config):
        return [f"n_steps {config['n_steps']} is odd"] if config.get("n_steps", 0) % 2 else None

    @hookimpl
    def ekn_history_metrics(self, config):
        return {"recorded": "max"}

    @hookimpl
    def ekn_validation_metrics(self, trainer, step):
        return {"recorded": float(step)}

    @hookimpl
    def ekn_on_train_begin(self, trainer):
        self.calls.append(("begin", trainer))

    @hookimpl
    def ekn_on_train_step_end(self, trainer, step, metrics):
        self.calls.append(("step", step, metrics["loss"]))

    @hookimpl
    def ekn_on_validation_end(self, trainer, step, metrics):
        self.calls.append(("validation", step, metrics["valid_loss"]))

    @hookimpl
    def ekn_before_model_file(self, trainer, which):
        self.calls.append(("model file", which))
        return which == "final"

    @hookimpl
    def ekn_on_checkpoint_saved(self, trainer, path):
        self.calls.append(("checkpoint", path))

    @hookimpl
    def ekn_on_nan_detected(self, trainer, step, metrics):
        self.calls.append(("nan", step))

    @hookimpl
    def ekn_on_preview_written(self, trainer, path):
        self.calls.append(("preview", path))

    @hookimpl
    def ekn_preview_volumes(self, config):
        return [("region", config["size"])]

    @hookimpl
    def ekn_on_preview(self, trainer, step, previews):
        self.calls.append(("previews", step, previews))

    @hookimpl
    def ekn_on_train_end(self, trainer, status):
        self.calls.append(("end", status))

    @hookimpl
    def ekn_on_shell_started(self, trainer, namespace):
        namespace["from_plugin"] = 42


@pytest.fixture
def hooks():
    h = Hooks(autoload=False)
    rec = Recorder()
    h.register(rec, name="recorder")
    h.recorder = rec
    return h


def test_hook_ekn_configure(hooks):
    hooks.configure({"n_steps": 3})
    late = Recorder()
    hooks.register(late)  # historic: a late plugin still sees the configuration
    assert ("configure", {"n_steps": 3}) in hooks.recorder.calls and late.calls == [("configure", {"n_steps": 3})]


def test_hook_ekn_report_header(hooks):
    assert hooks.report_header({}) == ["line one", "line two"]


def test_hook_ekn_check_config(hooks):
    assert hooks.check_config({"n_steps": 3}) == ["n_steps 3 is odd"] and hooks.check_config({"n_steps": 4}) == []


def test_hook_ekn_history_metrics(hooks):
    assert hooks.history_metrics({}) == {"recorded": "max"}

    class Same:
        @hookimpl
        def ekn_history_metrics(self, config):
            return {"recorded": "min"}

    hooks.register(Same())
    with pytest.raises(EknError, match=r"two plugins answer ekn_history_metrics with the metric\(s\) \['recorded'\]"):
        hooks.history_metrics({})


class Declares:
    """A plugin that declares one config setting."""

    def __init__(self, name):
        self.name = name

    @hookimpl
    def ekn_settings(self):
        from ekn_core.trainer.config import Setting

        return {self.name: Setting(3, "a plugin setting")}


def test_hook_ekn_settings(hooks, monkeypatch):
    """Every plugin's settings with the plugin that declares them and its distribution; a name two
    plugins declare is an error naming both distributions."""
    from ekn_core import plugins

    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(__file__), "fixtures", "site"))
    for var in ("EKN_BLOCK_PLUGINS", "EKN_LOAD_PLUGINS", "EKN_DISABLE_PLUGIN_AUTOLOAD"):
        monkeypatch.delenv(var, raising=False)
    plugins.reset()
    try:
        hooks.register(Declares("blob_setting"), name="ekn_fake")  # the entry point of distribution ekn-fake
        hooks.register(Declares("blob_other"), name="by_hand")
        declared = hooks.settings()
        assert {name: (p, d, s.default) for name, (p, d, s) in declared.items()} == {
            "blob_setting": ("ekn_fake", "ekn-fake", 3), "blob_other": ("by_hand", "", 3)}
        hooks.register(Declares("blob_setting"), name="ekn_trainer_plots")  # a built-in entry point
        with pytest.raises(EknError, match=r"'blob_setting' is declared by two plugins: ekn_fake \(distribution "
                                           r"ekn-fake\) and ekn_trainer_plots \(distribution ekn\)"):
            hooks.settings()
    finally:
        for mod in ("ekn_fake_mod", "ekn_fake2_mod", "ekn_fake_broken"):  # hook discovery imported them
            sys.modules.pop(mod, None)
        monkeypatch.undo()
        plugins.reset()


def test_hook_ekn_validation_metrics(hooks):
    assert hooks.validation_metrics(trainer=None, step=5) == {"recorded": 5.0}


def test_hook_ekn_on_train_begin(hooks):
    hooks.train_begin(trainer="T")
    assert hooks.recorder.calls == [("begin", "T")]


def test_hook_ekn_on_train_step_end(hooks):
    hooks.train_step_end(trainer=None, step=1, metrics={"loss": 0.5})
    hooks.train_step_end(trainer=None, step=2, metrics={"loss": 0.25})
    assert hooks.recorder.calls == [("step", 1, 0.5), ("step", 2, 0.25)]


def test_hook_ekn_on_validation_end(hooks):
    hooks.validation_end(trainer=None, step=10, metrics={"valid_loss": 0.1})
    assert hooks.recorder.calls == [("validation", 10, 0.1)]


def test_hook_ekn_before_model_file(hooks):
    """True when any implementation changed the model for the file."""
    assert hooks.before_model_file(trainer=None, which="latest") is False
    assert hooks.before_model_file(trainer=None, which="final") is True
    assert hooks.recorder.calls == [("model file", "latest"), ("model file", "final")]


def test_hook_ekn_on_checkpoint_saved(hooks):
    hooks.checkpoint_saved(trainer=None, path="/x/model.h5")
    assert hooks.recorder.calls == [("checkpoint", "/x/model.h5")]


def test_hook_ekn_on_nan_detected(hooks):
    hooks.nan_detected(trainer=None, step=7, metrics={"loss": float("nan")})
    assert hooks.recorder.calls == [("nan", 7)]


def test_hook_ekn_on_preview_written(hooks):
    hooks.preview_written(trainer=None, path="p.png")
    assert hooks.recorder.calls == [("preview", "p.png")]


def test_hook_ekn_preview_volumes(hooks):
    second = Recorder()
    hooks.register(second, name="second")
    assert hooks.preview_volumes({"size": 4}) == [("region", 4), ("region", 4)]  # every plugin's regions, flat


def test_hook_ekn_on_preview(hooks):
    hooks.preview(trainer=None, step=7, previews=["block"])
    assert hooks.recorder.calls == [("previews", 7, ["block"])]


def test_hook_ekn_on_train_end(hooks):
    hooks.train_end(trainer=None, status="finished")
    assert hooks.recorder.calls == [("end", "finished")]


def test_hook_ekn_on_shell_started(hooks):
    namespace = {}
    hooks.shell_started(trainer=None, namespace=namespace)
    assert namespace == {"from_plugin": 42}


def test_hook_ekn_get_reader(tmp_path):
    """The built-in implementation picks readers by suffix; a plugin's answer wins over it."""
    from ekn_core.hooks import host
    from ekn_core.volumes import create_volume, open_volume

    assert host().get_reader(str(tmp_path / "a.h5")) == "hdf5"
    assert host().get_reader(str(tmp_path / "a.zarr")) == "zarr"
    assert host().get_reader(str(tmp_path / "x.k.toml")) == "knossos"
    assert host().get_reader(str(tmp_path / "unknown.xyz")) is None

    class Claims:
        @hookimpl
        def ekn_get_reader(self, path):
            return "hdf5" if path.endswith(".myh5") else None

    plugin = Claims()
    host().register(plugin)
    try:
        data = np.arange(24, dtype="uint8").reshape(2, 3, 4)
        with create_volume(str(tmp_path / "b.myh5") + ":raw", shape=data.shape, dtype=data.dtype) as vol:
            vol[:] = data
        with open_volume(str(tmp_path / "b.myh5"), key="raw") as vol:
            np.testing.assert_array_equal(vol[:], data)
    finally:
        host().unregister(plugin)


def _hookspec_names():
    return [name for name, obj in vars(hookspecs).items() if name.startswith("ekn_") and callable(obj)]


def test_every_hookspec_has_a_test():
    missing = [n for n in _hookspec_names() if f"test_hook_{n}" not in globals()]
    assert not missing, f"hookspecs without test_hook_<name>: {missing}"


def test_every_hookspec_is_documented_with_its_arguments():
    with open(DOCS, encoding="utf-8") as f:
        docs = f.read()
    for name in _hookspec_names():
        args = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert re.search(rf"`{name}\({re.escape(args)}\)`", docs), f"docs/hooks.md lacks `{name}({args})`"
