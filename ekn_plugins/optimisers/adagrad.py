"""AdaGrad: per-coordinate learning rates from the sum of squared gradients."""

from __future__ import annotations

from typing import ClassVar

from ekn_core.errors import ConfigError
from ekn_core.lazy import tf
from ekn_core.optimisation import Optimiser


class AdaGrad(Optimiser):
    """AdaGrad.

    Update: ``h += g²; p -= lr*(g/(√h + eps) + wd*p)``.

    Differences from ELEKTRONN2: ``h`` starts at ``initial_accumulator`` (default 0.1, as in
    Keras) instead of one extra gradient evaluation on the first call, and ``eps`` guards against
    a zero accumulator; ELEKTRONN2 also scaled the decay term by ``1/√h``, here it is scaled by
    ``lr`` only (like every ekn optimiser). With ``wd=0`` the rule equals Keras's ``Adagrad``.

    Args:
        lr: Learning rate (default 0.01).
        wd: Weight decay, multiplied by each parameter's own ``weight_decay`` (default 0).
        initial_accumulator: Initial value of ``h`` (default 0.1, must be > 0 unless eps > 0).
        eps: Added to ``√h`` (default 1e-7).

    Example:
        >>> import tensorflow as tf
        >>> from types import SimpleNamespace
        >>> p = SimpleNamespace(variable=tf.Variable([1.0]), trainable=True, weight_decay=0.0)
        >>> opt = AdaGrad(lr=0.1, initial_accumulator=7.0, eps=0.0)
        >>> opt.build([p])
        >>> opt.apply([tf.constant([3.0])], [p])
        >>> round(float(p.variable[0]), 6)  # 1 - 0.1*3/sqrt(7 + 3**2)
        0.925
    """

    META: ClassVar[dict[str, float]] = {"lr": 0.01, "wd": 0.0}
    OPTIONS: ClassVar[dict[str, object]] = {"initial_accumulator": 0.1, "eps": 1e-7}
    SLOTS = ("accumulator",)

    def _check_options(self) -> None:
        super()._check_options()
        init = self.options["initial_accumulator"]
        if not isinstance(init, (int, float)) or init < 0 or (init == 0 and self.options["eps"] == 0):
            raise ConfigError("AdaGrad: initial_accumulator must be >= 0, and > 0 when eps is 0, "
                              f"got {init!r} (eps={self.options['eps']!r}).")

    def _initial_slot(self, name, variable):
        return tf.fill(tf.shape(variable), tf.cast(self.options["initial_accumulator"], variable.dtype))

    def _direction(self, grad, slots, meta, t):
        acc = slots["accumulator"].assign_add(tf.square(grad))
        return grad / (tf.sqrt(acc) + self.options["eps"])
