"""``Pool``: 1-3-D max/average/sum pooling with an optional stride and max-fragment pooling.

Geometry per spatial axis: output ``(s - p) / st + 1`` (must be exact), strides ``st_in * st``,
fov ``fov + (p - 1) * st_in``. With ``mfp=True`` (stride must equal the window) the output holds
all pooling phases in the batch axis, as for ``Conv(mfp=True)`` (ELEKTRONN2 left this
unimplemented).

Example:
    >>> from ekn_core import neuromancer as nm
    >>> _ = nm.model_manager.newmodel("doc_pool")
    >>> p = nm.Pool(nm.Input((None, 4, 10, 10), 'b,f,x,y'), (2, 2))
    >>> p.shape.spatial_shape, p.shape.strides, p.shape.fov
    ((5, 5), (2, 2), (2, 2))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ekn_core.errors import ConfigError
from ekn_core.node import Node
from ekn_core.shapes import TaggedShape
from ekn_plugins.layers.conv import POOL_MODES, check_conv_layout, per_axis
from ekn_plugins.layers.mfp import fragment_pool, mfp_shape, pool_tensor


class Pool(Node):
    """Pooling layer (ELEKTRONN2 signature).

    Args:
        parent: Input node (tags ``b``, ``f`` and 1-3 spatial axes).
        pool_shape: Window per spatial axis (an int is used for all).
        stride: Step per spatial axis (default: the window).
        mfp: Max-fragment pooling (needs ``stride == pool_shape`` and a fixed batch size).
        mode: ``'max'``, ``'average'`` (= ``'average_inc_pad'`` = ``'average_exc_pad'`` for valid
            pooling) or ``'sum'``.
        name: Node name.
        print_repr: Log the node description.
    """

    supports_mfp = True
    mixed_precision = True  # dtype-agnostic: keeps the mixed-precision compute dtype

    def __init__(self, parent: Node, pool_shape: int | Sequence[int], stride: Any = None, mfp: bool = False,
                 mode: str = "max", name: str = "pool", print_repr: bool = True):
        super().__init__(parent, name, print_repr)
        check_conv_layout(self, parent.shape)
        ndim = parent.shape.ndim
        self.pool_shape = per_axis(pool_shape, ndim, "pool_shape")
        self.stride = per_axis(stride, ndim, "stride") if stride is not None else self.pool_shape
        if mode not in POOL_MODES:
            raise ConfigError(f"Pool mode must be one of {POOL_MODES}, got {mode!r}")
        self.mode, self.mfp = mode, bool(mfp)
        if self.mfp and self.stride != self.pool_shape:
            raise ConfigError(f"Pool {name!r}: mfp=True needs stride == pool_shape, got {self.stride}")

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        shape = parent_shapes[0]
        fov = tuple(-1 if fv <= 0 else fv + (p - 1) * st for fv, p, st in zip(shape.fov, self.pool_shape,
                                                                             shape.strides))
        if self.mfp:
            return mfp_shape(self, shape, shape.spatial_shape, self.pool_shape).updatefov(fov)
        out = []
        for i, (s, p, st) in enumerate(zip(shape.spatial_shape, self.pool_shape, self.stride)):
            self.shape_check(s >= p and (s - p) % st == 0, f"input size {s} on spatial axis "
                             f"{shape.spatial_tags[i]!r} does not fit pooling window {p} with stride {st} "
                             f"((s - p) must be a non-negative multiple of the stride)", i)
            out.append(max((s - p) // st + 1, 1))
        strides = tuple(a * b for a, b in zip(shape.strides, self.stride))
        return shape.with_spatial_shape(out).updatestrides(strides).updatefov(fov)

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        if self.mfp:
            return fragment_pool(inputs[0], self.pool_shape, self.mode)
        return pool_tensor(inputs[0], self.pool_shape, self.stride, self.mode)

    def _repr_extras(self) -> str:
        stride = f" stride={self.stride}" if self.stride != self.pool_shape else ""
        return f"pool={self.pool_shape}{stride} mode={self.mode}" + (" MFP active" if self.mfp else "")
