"""``Perceptron`` (alias ``Dot``): fully connected layer over the feature axis.

Without ``flatten`` the layer acts per position (a 1×1 convolution for spatial inputs); with
``flatten=True`` all non-batch axes are flattened first (channels-last order) and the output is
``(b, n_f)``. Weights: ``w`` ``(n_in, n_lin)``, ``b`` ``(n_lin,)``. Dropout masks are drawn per
element (ELEKTRONN2 shared one mask over the batch).

Example:
    >>> from ekn_core import neuromancer as nm
    >>> _ = nm.model_manager.newmodel("doc_dense")
    >>> inp = nm.Input((None, 64, 3, 3), 'b,f,y,x')
    >>> d = nm.Perceptron(inp, 200, flatten=True)
    >>> d.shape.shape, d.param_count
    ((None, 200), 115400)
"""

from __future__ import annotations

import math
from typing import Any

from ekn_core.errors import ConfigError
from ekn_core.node import Node
from ekn_core.lazy import tf
from ekn_core.shapes import TaggedShape
from ekn_plugins.layers.neural import NeuralLayer


class Perceptron(NeuralLayer):
    """Fully connected layer (ELEKTRONN2 signature).

    Args:
        parent: Input node (must have an ``f`` axis; with ``flatten`` also ``b``).
        n_f: Output features.
        activation_func: Activation name.
        flatten: Flatten all non-batch axes first (output tags ``b,f``).
        batch_normalisation, dropout_rate: See :mod:`ekn_plugins.layers.neural`.
        name: Node name.
        print_repr: Log the node description.
        w, b, gamma, mean, std: Initial values, ``[array, 'const']`` or shared Params.
        gradnet_mode: Not supported.
    """

    def __init__(self, parent: Node, n_f: int, activation_func: str = "relu", flatten: bool = False,
                 batch_normalisation: Any = False, dropout_rate: float = 0, name: str = "dot",
                 print_repr: bool = True, w: Any = None, b: Any = None, gamma: Any = None, mean: Any = None,
                 std: Any = None, gradnet_mode: Any = None):
        super().__init__(parent, name, print_repr)
        shape = parent.shape
        if not shape.hastag("f") or (flatten and not shape.hastag("b")):
            raise ConfigError(f"Perceptron {name!r} needs an 'f' axis (and 'b' with flatten), got {shape.tags}")
        self.flatten = bool(flatten)
        self.n_in = shape.stripbatch_prod if flatten else shape["f"]
        if self.n_in is None:
            raise ConfigError(f"Perceptron {name!r}: the input feature count must be known")
        n_lin = self.setup_neural(n_f, activation_func, batch_normalisation, dropout_rate, 1, b, gamma, mean, std,
                                  gradnet_mode)
        self.add_param("w", w, shape=(self.n_in, n_lin), init="normal",
                       scale=math.sqrt(2.0 / (self.n_in + n_lin)), weight_decay=1.0)

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        shape = parent_shapes[0]
        if self.flatten:
            return TaggedShape((shape["b"], self.n_f), "b,f")
        return shape.updateshape("f", self.n_f)

    def _compute_cost(self) -> float:
        shape = self.parents[0].shape
        return float(shape.stripnone_prod * self.n_f * self.maxout)

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        T = tf
        x = inputs[0]
        if self.flatten:
            x = T.reshape(x, [-1, self.n_in])
        y = T.tensordot(x, self._param("w"), axes=[[x.shape.rank - 1], [0]])
        return self.post_linear(y, training)

    def _repr_extras(self) -> str:
        return self.neural_repr() + (" flatten" if self.flatten else "")
