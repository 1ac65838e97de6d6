"""Adam (ELEKTRONN2's form, eps inside the square root) and AdamW (Keras/PyTorch form)."""

from __future__ import annotations

from typing import ClassVar

from ekn_core.lazy import tf
from ekn_core.optimisation import Optimiser


class Adam(Optimiser):
    """Adam with ELEKTRONN2's update rule; ``mom`` is β1.

    Update: ``m = mom*m + (1-mom)*g; s = beta2*s + (1-beta2)*g²;
    p -= lr*(√(1-beta2ᵗ)/(1-momᵗ) * m/√(s + eps) + wd*p)``.

    ``eps`` sits inside the square root (ELEKTRONN2); Keras/PyTorch add it outside, so both agree
    exactly only for ``eps=0``. The weight decay is not passed through the moments, so it is
    already "decoupled" in the sense of AdamW; :class:`AdamW` differs only in where ``eps`` goes
    and in its defaults.

    Args:
        lr: Learning rate (default 0.001).
        mom: β1 in [0, 1) (default 0.9).
        beta2: β2 in [0, 1) (default 0.999).
        wd: Weight decay, multiplied by each parameter's own ``weight_decay`` (default 0).
        eps: Added to ``s`` inside the square root (default 1e-5, as ELEKTRONN2).

    Example:
        >>> import tensorflow as tf
        >>> from types import SimpleNamespace
        >>> p = SimpleNamespace(variable=tf.Variable([1.0]), trainable=True, weight_decay=0.0)
        >>> opt = Adam(lr=0.1, eps=0.0)
        >>> opt.build([p])
        >>> opt.apply([tf.constant([5.0])], [p])
        >>> round(float(p.variable[0]), 6)  # the first Adam step has length lr
        0.9
    """

    META: ClassVar[dict[str, float]] = {"lr": 0.001, "mom": 0.9, "beta2": 0.999, "wd": 0.0}
    OPTIONS: ClassVar[dict[str, object]] = {"eps": 1e-5}
    SLOTS = ("m", "s")
    #: Whether ``eps`` is added inside the square root (ELEKTRONN2) or outside it (AdamW).
    EPS_INSIDE_SQRT: ClassVar[bool] = True

    def _direction(self, grad, slots, meta, t):
        beta1, beta2, eps = meta["mom"], meta["beta2"], self.options["eps"]
        m = slots["m"].assign(beta1 * slots["m"] + (1 - beta1) * grad)
        s = slots["s"].assign(beta2 * slots["s"] + (1 - beta2) * tf.square(grad))
        t = tf.cast(t, grad.dtype)
        factor = tf.sqrt(1 - tf.pow(beta2, t)) / (1 - tf.pow(beta1, t))
        root = tf.sqrt(s + eps) if self.EPS_INSIDE_SQRT else tf.sqrt(s) + eps
        return factor * m / root


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter) in the Keras/PyTorch form; ``mom`` is β1.

    Update: ``p -= lr*(√(1-beta2ᵗ)/(1-momᵗ) * m/(√s + eps) + wd*p)`` with ``m`` and ``s`` as in
    :class:`Adam`. Equals Keras's ``AdamW`` (``weight_decay=wd``) for parameters whose
    ``weight_decay`` multiplier is 1.

    Args:
        lr: Learning rate (default 0.001).
        mom: β1 in [0, 1) (default 0.9).
        beta2: β2 in [0, 1) (default 0.999).
        wd: Decoupled weight decay, multiplied by each parameter's own ``weight_decay``
            (default 0.004, as Keras).
        eps: Added to ``√s`` (default 1e-7, as Keras).

    Example:
        >>> AdamW().get_meta()
        {'lr': 0.001, 'mom': 0.9, 'beta2': 0.999, 'wd': 0.004}
    """

    META: ClassVar[dict[str, float]] = {"lr": 0.001, "mom": 0.9, "beta2": 0.999, "wd": 0.004}
    OPTIONS: ClassVar[dict[str, object]] = {"eps": 1e-7}
    EPS_INSIDE_SQRT: ClassVar[bool] = False
