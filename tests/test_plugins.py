"""The plugin machinery: discovery, lazy loading, failures, duplicates, policy, strict mode.

Fake installed distributions live in tests/fixtures/site (dist-info folders with
entry_points.txt); the ``fake_site`` fixture puts that folder on sys.path and resets discovery.
"""

import json
import os
import subprocess
import sys

import pytest

from ekn_core import plugins
from ekn_core.errors import DuplicatePluginError, PluginLoadError, UnknownPluginError

SITE = os.path.join(os.path.dirname(__file__), "fixtures", "site")
POLICY_VARS = ("EKN_STRICT_PLUGINS", "EKN_LOAD_PLUGINS", "EKN_BLOCK_PLUGINS", "EKN_DISABLE_PLUGIN_AUTOLOAD")


@pytest.fixture
def fake_site(monkeypatch):
    for var in POLICY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.syspath_prepend(SITE)
    plugins.reset()
    yield
    for mod in ("ekn_fake_mod", "ekn_fake2_mod", "ekn_fake_broken"):
        sys.modules.pop(mod, None)
    monkeypatch.undo()
    plugins.reset()


def _entry(kind, name, dist):
    return next(e for e in plugins.registry(kind).entries() if e.name == name and e.distribution == dist)


def test_listing_imports_no_plugin(fake_site):
    names = plugins.registry("layers").names()
    assert {"fake.good", "fake.broken", "fake.missing_attr", "dup"} <= set(names)
    assert "ekn_fake_mod" not in sys.modules and "ekn_fake_broken" not in sys.modules


def test_get_imports_only_that_entry(fake_site):
    cls = plugins.registry("layers").get("fake.good")
    assert cls.__name__ == "GoodLayer" and cls.registry_name == "fake.good"
    assert "ekn_fake_broken" not in sys.modules


def test_broken_import_is_recorded_and_others_load(fake_site):
    loaded = plugins.registry("layers").load_all()
    assert "fake.good" in loaded and "fake.broken" not in loaded
    broken = _entry("layers", "fake.broken", "ekn-fake")
    assert broken.status == "failed" and "broken on purpose" in broken.error


def test_broken_plugin_asked_for_raises_naming_plugin_and_distribution(fake_site):
    with pytest.raises(PluginLoadError) as info:
        plugins.registry("layers").get("fake.broken")
    message = str(info.value)
    assert "fake.broken" in message and "ekn-fake" in message and "0.1" in message


def test_missing_attribute_is_a_failure(fake_site):
    plugins.registry("layers").load_all()
    entry = _entry("layers", "fake.missing_attr", "ekn-fake")
    assert entry.status == "failed" and "DoesNotExist" in entry.error


def test_unknown_name_suggests_close_names(fake_site):
    with pytest.raises(UnknownPluginError, match="fake.good"):
        plugins.registry("layers").get("fake.goood")


def test_duplicate_name_first_distribution_wins_with_warning(fake_site, caplog):
    with caplog.at_level("WARNING", logger="ekn.plugins"):
        plugins.registry("layers").names()
    assert plugins.registry("layers").get("dup").__name__ == "GoodLayer"
    assert _entry("layers", "dup", "ekn-fake2").status == "shadowed"
    assert any("registered by several distributions" in r.message for r in caplog.records)


def test_builtin_wins_a_duplicate(fake_site, monkeypatch):
    entries = {"layers": [plugins.EntryInfo("layers", "conv", "x:y", "ekn-zzz", "1"),
                          plugins.EntryInfo("layers", "conv", "a:b", "ekn", "0.1")]}
    plugins._resolve_duplicates(entries["layers"])
    assert [e.status for e in entries["layers"]] == ["shadowed", "available"]


def test_strict_mode_raises_on_duplicates(fake_site, monkeypatch):
    monkeypatch.setenv("EKN_STRICT_PLUGINS", "1")
    with pytest.raises(DuplicatePluginError, match="dup"):
        plugins.registry("layers").names()


def test_strict_mode_raises_on_load_failure(fake_site, monkeypatch):
    monkeypatch.setenv("EKN_STRICT_PLUGINS", "1")
    monkeypatch.setenv("EKN_BLOCK_PLUGINS", "ekn-fake2")
    with pytest.raises(PluginLoadError, match="fake"):
        plugins.registry("layers").load_all()


def test_block_list_by_distribution_and_by_entry(fake_site, monkeypatch):
    monkeypatch.setenv("EKN_BLOCK_PLUGINS", "ekn-fake2,layers:fake.broken")
    plugins.reset()
    names = plugins.registry("layers").names()
    assert "fake.broken" not in names and "fake.good" in names
    assert _entry("layers", "dup", "ekn-fake2").status == "blocked"
    with pytest.raises(UnknownPluginError, match="blocked"):
        plugins.registry("layers").get("fake.broken")


def test_allow_list_only_loads_named_distributions(fake_site, monkeypatch):
    monkeypatch.setenv("EKN_LOAD_PLUGINS", "ekn-fake2")
    plugins.reset()
    names = plugins.registry("layers").names()
    assert "dup" in names and "fake.good" not in names
    assert plugins.registry("layers").get("dup").__name__ == "OtherLayer"
    assert "version" in plugins.registry("commands").names()  # built-ins stay


def test_disable_autoload_keeps_only_builtins(fake_site, monkeypatch):
    monkeypatch.setenv("EKN_DISABLE_PLUGIN_AUTOLOAD", "1")
    plugins.reset()
    assert not any(n.startswith("fake") for n in plugins.registry("layers").names())
    assert "plugins" in plugins.registry("commands").names()


def test_block_list_wins_over_allow_list(fake_site, monkeypatch):
    monkeypatch.setenv("EKN_LOAD_PLUGINS", "ekn-fake")
    monkeypatch.setenv("EKN_BLOCK_PLUGINS", "ekn-fake")
    plugins.reset()
    assert "fake.good" not in plugins.registry("layers").names()


def test_unknown_kind_is_an_error():
    with pytest.raises(ValueError, match="known kinds"):
        plugins.Registry("layer")


def test_every_builtin_entry_point_loads():
    plugins.reset()
    builtin = [e for kind in plugins.GROUPS for e in plugins.discovered()[kind] if e.builtin]
    assert builtin, "ekn is not installed (pip install -e .)"
    for entry in builtin:
        plugins.registry(entry.kind).get(entry.name)


def _run_ekn(args, **env):
    full_env = {k: v for k, v in os.environ.items() if k not in POLICY_VARS}
    full_env["PYTHONPATH"] = SITE + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env)
    return subprocess.run([sys.executable, "-m", "ekn_core.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=120)


def test_cli_plugins_shows_failure_and_exits_zero():
    result = _run_ekn(["plugins"])
    assert result.returncode == 0, result.stderr
    line = next(l for l in result.stdout.splitlines() if "fake.broken" in l)
    assert "ekn-fake" in line and "failed" in line and "broken on purpose" in line


def test_cli_plugins_json_lists_every_builtin_group():
    result = _run_ekn(["plugins", "--json"], EKN_DISABLE_PLUGIN_AUTOLOAD="1")
    rows = json.loads(result.stdout)
    kinds = {r["kind"] for r in rows if r["distribution"] == "ekn"}
    assert kinds == set(plugins.GROUPS)
    assert all(r["status"] == "loaded" for r in rows if r["distribution"] == "ekn"), [
        r for r in rows if r["status"] != "loaded"]


def test_cli_strict_mode_exits_nonzero_naming_plugin():
    result = _run_ekn(["plugins"], EKN_STRICT_PLUGINS="1", EKN_BLOCK_PLUGINS="ekn-fake2")
    assert result.returncode != 0
    assert "fake.broken" in result.stdout + result.stderr


def test_third_party_command_appears_in_help():
    result = _run_ekn(["--help"])
    assert result.returncode == 0 and "fake-hello" in result.stdout
    assert _run_ekn(["fake-hello"]).stdout.strip() == "fake hello"


def test_command_summary_is_the_whole_first_paragraph():
    from ekn_core.commands import Command

    class Wrapped(Command):
        """Evaluate a model on labelled volumes: curves,
        segmentation search and a report.

        Details that stay out of the one-line help.
        """

    assert Wrapped().summary() == "Evaluate a model on labelled volumes: curves, segmentation search and a report."


BROKEN_COMMANDS = {  # module text, what the error says
    "import": ("open(__file__ + '.imported', 'w')\nraise RuntimeError('broken on purpose')\n", "broken on purpose"),
    "exit": ("open(__file__ + '.imported', 'w')\nimport sys\nsys.exit('plugin exit at import')\n",
             "SystemExit: plugin exit at import"),
    "init": ("open(__file__ + '.imported', 'w')\nfrom ekn_core.commands import Command\nclass Cmd(Command):\n"
             "    'Start badly.'\n    def __init__(self):\n        raise RuntimeError('cannot start')\n"
             "    def run(self, args):\n        return 0\n", "cannot start"),
    "init-exit": ("open(__file__ + '.imported', 'w')\nimport sys\nfrom ekn_core.commands import Command\n"
                  "class Cmd(Command):\n    'Exit on start.'\n    def __init__(self):\n"
                  "        sys.exit('cannot start')\n"
                  "    def run(self, args):\n        return 0\n", "SystemExit: cannot start"),
    "arguments": ("open(__file__ + '.imported', 'w')\nfrom ekn_core.commands import Command\nclass Cmd(Command):\n"
                  "    'Declare an option twice.'\n    def add_arguments(self, parser):\n"
                  "        parser.add_argument('--x')\n        parser.add_argument('--x')\n"
                  "    def run(self, args):\n        return 0\n", "conflicting option string: --x"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN_COMMANDS))
def test_a_broken_command_plugin_stops_only_itself(tmp_path, kind):
    """A command plugin whose import (sys.exit included), start or argument declaration fails: other
    commands do not even import it; running it, or `ekn plugins` in strict mode: one error naming it."""
    text, error = BROKEN_COMMANDS[kind]
    dist = tmp_path / "ekn_cmd-0.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ekn-cmd\nVersion: 0.3\n")
    (dist / "entry_points.txt").write_text("[ekn.commands]\ncmd_broken = ekn_cmd_broken:Cmd\n")
    module = tmp_path / "ekn_cmd_broken.py"
    module.write_text(text)
    env = {"PYTHONPATH": str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    other = _run_ekn(["version"], **env)
    assert other.returncode == 0 and other.stdout.startswith("ekn ") and other.stderr == "", other.stderr
    assert not os.path.exists(str(module) + ".imported")  # only the chosen command is imported
    for strict in ("", "1"):
        run = _run_ekn(["cmd-broken"], EKN_STRICT_PLUGINS=strict, **env)
        assert run.returncode == 2 and run.stdout == "", run.stdout
        assert run.stderr.startswith("ekn: error: plugin commands:cmd_broken from distribution ekn-cmd 0.3 failed")
        assert error in run.stderr and "EKN_BLOCK_PLUGINS=ekn-cmd" in run.stderr and "Traceback" not in run.stderr
    listed = _run_ekn(["plugins", "--kind", "commands"], **env)
    row = next(line for line in listed.stdout.splitlines() if "cmd_broken" in line)
    assert listed.returncode == 0 and "ekn-cmd" in row and "failed" in row and error in row, listed.stdout
    assert _run_ekn(["plugins", "--kind", "commands"], EKN_STRICT_PLUGINS="1", **env).returncode == 1
    helped = _run_ekn(["--help"], **env)
    assert helped.returncode == 0 and "version" in helped.stdout and "Traceback" not in helped.stderr
