"""The `ekn` host: lazy commands, broken or clashing plugins, hook plugins, one-line errors.

Fake distributions are written into ``tmp_path`` (dist-info folders with entry_points.txt) and put
on PYTHONPATH (subprocesses) or sys.path (in-process, with ``ekn_core.plugins.reset()``).
"""

import json
import os
import subprocess
import sys

import pytest

from ekn_core import plugins
from ekn_core.errors import ConfigError, EknError, PluginHookError, PluginLoadError

POLICY_VARS = ("EKN_STRICT_PLUGINS", "EKN_LOAD_PLUGINS", "EKN_BLOCK_PLUGINS", "EKN_DISABLE_PLUGIN_AUTOLOAD")


def _dist(site, name, entry_points, modules):
    """Writes the distribution ``name`` 0.1 with ``entry_points`` (entry_points.txt text) and modules."""
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    for module, text in modules.items():
        (site / f"{module}.py").write_text(text)
    return site


def _ekn(args, site=None, code=None, **env):
    full = {k: v for k, v in os.environ.items() if k not in POLICY_VARS}
    if site is not None:
        full["PYTHONPATH"] = str(site) + os.pathsep + full.get("PYTHONPATH", "")
    full.update(env)
    command = ["-c", code] if code else ["-m", "ekn_core.cli"]
    return subprocess.run([sys.executable, *command, *args], capture_output=True, text=True, env=full, timeout=120)


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    """In-process: ``tmp_path`` is on sys.path and discovery starts afresh (and again afterwards)."""
    for var in POLICY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins.reset()
    yield tmp_path
    monkeypatch.undo()
    plugins.reset()


# ----------------------------------------------------------------------------------------- lazy commands
def test_only_the_chosen_command_is_imported():
    code = ("import sys; from ekn_core.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('ekn_plugins.commands.')))")
    version = _ekn(["version"], code=code)
    assert version.stdout.splitlines()[-1] == "['ekn_plugins.commands.version']", version.stdout
    helped = _ekn(["--help"], code=code)
    assert helped.stdout.splitlines()[-1] == "[]", helped.stdout
    from ekn_plugins.commands.evaluate import EvaluateCommand
    from ekn_plugins.commands.version import VersionCommand

    listing = " ".join(helped.stdout.split())  # the summaries, read from the sources
    assert VersionCommand().summary() in listing and EvaluateCommand().summary() in listing
    rows = json.loads(_ekn(["plugins", "--no-load", "--json", "--kind", "commands"]).stdout)
    assert {r["name"] for r in rows if r["status"] == "loaded"} == {"plugins"}


def test_unknown_command_suggests_the_closest():
    result = _ekn(["trian"])
    assert result.returncode == 2 and "unknown command 'trian'; did you mean train?" in result.stderr


def test_command_names_differing_only_in_dash_and_underscore(tmp_path):
    site = _dist(tmp_path, "ekn-dup", "[ekn.commands]\nclash-x = ekn_dup_mod:A\nclash_x = ekn_dup_mod:B\n",
                 {"ekn_dup_mod": "from ekn_core.commands import Command\n"
                                 "class A(Command):\n    'Say A.'\n    def run(self, args):\n        print('A')\n"
                                 "class B(A):\n    'Say B.'\n    def run(self, args):\n        print('B')\n"})
    helped = _ekn(["--help"], site)
    assert helped.returncode == 0 and "clash-x" in helped.stdout and "Say A." in helped.stdout
    assert "'clash-x' (ekn-dup), 'clash_x' (ekn-dup) are all `ekn clash-x`" in helped.stderr
    assert _ekn(["clash-x"], site).stdout == "A\n"
    strict = _ekn(["version"], site, EKN_STRICT_PLUGINS="1")
    assert strict.returncode == 2 and strict.stderr.startswith("ekn: error: the command entries 'clash-x'")
    # start-up warnings wait for -q / -v, wherever they stand
    assert _ekn(["version", "-qq"], site).stderr == "" and _ekn(["-qq", "version"], site).stderr == ""
    assert "WARNING" in _ekn(["version", "-v"], site).stderr


def test_a_plugin_command_shows_its_docstring_without_doctests(tmp_path):
    site = _dist(tmp_path, "ekn-greet", "[ekn.commands]\ngreet = ekn_greet_mod:Greet\n",
                 {"ekn_greet_mod": 'from ekn_core.commands import Command\nclass Greet(Command):\n'
                                   '    """Greet someone.\n\n    Politely.\n\n    Example:\n        >>> 1 + 1\n'
                                   '        2\n    """\n    def run(self, args):\n        return 0\n'})
    result = _ekn(["greet", "--help"], site)
    assert result.returncode == 0 and "Politely." in result.stdout
    assert ">>>" not in result.stdout and "Example:" not in result.stdout


# ------------------------------------------------------------------------------------------------ errors
def test_errors_are_one_line_and_tracebacks_come_with_vv(tmp_path):
    (tmp_path / "file").write_text("")
    target = str(tmp_path / "file" / "data")
    plain = _ekn(["data", "synth", target])
    assert plain.returncode == 1 and plain.stderr == f"ekn data: error: {target}: Not a directory\n", plain.stderr
    loud = _ekn(["data", "synth", target, "-vv"])
    assert "Traceback" in loud.stderr and loud.stderr.endswith(f"ekn data: error: {target}: Not a directory\n")
    kind = _ekn(["plugins", "--kind", "layer"])
    assert kind.returncode == 2 and "invalid choice: 'layer' (choose from 'layers'" in kind.stderr


def test_an_error_the_command_logged_is_not_printed_again(tmp_path):
    site = _dist(tmp_path, "ekn-fail", "[ekn.commands]\nfail = ekn_fail_mod:Fail\n",
                 {"ekn_fail_mod": "import logging\nfrom ekn_core.commands import Command\n"
                                  "from ekn_core.errors import EknError\nclass Fail(Command):\n    'Fail.'\n"
                                  "    def run(self, args):\n        err = EknError('the bad thing')\n"
                                  "        logging.getLogger('ekn.x').error('could not start: %s', err)\n"
                                  "        raise err\n"})
    result = _ekn(["fail"], site)
    assert result.returncode == 2 and result.stderr.count("the bad thing") == 1, result.stderr


def test_a_closed_pipe_is_not_an_error():
    proc = subprocess.Popen([sys.executable, "-m", "ekn_core.cli", "plugins"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # as `ekn plugins | head -1` does after one line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1 and err == "", err


def test_shell_names_a_missing_run_directory(tmp_path, capsys):
    from ekn_core.cli import main

    assert main(["shell", str(tmp_path / "nope")]) == 2
    assert f"{tmp_path / 'nope'} does not exist" in capsys.readouterr().err


def test_a_plugin_that_exits_at_import_is_a_load_error(fake_site):
    _dist(fake_site, "ekn-exits", "[ekn.layers]\nexits.layer = ekn_exits_mod:Layer\n",
          {"ekn_exits_mod": "import sys\nsys.exit('plugin exit at import')\n"})
    with pytest.raises(PluginLoadError, match="layers:exits.layer from distribution ekn-exits 0.1 failed to load .*"
                                              "SystemExit: plugin exit at import"):
        plugins.registry("layers").get("exits.layer")
    assert "exits.layer" not in plugins.registry("layers").load_all()  # recorded, not raised


# ------------------------------------------------------------------------------------------ hook plugins
HOOKS = {
    "ekn_badarg_mod": "from ekn_core import hookimpl\n@hookimpl\ndef ekn_on_train_step_end(trainer, step, metric):\n"
                      "    pass\n",
    "ekn_badname_mod": "from ekn_core import hookimpl\n@hookimpl\ndef ekn_on_train_stepend(trainer):\n    pass\n",
    "ekn_raise_mod": "from ekn_core import hookimpl\nfrom ekn_core.errors import ConfigError\n@hookimpl\n"
                     "def ekn_report_header(config):\n    raise RuntimeError('boom in plugin')\n@hookimpl\n"
                     "def ekn_check_config(config):\n    raise ConfigError('a clear problem')\n",
}


@pytest.mark.parametrize("module,error", [("ekn_badarg_mod", "{'metric'} are declared in the hookimpl"),
                                          ("ekn_badname_mod", "unknown hook 'ekn_on_train_stepend'")])
def test_a_hook_module_that_misfits_the_specs_is_left_out(fake_site, caplog, capsys, monkeypatch, module, error):
    import argparse

    from ekn_core.hooks import host
    from ekn_plugins.commands.plugins_list import PluginsCommand

    _dist(fake_site, "ekn-bad-hooks", f"[ekn.plugins]\nbad_hooks = {module}\n", {module: HOOKS[module]})
    with caplog.at_level("WARNING", logger="ekn.plugins"):
        hooks = host()  # starts, without the plugin
    assert "bad_hooks" not in dict(hooks.pm.list_name_plugin())
    warning = next(r.getMessage() for r in caplog.records if "bad_hooks" in r.getMessage())
    assert "ekn-bad-hooks 0.1" in warning and error in warning and "\n" not in warning
    plugins.reset()
    PluginsCommand().run(argparse.Namespace(json=True, no_load=False, kind="plugins"))
    row = next(r for r in json.loads(capsys.readouterr().out) if r["name"] == "bad_hooks")
    assert row["status"] == "failed" and error in row["error"]
    plugins.reset()
    monkeypatch.setenv("EKN_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError, match="plugins:bad_hooks from distribution ekn-bad-hooks 0.1"):
        host()


def test_hook_errors_name_the_plugin_and_its_distribution(fake_site):
    from ekn_core.hooks import host

    _dist(fake_site, "ekn-raise", "[ekn.plugins]\nraise_hooks = ekn_raise_mod\n", HOOKS)
    with pytest.raises(PluginHookError, match=r"hook ekn_report_header of plugin raise_hooks \(distribution "
                                              r"ekn-raise 0\.1\) failed: RuntimeError: boom in plugin") as info:
        host().report_header({})
    assert isinstance(info.value.__cause__, RuntimeError) and "EKN_BLOCK_PLUGINS=ekn-raise" in str(info.value)
    with pytest.raises(ConfigError, match="^a clear problem$"):  # ekn's own errors pass as they are
        host().check_config({})


# ---------------------------------------------------------------------------------------- duplicate names
def test_a_duplicate_dotted_name_is_not_told_to_take_a_prefix(caplog):
    entries = [plugins.EntryInfo("layers", "foo.scale", "m2:X", "ekn-foo2", "0.1"),
               plugins.EntryInfo("layers", "foo.scale", "m1:X", "ekn-foo1", "0.1")]
    with caplog.at_level("WARNING", logger="ekn.plugins"):
        plugins._resolve_duplicates(entries)
    message = caplog.records[-1].getMessage()
    assert "foo.foo.scale" not in message and "To use ekn-foo2's, block ekn-foo1: EKN_BLOCK_PLUGINS=ekn-foo1" in message


def test_a_model_loads_only_with_the_distribution_it_was_saved_with(tmp_path):
    import h5py

    import ekn_core.neuromancer as nm

    model = nm.model_manager.newmodel("dist_check")
    try:
        inp = nm.Input((None, 1, 6, 6), "b,f,y,x", name="raw")
        model.designate_nodes(input_node=inp, prediction_node=nm.Conv(inp, 2, (3, 3), name="c"))
        path = model.save(str(tmp_path / "m.mdl"))
    finally:
        nm.model_manager.remove("dist_check")
    nm.modelload(path)  # as saved: fine
    with h5py.File(path, "r+") as f:
        reqs = json.loads(f.attrs["required_plugins"])
        for req in reqs:
            if req["name"] == "conv":
                req["distribution"], req["version"] = "ekn-otherconv", "2.0"
        f.attrs["required_plugins"] = json.dumps(reqs)
    with pytest.raises(EknError, match=r"node 'c' was saved with layer 'conv' of distribution ekn-otherconv 2\.0, "
                                       r"but here 'conv' is ekn .*'s .*EKN_BLOCK_PLUGINS=ekn\b"):
        nm.modelload(path)
