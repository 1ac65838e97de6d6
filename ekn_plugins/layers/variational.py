"""Gaussian latent variables for variational auto-encoders: ``GaussianRV`` and its ``GaussianKL`` prior term.

:class:`GaussianRV` draws ``z = mu + exp(log_sig) * eps`` with ``eps ~ N(0, 1)`` (the
reparameterisation: gradients flow to ``mu`` and ``log_sig``). It samples in training *and*
inference (it is part of the model, as in ELEKTRONN2); ``n_samples > 0`` draws that many samples
per example on a new ``s`` axis right of ``b``.

:class:`GaussianKL` is the element-wise KL divergence of ``N(mu, sig²)`` from ``N(0, 1)``,
``0.5 (mu² + sig² - 1 - 2 log sig)`` (ELEKTRONN2 ``GaussianAEVBPrior``); feed it to a loss
aggregation. ``GaussianRV.make_priorlayer()`` builds it.

Example:
    >>> import numpy as np
    >>> from ekn_core import neuromancer as nm
    >>> _ = nm.model_manager.newmodel("doc_variational")
    >>> mu = nm.Input((2, 3), 'b,f', name='mu')
    >>> log_sig = nm.Input((2, 3), 'b,f', name='log_sig')
    >>> z = nm.GaussianRV(mu, log_sig, n_samples=4)
    >>> z.shape.tags, bool(z(np.zeros((2, 3)), np.full((2, 3), -30.0)).max() < 1e-9)
    (('b', 's', 'f'), True)
    >>> kl = z.make_priorlayer()
    >>> float(kl(np.zeros((2, 3)), np.zeros((2, 3))).sum())
    0.0
"""

from __future__ import annotations

from typing import Any

from ekn_core.errors import ConfigError
from ekn_core.lazy import tf
from ekn_core.node import Node
from ekn_core.shapes import TaggedShape
from ekn_plugins.layers.dropout import draw_seed
from ekn_plugins.layers.merge import align_tensor


class _MuLogSig(Node):
    """Base of nodes taking ``(mu, log_sig)`` of equal tags and sizes."""

    def __init__(self, mu: Node, log_sig: Node, name: str):
        super().__init__([mu, log_sig], name)
        if set(mu.shape.tags) != set(log_sig.shape.tags) or any(
                mu.shape[t] != log_sig.shape[t] for t in mu.shape.tags):
            raise ConfigError(f"{type(self).__name__} {name!r}: mu {mu.name!r} {mu.shape.shape} "
                              f"({','.join(mu.shape.tags)}) and log_sig {log_sig.name!r} {log_sig.shape.shape} "
                              f"({','.join(log_sig.shape.tags)}) must have the same axes and sizes")

    def _operands(self, inputs: list[Any]) -> tuple[Any, Any]:
        return inputs[0], align_tensor(inputs[1], self.parents[1].shape, self.parents[0].shape)


class GaussianRV(_MuLogSig):
    """Reparameterised Gaussian sample ``mu + exp(log_sig) * N(0, 1)``.

    Args:
        mu: Mean node.
        log_sig: Log standard deviation node (same axes and sizes).
        n_samples: 0 for one sample of ``mu``'s shape; ``k > 0`` adds an ``s`` axis of ``k``
            samples right of ``b`` (needs a ``b`` axis).
        name: Node name.

    Shape rule: ``mu``'s shape (plus ``s`` when ``n_samples > 0``); cost 2 per output element.
    """

    def __init__(self, mu: Node, log_sig: Node, n_samples: int = 0, name: str = "state"):
        super().__init__(mu, log_sig, name)
        if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 0:
            raise ConfigError(f"GaussianRV {name!r}: n_samples must be an int >= 0, got {n_samples!r}")
        if n_samples and (not mu.shape.hastag("b") or mu.shape.hastag("s")):
            raise ConfigError(f"GaussianRV {name!r}: n_samples > 0 needs a 'b' axis and no 's' axis in "
                              f"{mu.shape.tags}")
        self.n_samples = n_samples

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        shape = parent_shapes[0]
        return shape.addaxis("b", self.n_samples, "s") if self.n_samples else shape

    def _compute_cost(self) -> float:
        return 2.0 * self.shape.stripnone_prod

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        mu, log_sig = self._operands(inputs)
        if self.n_samples:
            axis = self.shape.canonical_tags.index("s")
            mu, log_sig = tf.expand_dims(mu, axis), tf.expand_dims(log_sig, axis)
            multiples = [1] * len(self.shape.tags)
            multiples[axis] = self.n_samples
            mu, log_sig = tf.tile(mu, multiples), tf.tile(log_sig, multiples)
        return mu + tf.exp(log_sig) * tf.random.stateless_normal(tf.shape(mu), seed=draw_seed(), dtype=mu.dtype)

    def make_priorlayer(self, name: str = "kl") -> Node:
        """The :class:`GaussianKL` node of this variable's ``mu`` and ``log_sig``."""
        return GaussianKL(self.parents[0], self.parents[1], name=name)

    def _repr_extras(self) -> str:
        return f"n_samples={self.n_samples}"


class GaussianKL(_MuLogSig):
    """Element-wise ``KL(N(mu, exp(log_sig)²) || N(0, 1)) = 0.5 (mu² + sig² - 1) - log_sig``.

    Args:
        mu: Mean node.
        log_sig: Log standard deviation node (same axes and sizes).
        name: Node name.

    Shape rule: ``mu``'s shape.
    """

    def __init__(self, mu: Node, log_sig: Node, name: str = "kl"):
        super().__init__(mu, log_sig, name)

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        mu, log_sig = self._operands(inputs)
        return 0.5 * (tf.square(mu) + tf.exp(2.0 * log_sig) - 1.0) - log_sig
