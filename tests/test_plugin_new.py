"""`ekn plugin new` makes a plugin package that installs and shows up in `ekn plugins`."""

import json
import subprocess
import sys

import pytest

from ekn_core.errors import ConfigError
from ekn_plugins.commands.plugin_new import new_plugin, validate_name


def _ekn(*args):
    return subprocess.run([sys.executable, "-m", "ekn_core.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_new_plugin_installs_and_is_listed(tmp_path):
    target = tmp_path / "ekn-blob-tools"
    result = _ekn("plugin", "new", "blob_tools", str(target))
    assert result.returncode == 0, result.stderr
    assert (target / "src" / "ekn_blob_tools" / "layers.py").exists()
    pyproject = (target / "pyproject.toml").read_text()
    assert 'name = "ekn-blob-tools"' in pyproject and '"blob_tools.scale"' in pyproject
    assert '"example.' not in pyproject and "ekn_plugin_example" not in pyproject
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(target)]
    subprocess.run(pip, check=True, capture_output=True, timeout=300)
    try:
        rows = json.loads(_ekn("plugins", "--json").stdout)
        mine = {(r["kind"], r["name"]): r for r in rows if r["distribution"] == "ekn-blob-tools"}
        assert set(mine) == {("layers", "blob_tools.scale"), ("losses", "blob_tools.log_cosh"),
                             ("augmenters", "blob_tools.invert"), ("commands", "blob_tools_hello"),
                             ("commands", "shell.blob_tools_steps"), ("plugins", "ekn_blob_tools")}
        assert all(r["status"] == "loaded" for r in mine.values()), mine
        assert _ekn("blob-tools-hello", "you").stdout.strip() == "hello, you"
    finally:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "ekn-blob-tools"],
                       capture_output=True, timeout=300)


@pytest.mark.parametrize("bad", ["Blob", "ekn_blob", "1blob", "blob-tools", "class"])
def test_bad_plugin_names_are_refused(bad):
    with pytest.raises(ConfigError):
        validate_name(bad)


def test_no_file_of_the_copy_names_the_template_registry_names(tmp_path):
    import os
    import re

    target = new_plugin("blob_tools", str(tmp_path / "p"))
    texts = {os.path.relpath(os.path.join(root, f), target): open(os.path.join(root, f), encoding="utf-8").read()
             for root, _, files in os.walk(target) for f in files if f.endswith((".py", ".md", ".toml"))}
    left = {path: re.findall(r"\bexample[.-]\w+", text) for path, text in texts.items()}
    assert not any(left.values()), left  # e.g. `example.scale` in the README instead of `blob_tools.scale`
    assert "| layer | `blob_tools.scale` |" in texts["README.md"]


def test_existing_directory_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="already exists"):
        new_plugin("blob", str(tmp_path))


def test_copy_gets_its_own_readme_intro_and_setting_name(tmp_path):
    """The template's first README sentence (a link valid only inside ekn's repository), its description
    and its config setting are replaced: two plugins made from the template do not declare the same setting."""
    import os

    from ekn_plugins.commands.plugin_new import (COPY_DESCRIPTION, COPY_INTRO, TEMPLATE_DESCRIPTION, TEMPLATE_INTRO,
                                                 template_dir)

    assert TEMPLATE_INTRO in open(os.path.join(template_dir(), "README.md"), encoding="utf-8").read()
    assert TEMPLATE_DESCRIPTION in open(os.path.join(template_dir(), "pyproject.toml"), encoding="utf-8").read()
    target = new_plugin("blob_tools", str(tmp_path / "p"))
    readme = open(os.path.join(target, "README.md"), encoding="utf-8").read()
    assert COPY_INTRO in readme and "../README.md" not in readme and "the template that" not in readme
    hooks = open(os.path.join(target, "src", "ekn_blob_tools", "hooks.py"), encoding="utf-8").read()
    assert '"blob_tools_count_every": Setting(' in hooks and "example_count" not in hooks
    pyproject = open(os.path.join(target, "pyproject.toml"), encoding="utf-8").read()
    assert f'description = "{COPY_DESCRIPTION}"' in pyproject and "An example" not in pyproject
    assert '"shell.blob_tools_steps" = "ekn_blob_tools.commands:StepsCommand"' in pyproject


def test_name_starting_with_ekn_names_the_hyphenated_distribution():
    with pytest.raises(ConfigError, match="the distribution becomes 'ekn-ekn-foo'\\); use 'foo'"):
        validate_name("ekn_foo")
