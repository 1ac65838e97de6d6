"""Shared machinery of the neural layers (Conv, UpConv, Perceptron): bias, batch normalisation,
activation and dropout, applied in ELEKTRONN2's order after the linear operation.

Order: linear op (and pooling) → batch normalisation → bias → activation → dropout.

* Batch normalisation (``batch_normalisation=``): ``False``, ``'train'``, ``'fadeout'``,
  ``'predict'`` or ``'const'``, implemented in :mod:`ekn_plugins.layers.normalisation`
  (statistics accumulated over the whole data set in training). The layer bias acts as beta
  (ELEKTRONN2's parameter layout).
* Dropout (``dropout_rate > 0``): inverted dropout in training steps only, mask per example and
  element (:mod:`ekn_plugins.layers.dropout`). The rate is a non-trainable parameter
  ``dropout_rate`` (``Model.dropout_rates`` changes it without retrace).

Example:
    >>> bias_init('relu', 9)
    ('const', 0.1111111111111111)
"""

from __future__ import annotations

from typing import Any

from ekn_core.errors import ConfigError
from ekn_core.node import Node, cast_floating, compute_dtype
from ekn_plugins.layers.activations import apply_activation, parse_activation
from ekn_plugins.layers.dropout import add_dropout, apply_dropout, check_rate
from ekn_plugins.layers.normalisation import add_batchnorm, batch_normalise, check_bn_mode


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
        batch_normalisation = check_bn_mode(batch_normalisation)
        dropout_rate = check_rate(dropout_rate)
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
        add_batchnorm(self, batch_normalisation, n_lin, gamma, mean, std)
        add_dropout(self, dropout_rate)
        return n_lin

    def _param(self, name: str) -> Any:
        variable = (self.params.get(name) or self.shared_params[name]).variable
        return cast_floating(variable, compute_dtype()) if self.mixed_precision else variable

    @property
    def mixed_precision(self) -> bool:
        """Whether the layer computes in the mixed-precision compute dtype (see
        :func:`ekn_core.node.set_precision`): yes unless it has batch normalisation or dropout."""
        return not self.batch_normalisation and not self.dropout_rate

    def post_linear(self, lin: Any, training: bool) -> Any:
        """Applies BN, bias, activation and dropout to the linear output (features last)."""
        lin = batch_normalise(self, lin, training, self.batch_normalisation)
        b = self._param("b")
        if self.act == "prelu":
            out = apply_activation(lin + b[:, 0], "prelu", slope=b[:, 1])
        else:
            out = apply_activation(lin + b, self.activation_func)
        return apply_dropout(self, out, training)

    def neural_repr(self) -> str:
        """Common part of the layer description."""
        parts = [f"n_f={self.n_f}", f"act={self.activation_func}"]
        if self.batch_normalisation:
            parts.append(f"BN={self.batch_normalisation}")
        if self.dropout_rate:
            parts.append(f"dropout={self.dropout_rate}")
        return " ".join(parts)
