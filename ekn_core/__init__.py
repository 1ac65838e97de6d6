"""ekn core: graph, model, trainer, registries, hook specs and dense prediction.

Importing ``ekn_core`` is cheap: TensorFlow is imported only when a name that needs it is first
used (see :func:`__getattr__`).

Example:
    >>> import ekn_core
    >>> ekn_core.__version__ == ekn_core._version.__version__
    True
"""

from __future__ import annotations

import importlib
from typing import Any

from ekn_core._version import __version__
from ekn_core.errors import (
    ConfigError,
    DuplicatePluginError,
    EknError,
    PluginLoadError,
    ShapeError,
    UnknownPluginError,
)
from ekn_core.hookspecs import hookimpl
from ekn_core.plugins import registry

# Public names resolved lazily (module, attribute); importing them may import numpy or TensorFlow.
_LAZY: dict[str, tuple[str, str]] = {
    "open_volume": ("ekn_core.volumes", "open_volume"),
    "create_volume": ("ekn_core.volumes", "create_volume"),
    "Setting": ("ekn_core.trainer.config", "Setting"),  # what a plugin's ekn_settings hook returns
}

__all__ = [
    "__version__",
    "hookimpl",
    "registry",
    "EknError",
    "ConfigError",
    "DuplicatePluginError",
    "PluginLoadError",
    "ShapeError",
    "UnknownPluginError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ekn_core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
