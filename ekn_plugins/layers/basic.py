"""Basic nodes: ``Input`` (source), ``Input_like`` (source shaped like another node), ``Concat``, ``Crop``.

Example:
    >>> from ekn_core import neuromancer as nm
    >>> _ = nm.model_manager.newmodel("doc_basic")
    >>> inp = nm.Input((None, 2, 9, 9), 'b,f,x,y', name='raw')
    >>> c = nm.Crop(inp, (1, 2))
    >>> c.shape.spatial_shape, nm.Concat([c, c]).shape['f']
    ((7, 5), 4)
    >>> nm.Input_like(c, override_f=1, name='target').shape
    TaggedShape([(None,b), (1,f), (7,x), (5,y)], fov=(1, 1), strides=(1, 1), field_start=(1, 2))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ekn_core.errors import ConfigError
from ekn_core.node import FLOATX, Node
from ekn_core.lazy import tf
from ekn_core.shapes import TaggedShape
from ekn_plugins.layers.merge import merged_shape


def _check_dtype(dtype: Any) -> str:
    try:
        return np.dtype(dtype).name
    except TypeError:
        raise ConfigError(f"dtype must be a numpy dtype name such as 'float32' or 'int16', got {dtype!r}") from None


class Input(Node):
    """Source node: an array of a declared shape and tag order is fed here.

    Args:
        shape: Sizes in tag order, ``None`` for an unknown (batch) size.
        tags: Tag order, e.g. ``'b,f,z,x,y'`` (any order; arrays are given in this order).
        strides: Per spatial axis (default 1).
        fov: Per spatial axis (default 1).
        dtype: numpy dtype name of the fed arrays.
        hardcoded_shape: Accepted for ELEKTRONN2 compatibility (shapes are always checked).
        name: Node name.
        print_repr: Log the node description.
    """

    def __init__(self, shape: Sequence[int | None], tags: str | Sequence[str], strides: Sequence[int] | None = None,
                 fov: Sequence[int] | None = None, dtype: str = FLOATX, hardcoded_shape: bool = False,
                 name: str = "input", print_repr: bool = True):
        super().__init__(None, name, print_repr)
        self.dtype = _check_dtype(dtype)
        self._declared = TaggedShape(shape, tags, strides, fov)

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        return self._declared

    def _compute_cost(self) -> float:
        return 0.0

    def _repr_extras(self) -> str:
        return f"dtype={self.dtype}"


class InputLike(Node):
    """Source node shaped like ``ref`` (ELEKTRONN2 ``Input_like``), e.g. the target of a prediction.

    The shape follows ``ref`` when the model is rebuilt with another patch size.

    Args:
        ref: Node whose shape (tags, strides, fov) is copied.
        dtype: dtype name (default: float32).
        name: Node name.
        print_repr: Log the node description.
        override_f: If given (not False), the feature count, e.g. 1 for sparse labels.
        hardcoded_shape: Accepted for compatibility.
    """

    def __init__(self, ref: Node, dtype: str | None = None, name: str = "input", print_repr: bool = True,
                 override_f: int | bool = False, hardcoded_shape: bool = False):
        super().__init__(None, name, print_repr)
        if not isinstance(ref, Node):
            raise ConfigError(f"Input_like needs a reference Node, got {type(ref).__name__}")
        self.ref = ref
        self.dtype = _check_dtype(dtype or FLOATX)
        self.override_f = override_f

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        shape = self.ref.shape.updatemfp_offsets([[0] * self.ref.shape.ndim])
        if self.override_f is not False and self.override_f is not None:
            shape = shape.updateshape("f", int(self.override_f))
        return shape

    def _compute_cost(self) -> float:
        return 0.0

    def _repr_extras(self) -> str:
        return f"dtype={self.dtype} like={self.ref.name!r}"


class Concat(Node):
    """Concatenates nodes along an axis (default features); other axes must agree.

    The parents' output grids must coincide when they are computed from the same inputs
    (:func:`~ekn_plugins.layers.merge.merged_shape`); the output has per spatial axis the largest
    of their FOVs (``-1`` if any is unknown).

    Args:
        parent_nodes: The nodes (first one gives strides and tags).
        axis: Tag or index (in the first parent's declared order).
        name: Node name.
    """

    mixed_precision = True  # dtype-agnostic: keeps the mixed-precision compute dtype
    keeps_values = True  # only moves its parents' values (see Node.keeps_values)

    def __init__(self, parent_nodes: Sequence[Node], axis: str | int = "f", name: str = "concat"):
        super().__init__(list(parent_nodes), name)
        if len(self.parents) < 2:
            raise ConfigError(f"Concat {name!r} needs at least two parents")
        first = self.parents[0].shape
        self.axis_tag = first.tags[first._index(axis)]
        for p in self.parents[1:]:
            if set(p.shape.tags) != set(first.tags):
                raise ConfigError(f"Concat {name!r}: {p.name!r} has tags {p.shape.tags}, {self.parents[0].name!r} "
                                  f"has {first.tags}")

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        first = parent_shapes[0]
        total = 0
        for shape, parent in zip(parent_shapes, self.parents):
            for tag in first.tags:
                if tag == self.axis_tag:
                    continue
                a, b = first[tag], shape[tag]
                axis = first.spatial_tags.index(tag) if tag in first.spatial_tags else None
                self.shape_check(a is None or b is None or a == b,
                                 f"axis {tag!r} of {parent.name!r} has size {b}, {self.parents[0].name!r} has {a}",
                                 axis)
            size = shape[self.axis_tag]
            total = None if size is None or total is None else total + size
        return merged_shape(self, parent_shapes, skip=self.axis_tag).updateshape(self.axis_tag, total)

    def _compute_cost(self) -> float:
        return 0.0

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        T = tf
        axis = self.shape.canonical_tags.index(self.axis_tag)
        aligned = [T.transpose(x, [p.shape.canonical_tags.index(t) for t in self.shape.canonical_tags])
                   if p.shape.canonical_tags != self.shape.canonical_tags else x
                   for x, p in zip(inputs, self.parents)]
        return T.concat(aligned, axis=axis)


class Crop(Node):
    """Crops spatial axes symmetrically: by fixed amounts, or to the spatial size of ``reference``.

    Args:
        parent: Node to crop.
        crop: Voxels removed from *each* side, one per spatial axis (declared order).
        reference: Alternative to ``crop``: crop to this node's spatial shape (the difference must
            be even); it follows ``reference`` when the model is rebuilt with another patch size.
        name: Node name.

    Shape rule: spatial size ``s - 2 * crop``; strides and FOV kept; the output grid moves
    ``crop * strides`` input voxels inwards (``TaggedShape.field_start``).
    """

    mixed_precision = True  # dtype-agnostic: keeps the mixed-precision compute dtype
    keeps_values = True  # only moves its parent's values (see Node.keeps_values)

    def __init__(self, parent: Node, crop: Sequence[int] | None = None, reference: Node | None = None,
                 name: str = "crop"):
        super().__init__(parent, name)
        if (crop is None) == (reference is None):
            raise ConfigError(f"Crop {name!r}: give exactly one of crop= and reference=")
        ndim = parent.shape.ndim
        if crop is not None:
            crop = tuple(int(c) for c in (crop if isinstance(crop, (list, tuple)) else [crop] * ndim))
            if len(crop) != ndim or min(crop) < 0:
                raise ConfigError(f"Crop {name!r}: crop needs {ndim} non-negative entries, got {crop}")
        elif reference.shape.ndim != ndim:
            raise ConfigError(f"Crop {name!r}: reference {reference.name!r} has {reference.shape.ndim} spatial "
                              f"axes, {parent.name!r} has {ndim}")
        self.crop, self.reference = crop, reference

    def _amounts(self, shape: TaggedShape) -> tuple[int, ...]:
        if self.crop is not None:
            return self.crop
        amounts = []
        for i, (s, r) in enumerate(zip(shape.spatial_shape, self.reference.shape.spatial_shape)):
            diff = s - r
            self.shape_check(diff >= 0 and diff % 2 == 0,
                             f"cannot be aligned with {self.reference.name!r}: spatial size {s} vs {r} (the "
                             f"difference must be even and non-negative)", i)
            amounts.append(max(diff, 0) // 2)
        return tuple(amounts)

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        shape = parent_shapes[0]
        sizes = []
        amounts = self._amounts(shape)
        for i, (s, c) in enumerate(zip(shape.spatial_shape, amounts)):
            self.shape_check(s - 2 * c >= 1, f"cropping {c} from both sides of size {s} leaves nothing", i)
            sizes.append(max(s - 2 * c, 1))
        start = [s + c * st for s, c, st in zip(shape.field_start, amounts, shape.strides)]
        return shape.with_spatial_shape(sizes).updatefield_start(start)

    def _compute_cost(self) -> float:
        return 0.0

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        amounts = self._amounts(self.parents[0].shape)
        lead = [slice(None)] * (len(self.shape.canonical_tags) - self.shape.ndim - ("f" in self.shape.tags))
        spatial = [slice(c, c + s) for c, s in zip(amounts, self.shape.spatial_shape)]
        return inputs[0][tuple(lead + spatial + [slice(None)] * ("f" in self.shape.tags))]

    def _repr_extras(self) -> str:
        return f"crop={self.crop}" if self.crop is not None else f"to {self.reference.name!r}"
