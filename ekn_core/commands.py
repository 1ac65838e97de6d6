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
import sys
from typing import Any

SHELL_PREFIX = "shell."


class Command:
    """A subcommand of ``ekn`` (or, under a ``shell.`` name, of the training shell).

    Subclasses write a docstring whose first paragraph is the one-line help, may override
    :meth:`add_arguments`, and implement :meth:`run` (CLI) or :meth:`run_shell` (shell).
    """

    def summary(self) -> str:
        """First paragraph of the class docstring (up to the first blank line), on one line."""
        return first_paragraph(self.__doc__)

    def description(self) -> str:
        """The text of ``ekn COMMAND --help``: the class docstring up to its first doctest."""
        return without_doctests(self.__doc__)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Adds this command's arguments to its argparse sub-parser."""

    def run(self, args: argparse.Namespace) -> int:
        """Runs the command and returns the process exit code."""
        raise NotImplementedError(f"{type(self).__name__} is not a command-line command")

    def run_shell(self, shell: Any, argument: str) -> bool | None:
        """Runs the command inside the training shell; return True to leave the shell."""
        raise NotImplementedError(f"{type(self).__name__} is not a shell command")


def first_paragraph(doc: str | None) -> str:
    """The first paragraph of a docstring (up to the first blank line), on one line.

    Example:
        >>> first_paragraph('''Greet someone
        ...     politely.
        ...
        ...     Details.''')
        'Greet someone politely.'
    """
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def without_doctests(doc: str | None) -> str:
    """A docstring, dedented, up to its first doctest line (``>>>``) and the ``Example:`` heading
    above it: the part of a command's docstring that ``--help`` shows.

    Example:
        >>> print(without_doctests('''Greet someone.
        ...
        ...     Example:
        ...         >>> 1 + 1
        ...         2
        ...     '''))
        Greet someone.
    """
    import inspect

    lines = inspect.cleandoc(doc or "").splitlines()
    for i, line in enumerate(lines):
        if line.lstrip().startswith(">>>"):
            lines = lines[:i]
            while lines and (not lines[-1].strip() or lines[-1].strip() in ("Example:", "Examples:")):
                lines.pop()
            break
    return "\n".join(lines)


def summary_from_source(target: str) -> str | None:
    """The :meth:`Command.summary` of the entry-point target ``module:Class``, read from the
    module's source without importing it or its packages (what ``ekn --help`` shows).

    Returns:
        The summary; None when the source cannot tell: no source file, no ``class`` statement of
        that name at the module's top level, or a class that defines its own ``summary``.

    Example:
        >>> summary_from_source("ekn_plugins.commands.version:VersionCommand")
        'Print the versions of ekn, Python and the main libraries (without importing them).'
    """
    import ast

    module, _, name = target.partition(":")
    origin = _source_file(module.strip())
    if origin is None:
        return None
    try:
        with open(origin, encoding="utf-8") as f:
            tree = ast.parse(f.read(), origin)
    except (OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name.strip():
            if any(isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name == "summary"
                   for item in node.body):
                return None
            return first_paragraph(ast.get_docstring(node, clean=False))
    return None


def _source_file(module: str) -> str | None:
    """The ``.py`` file of ``module``, found as the import system would find it (``sys.meta_path``,
    editable installs included) but without running any package's ``__init__``."""
    path = None
    spec = None
    parts = module.split(".")
    for i in range(len(parts)):
        name = ".".join(parts[: i + 1])
        loaded = sys.modules.get(name)
        spec = getattr(loaded, "__spec__", None) if loaded is not None else None
        for finder in [] if spec is not None else sys.meta_path:
            find = getattr(finder, "find_spec", None)
            try:
                spec = find(name, path) if find is not None else None
            except (ImportError, ValueError):
                spec = None
            if spec is not None:
                break
        if spec is None:
            return None
        path = spec.submodule_search_locations
    origin = getattr(spec, "origin", None)
    return origin if isinstance(origin, str) and origin.endswith(".py") else None


def add_gpu_option(parser: argparse.ArgumentParser, default: str = "TensorFlow's default device") -> None:
    """Adds ``--gpu N|auto|cpu``, the one device option of the commands that run a model.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_gpu_option(parser)
        >>> parser.parse_args(["--gpu", "auto"]).gpu
        'auto'
    """
    parser.add_argument("--gpu", metavar="N|auto|cpu", help="GPU number among those CUDA_VISIBLE_DEVICES leaves "
                        f"visible, 'auto' (the most free memory) or 'cpu' (default: {default})")


def use_gpu(args: argparse.Namespace) -> None:
    """Makes only the GPU of ``--gpu`` visible to TensorFlow in this process (call it before
    TensorFlow runs anything); nothing without ``--gpu``.

    Raises:
        ConfigError: ``--gpu`` together with ``--workers`` or ``--scheduler``, whose Dask workers
            choose their own devices; or a GPU that does not exist.
    """
    if getattr(args, "gpu", None) is None:
        return
    from ekn_core.errors import ConfigError

    if getattr(args, "workers", None) or getattr(args, "scheduler", None):
        raise ConfigError("--gpu chooses the GPU of this process, but with --workers or --scheduler Dask workers "
                          "predict: set CUDA_VISIBLE_DEVICES for them instead (e.g. CUDA_VISIBLE_DEVICES=1 before "
                          "the command, or before `dask worker`)")
    import logging

    from ekn_core.trainer.devices import select_device

    logging.getLogger("ekn").info("device: %s", select_device(args.gpu))


def add_renamed_option(parser: argparse.ArgumentParser, old: str, new: str, note: str = "") -> None:
    """A hidden option ``old`` whose use is an error that names ``new`` (an option that was renamed).

    Example:
        >>> parser = argparse.ArgumentParser(prog="ekn evaluate")
        >>> add_renamed_option(parser, "--region", "--roi")
        >>> parser.parse_args([])  # hidden: absent from the namespace and from --help
        Namespace()
        >>> parser.parse_args(["--region", "0:4,0:8,0:8"])  # stderr: "ekn evaluate: error: --region is now --roi"
        Traceback (most recent call last):
        SystemExit: 2
    """

    class Renamed(argparse.Action):
        def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                     option_string: str | None = None) -> None:
            parser.error(f"{old} is now {new}{note}")

    parser.add_argument(old, nargs="?", action=Renamed, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
