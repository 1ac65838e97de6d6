"""Shared machinery of the neural layers (Conv, UpConv, Perceptron): bias, batch normalisation,
activation and dropout, applied in ELEKTRONN2's order after the linear operation.

Order: linear op (and pooling) → batch normalisation → bias → activation → dropout.

* Batch normalisation (``batch_normalisation=``): ``False``; ``'train'`` (training steps use and
  update the batch statistics, inference uses the running ones; the running mean/std are updated
  as ``0.9995 * old + 0.0005 * batch``); ``'predict'`` (always the stored statistics, gamma still
  trainable); ``'const'`` (stored statistics and gamma as constants). The layer bias acts as beta
  (ELEKTRONN2's parameter layout), ``std = sqrt(var + 1e-5)``. ``gamma`` has weight-decay ×3.
* Dropout (``dropout_rate > 0``): inverted element-wise dropout in training steps only. The rate is
  a non-trainable parameter ``dropout_rate`` (``Model.dropout_rates`` changes it without retrace).

Example:
    >>> bias_init('relu', 9)
    ('const', 0.1111111111111111)
"""

from __future__ import annotations

from typing import Any

from ekn_core.errors import ConfigError
from ekn_core.node import Node, tf
from ekn_plugins.layers.activations import apply_activation, parse_activation

BN_MODES = (False, "train", "predict", "const")
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9995


def bias_init(activation: str, kernel_size: int) -> tuple[str, float]:
    """ELEKTRONN2's bias initialisation: relu/maxout ``1/prod(kernel)``, sigmoid 0.5, else ±1e-6."""
    act, _ = parse_activation(activation)
    if act in ("relu", "maxout"):
        return "const", 1.0 / kernel_size
    if act == "sig":
        return "const", 0.5
    return "uniform", 1e-6


class NeuralLayer(Node):
    """Base of layers with a linear operation followed by bias/BN/activation/dropout.

    Subclasses call :meth:`setup_neural` in ``__init__`` after ``super().__init__`` and finish
    ``_forward`` with :meth:`post_linear`.
    """

    def setup_neural(self, n_f: int, activation_func: str, batch_normalisation: Any, dropout_rate: float,
                     kernel_size: int, b: Any = None, gamma: Any = None, mean: Any = None, std: Any = None,
                     gradnet_mode: Any = None) -> int:
        """Validates the common options, creates ``b`` (and BN, dropout params).

        Returns:
            Number of linear features the subclass must compute (``n_f`` times the maxout factor).
        """
        if not isinstance(n_f, int) or isinstance(n_f, bool) or n_f < 1:
            raise ConfigError(f"{type(self).__name__} {self.name!r}: n_f must be a positive int, got {n_f!r}")
        if gradnet_mode:
            raise NotImplementedError("gradnet_mode (ELEKTRONN2's GradNet experiment) is not supported by ekn")
        if batch_normalisation == "fadeout":
            raise NotImplementedError("batch_normalisation='fadeout' (GradNet) is not supported by ekn")
        if batch_normalisation is True:
            batch_normalisation = "train"
        if batch_normalisation not in BN_MODES:
            raise ConfigError(f"batch_normalisation must be one of {BN_MODES}, got {batch_normalisation!r}")
        dropout_rate = float(dropout_rate)
        if not 0 <= dropout_rate < 1:
            raise ConfigError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
        self.activation_func = activation_func
        self.act, self.maxout = parse_activation(activation_func)
        self.n_f = n_f
        self.batch_normalisation = batch_normalisation
        self.dropout_rate = dropout_rate
        n_lin = n_f * self.maxout
        if self.act == "prelu":
            init, scale = bias_init("lin", kernel_size)
            self.add_param("b", b, shape=(n_lin, 2), init=init, scale=scale)
            if b is None and self.params["b"].variable is not None:
                value = self.params["b"].get_value()
                value[:, 1] = 1.0
                self.params["b"].set_value(value)
        else:
            init, scale = bias_init(activation_func, kernel_size)
            self.add_param("b", b, shape=(n_lin,), init=init, scale=scale)
        if batch_normalisation:
            const = batch_normalisation == "const"
            self.add_param("gamma", gamma, shape=(n_lin,), init="const", scale=1.0, weight_decay=3.0, constant=const)
            self.add_param("mean", mean, shape=(n_lin,), init="zeros", trainable=False, constant=const)
            self.add_param("std", std, shape=(n_lin,), init="const", scale=1.0, trainable=False, constant=const)
        if dropout_rate > 0:
            self.add_param("dropout_rate", dropout_rate, shape=(), trainable=False)
        return n_lin

    def _param(self, name: str) -> Any:
        return (self.params.get(name) or self.shared_params[name]).variable

    def post_linear(self, lin: Any, training: bool) -> Any:
        """Applies BN, bias, activation and dropout to the linear output (features last)."""
        T = tf()
        if self.batch_normalisation:
            gamma, mean, std = self._param("gamma"), self._param("mean"), self._param("std")
            if self.batch_normalisation == "train" and training:
                axes = list(range(len(lin.shape) - 1))
                batch_mean, batch_var = T.nn.moments(lin, axes)
                batch_std = T.sqrt(batch_var + BN_EPSILON)
                mean.assign(BN_MOMENTUM * mean + (1 - BN_MOMENTUM) * batch_mean)
                std.assign(BN_MOMENTUM * std + (1 - BN_MOMENTUM) * batch_std)
                lin = (lin - batch_mean) * (gamma / batch_std)
            else:
                lin = (lin - mean) * (gamma / std)
        b = self._param("b")
        if self.act == "prelu":
            out = apply_activation(lin + b[:, 0], "prelu", slope=b[:, 1])
        else:
            out = apply_activation(lin + b, self.activation_func)
        if training and "dropout_rate" in self.params:
            out = T.nn.dropout(out, rate=self.params["dropout_rate"].variable)
        return out

    def neural_repr(self) -> str:
        """Common part of the layer description."""
        parts = [f"n_f={self.n_f}", f"act={self.activation_func}"]
        if self.batch_normalisation:
            parts.append(f"BN={self.batch_normalisation}")
        if self.dropout_rate:
            parts.append(f"dropout={self.dropout_rate}")
        return " ".join(parts)
