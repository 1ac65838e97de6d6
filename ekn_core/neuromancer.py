"""ELEKTRONN2 compatibility namespace: ``import ekn_core.neuromancer as nm``.

Node names (``nm.Input``, ``nm.Conv``, ``nm.Softmax`` ...) resolve lazily through the plugin
registries: ``ekn.layers`` first, then ``ekn.losses``. ELEKTRONN2's CamelCase names map to
registry names (``Conv`` → ``conv``, ``MultinoulliNLL`` → ``multinoulli_nll``,
``Input_like`` → ``input_like``, ``UpConvMerge`` → ``auto_merge``); the registry names work too
(``nm.conv``). Only the entry point that is asked for is imported.

Also here: ``model_manager``, ``modelload``, ``rebuild_model``, ``Model``, ``Node``,
``TaggedShape``, and ``model`` for ELEKTRONN2's ``neuromancer.model`` module
(``nm.model.modelload`` is ``nm.modelload``).

Example:
    >>> import ekn_core.neuromancer as nm
    >>> nm.registry_name("MultinoulliNLL"), nm.registry_name("UpConvMerge")
    ('multinoulli_nll', 'auto_merge')
    >>> nm.Conv.__name__
    'Conv'
"""

from __future__ import annotations

import re
import types
from typing import Any

from ekn_core.errors import UnknownPluginError
from ekn_core.model import Model
from ekn_core.node import Node, model_manager
from ekn_core.persistence import modelload, rebuild_model
from ekn_core.plugins import registry
from ekn_core.shapes import TaggedShape

#: ELEKTRONN2 names whose registry name is not their snake_case form.
ALIASES = {
    "UpConv": "upconv",
    "UpConvMerge": "auto_merge",
    "Dot": "perceptron",
    "FragmentsToDense": "fragments_to_dense",
    "LRN": "lrn",
    "GRU": "gru",
    "LSTM": "lstm",
}

#: Registry kinds searched, in order.
KINDS = ("layers", "losses")

__all__ = ["model_manager", "modelload", "rebuild_model", "rebuild_rnn", "Model", "Node", "TaggedShape",
           "registry_name"]


def rebuild_rnn(model: Model, name: str | None = None) -> tuple[Model, dict[str, str]]:
    """Rebuilds a model that contains ``Scan`` loops as a one-step model (ELEKTRONN2 ``rebuild_rnn``).

    The implementation belongs to the registered ``scan_n`` layer's module, reached through the
    registry.

    Returns:
        ``(step_model, feedback)``: ``feedback[input_name]`` names the node whose output feeds that
        memory input at the next step.
    """
    import sys

    module = sys.modules[registry("layers").get("scan_n").__module__]
    return module.one_step_model(model, name=name)


#: ELEKTRONN2's ``neuromancer.model`` module, as far as ekn has it (``nm.model.modelload``).
model = types.ModuleType(f"{__name__}.model", "ELEKTRONN2's neuromancer.model: Model, modelload, rebuild_model, "
                         "rebuild_rnn (the same objects as nm.Model, nm.modelload, ...).")
model.Model, model.modelload, model.rebuild_model, model.rebuild_rnn = Model, modelload, rebuild_model, rebuild_rnn


def registry_name(name: str) -> str:
    """Registry name for an ELEKTRONN2 name (``'MultinoulliNLL'`` → ``'multinoulli_nll'``)."""
    if name in ALIASES:
        return ALIASES[name]
    snake = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    snake = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", snake)
    return snake.replace("__", "_").lower()


class UnknownNodeTypeError(UnknownPluginError, AttributeError):
    """``nm.<name>`` names no registered layer or loss (also an AttributeError for ``hasattr``)."""


def __getattr__(name: str) -> Any:
    if name.startswith("_"):
        raise AttributeError(name)
    key = registry_name(name)
    for kind in KINDS:
        if key in registry(kind):
            return registry(kind).get(key)
    known = sorted(set(registry("layers").names()) | set(registry("losses").names()))
    raise UnknownNodeTypeError("layers/losses", key, known,
                             f" (asked for nm.{name}; ELEKTRONN2 names map to snake_case registry names).")


def __dir__() -> list[str]:
    names = {*__all__, "model"}
    for kind in KINDS:
        names.update(registry(kind).names())
    return sorted(names)
