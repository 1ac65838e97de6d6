"""The data source of an experiment config: its ``data_class`` resolved (a registry name or a
class in a file) and built for the model's input and target nodes with ``data_init_kwargs``.

Background data workers build their own copies in other processes, from :class:`NodeInfo`
(the picklable geometry of a node) and the same recipe.
"""

from __future__ import annotations

import inspect
import os
import re
from typing import Any

from ekn_core.errors import ConfigError, keyword_names, unknown_keywords


def normalised_name(name: str) -> str:
    """Registry-name comparison key: ``'BatchCreatorImage'`` and ``'batch_creator_image'`` agree.

    Example:
        >>> normalised_name("MNISTData") == normalised_name("mnist_data")
        True
    """
    return name.replace("_", "").replace("-", "").lower()


def resolve_data_class(spec: Any) -> Any:
    """The data-source factory named by a config's ``data_class``.

    Args:
        spec: A name in the ``ekn.data`` registry (case and underscores ignored, so ELEKTRONN2's
            ``'BatchCreatorImage'`` finds ``batch_creator_image``) or ``(path_to_py_file, name)``.

    Raises:
        ConfigError: The file or the name does not exist.
        UnknownPluginError: No such registry entry (with suggestions).
    """
    if isinstance(spec, (tuple, list)):
        import importlib.util

        path, name = _data_file(spec), spec[1]
        module_name = "ekn_data_" + normalised_name(os.path.splitext(os.path.basename(path))[0])
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        if not hasattr(module, name):
            raise ConfigError(f"data_class file {path} defines no {name!r}")
        return getattr(module, name)
    from ekn_core.plugins import registry

    return registry("data").get(_registered_name(spec))


def check_data_class(spec: Any) -> None:
    """Checks a config's ``data_class`` without importing it: a registered name, or a file that exists.

    Raises:
        ConfigError: The file does not exist.
        UnknownPluginError: No such registry entry (with suggestions).

    Example:
        >>> check_data_class("MNISTData")
        >>> check_data_class("MNISTDta")
        Traceback (most recent call last):
        ...
        ekn_core.errors.UnknownPluginError: ...Did you mean 'mnist_data'?...
    """
    if isinstance(spec, (tuple, list)):
        _data_file(spec)
    else:
        _registered_name(spec)


def _data_file(spec: Any) -> str:
    path = os.path.expanduser(spec[0])
    if not os.path.isfile(path):
        raise ConfigError(f"data_class file {path} does not exist")
    return path


def _registered_name(spec: str) -> str:
    """The ``ekn.data`` registry name that ``spec`` means (case and underscores ignored)."""
    from ekn_core.plugins import registry

    reg = registry("data")
    by_key = {normalised_name(n): n for n in reg.names()}
    key = normalised_name(spec)
    if key not in by_key:
        import difflib

        from ekn_core.errors import UnknownPluginError

        close = [by_key[k] for k in difflib.get_close_matches(key, list(by_key), n=3)]
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownPluginError("data", spec, [], hint + f" Data sources: {', '.join(reg.names())}.")
    return by_key[key]


class NodeInfo:
    """The geometry of a model node (``name``, ``shape``, ``dtype``) without its variables; picklable,
    so data sources can be built from it in background worker processes."""

    def __init__(self, node: Any):
        self.name, self.shape, self.dtype = node.name, node.shape, getattr(node, "dtype", "float32")


def make_data_source(data_class: Any, input_node: Any, target_node: Any, kwargs: dict[str, Any]) -> Any:
    """Builds a config's data source: ``cls.from_nodes(input, target, **kwargs)`` or ``cls(input, target, **kwargs)``."""
    factory = resolve_data_class(data_class)
    make = getattr(factory, "from_nodes", factory)
    try:
        return make(input_node, target_node, **kwargs)
    except TypeError as err:  # a misspelt data_init_kwargs key: name it, with the closest real one
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(err))
        if unexpected is None or unexpected.group(1) not in kwargs:
            raise
        names = data_source_keywords(factory) or None
        problems = unknown_keywords(factory, [unexpected.group(1)], "data_init_kwargs", names)
        raise ConfigError(problems[0] if problems else f"data_init_kwargs: {err}") from None


def data_source_keywords(factory: Any) -> list[str]:
    """The keyword names a data-source factory accepts for ``data_init_kwargs``: those of its
    ``from_nodes`` and of the class it builds (the factory itself, or its return annotation)."""
    import typing

    built = factory
    if not inspect.isclass(factory):
        try:
            built = typing.get_type_hints(factory).get("return")
        except Exception:  # an annotation that does not resolve: no hint
            built = None
    names = [n for f in (getattr(factory, "from_nodes", None), built) if f is not None
             for n in keyword_names(f, named_only=True) or []]
    return [n for n in dict.fromkeys(names) if n not in ("input_node", "target_node")]
