"""Group normalisation (Wu & He): instance and layer normalisation as its special cases.

Each example's features are split into ``n_groups`` groups of consecutive channels; every group
is normalised with the mean and variance over its channels and all spatial positions of that
example, then scaled and shifted per feature: ``y = gamma * (x - mean) / sqrt(var + eps) + beta``.
``n_groups = n_f`` is instance normalisation, ``n_groups = 1`` layer normalisation. Unlike batch
normalisation the statistics do not depend on the batch, so training and inference compute the
same function and batch size 1 (the usual case for large 3-D patches) is no problem.

Example:
    >>> import numpy as np
    >>> from ekn_core import neuromancer as nm
    >>> _ = nm.model_manager.newmodel("doc_group_norm")
    >>> inp = nm.Input((1, 4, 3, 3), 'b,f,y,x')
    >>> norm = nm.GroupNorm(inp, n_groups=2)
    >>> y = norm(np.random.default_rng(0).normal(3.0, 2.0, (1, 4, 3, 3)).astype('float32'))
    >>> [round(float(v), 4) for v in (y[0, :2].mean(), y[0, :2].std())]
    [0.0, 1.0]
"""

from __future__ import annotations

from typing import Any

from ekn_core.errors import ConfigError
from ekn_core.lazy import tf
from ekn_core.node import Node
from ekn_core.shapes import TaggedShape


class GroupNorm(Node):
    """Normalises groups of channels per example over all spatial positions.

    Args:
        parent: Input node with an ``f`` axis and spatial axes.
        n_groups: Number of channel groups; must divide the feature count (``n_f``: instance
            normalisation, 1: layer normalisation).
        eps: Added to the variance.
        name: Node name.
        print_repr: Log the node description.
    """

    def __init__(self, parent: Node, n_groups: int = 1, eps: float = 1e-5, name: str = "group_norm",
                 print_repr: bool = False):
        super().__init__(parent, name, print_repr)
        n_f = parent.shape["f"]
        if int(n_groups) < 1 or n_f % int(n_groups):
            raise ConfigError(f"GroupNorm {name!r}: n_groups={n_groups!r} must be >= 1 and divide the "
                              f"{n_f} features; divisors: {[d for d in range(1, n_f + 1) if n_f % d == 0]}")
        if parent.shape.ndim < 1:
            raise ConfigError(f"GroupNorm {name!r} needs spatial axes (z, y or x); the parent has tags "
                              f"{','.join(parent.shape.tags)}")
        self.n_groups, self.eps = int(n_groups), float(eps)
        self.add_param("gamma", shape=(n_f,), init="const", scale=1.0, weight_decay=0.0)
        self.add_param("beta", shape=(n_f,), init="zeros")

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        return parent_shapes[0]

    def _compute_cost(self) -> float:
        return 4.0 * float(self.parents[0].shape.stripnone_prod)

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        x = inputs[0]
        n_f = x.shape[-1]
        lead = len(self.shape.canonical_tags) - self.shape.ndim - 1
        grouped = tf.reshape(x, tf.concat([tf.shape(x)[:-1], [self.n_groups, n_f // self.n_groups]], axis=0))
        axes = [*range(lead, lead + self.shape.ndim), lead + self.shape.ndim + 1]
        mean, var = tf.nn.moments(grouped, axes=axes, keepdims=True)
        normalised = tf.reshape((grouped - mean) * tf.math.rsqrt(var + self.eps), tf.shape(x))
        return normalised * self.params["gamma"].variable + self.params["beta"].variable

    def _repr_extras(self) -> str:
        return f"groups={self.n_groups}"
