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


class PluginsCommand(Command):
    """List installed plugins (kind, name, distribution, version, status or error).

    Plugins are imported to check them (except with ``--no-load``); a plugin whose import fails
    is shown as failed and the command still exits 0, unless ``EKN_STRICT_PLUGINS=1`` is set.
    """

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.add_argument("--no-load", action="store_true", help="list entry points without importing them")
        parser.add_argument("--kind", help="only this kind (layers, losses, readers, ...)")

    def run(self, args: argparse.Namespace) -> int:
        from ekn_core.errors import PluginLoadError
        from ekn_core.plugins import GROUPS, discovered, registry, strict_mode

        kinds = [args.kind] if args.kind else list(GROUPS)
        failures = []
        if not args.no_load:
            for kind in kinds:
                reg = registry(kind)
                for name in reg.names():
                    try:
                        reg.get(name)
                    except PluginLoadError as err:
                        failures.append(err)
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
