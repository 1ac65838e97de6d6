"""The ``ekn`` command: subcommands come from the ``ekn.commands`` registry.

Only the chosen command's module is imported, so a slow or broken command plugin costs nothing to
the others. ``ekn --help`` lists every command with the first paragraph of its class docstring,
read from the module's source without importing it (:func:`~ekn_core.commands.summary_from_source`).
A command plugin that fails to import, to start or to declare its arguments stops only itself:
running it gives one error naming its distribution (:func:`load_command`). Start-up warnings are
held until ``-v`` / ``-q`` (before or after the command) are known. Neither path imports TensorFlow.

Example:
    >>> from ekn_core.cli import main
    >>> main(["version"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ekn_core._version import __version__
from ekn_core.commands import SHELL_PREFIX, Command, summary_from_source
from ekn_core.errors import DuplicatePluginError, EknError, PluginLoadError
from ekn_core.log import setup_logging
from ekn_core.plugin_checks import checked, command_problem
from ekn_core.plugins import EntryInfo, registry, strict_mode

log = logging.getLogger("ekn.plugins")

USAGE = "ekn [-h] [--version] [-v] [-q] COMMAND ..."
DESCRIPTION = "ekn: design, train and apply neural networks for electron-microscopy volumes."


def command_names() -> dict[str, str]:
    """``{subcommand: entry name}`` of the active ``ekn.commands`` entries (``foo_bar`` is
    ``ekn foo-bar``; ``shell.*`` entries are training-shell commands). Imports nothing.

    Two entries that become the same subcommand (``train_x`` and ``train-x``): the built-in wins,
    else the distribution, then the entry name, that sorts first; a warning names them all and
    the others are shadowed.

    Raises:
        DuplicatePluginError: Such a clash in strict mode (``EKN_STRICT_PLUGINS=1``).
    """
    reg = registry("commands")
    clashes: dict[str, list[EntryInfo]] = {}
    for name in reg.names():
        if not name.startswith(SHELL_PREFIX):
            clashes.setdefault(name.replace("_", "-"), []).append(reg.info(name))
    names = {}
    for cli_name, entries in sorted(clashes.items()):
        entries.sort(key=lambda e: (not e.builtin, e.distribution, e.name))
        winner = entries[0]
        if len(entries) > 1:
            message = (f"the command entries {', '.join(f'{e.name!r} ({e.distribution})' for e in entries)} are "
                       f"all `ekn {cli_name}`; using {winner.name!r} of {winner.distribution}. Give the others "
                       "names that differ in more than '-' and '_'")
            if strict_mode():
                raise DuplicatePluginError(message)
            log.warning(message)
            for loser in entries[1:]:
                loser.status, loser.error = "shadowed", f"`ekn {cli_name}` is {winner.name} of {winner.distribution}"
        names[cli_name] = winner.name
    return names


def load_command(cli_name: str, entry_name: str) -> tuple[Command, argparse.ArgumentParser]:
    """Imports and starts the command of the entry ``entry_name`` and builds its parser
    (``ekn CLI_NAME``, with ``-v`` / ``-q`` unless the command has its own).

    Warns when the import brought in TensorFlow, which slows every start of the command.

    Raises:
        PluginLoadError: Importing, starting it or declaring its arguments raised anything
            (``sys.exit`` included, not Ctrl-C); it names the entry and its distribution, and
            ``ekn plugins`` shows the entry as failed. A :class:`~ekn_core.errors.BrokenPluginError`
            when it is no ``Command`` subclass with ``run`` (:func:`~ekn_core.plugin_checks.command_problem`).
    """
    reg = registry("commands")
    had_tensorflow = "tensorflow" in sys.modules
    try:
        command = checked("commands", entry_name, command_problem)()
        parser = argparse.ArgumentParser(prog=f"ekn {cli_name}", description=command.description(),
                                         formatter_class=argparse.RawDescriptionHelpFormatter,
                                         allow_abbrev=False)  # a renamed option must not live on as a prefix
        command.add_arguments(parser)
        _add_verbosity_options(parser)
    except (KeyboardInterrupt, PluginLoadError):
        raise
    except BaseException as err:  # a plugin can raise anything, SystemExit included
        raise reg.mark_failed(entry_name, err) from err
    if not had_tensorflow and "tensorflow" in sys.modules:
        entry = reg.info(entry_name)
        log.warning("importing the command %s (%s of distribution %s) imports TensorFlow, which makes every `ekn %s` "
                    "start seconds later: import TensorFlow inside run() (or use `from ekn_core.lazy import tf`)",
                    entry_name, entry.value.split(":")[0], entry.distribution, cli_name)
    return command, parser


def command_summaries(names: dict[str, str]) -> dict[str, str]:
    """``{subcommand: one-line summary}`` for ``ekn --help``: read from the sources; a command whose
    source cannot tell is imported, and left out with a warning if that fails.

    Raises:
        PluginLoadError: Such a failure in strict mode.
    """
    reg = registry("commands")
    summaries = {}
    for cli_name, entry_name in names.items():
        summary = summary_from_source(reg.info(entry_name).value)
        if summary is None:
            try:
                summary = load_command(cli_name, entry_name)[0].summary()
            except PluginLoadError as err:
                if strict_mode():
                    raise
                log.warning("%s", err)
                continue
        summaries[cli_name] = summary
    return summaries


def _add_verbosity_options(parser: argparse.ArgumentParser, level: int = 0) -> None:
    """``-v`` / ``-q`` (counted) on ``parser`` and its sub-parsers (``ekn data synth ... -v``), each
    level with its own destination (:func:`_verbosity` adds them up); a spelling the parser already
    has (a plugin's own option) is left out."""
    suffix = f"_{level}" if level else ""
    for flags, dest, text in ((("-v", "--verbose"), "ekn_verbose", "more output (repeat for debug, -vv: tracebacks)"),
                              (("-q", "--quiet"), "ekn_quiet", "less output (-qq: errors only)")):
        for spelling in (flags, flags[1:]):
            try:
                parser.add_argument(*spelling, action="count", default=0, dest=dest + suffix, help=text)
                break
            except argparse.ArgumentError:
                continue
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in {id(p): p for p in action.choices.values()}.values():
                _add_verbosity_options(sub, level + 1)


def _verbosity(args: argparse.Namespace) -> int:
    """The ``-v`` count minus the ``-q`` count, over every level of parsers."""
    return sum(value if key.startswith("ekn_verbose") else -value
               for key, value in vars(args).items() if key.startswith(("ekn_verbose", "ekn_quiet")))


def _top_parser(summaries: dict[str, str] | None = None) -> argparse.ArgumentParser:
    """The parser of ``ekn``'s own options; with ``summaries``, the one whose help lists the commands."""
    parser = argparse.ArgumentParser(prog="ekn", usage=USAGE, description=DESCRIPTION, add_help=False,
                                     epilog="`ekn COMMAND --help` describes a command.")
    parser.add_argument("-h", "--help", action="store_true", help="show this help message and exit")
    parser.add_argument("--version", action="version", version=f"ekn {__version__}")
    _add_verbosity_options(parser)
    if summaries is not None:
        sub = parser.add_subparsers(metavar="COMMAND", title="commands")
        for cli_name, summary in summaries.items():
            sub.add_parser(cli_name, help=summary, add_help=False)
    return parser


def _command_position(argv: list[str]) -> int:
    """Index of the command in ``argv`` (``ekn``'s own options are flags: the first other word)."""
    return next((i for i, token in enumerate(argv) if not token.startswith("-") or token == "-"), len(argv))


class _HeldRecords(logging.Handler):
    """Holds the ``ekn`` logger's records until :meth:`replay` passes them to the handlers that
    ``setup_logging`` installed (so ``-q`` anywhere on the command line silences start-up warnings)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.logger = logging.getLogger("ekn")
        self.logger.setLevel(logging.DEBUG)
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def replay(self) -> None:
        self.logger.removeHandler(self)
        for record in self.records:
            self.logger.handle(record)


class _LoggedErrors(logging.Handler):
    """Remembers the exceptions that ERROR records of the ``ekn`` logger were made with, so that an
    error a command logged before raising it (the trainer's "could not set up the run: ...") is
    not printed a second time."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.errors: list[BaseException] = []
        logging.getLogger("ekn").addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        self.errors.extend(a for a in (*args, record.exc_info and record.exc_info[1]) if isinstance(a, BaseException))

    def logged(self, err: BaseException) -> bool:
        return any(e is err for e in self.errors)

    def close(self) -> None:
        logging.getLogger("ekn").removeHandler(self)
        super().close()


def _error_text(err: BaseException) -> str:
    """One line for an error: ``PATH: reason`` for an operating-system error about a file."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        paths = " -> ".join(str(p) for p in (err.filename, err.filename2) if p is not None)
        return f"{paths}: {err.strerror}"
    return str(err)


def _parse(argv: list[str]) -> tuple[Command | None, argparse.Namespace | None, int]:
    """``(command, its arguments, verbosity)``; ``(None, None, verbosity)`` when ``ekn``'s help was
    shown. Start-up log records are held until the verbosity is known."""
    held = _HeldRecords()
    verbosity = 0
    try:
        names = command_names()
        position = _command_position(argv)
        top = _top_parser()
        top_args = top.parse_args(argv[:position])  # --version exits here
        verbosity = _verbosity(top_args)
        if top_args.help or position == len(argv):
            _top_parser(command_summaries(names)).print_help()
            return None, None, verbosity
        cli_name = argv[position]
        if cli_name not in names:
            import difflib

            close = difflib.get_close_matches(cli_name, list(names), n=3)
            top.error(f"unknown command {cli_name!r}{'; did you mean ' + ' or '.join(close) + '?' if close else ''} "
                      "(`ekn --help` lists the commands)")
        command, parser = load_command(cli_name, names[cli_name])
        args = parser.parse_args(argv[position + 1:])
        verbosity += _verbosity(args)
        args.ekn_command = cli_name
        return command, args, verbosity
    finally:
        setup_logging(verbosity=verbosity)
        held.replay()


def _run(command: Command, args: argparse.Namespace, verbosity: int) -> int:
    """Runs the command; an ekn error or an operating-system error is one line (``-vv``: with
    its traceback), not a traceback."""
    logged = _LoggedErrors()
    try:
        return int(command.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise
    except (EknError, OSError) as err:
        if verbosity >= 2:
            import traceback

            traceback.print_exc()
        if not logged.logged(err):
            print(f"ekn {args.ekn_command}: error: {_error_text(err)}", file=sys.stderr)
        return 2 if isinstance(err, EknError) else 1
    finally:
        logged.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ekn`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        try:
            try:
                command, args, verbosity = _parse(argv)
            except (PluginLoadError, DuplicatePluginError) as err:
                print(f"ekn: error: {err}", file=sys.stderr)
                return 2
            return 0 if command is None else _run(command, args, verbosity)
        finally:
            sys.stdout.flush()
    except BrokenPipeError:  # `ekn plugins | head`: the reader left early, which is not an error of ekn
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 1


def train_main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ekn-train`` console script (same as ``ekn train``)."""
    argv = sys.argv[1:] if argv is None else argv
    return main(["train", *argv])


if __name__ == "__main__":
    sys.exit(main())
