"""``ekn plugins``: every installed plugin, its distribution, version and load status.

Example:
    >>> PluginsCommand._print_table([{"kind": "layers", "name": "conv", "distribution": "ekn",
    ...                               "version": "0.1.0", "status": "loaded", "error": ""}])
    KIND    NAME  DISTRIBUTION  VERSION  STATUS
    layers  conv  ekn           0.1.0    loaded
"""

from __future__ import annotations

import argparse
import json

from ekn_core.commands import Command
from ekn_core.plugin_checks import Problem
from ekn_core.plugins import GROUPS


def _problems() -> dict[str, Problem]:
    """Each kind's check of what its entries must provide (kinds without one: only the import)."""
    from ekn_core import plugin_checks as checks
    from ekn_plugins.augmenters.base import augmenter_problem

    return {"layers": checks.node_problem, "losses": checks.node_problem, "augmenters": augmenter_problem,
            "readers": checks.reader_problem, "commands": checks.command_problem, "plugins": checks.hook_module_problem}


def _check(kind: str) -> list[Exception]:
    """Imports every active entry of ``kind`` and checks that it provides what its kind must
    (:mod:`ekn_core.plugin_checks`), starts each ``ekn`` command and builds its parser, and checks
    each hook module against the hook specs; returns the failures (the entries record them, so the
    table shows them as failed or broken)."""
    from ekn_core.cli import command_names, load_command
    from ekn_core.errors import PluginLoadError
    from ekn_core.hooks import check_hook_plugin
    from ekn_core.plugin_checks import checked
    from ekn_core.plugins import registry

    cli_names = {entry: cli for cli, entry in command_names().items()} if kind == "commands" else {}
    problem = _problems().get(kind)
    failures: list[Exception] = []
    for name in registry(kind).names():
        try:
            if name in cli_names:
                load_command(cli_names[name], name)
                continue
            obj = checked(kind, name, problem)
            if kind == "plugins":
                check_hook_plugin(obj, name)
        except PluginLoadError as err:
            failures.append(err)
    return failures


class PluginsCommand(Command):
    """List installed plugins (kind, name, distribution, version, status or error).

    Plugins are imported to check them (except with ``--no-load``): an ``ekn`` command is also
    started and its arguments declared, a hook module's implementations are checked against the
    hook specs. A plugin that fails is shown as failed, one that imports but lacks what its kind
    must provide (a layer without ``_forward``, a command without ``run``, ...) as broken, with
    what is missing; the command still exits 0, unless ``EKN_STRICT_PLUGINS=1`` is set.
    """

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.add_argument("--no-load", action="store_true", help="list entry points without importing them")
        parser.add_argument("--kind", choices=tuple(GROUPS), help="only this kind")

    def run(self, args: argparse.Namespace) -> int:
        from ekn_core.plugins import discovered, strict_mode

        kinds = [args.kind] if args.kind else list(GROUPS)
        failures = [] if args.no_load else [err for kind in kinds for err in _check(kind)]
        rows = [e.as_dict() for kind in kinds for e in discovered()[kind]]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            self._print_table(rows)
        if failures and strict_mode():
            for err in failures:
                print(f"error: {err}")
            return 1
        return 0

    @staticmethod
    def _print_table(rows: list[dict[str, str]]) -> None:
        columns = ("kind", "name", "distribution", "version", "status")
        table = [[r[c] + (f" ({r['error']})" if c == "status" and r["error"] else "") for c in columns] for r in rows]
        widths = [max([len(c)] + [len(row[i]) for row in table]) for i, c in enumerate(columns)]
        print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip())
        for row in table:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
