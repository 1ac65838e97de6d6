"""Max-fragment pooling (MFP): all pooling phases of a strided net in one forward pass.

:func:`fragment_pool` pools every phase of a pooling window and stacks the results along the batch
axis (phase-major: new batch index = phase × previous batch + previous index), and
:func:`mfp_shape` computes the matching TaggedShape. :class:`FragmentsToDense` interleaves the
fragments back into a dense, stride-1 output (ELEKTRONN2 ``FragmentsToDense``).

Example:
    >>> from ekn_core import neuromancer as nm
    >>> _ = nm.model_manager.newmodel("doc_mfp")
    >>> inp = nm.Input((1, 1, 10, 10), 'b,f,x,y')
    >>> conv = nm.Conv(inp, 2, (2, 2), (2, 2), mfp=True)
    >>> conv.shape.shape, conv.shape.mfp_offsets
    ((4, 2, 4, 4), ((0, 0), (0, 1), (1, 0), (1, 1)))
    >>> nm.FragmentsToDense(conv).shape.shape
    (1, 2, 8, 8)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ekn_core.node import Node
from ekn_core.lazy import tf
from ekn_core.shapes import TaggedShape


def mfp_shape(node: Node, shape: TaggedShape, sizes: Sequence[int], pool: Sequence[int]) -> TaggedShape:
    """Shape after MFP with window ``pool`` of a map whose spatial sizes are ``sizes``.

    Each phase slice has length ``size - pool + 1`` which must be divisible by ``pool``.
    """
    out = []
    for i, (s, p) in enumerate(zip(sizes, pool)):
        node.shape_check((s - p + 1) % p == 0 and s - p + 1 >= p,
                         f"max-fragment pooling {p} needs a map size s with (s - {p} + 1) divisible by {p}, got {s}",
                         i)
        out.append(max((s - p + 1) // p, 1))
    n_phase = math.prod(pool)
    batch = shape["b"]
    node.shape_check(batch is not None, "max-fragment pooling needs a fixed batch size; load the model with "
                     "imposed_batch_size=1", None)
    offsets = [tuple(o + ix * st for o, ix, st in zip(old, phase, shape.strides))
               for phase in itertools.product(*[range(p) for p in pool]) for old in shape.mfp_offsets]
    return (shape.with_spatial_shape(out).updateshape("b", (batch or 1) * n_phase)
            .updatestrides(tuple(st * p for st, p in zip(shape.strides, pool))).updatemfp_offsets(offsets))


def fragment_pool(x: Any, pool: Sequence[int], mode: str = "max") -> Any:
    """Pools every phase of ``pool`` (canonical ``(b, *spatial, f)`` tensor) and stacks on the batch axis."""
    T = tf
    sizes = x.shape[1:-1]
    parts = []
    for phase in itertools.product(*[range(p) for p in pool]):
        index = tuple([slice(None)] + [slice(ix, ix + s - p + 1) for ix, s, p in zip(phase, sizes, pool)]
                      + [slice(None)])
        parts.append(pool_tensor(x[index], pool, pool, mode))
    return T.concat(parts, axis=0)


def pool_tensor(x: Any, pool: Sequence[int], stride: Sequence[int], mode: str) -> Any:
    """VALID pooling of a canonical tensor; modes ``max``, ``average`` (incl./excl. pad: same here), ``sum``."""
    T = tf
    if all(p == 1 for p in pool) and all(s == 1 for s in stride):
        return x
    kind = "MAX" if mode == "max" else "AVG"
    y = T.nn.pool(x, window_shape=list(pool), pooling_type=kind, strides=list(stride), padding="VALID")
    return y * float(math.prod(pool)) if mode == "sum" else y


class FragmentsToDense(Node):
    """Interleaves MFP fragments (batch axis) into a dense map with strides 1.

    Args:
        parent: Node whose batch holds ``len(mfp_offsets)`` fragments per image.
        name: Node name.
        print_repr: Log the node description.
    """

    def __init__(self, parent: Node, name: str = "to_dense", print_repr: bool = True):
        super().__init__(parent, name, print_repr)

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        shape = parent_shapes[0]
        n_frag = len(shape.mfp_offsets)
        batch = shape["b"] if shape.hastag("b") else None
        strides_prod = math.prod(shape.strides)
        self.shape_check(n_frag == strides_prod, f"{n_frag} fragments but strides {shape.strides} need "
                         f"{strides_prod}: switch mfp=True on in every pooling layer before this node")
        self.shape_check(batch is not None and batch % n_frag == 0,
                         f"batch size {batch} is not a multiple of the number of fragments {n_frag}")
        dense = [s * int(st) for s, st in zip(shape.spatial_shape, shape.strides)]
        return (shape.with_spatial_shape(dense).updateshape("b", max((batch or n_frag) // n_frag, 1))
                .updatestrides((1,) * shape.ndim).updatemfp_offsets([[0] * shape.ndim]))

    def _compute_cost(self) -> float:
        return 0.0

    def _order(self) -> np.ndarray:
        """Fragment permutation that sorts the offsets row-major (z-phase slowest)."""
        shape = self.parents[0].shape
        strides = [int(s) for s in shape.strides]
        keys = [np.ravel_multi_index(o, strides) for o in shape.mfp_offsets]
        return np.argsort(keys)

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        T = tf
        x = inputs[0]
        shape = self.parents[0].shape
        strides = [int(s) for s in shape.strides]
        n_frag, ndim = len(shape.mfp_offsets), shape.ndim
        sizes = list(shape.spatial_shape)
        n_f = x.shape[-1]
        batch = self.shape["b"]
        x = T.reshape(x, [n_frag, batch, *sizes, n_f])
        x = T.gather(x, self._order(), axis=0)
        x = T.reshape(x, [*strides, batch, *sizes, n_f])
        # (st_1..st_n, b, s_1..s_n, f) -> (b, s_1, st_1, ..., s_n, st_n, f)
        perm = [ndim] + [a for k in range(ndim) for a in (ndim + 1 + k, k)] + [2 * ndim + 1]
        x = T.transpose(x, perm)
        return T.reshape(x, [batch, *[s * st for s, st in zip(sizes, strides)], n_f])
