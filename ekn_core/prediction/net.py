"""Adapter between an ekn node and the prediction engine.

:class:`NetAdapter` reads a node's geometry (input patch and channels, output shape, strides,
shift period) and runs it on batches in the engine's layout ``(b, f, *spatial)`` whatever tag
order the node declares (e.g. ``b,f,z,x,y`` or channels-last ``b,z,x,y,f``). A node with a fixed
batch size is always called with exactly that many samples (the rest zero-filled).

Example:
    >>> import numpy as np
    >>> class Shape:  # the TaggedShape attributes the adapter reads
    ...     def __init__(self, shape, tags, strides):
    ...         self.shape, self.tags, self.strides = shape, tags, strides
    ...         self.spatial_shape = tuple(s for s, t in zip(shape, tags) if t in "zyx")
    ...     def __getitem__(self, tag): return self.shape[self.tags.index(tag)]
    >>> class Identity:  # a 1x1 "net" in channels-last layout
    ...     input_nodes = [type("In", (), {"shape": Shape((None, 4, 4, 1), ("b", "x", "y", "f"), (1, 1))})()]
    ...     shape = Shape((None, 4, 4, 1), ("b", "x", "y", "f"), (1, 1))
    ...     def __call__(self, x): return x * 2
    >>> net = NetAdapter(Identity())
    >>> net.geometry.patch, net.in_channels, net.n_lab
    ((4, 4), 1, 1)
    >>> net(np.ones((3, 1, 4, 4), np.float32)).shape
    (3, 1, 4, 4)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ekn_core.errors import ShapeError
from ekn_core.prediction.tiling import TileGeometry

SPATIAL_TAGS = ("z", "y", "x")


def _size(shape: Any, tag: str) -> int | None:
    tags = tuple(shape.tags)
    return shape[tag] if tag in tags else None


def graph_nodes(node: Any) -> list[Any]:
    """All nodes of the node's graph up to itself, if the node exposes them (``all_parents``)."""
    parents = getattr(node, "all_parents", None)
    if parents is None:
        return [node]
    return list(parents.values()) if hasattr(parents, "values") else list(parents)


def affinity_loss_node(node: Any) -> Any | None:
    """The loss node fed by the node's graph that declares ``affinity_loss = True`` (its channels
    are affinities, e.g. ``MalisNLL``; it declares their offsets with ``affinity_offsets()``, see
    :mod:`ekn_core.prediction.affinity_tta`), or None.

    Example:
        >>> class Loss: affinity_loss = True
        >>> class Logits: children = {"malis": Loss()}
        >>> class Probs: all_parents = {"logits": Logits()}
        >>> class Plain: children = {}
        >>> type(affinity_loss_node(Probs())).__name__, affinity_loss_node(Plain())
        ('Loss', None)
    """
    for parent in graph_nodes(node):
        for child in getattr(parent, "children", {}).values():
            if getattr(child, "affinity_loss", False):
                return child
    return None


def shift_period(node: Any) -> tuple[int, ...]:
    """Window shifts under which the node's output is equivariant, per spatial axis.

    A node may declare ``shift_period``; otherwise it is the least common multiple of the
    integer strides of every node of the graph (for a U-Net: the total pooling factor).

    Example:
        >>> class S: tags, strides = ("b", "f", "x"), (4,)
        >>> class N: shape = S()
        >>> shift_period(N())
        (4,)
    """
    declared = getattr(node, "shift_period", None)
    if declared is not None:
        return tuple(int(p) for p in declared)
    ndim = len(tuple(node.shape.strides))
    period = [1] * ndim
    for n in graph_nodes(node):
        strides = tuple(getattr(n.shape, "strides", ()) or ())
        if len(strides) != ndim:
            continue
        for i, s in enumerate(strides):
            if s is not None and float(s) >= 1 and float(s) == int(s):
                period[i] = math.lcm(period[i], int(s))
    return tuple(period)


def _pooling_factor(node: Any) -> float:
    """How much larger the map before the node's pooling is than its output (1 without pooling):
    the growth of its strides over its first parent's, less the growth of the batch axis (MFP keeps
    every pooling fragment as a sample, so its maps do not shrink)."""
    parents = list(getattr(node, "parents", None) or [])
    if not parents:
        return 1.0
    shape, before = node.shape, getattr(parents[0], "shape", None)
    try:
        growth = float(np.prod([float(a) / float(b) for a, b in zip(shape.strides, before.strides)]))
        growth /= float(_size(shape, "b") or 1) / float(_size(before, "b") or 1)
    except (AttributeError, TypeError, ValueError, ZeroDivisionError):
        return 1.0
    return max(1.0, growth)


def activation_bytes_per_voxel(node: Any) -> float:
    """Rough peak memory of a forward pass per input voxel of one sample (float32).

    1.5 times the sum of all node outputs of the graph, each pooled output counted at its size
    before the pooling, divided by the input patch volume of one sample. Sizes are per sample of
    the *input*: an MFP net's inner nodes carry the pooling fragments on their batch axis, and
    they count. Measured peak resident memory of one TensorFlow forward pass on the CPU against
    this estimate (MiB): neuro3d 139 / 159, with MFP 504 / 953; neuro3d_lite 58 / 63, with MFP
    291 / 449; unet3d_lite 160 / 635. Without graph access a net with 64 feature maps at input
    resolution is assumed.

    Example:
        >>> class S:  # the TaggedShape attributes read here
        ...     def __init__(self, shape, strides):
        ...         self.shape, self.strides, self.tags = shape, strides, ("b", "f", "y", "x")
        ...         self.spatial_shape = shape[2:]
        ...     def __getitem__(self, tag): return self.shape[self.tags.index(tag)]
        >>> class N:
        ...     def __init__(self, shape, strides, *parents):
        ...         self.shape, self.parents = S(shape, strides), list(parents)
        >>> raw = N((1, 1, 8, 8), (1, 1))
        >>> pooled = N((1, 4, 4, 4), (2, 2), raw)       # conv to 4 maps, pooled by 2
        >>> fragments = N((4, 4, 4, 4), (2, 2), raw)    # the same with MFP: 4 fragments
        >>> for out in (pooled, fragments):
        ...     out.input_nodes, out.all_parents = [raw], [raw, out]
        >>> activation_bytes_per_voxel(pooled), activation_bytes_per_voxel(fragments)
        (30.0, 30.0)
    """
    in_shape = node.input_nodes[0].shape
    voxels = float(np.prod(in_shape.spatial_shape))
    samples = float(_size(in_shape, "b") or 1)
    sizes = []
    for n in graph_nodes(node):
        dims = getattr(getattr(n, "shape", None), "shape", None)
        if dims is None:
            continue
        sizes.append(4.0 * float(np.prod([d for d in dims if d])) * _pooling_factor(n) / samples)
    if len(sizes) < 2:
        sizes = [4.0 * voxels * (_size(in_shape, "f") or 1), 4.0 * voxels * 64]
    return 1.5 * sum(sizes) / voxels


class NetAdapter:
    """A node seen by the prediction engine.

    Args:
        node: An ekn node (or any object with ``shape``, ``input_nodes`` and ``__call__``).
        period: Shift period override (see :func:`shift_period`).

    Attributes:
        geometry: :class:`~ekn_core.prediction.tiling.TileGeometry` of the node.
        in_channels: Input feature maps.
        n_lab: Output feature maps.
        batch: Fixed batch size of the node, or None if any batch works.
        bytes_per_voxel: Estimate of :func:`activation_bytes_per_voxel`.
        fov: Field of view of an output voxel per spatial axis, or None where the node does not
            know it (e.g. after an up-convolution).
        spatial_tags: The spatial tags in the engine's axis order (the input's order).
    """

    def __init__(self, node: Any, period: tuple[int, ...] | None = None):
        inputs = list(getattr(node, "input_nodes", []))
        if len(inputs) != 1:
            raise ShapeError(f"dense prediction needs a node with exactly one image input, {node!r} "
                             f"has {len(inputs)}")
        in_shape, out_shape = inputs[0].shape, node.shape
        self.node = node
        self._in_tags, self._out_tags = tuple(in_shape.tags), tuple(out_shape.tags)
        spatial = [t for t in self._in_tags if t in SPATIAL_TAGS]
        if sorted(spatial) != sorted(t for t in self._out_tags if t in SPATIAL_TAGS):
            raise ShapeError(f"dense prediction needs a net whose output keeps the spatial axes of its input "
                             f"(image to image), but the input has tags {self._in_tags} and the output "
                             f"{self._out_tags}: a net that classifies whole patches has no dense prediction")
        if len(spatial) not in (2, 3):
            raise ShapeError(f"dense prediction needs a 2-D or 3-D net, {node!r} has spatial axes {spatial}")
        self._internal = ("b", "f", *spatial)
        self.spatial_tags = tuple(spatial)
        for tags, name in ((self._in_tags, "input"), (self._out_tags, "output")):
            if set(tags) - set(self._internal) or "f" not in tags:
                raise ShapeError(f"{name} tags {tags} of {node!r}: dense prediction supports only "
                                 "the tags b, f, z, y, x (with f)")
        self.in_channels = int(_size(in_shape, "f"))
        self.n_lab = int(_size(out_shape, "f"))
        self.batch = _size(in_shape, "b")
        out_batch = _size(out_shape, "b")
        if self.batch is not None and out_batch is not None and out_batch != self.batch:
            raise ShapeError(f"the output batch {out_batch} differs from the input batch {self.batch}: "
                             "MFP fragments must be merged by FragmentsToDense before the output node")
        in_sp = dict(zip((t for t in self._in_tags if t in SPATIAL_TAGS), in_shape.spatial_shape))
        out_sp = dict(zip((t for t in self._out_tags if t in SPATIAL_TAGS), out_shape.spatial_shape))
        out_st = dict(zip((t for t in self._out_tags if t in SPATIAL_TAGS), out_shape.strides))
        period = period or shift_period(node)
        period_by_tag = dict(zip((t for t in self._out_tags if t in SPATIAL_TAGS), period))
        self.geometry = TileGeometry(patch=tuple(in_sp[t] for t in spatial),
                                     out=tuple(out_sp[t] for t in spatial),
                                     strides=tuple(out_st[t] for t in spatial),
                                     period=tuple(period_by_tag[t] for t in spatial))
        self.bytes_per_voxel = activation_bytes_per_voxel(node)
        fov = dict(zip((t for t in self._out_tags if t in SPATIAL_TAGS), getattr(out_shape, "fov", None) or ()))
        self.fov = tuple(fov[t] for t in spatial) if fov and min(fov.values()) > 0 else None

    @property
    def ndim(self) -> int:
        """Spatial axes of the net."""
        return self.geometry.ndim

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Runs the node on ``batch`` ``(b, in_channels, *patch)``; returns ``(b, n_lab, *out)``."""
        n = batch.shape[0]
        if self.batch is not None and n != self.batch:
            if n > self.batch:
                return np.concatenate([self(batch[i:i + self.batch]) for i in range(0, n, self.batch)])
            batch = np.concatenate([batch, np.zeros((self.batch - n, *batch.shape[1:]), batch.dtype)])
        x = np.transpose(batch, [self._internal.index(t) for t in self._in_tags])
        y = np.asarray(self.node(np.ascontiguousarray(x)))
        y = np.transpose(y, [self._out_tags.index(t) for t in self._internal])
        expected = (self.n_lab, *self.geometry.out)
        if y.shape[1:] != expected:
            raise ShapeError(f"{self.node!r} returned shape {y.shape[1:]} per sample, its declared "
                             f"output is {expected}")
        return y[:n]


class SliceWise:
    """A 2-D net applied to 3-D stacks slice by slice: a 3-D adapter with z patch 1.

    Example:
        >>> import numpy as np
        >>> class Net2D:
        ...     geometry = TileGeometry((4, 4), (4, 4), (1, 1)); in_channels = n_lab = 1
        ...     batch, bytes_per_voxel = None, 4.0
        ...     def __call__(self, x): return x + 1
        >>> net = SliceWise(Net2D())
        >>> net.geometry.patch, net(np.zeros((2, 1, 1, 4, 4), np.float32)).shape
        ((1, 4, 4), (2, 1, 1, 4, 4))
    """

    def __init__(self, net: Any):
        self.net = net
        g = net.geometry
        self.geometry = TileGeometry((1, *g.patch), (1, *g.out), (1, *g.strides), (1, *g.period))
        self.in_channels, self.n_lab, self.batch = net.in_channels, net.n_lab, net.batch
        self.bytes_per_voxel = net.bytes_per_voxel

    @property
    def ndim(self) -> int:
        """Always 3."""
        return 3

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.net(batch[:, :, 0])[:, :, None]
