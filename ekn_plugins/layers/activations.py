"""Activation functions of ELEKTRONN2 (inventory §2.3) on channels-last tensors.

Names: ``tanh``, ``relu``, ``prelu`` (learned per-feature slope), ``elu``, ``selu``, ``abs``,
``sig``/``logistic``/``sigmoid``, ``soft+`` (softplus), ``lin``/``linear``, ``concentration``
(``7 * softplus + 2``), ``radius`` (``3 + 15 * exp(0.15 x)``) and ``maxout <k>`` (maximum over
groups of ``k`` consecutive features: ``k * n_f`` linear features give ``n_f`` outputs).

Example:
    >>> import numpy as np
    >>> parse_activation('maxout 3')
    ('maxout', 3)
    >>> np.round(apply_activation(np.array([-1.0, 2.0], 'float32'), 'relu').numpy(), 3)
    array([0., 2.], dtype=float32)
"""

from __future__ import annotations

from typing import Any

from ekn_core.errors import ConfigError
from ekn_core.lazy import tf

_ALIASES = {"logistic": "sig", "sigmoid": "sig", "linear": "lin"}
NAMES = ("tanh", "relu", "prelu", "elu", "selu", "abs", "sig", "logistic", "sigmoid", "soft+", "lin", "linear",
         "concentration", "radius", "maxout <k>")


def parse_activation(name: str) -> tuple[str, int]:
    """Canonical activation name and maxout factor (1 unless ``'maxout <k>'``)."""
    if not isinstance(name, str):
        raise ConfigError(f"activation_func must be a name ({', '.join(NAMES)}), got {type(name).__name__}")
    text = name.strip().lower()
    if text.startswith("maxout"):
        parts = text.split()
        if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) < 2:
            raise ConfigError(f"maxout needs a factor >= 2, written like 'maxout 2'; got {name!r}")
        return "maxout", int(parts[1])
    text = _ALIASES.get(text, text)
    if text not in NAMES:
        raise ConfigError(f"unknown activation_func {name!r}; choose one of {', '.join(NAMES)}")
    return text, 1


def apply_activation(x: Any, name: str, slope: Any = None) -> Any:
    """Applies activation ``name`` to ``x`` (features last); ``slope`` is prelu's per-feature slope."""
    T = tf
    act, factor = parse_activation(name)
    if act == "tanh":
        return T.tanh(x)
    if act == "relu":
        return T.nn.relu(x)
    if act == "prelu":
        if slope is None:
            raise ConfigError("prelu needs its learned slope")
        return T.where(x > 0, x, x * slope)
    if act == "elu":
        return T.nn.elu(x)
    if act == "selu":
        return T.nn.selu(x)
    if act == "abs":
        return T.abs(x)
    if act == "sig":
        return T.sigmoid(x)
    if act == "soft+":
        return T.nn.softplus(x)
    if act == "lin":
        return x
    if act == "concentration":
        return T.nn.softplus(x) * 7.0 + 2.0
    if act == "radius":
        return 3.0 + 15.0 * T.exp(0.15 * x)
    # maxout: groups of `factor` consecutive features
    shape = T.shape(x)
    n = x.shape[-1]
    if n % factor:
        raise ConfigError(f"maxout {factor} needs a feature count divisible by {factor}, got {n}")
    grouped = T.reshape(x, T.concat([shape[:-1], [n // factor, factor]], axis=0))
    return T.reduce_max(grouped, axis=-1)
