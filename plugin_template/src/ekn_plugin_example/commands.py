"""The ``ekn example-hello`` command."""

from __future__ import annotations

import argparse

from ekn_core.commands import Command


class HelloCommand(Command):
    """Greet someone (an example ekn subcommand from ekn-plugin-example).

    Example:
        >>> import argparse
        >>> HelloCommand().run(argparse.Namespace(name="ekn"))
        hello, ekn
        0
    """

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("name", nargs="?", default="world", help="who to greet")

    def run(self, args: argparse.Namespace) -> int:
        print(f"hello, {args.name}")
        return 0
