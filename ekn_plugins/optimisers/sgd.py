"""SGD with momentum (ELEKTRONN2's form) and optional Nesterov momentum."""

from __future__ import annotations

from typing import ClassVar

from ekn_core.errors import ConfigError
from ekn_core.lazy import tf
from ekn_core.optimisation import Optimiser


class SGD(Optimiser):
    """Stochastic gradient descent with momentum.

    Update (ELEKTRONN2): ``d = g + mom*d; p -= lr*(d + wd*p)``; with ``nesterov=True``:
    ``p -= lr*(g + mom*d + wd*p)`` using the new ``d``. For a constant ``lr`` both equal
    Keras/PyTorch SGD; because ``lr`` multiplies the whole velocity, a change of ``lr`` acts on the
    accumulated momentum at once (in Keras the velocity carries the old ``lr``).

    Args:
        lr: Learning rate (default 0.01).
        mom: Momentum in [0, 1) (default 0.9).
        wd: Weight decay, multiplied by each parameter's own ``weight_decay`` (default 0).
        nesterov: Use Nesterov momentum (default False).

    Example:
        >>> import tensorflow as tf
        >>> from types import SimpleNamespace
        >>> p = SimpleNamespace(variable=tf.Variable([1.0]), trainable=True, weight_decay=0.0)
        >>> opt = SGD(lr=0.1, mom=0.5)
        >>> opt.build([p])
        >>> for _ in range(2):
        ...     opt.apply([tf.constant([1.0])], [p])
        >>> round(float(p.variable[0]), 6)  # 1 - 0.1*1 - 0.1*1.5
        0.75
    """

    META: ClassVar[dict[str, float]] = {"lr": 0.01, "mom": 0.9, "wd": 0.0}
    OPTIONS: ClassVar[dict[str, object]] = {"nesterov": False}
    SLOTS = ("velocity",)

    def _check_options(self) -> None:
        if not isinstance(self.options["nesterov"], bool):
            raise ConfigError(f"SGD: nesterov must be True or False, got {self.options['nesterov']!r}.")

    def _direction(self, grad, slots, meta, t):
        velocity = slots["velocity"].assign(grad + meta["mom"] * slots["velocity"])
        if self.options["nesterov"]:
            return grad + meta["mom"] * velocity
        return tf.identity(velocity)
