"""``ekn shell RUN_DIR``: open the training shell of a running ``ekn train`` from another terminal.

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> ShellCommand().add_arguments(parser)
    >>> parser.parse_args(["runs/exp1"]).run_dir
    'runs/exp1'
"""

from __future__ import annotations

import argparse

from ekn_core.commands import Command


class ShellCommand(Command):
    """Attach the interactive training shell to a running training (pauses it while attached).

    The run (started with `ekn train`, in another terminal or under nohup) pauses at the end of
    its current step and its shell opens here: q (or Ctrl-D) leaves and training continues, kill
    saves and stops the run; help lists the commands. Ctrl-C interrupts Python code typed here
    while it runs in the training; leaving the shell (or an idle shell, after
    shell_idle_timeout_s) lets training continue. Only the run's owner can attach.

    Examples:
      ekn shell ~/ekn_training/neuro3d_lite__24-05-01_10-00-00
    """

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory of a running training")

    def run(self, args: argparse.Namespace) -> int:
        import os

        from ekn_core.errors import EknError
        from ekn_core.trainer.remote import attach

        if not os.path.isdir(args.run_dir):
            raise EknError(f"{args.run_dir} does not exist: give the run directory of a running `ekn train` (it "
                           "prints it when it starts: 'remote shell: `ekn shell RUN_DIR` attaches to this run')")
        result = attach(args.run_dir)
        return 0 if result in ("continue", "kill", "ended") else 1
