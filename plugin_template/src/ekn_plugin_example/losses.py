"""Loss ``example.log_cosh``: ``log(cosh(p - t))`` per element, mean over features.

Smooth like the squared loss near zero and like the absolute loss far from it. Written in the
numerically stable form ``|d| + softplus(-2|d|) - log 2``.

Example:
    >>> import numpy as np
    >>> from ekn_core.node import model_manager
    >>> from ekn_core.plugins import registry
    >>> _ = model_manager.newmodel("doc_example_log_cosh")
    >>> Input = registry("layers").get("input")
    >>> pred, target = Input((1, 1, 2), "b,f,x"), Input((1, 1, 2), "b,f,x", name="target")
    >>> loss = LogCoshLoss(pred, target)
    >>> out = loss(np.array([[[0.0, 1.0]]], "float32"), np.zeros((1, 1, 2), "float32"))
    >>> [round(float(v), 5) for v in out.ravel()]
    [0.0, 0.43378]
"""

from __future__ import annotations

from typing import Any

from ekn_core.errors import ConfigError
from ekn_core.lazy import tf
from ekn_core.node import Node
from ekn_core.shapes import TaggedShape


class LogCoshLoss(Node):
    """Element-wise log-cosh deviation between a prediction and a target of the same shape.

    Args:
        pred: Prediction node.
        target: Target node (same shape as ``pred``).
        name: Node name.
        print_repr: Log the node description.
    """

    kind = "losses"

    def __init__(self, pred: Node, target: Node, name: str = "log_cosh", print_repr: bool = False):
        if tuple(pred.shape.shape) != tuple(target.shape.shape):
            raise ConfigError(f"log_cosh: target shape {target.shape.shape} differs from prediction shape "
                              f"{pred.shape.shape}")
        super().__init__([pred, target], name, print_repr)

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        return parent_shapes[0].updateshape("f", 1)

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        d = tf.abs(inputs[0] - inputs[1])
        per_element = d + tf.nn.softplus(-2.0 * d) - tf.math.log(2.0)
        return tf.reduce_mean(per_element, axis=-1, keepdims=True)
