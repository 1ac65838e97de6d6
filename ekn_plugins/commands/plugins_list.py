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
from ekn_core.plugins import GROUPS


def _check(kind: str) -> list[Exception]:
    """Imports every active entry of ``kind``, starts each ``ekn`` command and builds its parser,
    and checks each hook module against the hook specs; returns the failures (the entries record
    them, so the table shows them)."""
    from ekn_core.cli import command_names, load_command
    from ekn_core.errors import PluginLoadError
    from ekn_core.hooks import check_hook_plugin
    from ekn_core.plugins import registry

    reg = registry(kind)
    cli_names = {entry: cli for cli, entry in command_names().items()} if kind == "commands" else {}
    failures: list[Exception] = []
    for name in reg.names():
        try:
            if name in cli_names:
                load_command(cli_names[name], name)
            elif kind == "plugins":
                check_hook_plugin(reg.get(name), name)
            else:
                reg.get(name)
        except PluginLoadError as err:
            failures.append(err)
    return failures


class PluginsCommand(Command):
    """List installed plugins (kind, name, distribution, version, status or error).

    Plugins are imported to check them (except with ``--no-load``): an ``ekn`` command is also
    started and its arguments declared, a hook module's implementations are checked against the
    hook specs. A plugin that fails is shown as failed and the command still exits 0, unless
    ``EKN_STRICT_PLUGINS=1`` is set.
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
