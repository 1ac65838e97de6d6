"""Base class of ``ekn`` command-line subcommands and trainer-shell commands.

Both come from the ``ekn.commands`` registry. Entry names without a dot are ``ekn``
subcommands; names starting with ``shell.`` are commands of the interactive training shell
(``shell.setlr`` is typed as ``setlr``). Command modules must not import heavy dependencies
(TensorFlow) at module level: import them inside :meth:`Command.run`.

Example:
    >>> import argparse
    >>> class Hello(Command):
    ...     '''Print a greeting.'''
    ...     def run(self, args):
    ...         print("hello")
    ...         return 0
    >>> Hello().summary()
    'Print a greeting.'
"""

from __future__ import annotations

import argparse
from typing import Any

SHELL_PREFIX = "shell."


class Command:
    """A subcommand of ``ekn`` (or, under a ``shell.`` name, of the training shell).

    Subclasses write a docstring whose first paragraph is the one-line help, may override
    :meth:`add_arguments`, and implement :meth:`run` (CLI) or :meth:`run_shell` (shell).
    """

    def summary(self) -> str:
        """First paragraph of the class docstring (up to the first blank line), on one line."""
        return " ".join((self.__doc__ or "").strip().split("\n\n")[0].split())

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Adds this command's arguments to its argparse sub-parser."""

    def run(self, args: argparse.Namespace) -> int:
        """Runs the command and returns the process exit code."""
        raise NotImplementedError(f"{type(self).__name__} is not a command-line command")

    def run_shell(self, shell: Any, argument: str) -> bool | None:
        """Runs the command inside the training shell; return True to leave the shell."""
        raise NotImplementedError(f"{type(self).__name__} is not a shell command")
