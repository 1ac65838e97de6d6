"""Batch normalisation with whole-data-set statistics, and local response normalisation (LRN).

Batch normalisation
-------------------
``y = gamma * (x - mean) / std + b`` per feature, ``std = sqrt(var + 1e-5)``. The modes
(``batch_normalisation=`` option of Conv, UpConv and Perceptron, or :class:`BatchNorm`):

* ``'train'``: training steps normalise with the statistics of the batch (the gradient flows
  through them) and update the stored statistics with them: a moving average with momentum
  ``bn_momentum`` (default :data:`BN_MOMENTUM`). It is the mean and variance of every voxel seen
  since the last reset, each voxel weighted by ``bn_momentum ** (steps since it was seen)``
  (Chan et al.'s parallel update in float64 with the accumulated count decayed by the momentum
  each step): once about ``1 / (1 - bn_momentum)`` batches have been seen each new batch has
  weight ``1 - bn_momentum``, as in a plain moving average, while the first steps have the exact
  statistics of the batches so far, without a pull towards the initial values.
  ``bn_momentum = 1`` pools every voxel since the last reset with equal weight. Inference uses
  the stored ``mean`` / ``std``.
* ``'fadeout'``: as ``'train'``, but training steps normalise with
  ``fade * batch + (1 - fade) * accumulated`` statistics; lowering the non-trainable parameter
  ``bn_fade`` from 1 to 0 during training removes the train/inference discrepancy smoothly.
* ``'predict'``: always the stored ``mean`` / ``std`` (frozen statistics; ``gamma`` trainable).
* ``'const'``: frozen statistics and ``gamma``, all constants.
* ``False``: off.

Parameters: ``gamma`` (weight-decay ×3, as ELEKTRONN2), ``mean``, ``std`` (ELEKTRONN2's layout:
the layer bias ``b`` acts as beta), ``bn_count`` (weighted number of voxels in the statistics),
``bn_m2`` (their weighted summed squared deviations) and ``bn_momentum``, all float64 and saved
with models and checkpoints; ``bn_fade`` in ``'fadeout'`` mode. The parameter set is the same in
every mode except ``bn_fade``, so a model can be restored with another mode. :func:`set_momentum`
changes the momentum of a model's layers, :func:`reset_statistics` restarts the statistics and
:func:`collect_statistics` recomputes them for the final weights in one pass over data (e.g.
before saving a model for inference).

LRN
---
:class:`LRN` divides by ``(k + alpha * mean_sq) ** beta``, where ``mean_sq`` is the mean of the
squares over a spatial window of each feature map (``mode='spatial'``, zero padding, divided by
the full window size) or over ``filter_shape`` neighbouring features (``mode='channel'``, edge
features replicated).

Example:
    >>> import numpy as np
    >>> from ekn_core import neuromancer as nm
    >>> _ = nm.model_manager.newmodel("doc_bn")
    >>> inp = nm.Input((None, 2), 'b,f')
    >>> bn = nm.BatchNorm(inp)
    >>> x = np.array([[1., 10.], [3., 30.]], 'float32')
    >>> np.round(bn(x, training=True), 3)            # batch statistics
    array([[-1., -1.],
           [ 1.,  1.]], dtype=float32)
    >>> np.round(bn.params['mean'].get_value(), 3), float(bn.params['bn_count'].get_value())
    (array([ 2., 20.], dtype=float32), 2.0)
    >>> _ = bn(x + 2, training=True)                 # the first batch now weighs BN_MOMENTUM
    >>> np.round(bn.params['mean'].get_value(), 3), round(float(bn.params['bn_count'].get_value()), 2)
    (array([ 3.005, 21.005], dtype=float32), 3.98)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ekn_core.errors import ConfigError
from ekn_core.lazy import tf
from ekn_core.node import Node, Param
from ekn_core.shapes import TaggedShape

BN_MODES = (False, "train", "fadeout", "predict", "const")
BN_EPSILON = 1e-5
#: Parameters that hold batch-normalisation statistics (reset by :func:`reset_statistics`).
BN_STAT_PARAMS = ("mean", "std", "bn_count", "bn_m2")
#: Default momentum of the moving average of the statistics (Keras's; ELEKTRONN2 used 0.9995).
BN_MOMENTUM = 0.99


def check_bn_mode(mode: Any) -> str | bool:
    """Normalises a ``batch_normalisation`` option (``True`` means ``'train'``).

    Example:
        >>> check_bn_mode(True), check_bn_mode(False)
        ('train', False)
    """
    if mode is True:
        return "train"
    if mode is None or mode is False:
        return False
    if mode not in BN_MODES:
        raise ConfigError(f"batch_normalisation must be one of {BN_MODES}, got {mode!r}")
    return mode


def check_momentum(momentum: Any, owner: str = "bn_momentum") -> float:
    """``momentum`` as a float in [0, 1].

    Raises:
        ConfigError: Not a number in [0, 1].

    Example:
        >>> check_momentum(0.9995)
        0.9995
    """
    try:
        value = float(np.asarray(momentum).reshape(()))
    except (TypeError, ValueError):
        raise ConfigError(f"{owner} must be a number in [0, 1], got {momentum!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{owner} must be in [0, 1] (1: pool every voxel since the last reset), got {value}")
    return value


def add_batchnorm(node: Node, mode: Any, n: int, gamma: Any = None, mean: Any = None, std: Any = None,
                  bn_count: Any = None, bn_m2: Any = None, bn_fade: Any = None,
                  bn_momentum: Any = None) -> str | bool:
    """Creates the batch-normalisation parameters of ``node`` for ``n`` features.

    Returns:
        The normalised mode (False: BN off, nothing created).
    """
    mode = check_bn_mode(mode)
    if not mode:
        return False
    if bn_momentum is not None and not isinstance(bn_momentum, (Param, list, tuple)):
        bn_momentum = check_momentum(bn_momentum, f"bn_momentum of {node.name!r}")
    const = mode == "const"
    node.add_param("gamma", gamma, shape=(n,), init="const", scale=1.0, weight_decay=3.0, constant=const)
    node.add_param("mean", mean, shape=(n,), init="zeros", trainable=False, constant=const)
    node.add_param("std", std, shape=(n,), init="const", scale=1.0, trainable=False, constant=const)
    node.add_param("bn_count", bn_count, shape=(), init="zeros", trainable=False, constant=const, dtype="float64")
    node.add_param("bn_m2", bn_m2, shape=(n,), init="zeros", trainable=False, constant=const, dtype="float64")
    node.add_param("bn_momentum", bn_momentum, shape=(), init="const", scale=BN_MOMENTUM, trainable=False,
                   constant=const, dtype="float64")
    if mode == "fadeout":
        node.add_param("bn_fade", bn_fade, shape=(), init="const", scale=1.0, trainable=False)
    return mode


def _variable(node: Node, name: str) -> Any:
    """The variable of a parameter of ``node``, owned or shared."""
    return (node.params.get(name) or node.shared_params[name]).variable


def _accumulate(node: Node, x: Any, axes: list[int]) -> None:
    """Adds the statistics of ``x`` (float64) to the node's stored ``mean``/``std``, the earlier
    voxels' weight multiplied by ``bn_momentum``."""
    count, m2, mean_var, std_var, momentum = (_variable(node, k) for k in
                                              ("bn_count", "bn_m2", "mean", "std", "bn_momentum"))
    x64 = tf.cast(x, "float64")
    mean_b, var_b = tf.nn.moments(x64, axes)
    n_b = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x64), axes)), "float64")
    decay = tf.cast(momentum.read_value(), "float64")
    n_a = count.read_value() * decay
    mean_a = tf.cast(mean_var.read_value(), "float64")
    n = n_a + n_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    new_m2 = m2.read_value() * decay + var_b * n_b + tf.square(delta) * (n_a * n_b / n)
    count.assign(n)
    m2.assign(new_m2)
    mean_var.assign(tf.cast(mean, mean_var.dtype))
    std_var.assign(tf.cast(tf.sqrt(new_m2 / n + BN_EPSILON), std_var.dtype))


def batch_normalise(node: Node, x: Any, training: bool, mode: str | bool) -> Any:
    """``gamma * (x - mean) / std`` of a features-last tensor (the caller adds the bias/beta).

    In training steps of the ``'train'``/``'fadeout'`` modes the batch statistics are used (and
    added to the stored ones, see the module docs); otherwise the stored ones. ``node`` must have the parameters of
    :func:`add_batchnorm` (possibly shared: they are looked up in ``params`` then
    ``shared_params``).
    """
    if not mode:
        return x

    def var(name: str) -> Any:
        return _variable(node, name)

    gamma = tf.cast(var("gamma"), x.dtype)
    if training and mode in ("train", "fadeout"):
        axes = list(range(len(x.shape) - 1))
        stored_mean, stored_std = tf.cast(var("mean"), x.dtype), tf.cast(var("std"), x.dtype)
        batch_mean, batch_var = tf.nn.moments(x, axes)
        batch_std = tf.sqrt(batch_var + BN_EPSILON)
        if mode == "fadeout":
            fade = tf.cast(var("bn_fade"), x.dtype)
            batch_mean = fade * batch_mean + (1.0 - fade) * stored_mean
            batch_std = fade * batch_std + (1.0 - fade) * stored_std
        _accumulate(node, tf.stop_gradient(x), axes)
        return (x - batch_mean) * (gamma / batch_std)
    return (x - tf.cast(var("mean"), x.dtype)) * (gamma / tf.cast(var("std"), x.dtype))


def statistics_nodes(nodes: Iterable[Node]) -> list[Node]:
    """The nodes among ``nodes`` whose batch-normalisation statistics training updates (modes
    ``'train'`` and ``'fadeout'``)."""
    return [n for n in nodes if getattr(n, "batch_normalisation", False) in ("train", "fadeout")]


def set_momentum(nodes: Iterable[Node], momentum: float) -> int:
    """Sets ``bn_momentum`` of every batch-normalising node among ``nodes`` (takes effect at the
    next training step, without a retrace). Returns the number of nodes changed.

    Raises:
        ConfigError: ``momentum`` not in [0, 1].

    Example:
        >>> from ekn_core import neuromancer as nm
        >>> model = nm.model_manager.newmodel("doc_bn_momentum")
        >>> conv = nm.Conv(nm.Input((None, 1, 8, 8), 'b,f,x,y'), 2, (3, 3), batch_normalisation='train')
        >>> set_momentum(model.nodes.values(), 0.9995), float(conv.params["bn_momentum"].get_value())
        (1, 0.9995)
    """
    value = check_momentum(momentum)
    found = statistics_nodes(nodes)
    for node in found:
        node.params["bn_momentum"].set_value(np.asarray(value, "float64"))
    return len(found)


def reset_statistics(nodes: Iterable[Node]) -> int:
    """Restarts the statistics of every batch-normalising node among ``nodes``.

    The stored ``mean``/``std`` are kept until the next training step replaces them with the
    statistics of that step's batch. Returns the number of nodes reset.
    """
    found = statistics_nodes(nodes)
    for node in found:
        node.params["bn_count"].set_value(np.zeros((), "float64"))
        node.params["bn_m2"].set_value(np.zeros(node.params["bn_m2"].shape, "float64"))
    return len(found)


def collect_statistics(output: Node, batches: Iterable[Sequence[np.ndarray]]) -> int:
    """Recomputes the batch-normalisation statistics of ``output``'s ancestors from data.

    Resets the statistics, then runs ``output`` in training mode on every batch (arrays in
    ``output.input_nodes`` order) with all dropout rates of the graph set to 0 and every
    ``bn_momentum`` to 1 for the pass (restored afterwards), so the statistics are those of all
    voxels of the batches, equally weighted. No weight changes. Returns the number of batches used.
    """
    nodes = list(output.all_parents.values())
    reset_statistics(nodes)
    rates = [p for n in nodes for k, p in n.params.items() if k == "dropout_rate"]
    momenta = [n.params["bn_momentum"] for n in statistics_nodes(nodes)]
    saved = [p.get_value() for p in rates + momenta]
    count = 0
    try:
        for p in rates:
            p.set_value(np.zeros(p.shape, p.dtype))
        for p in momenta:
            p.set_value(np.ones(p.shape, p.dtype))
        for batch in batches:
            output(*batch, training=True)
            count += 1
    finally:
        for p, v in zip(rates + momenta, saved):
            p.set_value(v)
    return count


class BatchNorm(Node):
    """Batch normalisation as a node of its own (with its own beta ``b``), e.g. after an ``Add``.

    Args:
        parent: Input node (needs an ``f`` axis).
        batch_normalisation: ``'train'``, ``'fadeout'``, ``'predict'``, ``'const'`` (see the module
            docs) or False (identity; what ``replace_bn='remove'`` gives on restore).
        gamma, mean, std, b, bn_count, bn_m2, bn_fade: Initial values (arrays), ``[array, 'const']``
            or Params to share.
        bn_momentum: Momentum of the moving average of the statistics, in [0, 1] (default
            :data:`BN_MOMENTUM`; 1 pools every voxel since the last reset), or a Param to share.
        name: Node name.

    Shape rule: unchanged.
    """

    def __init__(self, parent: Node, batch_normalisation: str | bool = "train", gamma: Any = None, mean: Any = None,
                 std: Any = None, b: Any = None, bn_count: Any = None, bn_m2: Any = None, bn_fade: Any = None,
                 bn_momentum: Any = None, name: str = "batch_norm"):
        super().__init__(parent, name)
        if not parent.shape.hastag("f") or parent.shape["f"] is None:
            raise ConfigError(f"BatchNorm {name!r}: {parent.name!r} needs an 'f' axis of known size")
        n = parent.shape["f"]
        self.batch_normalisation = add_batchnorm(self, batch_normalisation, n, gamma, mean, std, bn_count, bn_m2,
                                                 bn_fade, bn_momentum)
        if self.batch_normalisation:
            self.add_param("b", b, shape=(n,), init="zeros", constant=self.batch_normalisation == "const")

    def _compute_cost(self) -> float:
        return 2.0 * self.shape.stripnone_prod if self.batch_normalisation else 0.0

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        x = inputs[0]
        if not self.batch_normalisation:
            return x
        y = batch_normalise(self, x, training, self.batch_normalisation)
        return y + tf.cast(self.params["b"].variable, x.dtype)

    def _repr_extras(self) -> str:
        return f"mode={self.batch_normalisation}"


class LRN(Node):
    """Local response normalisation ``x / (k + alpha * mean_sq) ** beta``.

    Args:
        parent: Input node (needs an ``f`` axis; ``'spatial'`` also 1-3 spatial axes).
        filter_shape: ``'spatial'``: odd window size per spatial axis (or one int);
            ``'channel'``: odd number of neighbouring features.
        mode: ``'spatial'`` or ``'channel'``.
        alpha, k, beta: Constants (non-trainable parameters).
        name: Node name.

    Shape rule: unchanged; ``'spatial'`` widens the FOV by ``(filter - 1) * stride`` on both sides
    of the output voxel (``field_start`` moves ``(filter - 1) / 2 * stride`` outwards).
    """

    def __init__(self, parent: Node, filter_shape: int | Sequence[int], mode: str = "spatial", alpha: float = 0.0001,
                 k: float = 1.0, beta: float = 0.75, name: str = "LRN"):
        super().__init__(parent, name)
        shape = parent.shape
        if mode not in ("spatial", "channel"):
            raise ConfigError(f"LRN {name!r}: mode must be 'spatial' or 'channel', got {mode!r}")
        if not shape.hastag("f"):
            raise ConfigError(f"LRN {name!r}: {parent.name!r} needs an 'f' axis")
        if mode == "spatial":
            if shape.ndim == 0:
                raise ConfigError(f"LRN {name!r}: mode 'spatial' needs spatial axes")
            sizes = (filter_shape,) * shape.ndim if isinstance(filter_shape, int) else tuple(filter_shape)
            if len(sizes) != shape.ndim:
                raise ConfigError(f"LRN {name!r}: filter_shape needs {shape.ndim} entries, got {filter_shape}")
        else:
            if not isinstance(filter_shape, int):
                raise ConfigError(f"LRN {name!r}: mode 'channel' needs an int filter_shape, got {filter_shape!r}")
            sizes = (filter_shape,)
        if any(not isinstance(s, int) or s < 1 or s % 2 == 0 for s in sizes):
            raise ConfigError(f"LRN {name!r}: filter sizes must be odd positive ints (centred window), got {sizes}")
        self.filter_shape, self.mode = sizes, mode
        self.add_param("alpha", float(alpha), shape=(), trainable=False)
        self.add_param("k", float(k), shape=(), trainable=False)
        self.add_param("beta", float(beta), shape=(), trainable=False)

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        shape = parent_shapes[0]
        if self.mode == "channel":
            return shape
        fov = tuple(-1 if fv <= 0 else int(fv + (f - 1) * st)
                    for fv, f, st in zip(shape.fov, self.filter_shape, shape.strides))
        start = [s - (f - 1) // 2 * st for s, f, st in zip(shape.field_start, self.filter_shape, shape.strides)]
        return shape.updatefov(fov).updatefield_start(start)

    def _compute_cost(self) -> float:
        return float(self.shape.stripnone_prod * (int(np.prod(self.filter_shape)) + 3))

    def _mean_square(self, sq: Any) -> Any:
        if self.mode == "channel":
            half = self.filter_shape[0] // 2
            padded = tf.concat([sq[..., :1]] * half + [sq] + [sq[..., -1:]] * half, axis=-1)
            n = sq.shape[-1]
            return tf.add_n([padded[..., i:i + n] for i in range(self.filter_shape[0])]) / self.filter_shape[0]
        ndim = len(self.filter_shape)
        lead = len(sq.shape) - ndim - 1
        perm = list(range(lead)) + [len(sq.shape) - 1] + list(range(lead, lead + ndim))
        moved = tf.transpose(sq, perm)  # features next to the batch: each map filtered alone
        dyn = tf.shape(moved)
        flat = tf.reshape(moved, tf.concat([[-1], dyn[lead + 1:], [1]], axis=0))
        kernel = tf.ones((*self.filter_shape, 1, 1), sq.dtype) / float(np.prod(self.filter_shape))
        filtered = tf.nn.convolution(flat, kernel, padding="SAME")
        back = tf.reshape(filtered, dyn)
        return tf.transpose(back, np.argsort(perm).tolist())

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        x = inputs[0]
        p = {key: tf.cast(self.params[key].variable, x.dtype) for key in ("alpha", "k", "beta")}
        return x / tf.pow(p["k"] + p["alpha"] * self._mean_square(tf.square(x)), p["beta"])

    def _repr_extras(self) -> str:
        return f"mode={self.mode} filter={self.filter_shape}"
