"""Element-wise merges of two nodes: ``Add`` and ``Mult`` (ELEKTRONN2 ``MultMerge``).

Both parents must have the same tags (in any declared order), the same sizes (unknown (``None``)
sizes match anything) and, when both are computed from the same inputs, the same output grid
(strides and, where both FOVs are known, first output voxel: :func:`merged_shape`). The output
takes the first parent's shape and strides, and per axis the larger FOV, as the output depends on
both fields.

Example:
    >>> import numpy as np
    >>> from ekn_core import neuromancer as nm
    >>> _ = nm.model_manager.newmodel("doc_merge")
    >>> a = nm.Input((2, 3), 'b,f', name='a')
    >>> b = nm.Input((3, 2), 'f,b', name='b')
    >>> s = nm.Add(a, b)
    >>> s(np.ones((2, 3)), 2 * np.ones((3, 2)))[0]
    array([3., 3., 3.], dtype=float32)
"""

from __future__ import annotations

from typing import Any

from ekn_core.errors import ConfigError
from ekn_core.lazy import tf
from ekn_core.node import Node
from ekn_core.shapes import TaggedShape, merged_field


def align_tensor(x: Any, source: TaggedShape, target: TaggedShape) -> Any:
    """Transposes a canonical tensor of shape ``source`` into ``target``'s canonical tag order.

    Example:
        >>> t = align_tensor(tf.zeros((2, 3)), TaggedShape((2, 3), 'b,f'), TaggedShape((3, 2), 'f,b'))
        >>> tuple(t.shape)
        (2, 3)
    """
    if source.canonical_tags == target.canonical_tags:
        return x
    return tf.transpose(x, [source.canonical_tags.index(t) for t in target.canonical_tags])


def merged_shape(node: Node, parent_shapes: list[TaggedShape], skip: str | None = None) -> TaggedShape:
    """The first parent's shape with the merged field of view of ``node``'s parents
    (:func:`~ekn_core.shapes.merged_field`); misaligned grids fail ``node.shape_check``. Grids are
    compared only when every parent is computed from the same input nodes."""
    sources = {frozenset([p.name] if p.is_source else [n.name for n in p.input_nodes]) for p in node.parents}
    merged, problems = merged_field(parent_shapes, [p.name for p in node.parents], skip, check=len(sources) == 1)
    for axis, message in problems:
        node.shape_check(False, message, axis)
    return merged


class _ElementwiseMerge(Node):
    """Base of the two-parent element-wise merges."""

    def __init__(self, n1: Node, n2: Node, name: str):
        super().__init__([n1, n2], name)
        if set(n1.shape.tags) != set(n2.shape.tags):
            raise ConfigError(f"{type(self).__name__} {name!r}: {n1.name!r} has tags {n1.shape.tags}, "
                              f"{n2.name!r} has {n2.shape.tags}; both need the same axes")

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        a, b = parent_shapes
        for tag in a.tags:
            axis = a.spatial_tags.index(tag) if tag in a.spatial_tags else None
            self.shape_check(a[tag] is None or b[tag] is None or a[tag] == b[tag],
                             f"axis {tag!r} has size {a[tag]} in {self.parents[0].name!r} but {b[tag]} in "
                             f"{self.parents[1].name!r}", axis)
        return merged_shape(self, parent_shapes)

    def _compute_cost(self) -> float:
        return float(self.shape.stripnone_prod)

    def _operands(self, inputs: list[Any]) -> tuple[Any, Any]:
        return inputs[0], align_tensor(inputs[1], self.parents[1].shape, self.parents[0].shape)


class Add(_ElementwiseMerge):
    """Element-wise sum of two nodes of equal shape (ELEKTRONN2 ``Add``).

    Args:
        n1, n2: The nodes (same tags and sizes; the first gives the output layout).
        name: Node name.

    Shape rule: ``n1``'s shape; FOV the larger of the two per axis (same output grids needed).
    """

    def __init__(self, n1: Node, n2: Node, name: str = "add"):
        super().__init__(n1, n2, name)

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        x, y = self._operands(inputs)
        return x + y


class Mult(_ElementwiseMerge):
    """Element-wise product of two nodes of equal shape (ELEKTRONN2 ``MultMerge``).

    Args:
        n1, n2: The nodes (same tags and sizes; the first gives the output layout).
        name: Node name.

    Shape rule: ``n1``'s shape; FOV the larger of the two per axis (same output grids needed).
    """

    def __init__(self, n1: Node, n2: Node, name: str = "multmerge"):
        super().__init__(n1, n2, name)

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        x, y = self._operands(inputs)
        return x * y
