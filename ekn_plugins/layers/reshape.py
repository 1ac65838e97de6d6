"""Nodes that slice, pad, reshape or map values: ``split``/``Split``, ``Pad``, ``Reshape``, ``ApplyFunc``.

* :func:`split` cuts a node along any axis into several nodes (one :class:`Split` node per piece).
* :class:`Pad` pads spatial axes with a constant on both sides (any tag layout).
* :class:`Reshape` reshapes in the *declared* layout, exactly like ``numpy.reshape`` on the arrays
  the user sees, and gives the result new tags.
* :class:`ApplyFunc` applies an element-wise function chosen by name from :data:`FUNCTIONS`
  (with numeric arguments); arbitrary callables are refused because they cannot be saved.

Example:
    >>> import numpy as np
    >>> from ekn_core import neuromancer as nm
    >>> _ = nm.model_manager.newmodel("doc_reshape")
    >>> inp = nm.Input((4, 2, 6), 'r,b,f')
    >>> first, rest = nm.split(inp, 'r', index=1, strip_singleton_dims=True)
    >>> first.shape.tags, rest.shape['r']
    (('b', 'f'), 3)
    >>> sq = nm.ApplyFunc(first, 'square')
    >>> sq(np.full((4, 2, 6), 3.0))[0, :2]
    array([9., 9.], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ekn_core.errors import ConfigError
from ekn_core.lazy import tf
from ekn_core.node import Node
from ekn_core.shapes import SPATIAL_TAGS, TaggedShape


def _declared_perm(shape: TaggedShape) -> list[int]:
    """Permutation taking a canonical tensor to the declared tag order."""
    inverse = [0] * len(shape.tags)
    for pos, axis in enumerate(shape.canonical_perm):
        inverse[axis] = pos
    return inverse


class Split(Node):
    """One piece ``[start:stop]`` of ``parent`` along an axis (built by :func:`split`).

    Args:
        parent: Node to cut.
        axis: Tag or index (declared order) of the axis.
        start, stop: Slice bounds along that axis (``stop=None``: to the end).
        strip: Remove the axis when the piece has length 1.
        name: Node name.

    Shape rule: the axis gets ``stop - start`` entries (or is removed); strides and FOV kept; a
    piece of a spatial axis starts ``start * strides`` input voxels further (``field_start``).
    """

    keeps_values = True  # only moves its parent's values (see Node.keeps_values)

    def __init__(self, parent: Node, axis: str | int = "f", start: int = 0, stop: int | None = None,
                 strip: bool = False, name: str = "split"):
        super().__init__(parent, name)
        shape = parent.shape
        self.tag = shape.tags[shape._index(axis)]
        size = shape[self.tag]
        if stop is None:
            if size is None:
                raise ConfigError(f"Split {name!r}: axis {self.tag!r} has an unknown size; give stop explicitly")
            stop = size
        if not 0 <= start < stop or (size is not None and stop > size):
            raise ConfigError(f"Split {name!r}: slice [{start}:{stop}] is not inside axis {self.tag!r} of size "
                              f"{size}")
        if strip and stop - start != 1:
            raise ConfigError(f"Split {name!r}: strip=True needs a piece of length 1, got [{start}:{stop}]")
        if strip and self.tag in SPATIAL_TAGS + ("f",):
            raise ConfigError(f"Split {name!r}: the {self.tag!r} axis cannot be stripped (only r, b, s)")
        self.start, self.stop, self.strip = int(start), int(stop), bool(strip)

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        shape = parent_shapes[0].updateshape(self.tag, self.stop - self.start)
        if self.tag in shape.spatial_tags:
            k = shape.spatial_tags.index(self.tag)
            start = list(shape.field_start)
            start[k] += self.start * shape.strides[k]
            shape = shape.updatefield_start(start)
        return shape.delaxis(self.tag) if self.strip else shape

    def _compute_cost(self) -> float:
        return 0.0

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        x = inputs[0]
        axis = self.parents[0].shape.canonical_tags.index(self.tag)
        index = [slice(None)] * axis + [self.start if self.strip else slice(self.start, self.stop)]
        return x[tuple(index)]

    def _repr_extras(self) -> str:
        return f"{self.tag}[{self.start}:{self.stop}]" + (" stripped" if self.strip else "")


def split(node: Node, axis: str | int = "f", index: int | Sequence[int] | None = None, n_out: int | None = None,
          strip_singleton_dims: bool = False, name: str | Sequence[str] = "split") -> tuple[Node, ...]:
    """Cuts ``node`` along ``axis`` into pieces (ELEKTRONN2 ``split``), returning one node each.

    Args:
        node: Node to cut.
        axis: Tag or index of the axis.
        index: A split position or a sorted list of positions (pieces ``[0:i0], [i0:i1], ...``).
        n_out: Alternative to ``index``: that many equal pieces (the size must divide).
        strip_singleton_dims: Remove the split axis from pieces of length 1 (ELEKTRONN2 removed
            every length-1 axis, which also dropped the batch axis of a batch of one).
        name: Base name, or one name per piece.

    Returns:
        The piece nodes, in order.

    Example:
        >>> from ekn_core import neuromancer as nm
        >>> _ = nm.model_manager.newmodel("doc_split")
        >>> parts = split(nm.Input((2, 6), 'b,f'), 'f', n_out=3, name=['a', 'b', 'c'])
        >>> [(p.name, p.shape['f']) for p in parts]
        [('a', 2), ('b', 2), ('c', 2)]
    """
    shape = node.shape
    tag = shape.tags[shape._index(axis)]
    size = shape[tag]
    if (index is None) == (n_out is None):
        raise ConfigError("split needs exactly one of index= and n_out=")
    if size is None:
        raise ConfigError(f"split: axis {tag!r} of {node.name!r} has an unknown size")
    if n_out is not None:
        if n_out < 1 or size % n_out:
            raise ConfigError(f"split: axis {tag!r} of size {size} cannot be cut into {n_out} equal pieces")
        bounds = [size // n_out * i for i in range(n_out + 1)]
    else:
        points = [index] if isinstance(index, int) else list(index)
        bounds = [0, *points, size]
        if any(a >= b for a, b in zip(bounds, bounds[1:])):
            raise ConfigError(f"split: positions {points} must increase strictly inside (0, {size})")
    pieces = list(zip(bounds, bounds[1:]))
    names = [name] * len(pieces) if isinstance(name, str) else list(name)
    if len(names) != len(pieces):
        raise ConfigError(f"split: {len(names)} names for {len(pieces)} pieces")
    return tuple(Split(node, tag, a, b, strip=strip_singleton_dims and b - a == 1, name=n)
                 for (a, b), n in zip(pieces, names))


class Pad(Node):
    """Pads the spatial axes with a constant on both sides (any tag layout).

    Args:
        parent: Node to pad.
        pad: Voxels added on *each* side, one per spatial axis (declared order), or one int.
        value: The constant.
        name: Node name.

    Shape rule: spatial size ``s + 2 * pad``; strides and FOV kept; the output grid moves
    ``pad * strides`` input voxels outwards (``TaggedShape.field_start``).
    """

    keeps_values = True  # moves its parent's values and adds the constant (see Node.keeps_values)

    def __init__(self, parent: Node, pad: int | Sequence[int], value: float = 0.0, name: str = "pad"):
        super().__init__(parent, name)
        ndim = parent.shape.ndim
        if ndim == 0:
            raise ConfigError(f"Pad {name!r}: {parent.name!r} has no spatial axes")
        pads = [pad] * ndim if isinstance(pad, int) else list(pad)
        if len(pads) != ndim or any(not isinstance(p, int) or p < 0 for p in pads):
            raise ConfigError(f"Pad {name!r}: pad needs {ndim} non-negative ints (one per spatial axis), got {pad}")
        self.pad, self.value = tuple(pads), float(value)

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        shape = parent_shapes[0]
        start = [s - p * st for s, p, st in zip(shape.field_start, self.pad, shape.strides)]
        return shape.with_spatial_shape([s + 2 * p for s, p in zip(shape.spatial_shape, self.pad)]
                                        ).updatefield_start(start)

    def _compute_cost(self) -> float:
        return 0.0

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        tags = self.shape.canonical_tags
        spatial = iter(self.pad)
        widths = [[p, p] for p in (next(spatial) if t in SPATIAL_TAGS else 0 for t in tags)]
        return tf.pad(inputs[0], widths, constant_values=tf.cast(self.value, inputs[0].dtype))  # also int labels

    @property
    def added_constant(self) -> float:  # type: ignore[override]
        return self.value

    def _repr_extras(self) -> str:
        return f"pad={self.pad} value={self.value:g}"


class Reshape(Node):
    """Reshapes in the declared layout (like ``numpy.reshape``) and assigns new tags.

    Args:
        parent: Node to reshape.
        shape: New sizes (``None`` for the one size to infer, e.g. the batch) or a TaggedShape.
        tags: New tags (required unless ``shape`` is a TaggedShape).
        strides, fov: Of the new spatial axes (default 1).
        name: Node name.

    Shape rule: as given; the number of elements must stay the same.
    """

    keeps_values = True  # only moves its parent's values (see Node.keeps_values)

    def __init__(self, parent: Node, shape: Sequence[int | None] | TaggedShape, tags: str | Sequence[str] | None = None,
                 strides: Sequence[int] | None = None, fov: Sequence[int] | None = None, name: str = "reshape"):
        super().__init__(parent, name)
        if isinstance(shape, TaggedShape):
            self.target = shape
        else:
            if tags is None:
                raise ConfigError(f"Reshape {name!r}: give tags= (or a TaggedShape as shape)")
            self.target = TaggedShape(shape, tags, strides, fov)
        if sum(s is None for s in self.target.shape) > 1:
            raise ConfigError(f"Reshape {name!r}: at most one size may be None, got {self.target.shape}")

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        src, target = parent_shapes[0], self.target
        n_in, n_out = src.stripnone_prod, target.stripnone_prod
        if None in src.shape:
            self.shape_check(None in target.shape, f"{self.parents[0].name!r} has an unknown size {src.shape}: "
                             f"give None for the size that follows it in the new shape {target.shape}")
            return target
        if None in target.shape:
            self.shape_check(n_in % n_out == 0, f"cannot reshape {src.shape} ({n_in} values) to {target.shape}")
            return target.updateshape(target.shape.index(None), max(n_in // n_out, 1))
        self.shape_check(n_in == n_out, f"cannot reshape {src.shape} ({n_in} values) to {target.shape} "
                         f"({n_out} values)")
        return target

    def _compute_cost(self) -> float:
        return 0.0

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        src = self.parents[0].shape
        x = tf.transpose(inputs[0], _declared_perm(src))
        x = tf.reshape(x, [-1 if s is None else s for s in self.shape.shape])
        return tf.transpose(x, self.shape.canonical_perm)

    def _repr_extras(self) -> str:
        return f"to {self.shape.shape} {','.join(self.shape.tags)}"


#: Element-wise functions of :class:`ApplyFunc`: name → (number of numeric arguments, function).
FUNCTIONS: dict[str, tuple[int, Any]] = {
    "abs": (0, lambda x: tf.abs(x)),
    "clip": (2, lambda x, lo, hi: tf.clip_by_value(x, lo, hi)),
    "cos": (0, lambda x: tf.cos(x)),
    "exp": (0, lambda x: tf.exp(x)),
    "log": (0, lambda x: tf.math.log(x)),
    "maximum": (1, lambda x, a: tf.maximum(x, a)),
    "minimum": (1, lambda x, a: tf.minimum(x, a)),
    "neg": (0, lambda x: -x),
    "pow": (1, lambda x, a: tf.pow(x, a)),
    "reciprocal": (0, lambda x: 1.0 / x),
    "relu": (0, lambda x: tf.nn.relu(x)),
    "scale": (1, lambda x, a: x * a),
    "shift": (1, lambda x, a: x + a),
    "sigmoid": (0, lambda x: tf.sigmoid(x)),
    "sin": (0, lambda x: tf.sin(x)),
    "softplus": (0, lambda x: tf.nn.softplus(x)),
    "sqrt": (0, lambda x: tf.sqrt(x)),
    "square": (0, lambda x: tf.square(x)),
    "stop_gradient": (0, lambda x: tf.stop_gradient(x)),
    "tanh": (0, lambda x: tf.tanh(x)),
}


class ApplyFunc(Node):
    """Applies an element-wise function chosen by name (ELEKTRONN2 ``ApplyFunc``, saveable).

    Args:
        parent: Input node.
        functor: A name in :data:`FUNCTIONS` (e.g. ``'exp'``, ``'clip'``, ``'stop_gradient'``).
        args: The function's numeric arguments, e.g. ``(0.0, 1.0)`` for ``'clip'``.
        kwargs: Not supported (kept for the ELEKTRONN2 signature); must be empty.
        name: Node name.
        print_repr: Log the node description.

    Shape rule: unchanged.
    """

    def __init__(self, parent: Node, functor: str, args: Sequence[float] = (), kwargs: dict[str, Any] | None = None,
                 name: str = "apply", print_repr: bool = False):
        super().__init__(parent, name, print_repr)
        if not isinstance(functor, str):
            raise ConfigError(f"ApplyFunc {name!r}: functor must be one of the names {sorted(FUNCTIONS)} (arbitrary "
                              f"callables cannot be saved; write a layer plugin instead), got {functor!r}")
        if functor not in FUNCTIONS:
            raise ConfigError(f"ApplyFunc {name!r}: unknown function {functor!r}; choose one of {sorted(FUNCTIONS)}")
        if kwargs:
            raise ConfigError(f"ApplyFunc {name!r}: keyword arguments are not supported, got {sorted(kwargs)}")
        n_args = FUNCTIONS[functor][0]
        if len(args) != n_args or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
            raise ConfigError(f"ApplyFunc {name!r}: {functor!r} takes {n_args} numeric argument(s), got {tuple(args)}")
        self.functor, self.args = functor, tuple(float(a) for a in args)

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        return FUNCTIONS[self.functor][1](inputs[0], *self.args)

    def _repr_extras(self) -> str:
        return f"{self.functor}{self.args if self.args else ''}"

