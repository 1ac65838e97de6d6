"""Loss, classification and metric kernels on channels-last TensorFlow tensors.

Every kernel works on canonical tensors ``(b, spatial..., f)``. Losses return an *element-wise
loss map* rescaled so that its plain mean is the loss per labelled element (ELEKTRONN2's
convention, so :class:`AggregateLoss` can simply average): ignored elements contribute 0 and the
map is multiplied by ``n_elements / n_labelled``.

Class features may hold ``n_indep`` independent groups of ``n_class`` classes each
(``f = n_indep * n_class``, groups consecutive), e.g. one 2-class softmax per affinity channel.
Sparse targets hold one class id per group, ``(b, spatial..., n_indep)``; ids ``< 0`` and
``ignore_label`` mark unlabelled voxels. One-hot (or soft) targets have the prediction's shape;
an all-zero row marks an unlabelled voxel.

Everything is numerically stable for extreme logits: losses on logits use log-softmax or
softplus, never ``log(softmax(x))``.

Example:
    >>> import numpy as np, tensorflow as tf
    >>> logits = tf.constant([[[200.0, -200.0]], [[0.0, 0.0]]])  # (b=2, x=1, f=2)
    >>> target = tf.constant([[[0]], [[-1]]])                     # voxel 2 is unlabelled
    >>> np.round(multinoulli_nll(logits, target, target_is_sparse=True).numpy().ravel(), 6)
    array([0., 0.], dtype=float32)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ekn_core.errors import ConfigError, ShapeError
from ekn_core.lazy import tf

#: Clip for probabilities given instead of logits (``log(max(p, PROB_EPS))``).
PROB_EPS = 1e-7


def _grouped(x: tf.Tensor, n_indep: int) -> tf.Tensor:
    """``(..., n_indep*n_class)`` → ``(..., n_indep, n_class)``."""
    n_f = x.shape[-1]
    if n_f is None or n_f % n_indep:
        raise ShapeError(f"{n_f} features cannot be split into {n_indep} independent groups of classes.")
    return tf.reshape(x, tf.concat([tf.shape(x)[:-1], [n_indep, n_f // n_indep]], axis=0))


def _ungrouped(x: tf.Tensor) -> tf.Tensor:
    """``(..., n_indep, n_class)`` → ``(..., n_indep*n_class)``."""
    return tf.reshape(x, tf.concat([tf.shape(x)[:-2], [x.shape[-2] * x.shape[-1]]], axis=0))


def _per_group(normalise: Any, logits: tf.Tensor, n_indep: int) -> tf.Tensor:
    """Applies a last-axis (log-)softmax to each feature group, as rows of a 2-D matrix (the
    oneDNN softmax kernel takes rank <= 5, and a 3-D net's output with groups has rank 6)."""
    n_f = logits.shape[-1]
    if n_f is None or n_f % n_indep:
        raise ShapeError(f"{n_f} features cannot be split into {n_indep} independent groups of classes.")
    rows = tf.reshape(logits, [-1, n_f // n_indep])
    return tf.reshape(normalise(rows, axis=-1), tf.shape(logits))


def rescale_to_labelled(loss: tf.Tensor, labelled: tf.Tensor) -> tf.Tensor:
    """``loss * size(labelled) / max(sum(labelled), 1)``: its mean is the mean over labelled elements."""
    labelled = tf.cast(labelled, loss.dtype)
    total = tf.cast(tf.size(labelled), loss.dtype)
    return loss * (total / tf.maximum(tf.reduce_sum(labelled), 1.0))


def _voxel_weights(weights: Any, like: tf.Tensor) -> tf.Tensor:
    """Example weights ``(b, spatial...)`` or ``(b, spatial..., 1)`` as ``(b, spatial..., 1)``."""
    weights = tf.cast(weights, like.dtype)
    if weights.shape.rank == like.shape.rank - 1:
        weights = weights[..., None]
    if weights.shape.rank != like.shape.rank or weights.shape[-1] not in (1, None):
        raise ShapeError(f"example_weights must have shape (b, spatial...) or (b, spatial..., 1) matching the "
                         f"prediction {like.shape}, got {weights.shape}.")
    return weights


def log_softmax(logits: Any, n_indep: int = 1) -> tf.Tensor:
    """Log-softmax over each of ``n_indep`` consecutive feature groups (stable for any logits).

    Example:
        >>> tf.exp(log_softmax(tf.constant([[0.0, 0.0, 1e4, 0.0]]), n_indep=2)).numpy()
        array([[0.5, 0.5, 1. , 0. ]], dtype=float32)
    """
    logits = tf.convert_to_tensor(logits)
    return _per_group(tf.nn.log_softmax, logits, n_indep)


def softmax(logits: Any, n_indep: int = 1) -> tf.Tensor:
    """Softmax over each of ``n_indep`` consecutive feature groups (ELEKTRONN2 ``Softmax``)."""
    return _per_group(tf.nn.softmax, tf.convert_to_tensor(logits), n_indep)


def one_hot(target: Any, n_class: int, ignore_label: int | None = None, dtype: Any = "float32") -> tf.Tensor:
    """Sparse ids ``(..., n_indep)`` → one-hot ``(..., n_indep*n_class)``; ids < 0 or ``ignore_label``
    give all-zero rows.

    Example:
        >>> one_hot(tf.constant([[1, -1]]), 3).numpy()
        array([[0., 1., 0., 0., 0., 0.]], dtype=float32)
    """
    ids = tf.cast(target, tf.int32)
    if ignore_label is not None:
        ids = tf.where(ids == int(ignore_label), -1, ids)
    # tf.one_hot gives all-zero rows for ids outside [0, n_class)
    return _ungrouped(tf.one_hot(ids, int(n_class), dtype=dtype))


def check_class_ids(ids: Any, n_class: int, ignore_label: int | None = None, owner: str = "the target") -> None:
    """Refuses sparse class ids ``>= n_class`` other than ``ignore_label`` (numpy arrays).

    Such ids would give all-zero one-hot rows: the loss would leave those voxels out silently
    while the error rate counted them as wrong. Ids ``< 0`` (unlabelled) pass.

    Args:
        ids: Class ids.
        n_class: Number of classes of the prediction.
        ignore_label: An id to ignore (allowed at any value).
        owner: Who is named in the error.

    Raises:
        ConfigError: An id ``>= n_class``; the message says how to fix it.

    Example:
        >>> check_class_ids(np.array([0, 1, -1, 255]), 2, ignore_label=255)
        >>> check_class_ids(np.array([0, 5]), 2)
        Traceback (most recent call last):
        ...
        ekn_core.errors.ConfigError: the target holds class id 5, but the prediction has n_class=2 classes (ids 0..1; ids < 0 are unlabelled). Map the labels to 0..1, give the net more classes, or leave those voxels out with ignore_label=5.
    """
    ids = np.asarray(ids)
    if ids.size == 0 or ids.max() < n_class:
        return
    bad = ids >= n_class
    if ignore_label is not None:
        bad &= ids != ignore_label
    if not bad.any():
        return
    values = np.unique(ids[bad])
    shown = ", ".join(f"{v:g}" for v in values[:5]) + (", ..." if len(values) > 5 else "")
    raise ConfigError(f"{owner} holds class id{'s' if len(values) > 1 else ''} {shown}, but the prediction has "
                      f"n_class={n_class} classes (ids 0..{n_class - 1}; ids < 0 are unlabelled). Map the labels to "
                      f"0..{n_class - 1}, give the net more classes, or leave those voxels out with "
                      f"ignore_label={values[0]:g}.")


def _check_known_ids(target: tf.Tensor, n_class: int, ignore_label: int | None) -> None:
    """:func:`check_class_ids` on sparse targets whose values are known now (eager tensors,
    constants); values inside a compiled graph are checked where they are fed
    (:meth:`~ekn_core.node.Node.check_feed` of the loss nodes)."""
    value = tf.get_static_value(target)
    if value is not None:
        check_class_ids(value, n_class, ignore_label)


def _dense_target(target: Any, pred: tf.Tensor, n_indep: int, target_is_sparse: bool,
                  ignore_label: int | None) -> tf.Tensor:
    """The target as (soft) one-hot of ``pred``'s shape and dtype."""
    n_f = pred.shape[-1]
    if target_is_sparse:
        target = tf.convert_to_tensor(target)
        if target.shape.rank == pred.shape.rank - 1 and n_indep == 1:
            target = target[..., None]
        if target.shape.rank != pred.shape.rank or target.shape[-1] not in (n_indep, None):
            raise ShapeError(f"sparse targets must have shape (b, spatial..., n_indep={n_indep}) for a prediction "
                             f"of shape {pred.shape}, got {target.shape}.")
        _check_known_ids(target, n_f // n_indep, ignore_label)
        return one_hot(target, n_f // n_indep, ignore_label, pred.dtype)
    target = tf.cast(target, pred.dtype)
    if target.shape.rank != pred.shape.rank or target.shape[-1] != n_f:
        raise ShapeError(f"one-hot targets must have the prediction's shape {pred.shape}, got {target.shape}; "
                         "pass target_is_sparse=True for class ids.")
    return target


def _class_weight_row(class_weights: Any, n_f: int, n_indep: int, dtype: tf.DType) -> tf.Tensor:
    weights = tf.reshape(tf.cast(class_weights, dtype), [-1])
    n = weights.shape[0]
    if n == n_f // n_indep and n_indep > 1:
        weights = tf.tile(weights, [n_indep])
    elif n != n_f:
        raise ShapeError(f"class_weights must have n_class={n_f // n_indep} or n_indep*n_class={n_f} entries, "
                         f"got {n}.")
    return weights


def multinoulli_nll(pred: Any, target: Any, *, n_indep: int = 1, target_is_sparse: bool = False,
                    class_weights: Any = None, example_weights: Any = None, ignore_label: int | None = None,
                    from_logits: bool = True, focal_gamma: float = 0.0, mask_class_labeled: Any = None,
                    mask_class_not_present: Any = None) -> tf.Tensor:
    """Categorical cross-entropy map ``(b, spatial..., 1)`` (ELEKTRONN2 ``MultinoulliNLL``).

    Per voxel ``v`` and group ``g``: ``l = ew_v * Σ_c t_vgc * cw_c * (1 - p_vgc)^γ * (-log p_vgc)``
    (γ = ``focal_gamma``: 0 is the plain NLL, > 0 the focal loss of Lin et al.); the map is
    ``Σ_g l_vg * n_voxels / n_labelled`` with ``n_labelled`` the number of labelled (voxel,
    group) pairs (total target mass), so its mean is the NLL per labelled voxel and group.

    Args:
        pred: Logits (``from_logits=True``, fused stable log-softmax) or probabilities
            (clipped at :data:`PROB_EPS`), shape ``(b, spatial..., n_indep*n_class)``.
        target: Sparse class ids or (soft) one-hot, see the module docstring.
        n_indep: Number of independent softmax groups.
        target_is_sparse: Whether ``target`` holds class ids.
        class_weights: ``n_class`` (or ``n_indep*n_class``) weights.
        example_weights: Per-voxel weights ``(b, spatial...)``.
        ignore_label: A class id to ignore besides negative ids.
        from_logits: See ``pred``.
        focal_gamma: Focusing exponent γ ≥ 0 of the focal loss (down-weights easy voxels).
        mask_class_labeled: Lazy labels: ``(b, n_class)`` (or ``(b, n_indep*n_class)``) 0/1
            flags; where 0, class ``c`` is not labelled in example ``b``: voxels whose target is
            ``c`` contribute nothing and do not count as labelled.
        mask_class_not_present: Lazy labels: ``(b, n_class)`` (or ``(b, n_indep*n_class)``) 0/1
            flags; where 1, class ``c`` is certainly absent from example ``b``: every voxel of
            the example (whatever its label, -1 included) adds
            ``ew * cw_c * p_c^γ * (-log(1 - p_c))``, pushing ``p_c`` to 0, and counts once more
            as labelled (ELEKTRONN2's ``n_labelled_up + n_labelled_dn``).

    With lazy-label masks the rule stays the same: the map is ``Σ_g (l_vg + l'_vg) * n_voxels /
    n_labelled`` with ``n_labelled = Σ t·mask_class_labeled + n_voxels·Σ_g Σ_c
    mask_class_not_present`` (per example).
    """
    pred = tf.convert_to_tensor(pred)
    n_f = pred.shape[-1]
    t = _dense_target(target, pred, n_indep, target_is_sparse, ignore_label)
    if mask_class_labeled is not None:
        t = t * _class_mask(mask_class_labeled, pred, n_indep)
    logp = log_softmax(pred, n_indep) if from_logits else tf.math.log(tf.maximum(pred, PROB_EPS))
    # log(1 - p), exact where p rounds to 1; needed by the focal factor and the not-present term
    log_q = None
    if focal_gamma or mask_class_not_present is not None:
        log_q = (_log_one_minus_softmax(pred, n_indep) if from_logits
                 else tf.math.log(tf.maximum(1.0 - pred, PROB_EPS)))
    gamma = tf.cast(focal_gamma, pred.dtype)
    cw = None if class_weights is None else _class_weight_row(class_weights, n_f, n_indep, pred.dtype)
    weighted = t if cw is None else t * cw
    if focal_gamma:  # (1 - p)^γ as exp(γ log(1 - p)): finite gradients for any γ > 0 and p → 1
        weighted = weighted * tf.exp(gamma * log_q)
    loss = -tf.reduce_sum(weighted * logp, axis=-1, keepdims=True)
    n_labelled = tf.reduce_sum(t)
    if mask_class_not_present is not None:
        absent = _class_mask(mask_class_not_present, pred, n_indep) * tf.ones_like(pred)
        weighted_dn = absent if cw is None else absent * cw
        if focal_gamma:  # p^γ as exp(γ log p): finite gradients for any γ > 0 and p → 0
            weighted_dn = weighted_dn * tf.exp(gamma * logp)
        loss = loss - tf.reduce_sum(weighted_dn * log_q, axis=-1, keepdims=True)
        n_labelled = n_labelled + tf.reduce_sum(absent)
    if example_weights is not None:
        loss = loss * _voxel_weights(example_weights, loss)
    n_voxels = tf.cast(tf.size(loss), pred.dtype)
    return loss * (n_voxels / tf.maximum(n_labelled, 1.0))


def _class_mask(mask: Any, pred: tf.Tensor, n_indep: int) -> tf.Tensor:
    """A lazy-label mask ``(b, n_class)`` or ``(b, n_indep*n_class)`` as ``(b, 1..., n_f)``."""
    n_f = pred.shape[-1]
    mask = tf.cast(mask, pred.dtype)
    if mask.shape.rank == 1:
        mask = mask[None]
    if mask.shape.rank != 2 or mask.shape[-1] not in (n_f // n_indep, n_f):
        raise ShapeError(f"lazy-label masks must have shape (b, n_class={n_f // n_indep}) or "
                         f"(b, n_indep*n_class={n_f}), got {mask.shape}.")
    if mask.shape[-1] != n_f:
        mask = tf.tile(mask, [1, n_indep])
    return tf.reshape(mask, tf.concat([tf.shape(mask)[:1], tf.ones([pred.shape.rank - 2], tf.int32), [n_f]], 0))


def _log_one_minus_softmax(logits: tf.Tensor, n_indep: int) -> tf.Tensor:
    """``log(1 - softmax(x)_c) = logsumexp_{j≠c}(x_j) - logsumexp_j(x_j)`` per group, exact for
    probabilities that round to 1."""
    grouped = _grouped(logits, n_indep)  # (..., n_indep, n_class)
    n_class = grouped.shape[-1]
    others = tf.where(tf.eye(n_class, dtype=tf.bool), tf.constant(-1e30, logits.dtype), grouped[..., None, :])
    log_q = tf.reduce_logsumexp(others, axis=-1) - tf.reduce_logsumexp(grouped, axis=-1, keepdims=True)
    return _ungrouped(log_q)


def bernoulli_nll(pred: Any, target: Any, *, class_weights: Any = None, example_weights: Any = None,
                  subtract_label_entropy: bool = False, from_logits: bool = True) -> tf.Tensor:
    """Binary cross-entropy map of ``pred``'s shape (ELEKTRONN2 ``BinaryNLL``), per element.

    ``l = -(w1 * t * log σ(x) + w0 * (1-t) * log(1-σ(x)))`` (softplus form on logits). Targets
    ``< 0`` (ELEKTRONN2's -666 included) are unlabelled; the map is rescaled by
    ``n_elements / n_labelled``.

    Args:
        pred: Logits (``from_logits=True``) or probabilities.
        target: Values in [0, 1]; negative = unlabelled.
        class_weights: ``(w0, w1)``: weights of the negative and positive term.
        example_weights: Per-voxel weights ``(b, spatial...)``.
        subtract_label_entropy: Subtract the targets' own entropy (loss = KL divergence, 0 at
            perfect soft predictions).
        from_logits: See ``pred``.
    """
    pred = tf.convert_to_tensor(pred)
    target = tf.cast(target, pred.dtype)
    labelled = target >= 0
    t = tf.where(labelled, target, tf.zeros_like(target))
    if from_logits:
        neg_log_p, neg_log_q = tf.nn.softplus(-pred), tf.nn.softplus(pred)
    else:
        neg_log_p = -tf.math.log(tf.maximum(pred, PROB_EPS))
        neg_log_q = -tf.math.log(tf.maximum(1 - pred, PROB_EPS))
    w0, w1 = (1.0, 1.0) if class_weights is None else (float(class_weights[0]), float(class_weights[1]))
    loss = w1 * t * neg_log_p + w0 * (1 - t) * neg_log_q
    if subtract_label_entropy:
        loss = loss + tf.math.xlogy(t, t) + tf.math.xlogy(1 - t, 1 - t)
    if example_weights is not None:
        loss = loss * _voxel_weights(example_weights, loss)
    loss = tf.where(labelled, loss, tf.zeros_like(loss))
    return rescale_to_labelled(loss, labelled)


def _value_mask(target: tf.Tensor, ignore_value: float | None) -> tf.Tensor:
    if ignore_value is None:
        return tf.ones_like(target, dtype=tf.bool)
    return tf.not_equal(target, tf.cast(ignore_value, target.dtype))


def gaussian_nll(mu: Any, sig: Any, target: Any, *, sig_is_log: bool = False,
                 ignore_value: float | None = None) -> tf.Tensor:
    """Gaussian NLL map ``0.5*log(2π) + log σ + 0.5*((t-μ)/σ)²`` (ELEKTRONN2 ``GaussianNLL``).

    Args:
        mu: Predicted means.
        sig: Predicted standard deviations, or their logarithms with ``sig_is_log=True`` (stable
            for any value).
        target: Targets of ``mu``'s shape.
        sig_is_log: See ``sig``.
        ignore_value: Target value marking unlabelled elements (e.g. -666); the map is rescaled by
            ``n_elements / n_labelled``.
    """
    mu = tf.convert_to_tensor(mu)
    sig, target = tf.cast(sig, mu.dtype), tf.cast(target, mu.dtype)
    log_sig = sig if sig_is_log else tf.math.log(sig)
    inv_sig = tf.exp(-sig) if sig_is_log else 1 / sig
    labelled = _value_mask(target, ignore_value)
    t = tf.where(labelled, target, mu)
    loss = 0.5 * math.log(2 * math.pi) + log_sig + 0.5 * tf.square((t - mu) * inv_sig)
    loss = tf.where(labelled, loss, tf.zeros_like(loss))
    return rescale_to_labelled(loss, labelled)


def _deviation_loss(pred: Any, target: Any, power: int, margin: float | None, scale_correction: float | None,
                    ignore_value: float | None) -> tf.Tensor:
    pred = tf.convert_to_tensor(pred)
    target = tf.cast(target, pred.dtype)
    labelled = _value_mask(target, ignore_value)
    target = tf.where(labelled, target, pred)
    dev = tf.abs(target - pred)
    if margin is not None:
        dev = tf.nn.relu(dev - margin)
    loss = 0.5 * tf.square(dev) if power == 2 else dev
    if scale_correction is not None:
        sc, at = tf.cast(scale_correction, pred.dtype), tf.abs(target)
        loss = loss * (sc / (at + sc) if power == 2 else sc * at + 1)
    loss = tf.where(labelled, loss, tf.zeros_like(loss))
    return tf.reduce_mean(rescale_to_labelled(loss, labelled), axis=-1, keepdims=True)


def squared_loss(pred: Any, target: Any, *, margin: float | None = None, scale_correction: float | None = None,
                 ignore_value: float | None = None) -> tf.Tensor:
    """Squared deviation map ``(b, spatial..., 1)`` (ELEKTRONN2 ``SquaredLoss``), mean over features.

    ``l = 0.5 * max(|t - p| - margin, 0)²`` (no margin: ``0.5 (t-p)²``), times
    ``sc / (|t| + sc)`` with ``scale_correction=sc`` (half weight at ``|t| = sc``). Elements whose
    target equals ``ignore_value`` (ELEKTRONN2: -666) are unlabelled; the map is rescaled by
    ``n_elements / n_labelled``. ELEKTRONN2 subtracted the margin after masking, giving negative
    losses below the margin; here deviations within the margin cost 0.

    Example:
        >>> squared_loss(tf.constant([[1.0, 2.0]]), tf.constant([[3.0, -666.0]]), ignore_value=-666).numpy()
        array([[2.]], dtype=float32)
    """
    return _deviation_loss(pred, target, 2, margin, scale_correction, ignore_value)


def abs_loss(pred: Any, target: Any, *, margin: float | None = None, scale_correction: float | None = None,
             ignore_value: float | None = None) -> tf.Tensor:
    """Absolute deviation map ``(b, spatial..., 1)`` (ELEKTRONN2 ``AbsLoss``), mean over features.

    ``l = max(|t - p| - margin, 0)``, times ``sc * |t| + 1`` with ``scale_correction=sc``
    (ELEKTRONN2: boosts large targets). Masking and rescaling as :func:`squared_loss`.
    """
    return _deviation_loss(pred, target, 1, margin, scale_correction, ignore_value)


def beta_nll(mode: Any, concentration: Any, target: Any, *, ignore_value: float | None = None,
             eps: float = 1e-6) -> tf.Tensor:
    """Beta negative log-likelihood map of ``mode``'s shape (ELEKTRONN2 ``BetaNLL``), per element.

    The Beta distribution is parameterised by its mode ``m`` in (0, 1) and concentration
    ``k > 2`` (e.g. a layer with ``activation_func='concentration'``, ``2 + 7 softplus(x)``):
    ``α = m (k-2) + 1``, ``β = (1-m)(k-2) + 1``, and
    ``l = -(α-1) log t - (β-1) log(1-t) + lgamma(α) + lgamma(β) - lgamma(α+β)``
    (``-scipy.stats.beta.logpdf(t, α, β)``). Targets are clipped to ``[eps, 1-eps]`` so that 0
    and 1 give finite losses. Elements whose target equals ``ignore_value`` are unlabelled; the
    map is rescaled by ``n_elements / n_labelled``.

    Example:
        >>> round(float(beta_nll(tf.constant([0.5]), tf.constant([4.0]), tf.constant([0.5]))[0]), 6)
        -0.405465
    """
    mode = tf.convert_to_tensor(mode)
    k, target = tf.cast(concentration, mode.dtype), tf.cast(target, mode.dtype)
    labelled = _value_mask(target, ignore_value)
    t = tf.clip_by_value(tf.where(labelled, target, tf.fill(tf.shape(target), tf.cast(0.5, mode.dtype))),
                         eps, 1.0 - eps)
    a_1, b_1 = mode * (k - 2.0), (1.0 - mode) * (k - 2.0)  # α - 1, β - 1
    log_beta = tf.math.lgamma(a_1 + 1.0) + tf.math.lgamma(b_1 + 1.0) - tf.math.lgamma(a_1 + b_1 + 2.0)
    loss = log_beta - a_1 * tf.math.log(t) - b_1 * tf.math.log1p(-t)
    loss = tf.where(labelled, loss, tf.zeros_like(loss))
    return rescale_to_labelled(loss, labelled)


def euclidean_distance(pred: Any, target: Any) -> tf.Tensor:
    """Euclidean distance map ``(b, spatial..., 1)``: ``sqrt(Σ_f (p - t)²)`` (ELEKTRONN2
    ``EuclideanDistance``).

    Elements where ``pred`` or ``target`` has a NaN in any feature are unlabelled: they give 0
    (ELEKTRONN2: NaN → 0) with zero gradient, and the map is rescaled by
    ``n_elements / n_labelled``. The gradient at distance 0 is 0.

    Example:
        >>> euclidean_distance(tf.constant([[0.0, 0.0], [1.0, 1.0]]),
        ...                    tf.constant([[3.0, 4.0], [float('nan'), 0.0]])).numpy()
        array([[10.],
               [ 0.]], dtype=float32)
    """
    pred = tf.convert_to_tensor(pred)
    diff = pred - tf.cast(target, pred.dtype)
    labelled = tf.logical_not(tf.reduce_any(tf.math.is_nan(diff), axis=-1, keepdims=True))
    diff = tf.where(labelled, diff, tf.zeros_like(diff))
    sq = tf.reduce_sum(tf.square(diff), axis=-1, keepdims=True)
    positive = sq > 0
    dist = tf.where(positive, tf.sqrt(tf.where(positive, sq, tf.ones_like(sq))), tf.zeros_like(sq))
    return rescale_to_labelled(dist, labelled)


def cosine_distance(pred: Any, target: Any, *, eps: float = 1e-12) -> tf.Tensor:
    """Cosine distance map ``(b, spatial..., 1)``: ``1 - p·t / (|p| |t|)`` over the features,
    in [0, 2]; only the directions count (e.g. a tracing agent's step direction).

    Elements where ``pred`` or ``target`` has a NaN in any feature are unlabelled (0, zero
    gradient; the map is rescaled by ``n_elements / n_labelled``). Norms below ``sqrt(eps)``
    count as ``sqrt(eps)``, so a zero vector gives distance 1 and finite gradients.

    Example:
        >>> cosine_distance(tf.constant([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]),  # 3rd: unlabelled,
        ...                 tf.constant([[1.0, 0.0], [0.0, -1.0], [float('nan'), 0.0]])).numpy()  # so x 3/2
        array([[0.],
               [3.],
               [0.]], dtype=float32)
    """
    pred = tf.convert_to_tensor(pred)
    target = tf.cast(target, pred.dtype)
    labelled = tf.logical_not(tf.reduce_any(tf.math.is_nan(pred - target), axis=-1, keepdims=True))
    pred = tf.where(labelled, pred, tf.zeros_like(pred))
    target = tf.where(labelled, target, tf.zeros_like(target))
    cos = tf.reduce_sum(tf.math.l2_normalize(pred, axis=-1, epsilon=eps)
                        * tf.math.l2_normalize(target, axis=-1, epsilon=eps), axis=-1, keepdims=True)
    return rescale_to_labelled(tf.where(labelled, 1.0 - cos, tf.zeros_like(cos)), labelled)


def ramp_loss(d_low: Any, d_big: Any, *, margin: Any = None) -> tf.Tensor:
    """Ramp (hinge) loss map ``(b, spatial..., 1)``: ``max(d_low - d_big + margin, 0)``, mean over
    features (ELEKTRONN2 ``RampLoss``); ``margin=None`` means 0.

    Example:
        >>> ramp_loss(tf.constant([[1.0, 0.0]]), tf.constant([[0.5, 2.0]]), margin=0.5).numpy()
        array([[0.5]], dtype=float32)
    """
    d_low = tf.convert_to_tensor(d_low)
    hinge = d_low - tf.cast(d_big, d_low.dtype)
    if margin is not None:
        hinge = hinge + tf.cast(margin, d_low.dtype)
    return tf.reduce_mean(tf.nn.relu(hinge), axis=-1, keepdims=True)


def sobel_kernel(n_spatial: int) -> np.ndarray:
    """The Sobel kernels of ``scipy.ndimage.sobel``, one per spatial axis: ``(3,)*n, n`` (numpy).

    Kernel ``a`` is the outer product of ``[-1, 0, 1]`` along axis ``a`` and the smoothing
    ``[1, 2, 1]`` along every other axis; correlating with it (what a convolution layer does)
    with zero padding equals ``ndimage.sobel(x, axis=a, mode='constant')``.

    Example:
        >>> sobel_kernel(2)[..., 1]
        array([[-1.,  0.,  1.],
               [-2.,  0.,  2.],
               [-1.,  0.,  1.]], dtype=float32)
    """
    kernels = []
    for axis in range(n_spatial):
        k = np.ones((1,) * n_spatial)
        for other in range(n_spatial):
            row = np.array([-1.0, 0.0, 1.0]) if other == axis else np.array([1.0, 2.0, 1.0])
            k = k * row.reshape([3 if i == other else 1 for i in range(n_spatial)])
        kernels.append(k)
    return np.stack(kernels, axis=-1).astype("float32")


def soft_dice(pred: Any, target: Any, *, n_indep: int = 1, target_is_sparse: bool = False,
              class_weights: Any = None, ignore_label: int | None = None, smooth: float = 1.0,
              per_example: bool = False, from_logits: bool = False) -> tf.Tensor:
    """Soft Dice loss ``1 - (2 Σ p t + smooth) / (Σ p + Σ t + smooth)`` averaged over classes.

    Sums run over all voxels of the batch (or of each example with ``per_example=True``);
    unlabelled voxels (all-zero target rows, ids < 0 or ``ignore_label``) are left out of both
    sums. Classes are averaged with ``class_weights`` (weighted mean) if given.

    Args:
        pred: Probabilities, or logits with ``from_logits=True`` (softmax per group).
        target: Sparse ids or (soft) one-hot, as :func:`multinoulli_nll`.
        n_indep, target_is_sparse, class_weights, ignore_label: As :func:`multinoulli_nll`.
        smooth: Added to numerator and denominator (a class absent from target and prediction
            scores 0 loss).
        per_example: Return one loss per example, shape ``(b,)``, instead of a scalar.
        from_logits: See ``pred``.

    Example:
        >>> p = tf.constant([[[0.9, 0.1], [0.2, 0.8]]])
        >>> round(float(soft_dice(p, tf.constant([[[0], [1]]]), target_is_sparse=True, smooth=0.0)), 4)
        0.15
    """
    pred = tf.convert_to_tensor(pred)
    p = softmax(pred, n_indep) if from_logits else pred
    t = _dense_target(target, pred, n_indep, target_is_sparse, ignore_label)
    labelled = tf.reduce_sum(_grouped(t, n_indep), axis=-1)  # (..., n_indep)
    p = _ungrouped(_grouped(p, n_indep) * tf.cast(labelled > 0, p.dtype)[..., None])
    axes = list(range(1 if per_example else 0, pred.shape.rank - 1))
    intersection = tf.reduce_sum(p * t, axis=axes)
    sizes = tf.reduce_sum(p, axis=axes) + tf.reduce_sum(t, axis=axes)
    loss = 1 - (2 * intersection + smooth) / (sizes + smooth)
    if class_weights is None:
        return tf.reduce_mean(loss, axis=-1)
    weights = _class_weight_row(class_weights, pred.shape[-1], n_indep, pred.dtype)
    return tf.reduce_sum(loss * weights, axis=-1) / tf.reduce_sum(weights)


def classify(pred: Any, n_indep: int = 1, threshold: float | None = None) -> tf.Tensor:
    """Class ids ``(b, spatial..., n_indep)``: argmax per group, or ``pred > threshold`` for
    sigmoid outputs (one probability per group; pass ``threshold=0.5``).

    Example:
        >>> classify(tf.constant([[0.1, 0.7, 0.2]])).numpy()
        array([[1]])
    """
    pred = tf.convert_to_tensor(pred)
    if threshold is not None:
        return tf.cast(pred > threshold, tf.int64)
    return tf.argmax(_grouped(pred, n_indep), axis=-1)


def target_ids(target: Any, n_class: int, n_indep: int = 1, target_is_sparse: bool = False,
               ignore_label: int | None = None) -> tf.Tensor:
    """Target class ids ``(..., n_indep)`` with -1 for unlabelled voxels, from sparse or one-hot targets."""
    target = tf.convert_to_tensor(target)
    if target_is_sparse:
        _check_known_ids(target, n_class, ignore_label)
        ids = tf.cast(target, tf.int64)
        if ignore_label is not None:
            ids = tf.where(ids == int(ignore_label), tf.constant(-1, tf.int64), ids)
        return tf.where(ids < 0, tf.constant(-1, tf.int64), ids)
    grouped = _grouped(tf.cast(target, tf.float32), n_indep)
    if grouped.shape[-1] != n_class:
        raise ShapeError(f"one-hot target has {grouped.shape[-1]} classes per group, expected {n_class}.")
    return tf.where(tf.reduce_sum(grouped, axis=-1) > 0, tf.argmax(grouped, axis=-1), tf.constant(-1, tf.int64))


def classification_error(cls: Any, ids: Any) -> tf.Tensor:
    """Fraction of labelled (``ids >= 0``) elements where ``cls != ids`` (0 when none is labelled).

    Unlike ELEKTRONN2's ``Errors``, unlabelled voxels are not counted as errors.

    Example:
        >>> float(classification_error(tf.constant([1, 0, 2]), tf.constant([1, 1, -1])))
        0.5
    """
    cls, ids = tf.cast(cls, tf.int64), tf.cast(ids, tf.int64)
    labelled = tf.cast(ids >= 0, tf.float32)
    wrong = tf.cast(tf.not_equal(cls, ids), tf.float32) * labelled
    return tf.reduce_sum(wrong) / tf.maximum(tf.reduce_sum(labelled), 1.0)


def confusion_matrix(cls: Any, ids: Any, n_class: int) -> tf.Tensor:
    """``(n_class, n_class)`` counts, rows = target class, columns = predicted; unlabelled skipped.

    Example:
        >>> confusion_matrix(tf.constant([0, 1, 1]), tf.constant([0, 0, -1]), 2).numpy()
        array([[1, 1],
               [0, 0]], dtype=int32)
    """
    cls, ids = tf.reshape(tf.cast(cls, tf.int64), [-1]), tf.reshape(tf.cast(ids, tf.int64), [-1])
    keep = ids >= 0
    return tf.math.confusion_matrix(tf.boolean_mask(ids, keep), tf.boolean_mask(cls, keep), num_classes=n_class,
                                    dtype=tf.int32)


def scores_from_confusion(matrix: Any) -> dict[str, np.ndarray]:
    """Per-class ``precision``, ``recall``, ``f1``, ``iou`` and overall ``accuracy`` (numpy; classes
    without any target or prediction give NaN).

    ``matrix`` is ``(n, n)`` (rows: target class, columns: predicted class) or a stack
    ``(..., n, n)`` of such matrices, e.g. one per threshold; the scores then have the leading
    axes too.

    Example:
        >>> s = scores_from_confusion(np.array([[3, 1], [0, 4]]))
        >>> s["precision"].tolist(), s["recall"].tolist(), float(s["accuracy"])
        ([1.0, 0.8], [0.75, 1.0], 0.875)
        >>> scores_from_confusion(np.array([[[3, 1], [0, 4]], [[4, 0], [2, 2]]]))["accuracy"].tolist()
        [0.875, 0.75]
    """
    m = np.asarray(matrix, dtype=float)
    tp = np.diagonal(m, axis1=-2, axis2=-1)
    predicted, actual = m.sum(-2), m.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision, recall = tp / predicted, tp / actual
        f1 = 2 * tp / (predicted + actual)
        iou = tp / (predicted + actual - tp)
        accuracy = tp.sum(-1) / m.sum((-2, -1))
    return {"precision": precision, "recall": recall, "f1": f1, "iou": iou, "accuracy": np.float64(accuracy)}
