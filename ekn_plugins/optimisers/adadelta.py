"""AdaDelta (Zeiler 2012): step sizes from running averages of squared gradients and updates."""

from __future__ import annotations

from typing import ClassVar

from ekn_core.lazy import tf
from ekn_core.optimisation import Optimiser


class AdaDelta(Optimiser):
    """AdaDelta, with ``mom`` as the decay rate ρ (ELEKTRONN2's naming).

    Update: ``s = mom*s + (1-mom)*g²; dir = g*√(d+eps)/√(s+eps); d = mom*d + (1-mom)*dir²;
    p -= lr*(dir + wd*p)``.

    Difference from ELEKTRONN2: the denominator uses the *updated* ``s`` (Zeiler's paper and
    Keras); ELEKTRONN2 used the previous step's ``s``. With ``wd=0`` the rule equals Keras's
    ``Adadelta`` (``rho=mom``, ``epsilon=eps``).

    Args:
        lr: Learning rate (default 1.0, as in the paper).
        mom: Decay rate ρ in [0, 1) (default 0.95).
        wd: Weight decay, multiplied by each parameter's own ``weight_decay`` (default 0).
        eps: Added inside both square roots (default 1e-5, as ELEKTRONN2).

    Example:
        >>> import tensorflow as tf
        >>> from types import SimpleNamespace
        >>> p = SimpleNamespace(variable=tf.Variable([1.0]), trainable=True, weight_decay=0.0)
        >>> opt = AdaDelta(lr=1.0, mom=0.0, eps=1e-5)
        >>> opt.build([p])
        >>> opt.apply([tf.constant([2.0])], [p])
        >>> round(float(p.variable[0]), 4)  # 1 - 2*sqrt(1e-5)/sqrt(4+1e-5)
        0.9968
    """

    META: ClassVar[dict[str, float]] = {"lr": 1.0, "mom": 0.95, "wd": 0.0}
    OPTIONS: ClassVar[dict[str, object]] = {"eps": 1e-5}
    SLOTS = ("grad_sq", "delta_sq")

    def _direction(self, grad, slots, meta, t):
        rho, eps = meta["mom"], self.options["eps"]
        grad_sq = slots["grad_sq"].assign(rho * slots["grad_sq"] + (1 - rho) * tf.square(grad))
        direction = grad * tf.sqrt(slots["delta_sq"] + eps) / tf.sqrt(grad_sq + eps)
        slots["delta_sq"].assign(rho * slots["delta_sq"] + (1 - rho) * tf.square(direction))
        return direction
