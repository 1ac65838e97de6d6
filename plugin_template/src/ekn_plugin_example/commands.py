"""The ``ekn example-hello`` command and the training-shell command ``example_steps``."""

from __future__ import annotations

import argparse
from typing import Any

from ekn_core.commands import Command
from ekn_core.errors import ConfigError


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


class StepsCommand(Command):
    """example_steps [N]: the last N (default 10) training steps the example hooks recorded.

    A training-shell command: its entry point is named ``shell.example_steps``, and ekn's training
    shell runs it when a line starts with ``example_steps``. ``shell.write`` prints in the shell's
    terminal (also in ``ekn shell RUN_DIR``); an ``EknError`` (or ``ValueError``, ...) it raises is
    shown with the usage (the docstring's first line) and the shell goes on. A command that returns
    True leaves the shell (training continues); this one returns None.

    Example:
        >>> from types import SimpleNamespace
        >>> from ekn_plugin_example.hooks import STEPS_SEEN
        >>> STEPS_SEEN.extend([10, 20, 30])
        >>> StepsCommand().run_shell(SimpleNamespace(write=print), "2")
        recorded steps: 20, 30
        >>> STEPS_SEEN.clear()
    """

    def run_shell(self, shell: Any, argument: str) -> None:
        from ekn_plugin_example.hooks import STEPS_SEEN

        if argument and not argument.isdigit():
            raise ConfigError(f"example_steps takes a number of steps, got {argument!r}")
        count = int(argument or 10)
        steps = list(STEPS_SEEN)[-count:] if count else []
        shell.write(f"recorded steps: {', '.join(map(str, steps))}" if steps else "no steps recorded yet")
