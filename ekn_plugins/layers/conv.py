"""``Conv``: 1-, 2- or 3-D convolution (from the tags) with integrated pooling, dilation and MFP.

Order of operations: convolution → pooling (or max-fragment pooling) → batch normalisation →
bias → activation → dropout (:mod:`ekn_plugins.layers.neural`).

Geometry per spatial axis (input size ``s``, filter ``f``, dilation ``d``, pool ``p``, input
stride ``st``): conv output ``c = s - d(f-1)`` (valid), ``s + d(f-1)`` (full) or ``s`` (same, odd
filters); output ``c / p`` (must divide exactly) or, with MFP, ``(c - p + 1) / p`` per fragment;
strides ``st * p``; ``fov + (d(f-1) + p - 1) * st`` (or -1 if the input FOV is unknown or
``invalidate_fov``); the field of the first output voxel starts ``d(f-1)/2 * st`` (same) or
``d(f-1) * st`` (full) input voxels earlier than the input's (its zero padding), so the output
grid (``TaggedShape.offsets``) stays where the voxels' fields are.

Weights: ``w`` has shape ``(*filter_shape, n_in, n_lin)`` (TensorFlow's layout; ELEKTRONN2 used
``(n_f, n_in, kz, kx, ky)``), ``b`` ``(n_lin,)``; ``n_lin = n_f × maxout factor``.

Example:
    >>> from ekn_core import neuromancer as nm
    >>> _ = nm.model_manager.newmodel("doc_conv")
    >>> inp = nm.Input((None, 1, 23, 185, 185), 'b,f,z,x,y')
    >>> c = nm.Conv(inp, 20, (1, 6, 6), (1, 2, 2))
    >>> c.shape.spatial_shape, c.shape.strides, c.shape.fov, c.param_count
    ((23, 90, 90), (1, 2, 2), (1, 7, 7), 740)
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from typing import Any

from ekn_core.errors import ConfigError
from ekn_core.node import Node
from ekn_core.lazy import tf
from ekn_core.shapes import TaggedShape
from ekn_plugins.layers.mfp import fragment_pool, mfp_shape, pool_tensor
from ekn_plugins.layers.neural import NeuralLayer

CONV_MODES = ("valid", "same", "full")
POOL_MODES = ("max", "average", "average_inc_pad", "average_exc_pad", "sum")


def per_axis(value: int | Sequence[int] | None, ndim: int, what: str, default: int = 1) -> tuple[int, ...]:
    """Normalises an int or a sequence to one positive int per spatial axis.

    Example:
        >>> per_axis(3, 2, 'filter_shape'), per_axis(None, 3, 'pool_shape')
        ((3, 3), (1, 1, 1))
    """
    if value is None:
        return (default,) * ndim
    if isinstance(value, (int,)) and not isinstance(value, bool):
        value = (value,) * ndim
    values = tuple(int(v) for v in value)
    if len(values) != ndim or min(values) < 1:
        raise ConfigError(f"{what} needs {ndim} positive entries (one per spatial axis, declared order), "
                          f"got {tuple(value)}")
    return values


def check_conv_layout(node: Node, shape: TaggedShape) -> None:
    """Conv-like layers need tags ``b``, ``f`` and 1–3 spatial axes (any order), nothing else."""
    extra = [t for t in shape.tags if t not in ("b", "f", "z", "y", "x")]
    if extra or not shape.hastag("f") or not shape.hastag("b") or not 1 <= shape.ndim <= 3:
        raise ConfigError(f"{type(node).__name__} {node.name!r} needs an input with tags b, f and 1-3 spatial axes, "
                          f"got {shape.tags}")


@functools.lru_cache(maxsize=1)
def z_as_batch_pays() -> bool:
    """Whether 3-D convolutions with filter size 1 on z run as 2-D convolutions over (batch·z).

    Decided by measurement (``bench/bench_conv_replacements.py``): on the 2-core AVX-512 CPU the
    oneDNN conv3d kernel is as fast (×0.98 forward+backward), so the replacement is used only
    where a GPU is visible. ``EKN_CONV_Z_AS_BATCH=1``/``0`` forces it on or off.
    """
    forced = os.environ.get("EKN_CONV_Z_AS_BATCH", "").strip()
    if forced in {"0", "1"}:
        return forced == "1"
    return bool(tf.config.list_physical_devices("GPU"))


def conv_z_as_batch(x: Any, w: Any, z: int, padding: str, dilation: Sequence[int]) -> Any:
    """3-D convolution whose filter has size 1 on spatial axis ``z``, run as a 2-D convolution with
    that axis folded into the batch (ELEKTRONN2's replacement; faster forward and backward, see
    ``bench/bench_conv_replacements.py``). ``x`` is canonical ``(b, s0, s1, s2, f)``.

    Example:
        >>> import numpy as np
        >>> x, w = np.random.rand(2, 3, 5, 4, 2).astype('float32'), np.random.rand(1, 3, 2, 2, 4).astype('float32')
        >>> y = conv_z_as_batch(x, w, 0, 'VALID', (1, 1, 1))
        >>> bool(np.allclose(y, tf.nn.convolution(x, w, padding='VALID'), atol=1e-5))
        True
    """
    T = tf
    perm = [0, 1 + z] + [1 + i for i in range(3) if i != z] + [4]
    x = T.transpose(x, perm) if z else x
    shape = T.shape(x)
    w2 = T.squeeze(w, axis=z)
    rest = [d for i, d in enumerate(dilation) if i != z]
    y = T.nn.convolution(T.reshape(x, T.concat([[-1], shape[2:]], axis=0)), w2, padding=padding, dilations=rest)
    y = T.reshape(y, T.concat([shape[:2], T.shape(y)[1:]], axis=0))
    if z:
        inverse = [perm.index(i) for i in range(5)]
        y = T.transpose(y, inverse)
    return y


class Conv(NeuralLayer):
    """Convolution layer (ELEKTRONN2 signature).

    Args:
        parent: Input node (tags ``b``, ``f`` and 1-3 spatial axes in any order).
        n_f: Number of output features.
        filter_shape: One size per spatial axis (declared order); an int is used for all.
        pool_shape: Pooling window per spatial axis (default no pooling).
        conv_mode: ``'valid'``, ``'same'`` (odd filters) or ``'full'``.
        activation_func: See :mod:`ekn_plugins.layers.activations`.
        mfp: Max-fragment pooling (dense prediction in one pass; needs a fixed batch size).
        batch_normalisation: ``False``, ``'train'``, ``'predict'`` or ``'const'``.
        dropout_rate: Element-wise dropout rate in training steps.
        name: Node name.
        print_repr: Log the node description.
        w, b, gamma, mean, std: Initial values (array), ``[array, 'const']``, or a Param to share.
        gradnet_mode: Not supported (ELEKTRONN2 experiment).
        invalidate_fov: Mark the FOV unknown.
        pool_mode: ``'max'`` (default), ``'average'`` or ``'sum'``.
        dilation: Dilation per spatial axis ("à trous" convolution).
    """

    supports_mfp = True

    def __init__(self, parent: Node, n_f: int, filter_shape: int | Sequence[int], pool_shape: Any = None,
                 conv_mode: str = "valid", activation_func: str = "relu", mfp: bool = False,
                 batch_normalisation: Any = False, dropout_rate: float = 0, name: str = "conv",
                 print_repr: bool = True, w: Any = None, b: Any = None, gamma: Any = None, mean: Any = None,
                 std: Any = None, gradnet_mode: Any = None, invalidate_fov: bool = False, pool_mode: str = "max",
                 dilation: int | Sequence[int] | None = None):
        super().__init__(parent, name, print_repr)
        shape = parent.shape
        check_conv_layout(self, shape)
        ndim = shape.ndim
        self.filter_shape = per_axis(filter_shape, ndim, "filter_shape")
        self.pool_shape = per_axis(pool_shape, ndim, "pool_shape")
        self.dilation = per_axis(dilation, ndim, "dilation")
        if conv_mode not in CONV_MODES:
            raise ConfigError(f"conv_mode must be one of {CONV_MODES}, got {conv_mode!r}")
        if conv_mode == "same" and any(f % 2 == 0 for f in self.filter_shape):
            raise ConfigError(f"conv_mode='same' needs odd filter sizes, got {self.filter_shape}")
        if pool_mode not in POOL_MODES:
            raise ConfigError(f"pool_mode must be one of {POOL_MODES}, got {pool_mode!r}")
        self.conv_mode, self.pool_mode = conv_mode, pool_mode
        self.mfp, self.invalidate_fov = bool(mfp), bool(invalidate_fov)
        self.n_in = shape["f"]
        kernel = math.prod(self.filter_shape)
        n_lin = self.setup_neural(n_f, activation_func, batch_normalisation, dropout_rate, kernel, b, gamma, mean,
                                  std, gradnet_mode)
        scale = math.sqrt(2.0 / ((self.n_in + n_lin / math.prod(self.pool_shape)) * kernel))
        self.add_param("w", w, shape=(*self.filter_shape, self.n_in, n_lin), init="normal", scale=scale,
                       weight_decay=1.0)

    def conv_sizes(self, shape: TaggedShape) -> list[int]:
        """Spatial sizes right after the convolution (before pooling), clamped to >= 1."""
        sizes = []
        for i, (s, f, d) in enumerate(zip(shape.spatial_shape, self.filter_shape, self.dilation)):
            extent = d * (f - 1)
            c = {"valid": s - extent, "full": s + extent, "same": s}[self.conv_mode]
            self.shape_check(c >= 1, f"filter {f} (dilation {d}) is larger than the input size {s} on spatial "
                             f"axis {shape.spatial_tags[i]!r}", i)
            sizes.append(max(c, 1))
        return sizes

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        shape = parent_shapes[0]
        sizes = self.conv_sizes(shape)
        fov = tuple(-1 if fv <= 0 or self.invalidate_fov else fv + (d * (f - 1) + p - 1) * st
                    for fv, f, d, p, st in zip(shape.fov, self.filter_shape, self.dilation, self.pool_shape,
                                               shape.strides))
        padding = {"valid": 0, "same": 0.5, "full": 1}[self.conv_mode]  # zero padding before, in d(f-1)
        start = [s - padding * d * (f - 1) * st for s, f, d, st in zip(shape.field_start, self.filter_shape,
                                                                        self.dilation, shape.strides)]
        out_shape = shape.updateshape("f", self.n_f).updatefield_start(start)
        if self.mfp:
            return mfp_shape(self, out_shape, sizes, self.pool_shape).updatefov(fov)
        out = []
        for i, (c, p) in enumerate(zip(sizes, self.pool_shape)):
            self.shape_check(c % p == 0, f"conv output size {c} on spatial axis {shape.spatial_tags[i]!r} is not "
                             f"divisible by pool size {p}", i)
            out.append(max(c // p, 1))
        strides = tuple(st * p for st, p in zip(shape.strides, self.pool_shape))
        return out_shape.with_spatial_shape(out).updatestrides(strides).updatefov(fov)

    def _compute_cost(self) -> float:
        batch = self.parents[0].shape["b"] or 1
        sizes = self.conv_sizes(self.parents[0].shape)
        return float(math.prod(self.params["w"].shape if "w" in self.params else self.shared_params["w"].shape)
                     * math.prod(sizes) * batch)

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        T = tf
        x = inputs[0]
        w = self._param("w")
        if all(f == 1 for f in self.filter_shape):
            y = T.tensordot(x, w[(0,) * len(self.filter_shape)], axes=[[x.shape.rank - 1], [0]])
        else:
            if self.conv_mode == "full":
                pad = [[0, 0]] + [[d * (f - 1)] * 2 for f, d in zip(self.filter_shape, self.dilation)] + [[0, 0]]
                x = T.pad(x, pad)
            padding = "SAME" if self.conv_mode == "same" else "VALID"
            z = self.parents[0].shape.spatial_tags.index("z") if "z" in self.parents[0].shape.tags else None
            if len(self.filter_shape) == 3 and z is not None and self.filter_shape[z] == 1 and z_as_batch_pays():
                y = conv_z_as_batch(x, w, z, padding, self.dilation)
            else:
                y = T.nn.convolution(x, w, padding=padding, dilations=list(self.dilation))
        if self.mfp:
            y = fragment_pool(y, self.pool_shape, self.pool_mode)
        else:
            y = pool_tensor(y, self.pool_shape, self.pool_shape, self.pool_mode)
        return self.post_linear(y, training)

    def _repr_extras(self) -> str:
        extra = f" pool={self.pool_shape}" if any(p > 1 for p in self.pool_shape) else ""
        mfp = " MFP active" if self.mfp else ""
        return f"{self.neural_repr()} filter={self.filter_shape}{extra} mode={self.conv_mode}{mfp}"
