"""What each kind of plugin must provide: ``ekn plugins`` shows what a broken entry lacks, and the
places that use an entry (``ekn COMMAND``, a config's augmenters, a reader) refuse it in one line.

The broken plugins live in a fake distribution written into ``tmp_path`` (as in test_cli_host.py).
"""

import argparse
import json
import re

import pytest
from test_cli_host import _dist, _ekn, fake_site  # noqa: F401  (a fixture)

from ekn_core.errors import BrokenPluginError, ConfigError, EknError

BROKEN = {
    "ekn_voxbad_mod": '''
from ekn_core import hookimpl
from ekn_core.commands import Command
from ekn_core.node import Node
from ekn_plugins.augmenters.base import Augmenter

class NotANode:
    pass

class Typo(Node):
    def _foward(self, inputs, training):
        return inputs[0]

class NoCall(Augmenter):
    def __cal__(self, image, rng, ctx):
        return image

class NoTransform(Augmenter):
    geometric = True

class NoRun(Command):
    """Do nothing."""

class ShellNoRun(Command):
    """Do nothing in the shell."""
    def run(self, args):
        return 0

class OpenOnly:
    @classmethod
    def open(cls, path, key=None, mode="r"):
        return None

class Fine(Augmenter):
    def __call__(self, image, rng, ctx):
        return image
''',
    "ekn_voxbad_hooks": '''
from ekn_core import hookimpl

def ekn_report_header(config):
    return "voxbad"

@hookimpl
def ekn_check_config(config):
    return []
''',
}
ENTRIES = """[ekn.layers]
voxbad.not_a_node = ekn_voxbad_mod:NotANode
voxbad.typo = ekn_voxbad_mod:Typo
[ekn.augmenters]
voxbad.no_call = ekn_voxbad_mod:NoCall
voxbad.no_transform = ekn_voxbad_mod:NoTransform
voxbad.not_an_augmenter = ekn_voxbad_mod:NotANode
voxbad.fine = ekn_voxbad_mod:Fine
[ekn.commands]
voxbad_no_run = ekn_voxbad_mod:NoRun
voxbad_not_a_command = ekn_voxbad_mod:NotANode
shell.voxbad = ekn_voxbad_mod:ShellNoRun
[ekn.readers]
voxbad.open_only = ekn_voxbad_mod:OpenOnly
[ekn.plugins]
voxbad_hooks = ekn_voxbad_hooks
"""
MISSING = {  # entry name -> what `ekn plugins` says it lacks
    "voxbad.not_a_node": "NotANode is not a subclass of ekn_core.node.Node",
    "voxbad.typo": "ekn_voxbad_mod:Typo defines no _forward(self, inputs, training) (it defines _foward: a misspelt "
                   "_forward?)",
    "voxbad.no_call": "NoCall defines no __call__(self, image, rng, ctx)",
    "voxbad.no_transform": "NoTransform says geometric = True but defines no transform(self, rng, ctx)",
    "voxbad.not_an_augmenter": "NotANode is not a subclass of ekn_plugins.augmenters.base.Augmenter",
    "voxbad_no_run": "NoRun does not define run(self, args)",
    "voxbad_not_a_command": "NotANode is not a subclass of ekn_core.commands.Command",
    "shell.voxbad": "ShellNoRun does not define run_shell(self, shell, argument)",
    "voxbad.open_only": "OpenOnly has no create(path, shape, dtype, key=None, chunks=None)",
    "voxbad_hooks": "ekn_report_header lacks @hookimpl, so ekn never calls it",
}


@pytest.fixture
def voxbad(fake_site):  # noqa: F811  (the fixture imported above)
    return _dist(fake_site, "ekn-voxbad", ENTRIES, BROKEN)


def test_ekn_plugins_shows_what_each_broken_entry_lacks(voxbad, capsys, monkeypatch):
    from ekn_core import plugins
    from ekn_plugins.commands.plugins_list import PluginsCommand

    assert PluginsCommand().run(argparse.Namespace(json=True, no_load=False, kind=None)) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out) if r["distribution"] == "ekn-voxbad"}
    for name, missing in MISSING.items():
        assert rows[name]["status"] == "broken" and missing in rows[name]["error"], rows[name]
    assert rows["voxbad.fine"]["status"] == "loaded"
    plugins.reset()
    assert PluginsCommand().run(argparse.Namespace(json=False, no_load=False, kind="layers")) == 0
    table = capsys.readouterr().out
    assert f"broken ({MISSING['voxbad.typo']}" in table
    assert all(" broken " not in line for line in table.splitlines() if " ekn " in line)  # the built-ins are whole
    plugins.reset()
    monkeypatch.setenv("EKN_STRICT_PLUGINS", "1")
    assert PluginsCommand().run(argparse.Namespace(json=False, no_load=False, kind="readers")) == 1
    assert "error: plugin readers:voxbad.open_only from distribution ekn-voxbad 0.1 is broken" in \
        capsys.readouterr().out


def test_a_command_without_run_is_one_line_not_a_traceback(tmp_path):
    site = _dist(tmp_path, "ekn-voxbad", ENTRIES, BROKEN)
    for cli_name, entry in (("voxbad-no-run", "voxbad_no_run"), ("voxbad-not-a-command", "voxbad_not_a_command")):
        result = _ekn([cli_name], site)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert result.stderr.startswith(f"ekn: error: plugin commands:{entry} from distribution ekn-voxbad 0.1 is "
                                        f"broken: {MISSING[entry]}. Fix it"), result.stderr
    assert _ekn(["version"], site).returncode == 0  # the others work


def test_a_config_with_a_broken_augmenter_is_refused_before_the_run_starts(voxbad):
    from ekn_core.trainer.config import ExperimentConfig
    from ekn_plugins.augmenters.config_check import ekn_check_config

    config = {"data_init_kwargs": {"augmenters": [{"type": "voxbad.fine"}, {"type": "voxbad.no_call"}]}}
    assert ekn_check_config(config) == [
        "data_init_kwargs augmenters: plugin augmenters:voxbad.no_call from distribution ekn-voxbad 0.1 is broken: "
        f"{MISSING['voxbad.no_call']} (an intensity augmenter; a geometric one says geometric = True and defines "
        "transform(self, rng, ctx)). Fix it (docs: plugins.md), upgrade ekn-voxbad, or block it with "
        "EKN_BLOCK_PLUGINS=augmenters:voxbad.no_call@ekn-voxbad."]
    assert ekn_check_config({"data_init_kwargs": {"augmenters": [{"type": "voxbad.fine"}]}}) == []
    path = voxbad / "exp.py"
    path.write_text("data_class = 'MNISTData'\nn_steps = 10\nmodel_load_path = 'm.mdl'\n"
                    "data_init_kwargs = {'augmenters': [{'type': 'voxbad.not_an_augmenter'}]}\n")
    with pytest.raises(ConfigError, match="is broken: NotANode is not a subclass of ekn_plugins.augmenters.base"):
        ExperimentConfig.from_file(str(path))


def test_a_reader_without_create_is_refused_by_name(voxbad):
    from ekn_core.prediction.blockwise import open_output
    from ekn_core.volumes import create_volume, open_volume

    with pytest.raises(BrokenPluginError, match="readers:voxbad.open_only .* is broken: OpenOnly has no create"):
        create_volume(voxbad / "new.vox", (2, 3, 4), "uint8", reader="voxbad.open_only")
    with pytest.raises(BrokenPluginError):  # the same, again
        open_volume(voxbad / "old.vox", reader="voxbad.open_only")
    with pytest.raises(BrokenPluginError, match="OpenOnly has no create"):  # ekn predict's output, before writing
        open_output(str(voxbad / "pred.vox"), False, (2, 3, 4), "uint8", (2, 3, 4), {"reader": "voxbad.open_only"})


def test_a_path_no_reader_claims_says_what_a_command_line_user_can_do(tmp_path):
    from ekn_core.volumes import open_volume

    with pytest.raises(EknError) as info:
        open_volume(tmp_path / "x.rvol")
    message = str(info.value)
    assert message.startswith(f"no reader plugin claims {str(tmp_path / 'x.rvol')!r} (installed readers: hdf5, ")
    assert "Give it a suffix a reader knows (.h5, .zarr" in message and "ekn_get_reader hook" in message
    assert "open_volume(path, reader='NAME')" in message and "Name one with reader=" not in message


HELPERS = '''
from ekn_core import hookimpl

def ekn_settings_for(section):  # a helper named near ekn_settings
    return {}

def _ekn_report_header(config):  # a private helper named near ekn_report_header
    return "helper"

def ekn_on_train_stepend(trainer, step, metrics):  # a misspelt implementation (no @hookimpl)
    pass

@hookimpl
def ekn_report_header(config):
    return _ekn_report_header(config) + " " + str(ekn_settings_for("x"))
'''


def test_helpers_named_near_a_hook_are_no_problem_and_a_near_miss_is_a_warning(fake_site, caplog):  # noqa: F811
    from ekn_core import plugins
    from ekn_core.hooks import host
    from ekn_core.plugin_checks import checked, hook_module_problem

    _dist(fake_site, "ekn-voxhelp", "[ekn.plugins]\nvoxhelp_hooks = ekn_voxhelp_hooks\n",
          {"ekn_voxhelp_hooks": HELPERS})
    with caplog.at_level("WARNING", logger="ekn.plugins"):
        module = checked("plugins", "voxhelp_hooks", hook_module_problem)
    assert [e.status for e in plugins.registry("plugins").entries() if e.name == "voxhelp_hooks"] == ["loaded"]
    [warning] = [r.getMessage() for r in caplog.records if "voxhelp_hooks" in r.getMessage()]
    assert warning.startswith("ekn.plugins entry voxhelp_hooks: ekn_on_train_stepend is named almost like the hook "
                              "ekn_on_train_step_end but is no hook implementation"), warning
    assert "helper {}" in host().report_header({})  # the module registers, and its hook is called
    assert host().pm.get_plugin("voxhelp_hooks") is module


def test_a_broken_entry_stays_listed_and_get_refuses_it(voxbad):
    from ekn_core import plugins
    from ekn_core.plugin_checks import checked, command_problem

    reg = plugins.registry("commands")
    assert reg.get("voxbad_no_run").__name__ == "NoRun"  # imports fine
    with pytest.raises(BrokenPluginError, match=re.escape(MISSING["voxbad_no_run"])):
        checked("commands", "voxbad_no_run", command_problem)
    assert "voxbad_no_run" in reg.names() and "voxbad_no_run" in reg and reg.info("voxbad_no_run").status == "broken"
    with pytest.raises(BrokenPluginError, match=re.escape("commands:voxbad_no_run from distribution ekn-voxbad 0.1 is "
                                                          f"broken: {MISSING['voxbad_no_run']}")):
        reg.get("voxbad_no_run")  # not the cached class
    with pytest.raises(BrokenPluginError):  # and again through the check
        checked("commands", "voxbad_no_run", command_problem)


def test_a_broken_training_shell_command_is_one_line_and_the_shell_goes_on(voxbad):
    import io
    from types import SimpleNamespace

    from ekn_core.trainer.shell import run_shell

    trainer = SimpleNamespace(step=3, model=None, data=None, optimiser=None, schedules=None, history=None,
                              config=None, last_batch=None, run_dir=None)
    out = io.StringIO()
    assert run_shell(trainer, stdin=io.StringIO("voxbad\nprint(6 * 7)\nq\n"), stdout=out) == "continue"
    text = out.getvalue()
    assert "voxbad: plugin commands:shell.voxbad from distribution ekn-voxbad 0.1 is broken: " \
           f"{MISSING['shell.voxbad']}" in text and "Traceback" not in text, text
    assert "42" in text
