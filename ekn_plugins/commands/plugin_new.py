"""``ekn plugin new NAME [DIR]``: start a new plugin package from the shipped template.

The template is ``plugin_template/`` (a real, tested plugin distribution named
``ekn-plugin-example``). The copy gets the distribution ``ekn-NAME``, the import package
``ekn_NAME`` and registry names prefixed ``NAME.``.

Example:
    >>> import tempfile, os
    >>> out = new_plugin("blob_tools", os.path.join(tempfile.mkdtemp(), "ekn-blob-tools"))
    >>> sorted(os.listdir(os.path.join(out, "src")))
    ['ekn_blob_tools']
"""

from __future__ import annotations

import argparse
import keyword
import os
import re
import shutil
from importlib import resources

from ekn_core.commands import Command
from ekn_core.errors import ConfigError

_SKIP = re.compile(r"(__pycache__|\.egg-info|\.pytest_cache|^build$|^dist$)")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
#: The template README's first sentence, which only the template itself may say (its link is relative).
TEMPLATE_INTRO = ("A complete third-party plugin for [ekn](../README.md), and the template that `ekn plugin new` "
                  "copies.")
COPY_INTRO = "A plugin for ekn, started with `ekn plugin new` from ekn's plugin template."
#: The template's ``description`` in ``pyproject.toml``, and the copy's, which its author rewrites.
TEMPLATE_DESCRIPTION = ("An example ekn plugin: one layer, one loss, one augmenter, two commands and hook "
                        "implementations.")
COPY_DESCRIPTION = "A plugin for ekn (say here what it adds)."


def template_dir() -> str:
    """Directory of the shipped plugin template."""
    return str(resources.files("ekn_plugins") / "plugin_template")


def _substitutions(name: str) -> list[tuple[str, str]]:
    hyphen = name.replace("_", "-")
    return [
        (TEMPLATE_INTRO, COPY_INTRO),
        (TEMPLATE_DESCRIPTION, COPY_DESCRIPTION),
        ("ekn_plugin_example", f"ekn_{name}"),
        ("ekn-plugin-example", f"ekn-{hyphen}"),
        ('"example.', f'"{name}.'),
        ("'example.", f"'{name}."),
        ("`example.", f"`{name}."),  # names in the README and docstrings
        ("# example.", f"# {name}."),
        ("example_hello", f"{name}_hello"),
        ("example-hello", f"{hyphen}-hello"),
        ("example_steps", f"{name}_steps"),  # the training-shell command shell.example_steps
        ("example_count_", f"{name}_count_"),  # the config setting example_count_every
    ]


def validate_name(name: str) -> str:
    """Checks a new plugin's short name; returns it or raises :class:`ConfigError`."""
    if not _NAME.match(name) or keyword.iskeyword(name):
        raise ConfigError(f"plugin name {name!r} must be lowercase snake_case (letters, digits, '_'), e.g. 'blob_tools'")
    if name.startswith("ekn"):
        raise ConfigError(f"plugin name {name!r} must not start with 'ekn' (the distribution becomes "
                          f"'ekn-{name.replace('_', '-')}'); "
                          f"use {name[3:].lstrip('_-') or 'myplugin'!r}")
    return name


def new_plugin(name: str, directory: str | None = None) -> str:
    """Copies the template to ``directory`` (default ``./ekn-NAME``) with names substituted.

    Args:
        name: Short plugin name (snake_case); also the registry-name prefix.
        directory: Target directory; must not exist yet.

    Returns:
        The created directory.
    """
    validate_name(name)
    directory = directory or f"ekn-{name.replace('_', '-')}"
    if os.path.exists(directory):
        raise ConfigError(f"{directory!r} already exists; choose another directory")
    subs = _substitutions(name)
    source = template_dir()
    for root, dirs, files in os.walk(source):
        dirs[:] = [d for d in dirs if not _SKIP.search(d)]
        rel = os.path.relpath(root, source)
        for old, new in subs:
            rel = rel.replace(old, new)
        target_root = os.path.normpath(os.path.join(directory, rel))
        os.makedirs(target_root, exist_ok=True)
        for file in files:
            if file.endswith((".pyc", ".pyo")):
                continue
            src = os.path.join(root, file)
            dst_name = file
            for old, new in subs:
                dst_name = dst_name.replace(old, new)
            dst = os.path.join(target_root, dst_name)
            try:
                with open(src, encoding="utf-8") as f:
                    text = f.read()
            except UnicodeDecodeError:
                shutil.copyfile(src, dst)
                continue
            for old, new in subs:
                text = text.replace(old, new)
            with open(dst, "w", encoding="utf-8") as f:
                f.write(text)
    return directory


class PluginCommand(Command):
    """Plugin development helpers: `ekn plugin new NAME [DIR]` makes a new plugin package."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="plugin_action", metavar="ACTION", required=True)
        new = sub.add_parser("new", help="create a new plugin package from the template")
        new.add_argument("name", help="short snake_case name; the distribution becomes ekn-NAME")
        new.add_argument("directory", nargs="?", help="target directory (default ./ekn-NAME)")

    def run(self, args: argparse.Namespace) -> int:
        out = new_plugin(args.name, args.directory)
        print(f"created {out}\n  install it with: pip install -e {out}   (again after changing its entry points)\n"
              f"  test it with:    cd {out} && pytest")
        return 0
