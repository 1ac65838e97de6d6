"""``UpConv`` (transposed convolution, kernel = stride = pool) and the U-Net merge ``AutoMerge``.

UpConv geometry: spatial ``s * p``, strides ``st / p``, fov unknown (-1, field start 0;
``designate_nodes`` repairs the prediction FOV). Max-fragment pooling refuses nets with an UpConv
(``upsamples``): U-Nets already predict densely at stride 1. With ``identity_init`` the layer
starts close to pixel repetition: ``w = 0.1 × glorot + identity`` on the first ``min(n_in, n_f)``
features, ``b = 0``.

Weights: ``w`` has shape ``(*pool_shape, n_lin, n_in)`` (``tf.nn.conv_transpose`` layout).

Example:
    >>> from ekn_core import neuromancer as nm
    >>> _ = nm.model_manager.newmodel("doc_upconv")
    >>> inp = nm.Input((None, 2, 4, 8, 8), 'b,f,z,y,x')
    >>> hi = nm.Conv(inp, 3, (1, 1, 1))
    >>> lo = nm.Pool(nm.Conv(hi, 3, (1, 3, 3)), (1, 2, 2))
    >>> up = nm.UpConv(lo, 5, (1, 2, 2))
    >>> up.shape.spatial_shape, up.shape.strides, up.shape.fov
    ((4, 6, 6), (1, 1, 1), (-1, -1, -1))
    >>> merged = nm.AutoMerge(hi, lo, 4)
    >>> merged.shape['f'], merged.shape.spatial_shape, [p.name for p in merged.parents]
    (7, (4, 6, 6), ['upconv1', 'crop'])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


from ekn_core.errors import ConfigError
from ekn_core.node import Node
from ekn_core.lazy import tf
from ekn_core.shapes import TaggedShape
from ekn_plugins.layers.conv import check_conv_layout, per_axis
from ekn_plugins.layers.neural import NeuralLayer


class UpConv(NeuralLayer):
    """Transposed convolution with kernel = stride = ``pool_shape`` (ELEKTRONN2 signature).

    Args:
        parent: Input node.
        n_f: Output features.
        pool_shape: Up-sampling factor per spatial axis.
        activation_func: Activation name.
        identity_init: Start as pixel repetition (see module docs).
        batch_normalisation, dropout_rate: See :mod:`ekn_plugins.layers.neural`.
        name: Node name.
        print_repr: Log the node description.
        w, b, gamma, mean, std: Initial values, ``[array, 'const']`` or shared Params.
        gradnet_mode: Not supported.
    """

    upsamples = True

    def __init__(self, parent: Node, n_f: int, pool_shape: int | Sequence[int], activation_func: str = "relu",
                 identity_init: bool = True, batch_normalisation: Any = False, dropout_rate: float = 0,
                 name: str = "upconv", print_repr: bool = True, w: Any = None, b: Any = None, gamma: Any = None,
                 mean: Any = None, std: Any = None, gradnet_mode: Any = None):
        super().__init__(parent, name, print_repr)
        check_conv_layout(self, parent.shape)
        self.pool_shape = per_axis(pool_shape, parent.shape.ndim, "pool_shape")
        self.n_in = parent.shape["f"]
        self.identity_init = bool(identity_init)
        kernel = math.prod(self.pool_shape)
        n_lin = self.setup_neural(n_f, activation_func, batch_normalisation, dropout_rate, kernel, b, gamma, mean,
                                  std, gradnet_mode)
        bias = self.params.get("b")
        if identity_init and b is None and bias is not None and bias.variable is not None:
            value = bias.get_value()
            if value.ndim == 2:  # prelu: bias column 0, slope column 1 stays 1
                value[:, 0] = 0.0
            else:
                value[:] = 0.0
            bias.set_value(value)
        scale = math.sqrt(2.0 / ((self.n_in + n_lin) * kernel))
        param = self.add_param("w", w, shape=(*self.pool_shape, n_lin, self.n_in), init="normal", scale=scale,
                               weight_decay=1.0)
        if identity_init and w is None and param.variable is not None:
            value = param.get_value() * 0.1
            for i in range(min(self.n_in, n_lin)):
                value[..., i, i] += 1.0
            param.set_value(value)

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        shape = parent_shapes[0]
        sizes = [s * p for s, p in zip(shape.spatial_shape, self.pool_shape)]
        strides = tuple(st / p for st, p in zip(shape.strides, self.pool_shape))
        return (shape.updateshape("f", self.n_f).with_spatial_shape(sizes).updatestrides(strides)
                .updatefov((-1,) * shape.ndim).updatefield_start((0,) * shape.ndim))

    def _compute_cost(self) -> float:
        shape = self.parents[0].shape
        w = self.params["w"].shape if "w" in self.params else self.shared_params["w"].shape
        return float(math.prod(w) * shape.spatial_size * (shape["b"] or 1))

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        T = tf
        x = inputs[0]
        w = self._param("w")
        n_lin = w.shape[-2]
        out_shape = T.concat([T.shape(x)[:1], list(self.shape.spatial_shape), [n_lin]], axis=0)
        y = T.nn.conv_transpose(x, w, out_shape, strides=list(self.pool_shape), padding="VALID")
        return self.post_linear(y, training)

    def _repr_extras(self) -> str:
        return f"{self.neural_repr()} up={self.pool_shape}"


def auto_merge(parent1: Node, parent2: Node, upconv_n_f: int | None = None, merge_mode: str = "concat",
               disable_upconv: bool = False, upconv_kwargs: dict[str, Any] | None = None, name: str = "merge",
               print_repr: bool = True) -> Node:
    """U-Net skip merge (ELEKTRONN2 ``AutoMerge``/``UpConvMerge``; a factory, not a node).

    The parent with the larger strides is the low-resolution one; it is up-convolved by the
    stride ratio (unless ``disable_upconv``), the other map is cropped to its size
    (``Crop(reference=...)``), and both are concatenated on ``f`` (low-res first).

    Args:
        parent1, parent2: The two maps (any order).
        upconv_n_f: UpConv features (default: those of the low-res map).
        merge_mode: ``'concat'`` (``'add'`` needs an Add node from the layers registry).
        disable_upconv: Skip the UpConv (strides must then agree).
        upconv_kwargs: Extra UpConv arguments.
        name: Name of the merging node.
        print_repr: Log the nodes.

    Returns:
        The merging node.
    """
    from ekn_core.plugins import registry

    layers = registry("layers")
    s1, s2 = parent1.shape.strides, parent2.shape.strides
    lo, hi = (parent1, parent2) if math.prod(s1) > math.prod(s2) else (parent2, parent1)
    ratio = [a / b for a, b in zip(lo.shape.strides, hi.shape.strides)]
    if any(r != int(r) or r < 1 for r in ratio):
        raise ConfigError(f"AutoMerge: stride ratio {ratio} of {lo.name!r} / {hi.name!r} must be whole numbers")
    ratio_i = tuple(int(r) for r in ratio)
    if any(r > 1 for r in ratio_i) and not disable_upconv:
        lo = UpConv(lo, upconv_n_f or lo.shape["f"], ratio_i, print_repr=print_repr, **(upconv_kwargs or {}))
    elif any(r > 1 for r in ratio_i):
        raise ConfigError(f"AutoMerge: strides of {parent1.name!r} and {parent2.name!r} differ but disable_upconv=True")
    big, small = (hi, lo) if hi.shape.spatial_size >= lo.shape.spatial_size else (lo, hi)
    if big.shape.spatial_shape != small.shape.spatial_shape:
        big = layers.get("crop")(big, reference=small)
        lo, hi = (lo, big) if small is lo else (big, hi)
    if merge_mode == "concat":
        return layers.get("concat")([lo, hi], axis="f", name=name)
    if merge_mode == "add":
        return layers.get("add")(lo, hi, name=name)
    raise ConfigError(f"AutoMerge merge_mode must be 'concat' or 'add', got {merge_mode!r}")
