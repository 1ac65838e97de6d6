"""A lazy handle on TensorFlow for plugin modules.

``ekn plugins`` imports every plugin module to check it, and must stay fast and TF-free. Plugin
modules therefore never ``import tensorflow`` at module level; they write
``from ekn_core.lazy import tf`` and use ``tf.…`` inside functions and methods. The first
attribute access imports TensorFlow.

Example:
    >>> from ekn_core.lazy import tf
    >>> float(tf.constant(2.0).numpy())  # TensorFlow is imported here, on first use
    2.0
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for a module and imports it on first attribute access.

    Args:
        name: Module to import, e.g. ``"tensorflow"``.
    """

    def __init__(self, name: str):
        self._name = name
        self._module: ModuleType | None = None

    def _load(self) -> ModuleType:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return self._module

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._load(), attr)

    def __repr__(self) -> str:
        state = "loaded" if self._module is not None else "not loaded yet"
        return f"<lazy module {self._name!r} ({state})>"


tf = LazyModule("tensorflow")
