"""The ``ekn`` command: subcommands come from the ``ekn.commands`` registry.

``ekn --help`` lists every subcommand with its one-line help; it imports the small command
modules but never TensorFlow.

Example:
    >>> from ekn_core.cli import main
    >>> main(["version"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import sys

from ekn_core._version import __version__
from ekn_core.commands import SHELL_PREFIX
from ekn_core.log import setup_logging
from ekn_core.errors import EknError, PluginLoadError
from ekn_core.plugins import registry, strict_mode


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    """The top-level parser with one sub-parser per command (failed plugins are skipped with a
    warning; with ``EKN_STRICT_PLUGINS=1`` the first one raises).

    Raises:
        PluginLoadError: In strict mode, a command plugin that fails to load or to start.
    """
    import logging

    parser = argparse.ArgumentParser(
        prog="ekn",
        description="ekn: design, train and apply neural networks for electron-microscopy volumes.",
    )
    parser.add_argument("--version", action="version", version=f"ekn {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more output (repeat for debug)")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="less output")
    sub = parser.add_subparsers(dest="ekn_command", metavar="COMMAND")
    commands: dict[str, object] = {}
    reg = registry("commands")
    for name in reg.names():
        if name.startswith(SHELL_PREFIX):
            continue
        try:
            command = reg.get(name)()
        except Exception as err:  # recorded in the registry; `ekn plugins` shows it
            if not isinstance(err, PluginLoadError):  # imported, but constructing the command failed
                entry = reg.info(name)
                err = PluginLoadError("commands", name, entry.distribution, entry.version, err)
            if strict_mode():
                raise err
            logging.getLogger("ekn").warning("%s", err)
            continue
        cli_name = name.replace("_", "-")
        sp = sub.add_parser(cli_name, help=command.summary(), description=command.__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        command.add_arguments(sp)
        commands[cli_name] = command
    return parser, commands


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ekn`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        parser, commands = build_parser()
    except PluginLoadError as err:  # strict mode
        print(f"ekn: error: {err} (EKN_STRICT_PLUGINS=1 makes every plugin failure an error)", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    setup_logging(verbosity=args.verbose - args.quiet)
    if not args.ekn_command:
        parser.print_help()
        return 0
    try:
        return int(commands[args.ekn_command].run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if isinstance(err, EknError):
            print(f"ekn {args.ekn_command}: error: {err}", file=sys.stderr)
            return 2
        raise


def train_main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ekn-train`` console script (same as ``ekn train``)."""
    argv = sys.argv[1:] if argv is None else argv
    return main(["train", *argv])


if __name__ == "__main__":
    sys.exit(main())
