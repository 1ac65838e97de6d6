"""RMSProp: gradients divided by a running root mean square of their recent values."""

from __future__ import annotations

from typing import ClassVar

from ekn_core.lazy import tf
from ekn_core.optimisation import Optimiser


class RMSProp(Optimiser):
    """RMSProp (Tieleman & Hinton), not in ELEKTRONN2.

    Update: ``s = ρ·s + (1-ρ)·g²; p -= lr*(g/√(s + eps) + wd*p)``, with ``ρ`` given as ``mom``
    (as for AdaDelta), so ``model.mom`` and ``setmom`` change it while training. With ``wd=0``
    the rule equals Keras's ``RMSprop`` without momentum and not centred.

    Args:
        lr: Learning rate (default 0.001).
        mom: Decay ``ρ`` of the running mean of squared gradients (default 0.9).
        wd: Weight decay, multiplied by each parameter's own ``weight_decay`` (default 0).
        eps: Added to ``s`` inside the square root, as Keras does (default 1e-7).

    Example:
        >>> import tensorflow as tf
        >>> from types import SimpleNamespace
        >>> p = SimpleNamespace(variable=tf.Variable([1.0]), trainable=True, weight_decay=0.0)
        >>> opt = RMSProp(lr=0.1, mom=0.75, eps=0.0)
        >>> opt.build([p])
        >>> opt.apply([tf.constant([2.0])], [p])
        >>> round(float(p.variable[0]), 6)  # 1 - 0.1*2/sqrt(0.25*4)
        0.8
    """

    META: ClassVar[dict[str, float]] = {"lr": 0.001, "mom": 0.9, "wd": 0.0}
    OPTIONS: ClassVar[dict[str, object]] = {"eps": 1e-7}
    SLOTS = ("mean_square",)

    def _direction(self, grad, slots, meta, t):
        rho = meta["mom"]
        mean_square = slots["mean_square"].assign(rho * slots["mean_square"] + (1 - rho) * tf.square(grad))
        return grad / tf.sqrt(mean_square + self.options["eps"])
