"""Stochastic regularisers active in training steps only: dropout and additive Gaussian noise.

Dropout is inverted (kept values are scaled by ``1 / (1 - rate)``, so inference needs no
rescaling) and draws an independent mask for every example and every element (ELEKTRONN2's
Perceptron shared one mask over the whole batch: not copied). ``per_feature=True`` instead drops
whole feature maps, independently per example ("spatial dropout").

The rate is a non-trainable parameter named ``dropout_rate`` (a ``tf.Variable`` read inside the
compiled step), so ``Model.dropout_rates = ...`` changes it without a retrace. Conv, UpConv and
Perceptron use :func:`add_dropout` / :func:`apply_dropout` for their ``dropout_rate`` option.

Example:
    >>> import numpy as np
    >>> from ekn_core import neuromancer as nm
    >>> _ = nm.model_manager.newmodel("doc_dropout")
    >>> inp = nm.Input((4, 1000), 'b,f')
    >>> d = nm.Dropout(inp, 0.5)
    >>> x = np.ones((4, 1000), 'float32')
    >>> bool((d(x) == x).all())                     # inference: identity
    True
    >>> y = d(x, training=True)
    >>> sorted(set(np.unique(y).tolist())), bool(0.4 < (y == 0).mean() < 0.6)
    ([0.0, 2.0], True)
"""

from __future__ import annotations

from typing import Any

from ekn_core.errors import ConfigError
from ekn_core.lazy import tf
from ekn_core.node import Node


def check_rate(rate: Any, what: str = "dropout_rate") -> float:
    """Validates a rate in [0, 1).

    Example:
        >>> check_rate(0.25)
        0.25
    """
    try:
        value = float(rate)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number in [0, 1), got {rate!r}") from None
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{what} must be in [0, 1), got {value}")
    return value


def add_dropout(node: Node, rate: Any) -> float:
    """Validates ``rate`` and, when it is > 0, gives ``node`` its ``dropout_rate`` parameter."""
    value = check_rate(rate)
    if value > 0:
        node.add_param("dropout_rate", value, shape=(), trainable=False)
    return value


def draw_seed() -> Any:
    """A fresh ``[2]`` seed for a stateless random op, drawn from TensorFlow's global generator.

    Random layers draw their masks and noise from it (never from stateful ops), so a checkpoint
    that saves the generator's state (the trainer does) resumes with the same random numbers.
    """
    return tf.random.get_global_generator().make_seeds(1)[:, 0]


def apply_dropout(node: Node, x: Any, training: bool, per_feature: bool = False) -> Any:
    """Inverted dropout of a canonical (features-last) tensor with ``node``'s ``dropout_rate``.

    Identity outside training steps or when the node has no ``dropout_rate`` parameter. The mask
    is drawn per element, or with ``per_feature`` per (example, feature).
    """
    if not training or "dropout_rate" not in node.params:
        return x
    noise_shape = None
    if per_feature:
        shape = tf.shape(x)
        lead = len(node.shape.canonical_tags) - node.shape.ndim - 1
        noise_shape = tf.concat([shape[:lead], tf.ones([node.shape.ndim], tf.int32), shape[-1:]], axis=0)
    rate = tf.cast(node.params["dropout_rate"].variable, x.dtype)
    return tf.nn.experimental.stateless_dropout(x, rate=rate, seed=draw_seed(), noise_shape=noise_shape)


class Dropout(Node):
    """Inverted dropout in training steps (identity in inference).

    Args:
        parent: Input node.
        rate: Probability of dropping a value, in [0, 1).
        per_feature: Drop whole feature maps (independently per example) instead of elements;
            needs an ``f`` axis.
        name: Node name.

    Shape rule: unchanged.
    """

    def __init__(self, parent: Node, rate: float = 0.5, per_feature: bool = False, name: str = "dropout"):
        super().__init__(parent, name)
        if per_feature and not parent.shape.hastag("f"):
            raise ConfigError(f"Dropout {name!r}: per_feature=True needs an 'f' axis, {parent.name!r} has "
                              f"{parent.shape.tags}")
        self.per_feature = bool(per_feature)
        # the parameter always exists, so the rate can be raised later through Model.dropout_rates
        self.rate = check_rate(rate)
        self.add_param("dropout_rate", self.rate, shape=(), trainable=False)

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        return apply_dropout(self, inputs[0], training, self.per_feature)

    def _repr_extras(self) -> str:
        return f"rate={self.rate:g}" + (" per feature" if self.per_feature else "")


class GaussianNoise(Node):
    """Adds zero-mean Gaussian noise of standard deviation ``std`` in training steps.

    Args:
        parent: Input node.
        std: Noise standard deviation (a non-trainable parameter ``noise_std``, changeable
            without retrace).
        name: Node name.

    Shape rule: unchanged.
    """

    def __init__(self, parent: Node, std: float = 0.1, name: str = "gaussian_noise"):
        super().__init__(parent, name)
        if not isinstance(std, (int, float)) or isinstance(std, bool) or std < 0:
            raise ConfigError(f"GaussianNoise {name!r}: std must be a non-negative number, got {std!r}")
        self.std = float(std)
        self.add_param("noise_std", self.std, shape=(), trainable=False)

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        x = inputs[0]
        if not training:
            return x
        std = tf.cast(self.params["noise_std"].variable, x.dtype)
        return x + std * tf.random.stateless_normal(tf.shape(x), seed=draw_seed(), dtype=x.dtype)

    def _repr_extras(self) -> str:
        return f"std={self.std:g}"

