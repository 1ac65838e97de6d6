"""What each kind of plugin must provide, checked right after its import.

An entry point can import fine and still miss what its kind needs: a layer without ``_forward``,
an augmenter without ``__call__``, a command without ``run``. :func:`checked` imports an entry and
refuses such a one with one :class:`~ekn_core.errors.BrokenPluginError` that says what is missing
(and ``ekn plugins`` shows the entry as ``broken``), before it is used: ``ekn COMMAND``, a reader
that opens a volume, the augmenters of a config (checked before a run directory exists) and ``ekn
plugins`` all go through it. One check per kind, ``problem(obj, name) -> what is missing or None``:

- layers and losses (:func:`node_problem`): a :class:`~ekn_core.node.Node` subclass with no
  misspelt ``_forward``, or a function that builds nodes;
- commands (:func:`command_problem`): a :class:`~ekn_core.commands.Command` subclass with ``run``
  (entries named ``shell.*``: ``run_shell``);
- readers (:func:`reader_problem`): the class methods ``open`` and ``create``;
- hook modules (:func:`hook_module_problem`): no function named like a hook without ``@hookimpl``;
- augmenters: ``ekn_plugins.augmenters.base.augmenter_problem``, beside the ``Augmenter`` class.

Nothing here imports TensorFlow.

Example:
    >>> from ekn_core.commands import Command
    >>> class Hello(Command):
    ...     '''Greet.'''
    ...     def run_shel(self, shell, argument): ...
    >>> command_problem(Hello, "hello")
    'Hello does not define run(self, args)'
    >>> print(command_problem(Hello, "shell.hello"))
    Hello does not define run_shell(self, shell, argument) (entries named shell.* are training-shell commands)
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

from ekn_core.errors import BrokenPluginError

#: A kind's check: ``(object, entry name) -> what is missing, or None``.
Problem = Callable[[Any, str], "str | None"]


def describe(obj: Any) -> str:
    """How a message names a plugin object: a class by its name, anything else by its type too.

    Example:
        >>> describe(dict), describe(len), describe(3)
        ('dict', 'the builtin_function_or_method len', 'the int 3')
    """
    if isinstance(obj, type):
        return obj.__name__
    return f"the {type(obj).__name__} {getattr(obj, '__name__', None) or repr(obj)}"


def node_problem(obj: Any, name: str) -> str | None:
    """What the ``ekn.layers`` or ``ekn.losses`` entry ``obj`` lacks (None: nothing): a
    :class:`~ekn_core.node.Node` subclass (or a function that builds nodes) with no misspelt
    ``_forward``. (Its ``kind`` is checked when the registry imports it.)

    A class cannot tell whether its nodes will have parents, so a missing ``_forward`` is a
    problem here only when a method's name is a near miss of it (``_foward``, ``forward``): a
    source node (an input, fed) has none, and a layer with parents but no ``_forward`` at all
    fails when a node is built (:func:`ekn_core.node.missing_forward`).

    Example:
        >>> from ekn_core.node import Node
        >>> class Half(Node):
        ...     def _foward(self, inputs, training):
        ...         return inputs[0] / 2
        >>> print(node_problem(Half, "half"))  # doctest: +ELLIPSIS
        ekn_core.plugin_checks:Half defines no _forward(self, inputs, training) (it defines _foward: a misspelt
        _forward?), so its nodes would have no output: ...
    """
    from ekn_core.node import Node, missing_forward, near_forward

    if not isinstance(obj, type):
        return None if callable(obj) else f"{describe(obj)} is neither a Node subclass nor a function that builds nodes"
    if not issubclass(obj, Node):
        return f"{obj.__name__} is not a subclass of ekn_core.node.Node"
    if obj._forward is Node._forward and near_forward(obj):
        return missing_forward(obj)
    return None


def command_problem(obj: Any, name: str) -> str | None:
    """What the ``ekn.commands`` entry ``obj`` lacks (None: nothing): a ``Command`` subclass with
    ``run(args)``, or, under a ``shell.*`` name, ``run_shell(shell, argument)``."""
    from ekn_core.commands import SHELL_PREFIX, Command

    if not (isinstance(obj, type) and issubclass(obj, Command)):
        return f"{describe(obj)} is not a subclass of ekn_core.commands.Command"
    if name.startswith(SHELL_PREFIX):
        if obj.run_shell is Command.run_shell:
            return (f"{obj.__name__} does not define run_shell(self, shell, argument) (entries named shell.* are "
                    "training-shell commands)")
    elif obj.run is Command.run:
        return f"{obj.__name__} does not define run(self, args)"
    return None


def reader_problem(obj: Any, name: str) -> str | None:
    """What the ``ekn.readers`` entry ``obj`` lacks (None: nothing): the class methods ``open`` and
    ``create`` (a reader that cannot write raises ``NotImplementedError`` in ``create``).

    Example:
        >>> class Tiles:
        ...     def open(self, path, key=None, mode="r"): ...
        >>> reader_problem(Tiles, "tiles")
        'Tiles has no create(path, shape, dtype, key=None, chunks=None); open must be a @classmethod'
    """
    signatures = {"open": "open(path, key=None, mode='r')",
                  "create": "create(path, shape, dtype, key=None, chunks=None)"}
    missing = [signatures[m] for m in signatures if not callable(getattr(obj, m, None))]
    plain = [m for m in signatures
             if isinstance(obj, type) and inspect.isfunction(inspect.getattr_static(obj, m, None))]
    problems = ([f"{describe(obj)} has no {' and no '.join(missing)}"] if missing else []) + \
               ([f"{' and '.join(plain)} must be a @classmethod"] if plain else [])
    return "; ".join(problems) or None


def hook_module_problem(obj: Any, name: str) -> str | None:
    """The functions of the ``ekn.plugins`` entry ``obj`` (a module of hook implementations)
    that are named like a hook but lack ``@hookimpl``, so ekn would never call them (None: none).

    Example:
        >>> import types
        >>> module = types.ModuleType("vox_hooks")
        >>> exec("def ekn_report_header(config):\\n    return 'vox'\\n"
        ...      "def ekn_on_train_stepend(trainer, step, metrics): pass", module.__dict__)
        >>> print(hook_module_problem(module, "vox_hooks"))
        ekn_report_header, ekn_on_train_stepend (did you mean ekn_on_train_step_end?) lack @hookimpl, so ekn never
        calls them: decorate them with @hookimpl (from ekn_core import hookimpl)
    """
    from ekn_core import hookspecs

    specs = [n for n, f in vars(hookspecs).items() if hasattr(f, "ekn_spec")]
    unmarked = []
    for function_name, function in getattr(obj, "__dict__", {}).items():
        if not inspect.isfunction(function) or hasattr(function, "ekn_impl"):
            continue
        close = [] if function_name in specs else difflib.get_close_matches(function_name, specs, n=1, cutoff=0.85)
        if function_name in specs or close:
            unmarked.append(function_name + (f" (did you mean {close[0]}?)" if close else ""))
    if not unmarked:
        return None
    return (f"{', '.join(unmarked)} {'lacks' if len(unmarked) == 1 else 'lack'} @hookimpl, so ekn never calls "
            f"{'it' if len(unmarked) == 1 else 'them'}: decorate {'it' if len(unmarked) == 1 else 'them'} with "
            "@hookimpl (from ekn_core import hookimpl)")


def checked(kind: str, name: str, problem: Problem | None) -> Any:
    """The object of the entry ``name`` of ``kind`` (imported through its registry), checked with
    ``problem``.

    Raises:
        BrokenPluginError: ``problem`` found something missing; the entry shows as ``broken`` in
            ``ekn plugins``.
        PluginLoadError: The import failed.
        UnknownPluginError: No active entry of that name.
    """
    from ekn_core.plugins import registry

    obj = registry(kind).get(name)
    missing = problem(obj, name) if problem is not None else None
    if missing is None:
        return obj
    entry = next(e for e in registry(kind).entries() if e.name == name and e.status in ("loaded", "broken"))
    entry.status, entry.error = "broken", missing
    raise BrokenPluginError(kind, name, entry.distribution, entry.version, missing)
