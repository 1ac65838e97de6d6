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
- hook modules (:func:`hook_module_problem`): no function named exactly like a hook without
  ``@hookimpl`` (a near miss of a hook's name gets a warning);
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
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("ekn.plugins")

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
    named exactly like a hook but lacking ``@hookimpl``, so ekn would never call them (None: none).

    A function whose name is only close to a hook's (``ekn_on_train_stepend``) gets a warning
    naming the hook, as it may be a misspelt implementation, but is no problem: a helper may be
    named so. One that takes an argument the hook lacks (``ekn_settings_for(section)``) or whose
    name starts with ``_`` gets no warning.

    Example:
        >>> import types
        >>> module = types.ModuleType("vox_hooks")
        >>> exec("def ekn_report_header(config):\\n    return 'vox'\\n"
        ...      "def ekn_settings_for(section):\\n    return {}", module.__dict__)
        >>> print(hook_module_problem(module, "vox_hooks"))
        ekn_report_header lacks @hookimpl, so ekn never calls it: decorate it with @hookimpl (from ekn_core import
        hookimpl)
    """
    from ekn_core import hookspecs

    specs = {n: inspect.signature(f).parameters for n, f in vars(hookspecs).items() if hasattr(f, "ekn_spec")}
    functions = {n: f for n, f in getattr(obj, "__dict__", {}).items()
                 if inspect.isfunction(f) and not hasattr(f, "ekn_impl")}
    for function_name, function in functions.items():
        close = [] if function_name in specs or function_name.startswith("_") else \
            difflib.get_close_matches(function_name, list(specs), n=1, cutoff=0.85)
        if close and set(inspect.signature(function).parameters) <= set(specs[close[0]]):
            log.warning("ekn.plugins entry %s: %s is named almost like the hook %s but is no hook implementation, "
                        "so ekn never calls it. If it should implement that hook, rename it %s and decorate it with "
                        "@hookimpl; if it is a helper, a name further from the hook's (or starting with _) ends "
                        "this warning.", name, function_name, close[0], close[0])
    unmarked = [n for n in functions if n in specs]
    if not unmarked:
        return None
    one = len(unmarked) == 1
    return (f"{', '.join(unmarked)} {'lacks' if one else 'lack'} @hookimpl, so ekn never calls "
            f"{'it' if one else 'them'}: decorate {'it' if one else 'them'} with @hookimpl (from ekn_core import "
            "hookimpl)")


def checked(kind: str, name: str, problem: Problem | None) -> Any:
    """The object of the entry ``name`` of ``kind`` (imported through its registry), checked with
    ``problem``.

    Raises:
        BrokenPluginError: ``problem`` found something missing (now or before); the entry shows as
            ``broken`` in ``ekn plugins``, and the registry's ``get`` refuses it from then on.
        PluginLoadError: The import failed.
        UnknownPluginError: No active entry of that name.
    """
    from ekn_core.plugins import registry

    obj = registry(kind).get(name)
    missing = problem(obj, name) if problem is not None else None
    if missing is None:
        return obj
    raise registry(kind).mark_broken(name, missing)
