"""Loss nodes (element-wise loss maps) and ``AggregateLoss``, with ELEKTRONN2's signatures.

Each loss node outputs a map whose mean is the loss per labelled element (see
:mod:`ekn_plugins.losses.functional`); :class:`AggregateLoss` averages the components with
run-time changeable mixing weights (``model.mixing``).

Example:
    >>> import numpy as np
    >>> from ekn_core.node import model_manager
    >>> from ekn_core.plugins import registry
    >>> from ekn_plugins.losses.outputs import Softmax
    >>> _ = model_manager.newmodel("doc_loss_nodes")
    >>> Input = registry("layers").get("input")
    >>> logits = Input((1, 3, 2), 'b,x,f')
    >>> labels = Input((1, 3), 'b,x', dtype='int16', name='labels')
    >>> nll = MultinoulliNLL(Softmax(logits), labels, target_is_sparse=True)
    >>> loss = AggregateLoss([nll])
    >>> x = np.zeros((1, 3, 2), 'float32')
    >>> round(float(loss(x, np.array([[0, 1, -1]], 'int16'))[0]), 6)  # log(2)
    0.693147
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ekn_core.errors import ConfigError, ShapeError
from ekn_core.lazy import tf
from ekn_core.node import Node
from ekn_core.shapes import TaggedShape
from ekn_plugins.losses import functional as F
from ekn_plugins.losses.outputs import SIGMOID_NAMES, ChecksClassIds, Softmax


def _check_same_grid(node: Node, pred: TaggedShape, other: TaggedShape, what: str) -> None:
    node.shape_check(tuple(other.spatial_shape) == tuple(pred.spatial_shape),
                     f"{what} has spatial shape {other.spatial_shape} but the prediction has {pred.spatial_shape}; "
                     "crop the target to the prediction (or pick the patch size so they match)")


def _check_softmax(pred: Node, owner: str) -> Softmax:
    if not isinstance(pred, Softmax):
        raise ConfigError(f"{owner}: pred must be a Softmax node (it reads the logits for numerical stability), "
                          f"got {type(pred).__name__} {pred.name!r}; use nm.Softmax(layer).")
    return pred


def _optional_param(node: Node, name: str, value: Any) -> Any:
    """A non-trainable scalar parameter for an optional constant (live-changeable), or None."""
    if value is None:
        return None
    return node.add_param(name, np.asarray(value, "float32"), trainable=False)


class MultinoulliNLL(ChecksClassIds, Node):
    """Categorical cross-entropy of a :class:`Softmax` prediction (ELEKTRONN2 ``MultinoulliNLL``).

    Args:
        pred: A Softmax node (its logits are used through a fused, stable log-softmax).
        target: Sparse class ids (``f = n_indep``, or no ``f`` axis) or (soft) one-hot targets.
        target_is_sparse: Whether ``target`` holds class ids; ids < 0 are unlabelled.
        class_weights: ``n_class`` weights (saved with the model as a non-trainable parameter)
            or a Node feeding them.
        example_weights: Node of per-voxel weights ``(b, spatial...)``.
        ignore_label: A class id to ignore besides negative ids.
        focal_gamma: Focusing exponent γ of the focal loss, ``(1 - p)^γ`` times the NLL (0: plain
            NLL; 2 is common for voxels of rare classes among many easy ones).
        mask_class_labeled: Lazy labels (ELEKTRONN2): 0/1 flags ``(b, n_class)``, a Node (e.g. an
            ``Input((None, n_class), 'b,f')`` fed per batch) or an array (saved with the model;
            ``(n_class,)`` applies to every example). Class ``c`` with flag 0 is not labelled in
            that example: its target voxels contribute nothing and do not count as labelled.
        mask_class_not_present: Lazy labels: 0/1 flags ``(b, n_class)``, Node or array. Class
            ``c`` with flag 1 is certainly absent from that example: every voxel of the example
            adds ``-log(1 - p_c)`` (times class and example weights), pushing ``p_c`` to 0, and
            counts as labelled once more.
        name: Node name.
        print_repr: Log the node description.

    Example:
        >>> import numpy as np
        >>> import ekn_core.neuromancer as nm
        >>> _ = nm.model_manager.newmodel("doc_lazy_labels")
        >>> logits = nm.Input((1, 2, 3), 'b,x,f')
        >>> labels = nm.Input((1, 2), 'b,x', dtype='int16', name='labels')
        >>> nll = MultinoulliNLL(nm.Softmax(logits), labels, target_is_sparse=True,
        ...                      mask_class_labeled=[1, 1, 0], mask_class_not_present=[0, 0, 1])
        >>> out = nll(np.zeros((1, 2, 3), 'float32'), np.array([[0, 2]], 'int16'))  # class 2 unlabelled
        >>> round(float(out.mean()), 6)  # (log 3 + 2 log 1.5) / 3 labelled terms
        0.636514
    """

    kind = "losses"

    def __init__(self, pred: Node, target: Node, target_is_sparse: bool = False, class_weights: Any = None,
                 example_weights: Node | None = None, ignore_label: int | None = None, focal_gamma: float = 0.0,
                 mask_class_labeled: Any = None, mask_class_not_present: Any = None, name: str = "nll",
                 print_repr: bool = True):
        if not float(focal_gamma) >= 0:
            raise ConfigError(f"MultinoulliNLL {name!r}: focal_gamma must be >= 0, got {focal_gamma!r}")
        softmax = _check_softmax(pred, f"MultinoulliNLL {name!r}")
        parents = [softmax.parents[0], target]
        self._cw_node = isinstance(class_weights, Node)
        if self._cw_node:
            parents.append(class_weights)
        if example_weights is not None:
            parents.append(example_weights)
        masks = {"mask_class_labeled": mask_class_labeled, "mask_class_not_present": mask_class_not_present}
        #: Lazy-label masks fed by parent nodes (in this order after the weights).
        self._mask_nodes = [k for k, m in masks.items() if isinstance(m, Node)]
        parents += [masks[k] for k in self._mask_nodes]
        super().__init__(parents, name, print_repr)
        self.n_class, self.n_indep = softmax.n_class, softmax.n_indep
        for key, mask in masks.items():
            if mask is not None and not isinstance(mask, Node):
                array = np.asarray(mask, "float32")
                if array.ndim not in (1, 2) or array.shape[-1] not in (self.n_class, self.n_class * self.n_indep):
                    raise ConfigError(f"MultinoulliNLL {name!r}: {key} must have shape (b, n_class={self.n_class}) "
                                      f"or (n_class,), got {array.shape}")
                self.add_param(key, array, trainable=False)
        self.target_is_sparse, self.ignore_label = bool(target_is_sparse), ignore_label
        self.focal_gamma = float(focal_gamma)
        self.has_example_weights = example_weights is not None
        if class_weights is not None and not self._cw_node:
            self.add_param("class_weights", np.asarray(class_weights, "float32").ravel(), trainable=False)

    @property
    def mask_inputs(self) -> list[Node]:
        """The parent nodes that feed the lazy-label masks (``mask_class_labeled``, then
        ``mask_class_not_present``, those given as nodes), e.g. for a data source to check the
        length of the flags it feeds them."""
        return self.parents[len(self.parents) - len(self._mask_nodes):] if self._mask_nodes else []

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        pred, target = parent_shapes[:2]
        _check_same_grid(self, pred, target, "the target")
        want = self.n_indep if self.target_is_sparse else pred["f"]
        got = target["f"] if target.hastag("f") else 1
        self.shape_check(got == want, f"the target has {got} feature(s), expected {want} "
                                      f"({'one class id per group' if self.target_is_sparse else 'one-hot'})")
        for key, mask in zip(self._mask_nodes, parent_shapes[len(parent_shapes) - len(self._mask_nodes):]):
            ok = mask.ndim == 0 and mask.hastag("b") and mask.hastag("f") and len(mask.tags) == 2
            self.shape_check(ok and mask["f"] in (self.n_class, self.n_class * self.n_indep),
                             f"{key} must be a (b, n_class={self.n_class}) node with tags 'b,f', got "
                             f"{mask.shape} {mask.tags}")
            if ok and pred.hastag("b") and None not in (mask["b"], pred["b"]):
                self.shape_check(mask["b"] == pred["b"], f"{key} has batch size {mask['b']}, the prediction "
                                                         f"{pred['b']}")
        return pred.updateshape("f", 1)

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        logits, target, rest = inputs[0], inputs[1], list(inputs[2:])
        cw = rest.pop(0) if self._cw_node else (self.params["class_weights"].variable
                                                 if "class_weights" in self.params else None)
        ew = rest.pop(0) if self.has_example_weights else None
        masks = {k: self.params[k].variable for k in ("mask_class_labeled", "mask_class_not_present")
                 if k in self.params}
        masks.update(zip(self._mask_nodes, rest))
        return F.multinoulli_nll(logits, target, n_indep=self.n_indep, target_is_sparse=self.target_is_sparse,
                                 class_weights=cw, example_weights=ew, ignore_label=self.ignore_label,
                                 focal_gamma=self.focal_gamma, **masks)


class BinaryNLL(Node):
    """Binary cross-entropy per element (ELEKTRONN2 ``BinaryNLL``; registered as ``bernoulli_nll``).

    Args:
        pred: Probabilities (e.g. a sigmoid layer or an input), or logits: when ``from_logits``
            is None it is True exactly if ``pred`` is a layer with ``activation_func='lin'`` (the
            stable choice for training).
        target: Targets in [0, 1] of ``pred``'s shape; negative values (e.g. -666) are unlabelled.
        subtract_label_entropy: Subtract the targets' entropy (KL divergence).
        class_weights: ``(w_negative, w_positive)``.
        example_weights: Node of per-voxel weights ``(b, spatial...)``.
        from_logits: See ``pred``.
        name: Node name.
        print_repr: Log the node description.
    """

    kind = "losses"

    def __init__(self, pred: Node, target: Node, subtract_label_entropy: bool = False, class_weights: Any = None,
                 example_weights: Node | None = None, from_logits: bool | None = None, name: str = "binary_nll",
                 print_repr: bool = True):
        parents = [pred, target] + ([example_weights] if example_weights is not None else [])
        super().__init__(parents, name, print_repr)
        act = str(getattr(pred, "activation_func", "")).strip().lower()
        linear = act in ("lin", "linear")
        if from_logits is None:
            from_logits = linear
        elif not from_logits and linear:
            raise ConfigError(f"BinaryNLL {name!r}: {pred.name!r} has a linear activation, so its outputs are "
                              "logits; drop from_logits=False.")
        if from_logits and (act in SIGMOID_NAMES or isinstance(pred, Softmax)):
            raise ConfigError(f"BinaryNLL {name!r}: {pred.name!r} already applies a sigmoid; its outputs are "
                              "probabilities, not logits.")
        self.from_logits = bool(from_logits)
        self.subtract_label_entropy = bool(subtract_label_entropy)
        self.class_weights = None if class_weights is None else tuple(float(w) for w in class_weights)
        if self.class_weights is not None and len(self.class_weights) != 2:
            raise ConfigError(f"BinaryNLL {name!r}: class_weights must be (w_negative, w_positive).")

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        pred, target = parent_shapes[:2]
        _check_same_grid(self, pred, target, "the target")
        self.shape_check(target["f"] == pred["f"] if target.hastag("f") else pred["f"] == 1,
                         f"the target must have the prediction's {pred['f']} feature(s)")
        return pred

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        ew = inputs[2] if len(inputs) > 2 else None
        target = inputs[1] if inputs[1].shape.rank == inputs[0].shape.rank else inputs[1][..., None]
        return F.bernoulli_nll(inputs[0], target, class_weights=self.class_weights, example_weights=ew,
                               subtract_label_entropy=self.subtract_label_entropy, from_logits=self.from_logits)


class GaussianNLL(Node):
    """Gaussian negative log-likelihood ``0.5 log 2π + log σ + 0.5 ((t-μ)/σ)²`` per element.

    Args:
        mu: Predicted means.
        sig: Predicted σ (e.g. a softplus layer), or log σ with ``sig_is_log=True`` (stable).
        target: Targets of ``mu``'s shape.
        sig_is_log: See ``sig``.
        ignore_value: Target value marking unlabelled elements (ELEKTRONN2 data: -666).
        name: Node name.
        print_repr: Log the node description.
    """

    kind = "losses"

    def __init__(self, mu: Node, sig: Node, target: Node, sig_is_log: bool = False,
                 ignore_value: float | None = None, name: str = "g_nll", print_repr: bool = True):
        super().__init__([mu, sig, target], name, print_repr)
        self.sig_is_log, self.ignore_value = bool(sig_is_log), ignore_value

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        mu, sig, target = parent_shapes
        for what, other in (("sig", sig), ("the target", target)):
            self.shape_check(other.shape == mu.shape, f"{what} has shape {other.shape}, mu has {mu.shape}")
        return mu

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        return F.gaussian_nll(*inputs, sig_is_log=self.sig_is_log, ignore_value=self.ignore_value)


class SquaredLoss(Node):
    """``0.5 * max(|t-p| - margin, 0)²`` per voxel, mean over features (ELEKTRONN2 ``SquaredLoss``).

    Args:
        pred: Prediction.
        target: Target of the same shape.
        margin: Deviations up to ``margin`` cost nothing (a live, non-trainable parameter).
        scale_correction: ``sc``: weights ``sc / (|t| + sc)`` (live parameter).
        ignore_value: Target value marking unlabelled elements (ELEKTRONN2 data: -666).
        name: Node name.
        print_repr: Log the node description.
    """

    kind = "losses"
    #: 2 for the squared deviation, 1 for the absolute one.
    power = 2

    def __init__(self, pred: Node, target: Node, margin: float | None = None, scale_correction: float | None = None,
                 ignore_value: float | None = None, name: str = "se", print_repr: bool = True):
        super().__init__([pred, target], name, print_repr)
        self.ignore_value = ignore_value
        _optional_param(self, "margin", margin)
        _optional_param(self, "scale_correction", scale_correction)

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        pred, target = parent_shapes
        self.shape_check(target.shape == pred.shape, f"the target has shape {target.shape}, the prediction "
                                                     f"{pred.shape}")
        return pred.updateshape("f", 1)

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        margin, sc = (self.params[k].variable if k in self.params else None for k in ("margin", "scale_correction"))
        kernel = F.squared_loss if self.power == 2 else F.abs_loss
        return kernel(inputs[0], inputs[1], margin=margin, scale_correction=sc, ignore_value=self.ignore_value)


class AbsLoss(SquaredLoss):
    """``max(|t-p| - margin, 0)`` per voxel, mean over features (ELEKTRONN2 ``AbsLoss``).

    ``scale_correction=sc`` multiplies by ``sc * |t| + 1`` (boosts large targets). Arguments as
    :class:`SquaredLoss`.
    """

    power = 1

    def __init__(self, pred: Node, target: Node, margin: float | None = None, scale_correction: float | None = None,
                 ignore_value: float | None = None, name: str = "absloss", print_repr: bool = True):
        super().__init__(pred, target, margin, scale_correction, ignore_value, name, print_repr)


class BetaNLL(Node):
    """Beta negative log-likelihood per element, by mode and concentration (ELEKTRONN2 ``BetaNLL``).

    ``α = m(k-2) + 1``, ``β = (1-m)(k-2) + 1`` and the value is ``-log Beta-pdf(t; α, β)``
    (``-scipy.stats.beta.logpdf``), see :func:`ekn_plugins.losses.functional.beta_nll`.

    Args:
        mode: Predicted modes ``m`` in (0, 1) (e.g. a sigmoid layer).
        concentration: Predicted concentrations ``k > 2`` (e.g. a layer with
            ``activation_func='concentration'``), ``mode``'s shape.
        target: Targets in (0, 1) of ``mode``'s shape (clipped to ``[1e-6, 1 - 1e-6]``).
        ignore_value: Target value marking unlabelled elements (e.g. -666).
        name: Node name.
        print_repr: Log the node description.

    Example:
        >>> import numpy as np
        >>> import ekn_core.neuromancer as nm
        >>> _ = nm.model_manager.newmodel("doc_beta_nll")
        >>> m = nm.Input((1, 1), 'b,f', name='m')
        >>> k = nm.Input((1, 1), 'b,f', name='k')
        >>> t = nm.Input((1, 1), 'b,f', name='t')
        >>> nll = BetaNLL(m, k, t)
        >>> one = np.ones((1, 1), 'float32')
        >>> round(float(nll(0.5 * one, 4 * one, 0.5 * one)[0, 0]), 6)  # -log(1.5): Beta(2, 2) at 0.5
        -0.405465
    """

    kind = "losses"

    def __init__(self, mode: Node, concentration: Node, target: Node, ignore_value: float | None = None,
                 name: str = "beta_nll", print_repr: bool = True):
        super().__init__([mode, concentration, target], name, print_repr)
        self.ignore_value = ignore_value

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        mode, conc, target = parent_shapes
        for what, other in (("concentration", conc), ("the target", target)):
            self.shape_check(other.shape == mode.shape, f"{what} has shape {other.shape}, mode has {mode.shape}")
        return mode

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        return F.beta_nll(*inputs, ignore_value=self.ignore_value)


class EuclideanDistance(Node):
    """Euclidean distance ``sqrt(Σ_f (t - p)²)`` per voxel (ELEKTRONN2 ``EuclideanDistance``).

    Voxels with a NaN in ``pred`` or ``target`` give 0 (ELEKTRONN2: NaN → 0) and, as in every ekn
    loss, count as unlabelled: the map is rescaled by ``n_voxels / n_labelled`` so its mean is the
    distance per labelled voxel. Output ``f = 1``.

    Args:
        pred: Prediction (e.g. a vector per voxel).
        target: Target of the same shape; NaN marks unlabelled voxels.
        name: Node name.
        print_repr: Log the node description.

    Example:
        >>> import numpy as np
        >>> import ekn_core.neuromancer as nm
        >>> _ = nm.model_manager.newmodel("doc_euclid")
        >>> p = nm.Input((2, 2), 'b,f', name='p')
        >>> t = nm.Input((2, 2), 'b,f', name='t')
        >>> d = EuclideanDistance(p, t)
        >>> d(np.zeros((2, 2), 'float32'), np.array([[3, 4], [np.nan, 1]], 'float32')).ravel().tolist()
        [10.0, 0.0]
    """

    kind = "losses"

    def __init__(self, pred: Node, target: Node, name: str = "euclidean_distance", print_repr: bool = True):
        super().__init__([pred, target], name, print_repr)

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        pred, target = parent_shapes
        self.shape_check(target.shape == pred.shape, f"the target has shape {target.shape}, the prediction "
                                                     f"{pred.shape}")
        return pred.updateshape("f", 1)

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        return F.euclidean_distance(inputs[0], inputs[1])


class CosineDistance(EuclideanDistance):
    """Cosine distance ``1 - p·t / (|p| |t|)`` per voxel, in [0, 2]: compares directions only,
    e.g. a tracing agent's predicted step direction with the unit target (see
    :func:`ekn_plugins.losses.functional.cosine_distance`). A voxel with a NaN in ``pred`` or
    ``target`` is unlabelled. Output ``f = 1``; arguments as :class:`EuclideanDistance` (the
    length of the prediction does not matter).

    Example:
        >>> import numpy as np
        >>> import ekn_core.neuromancer as nm
        >>> _ = nm.model_manager.newmodel("doc_cosine")
        >>> p, t = nm.Input((2, 3), 'b,f', name='p'), nm.Input((2, 3), 'b,f', name='t')
        >>> d = CosineDistance(p, t)
        >>> d(np.array([[0, 5, 0], [1, 0, 0]], 'float32'), np.array([[0, 1, 0], [0, 1, 0]], 'float32')).ravel().tolist()
        [0.0, 1.0]
    """

    def __init__(self, pred: Node, target: Node, name: str = "cosine_distance", print_repr: bool = True):
        super().__init__(pred, target, name, print_repr)

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        return F.cosine_distance(inputs[0], inputs[1])


class RampLoss(Node):
    """Ramp (hinge) loss ``max(d_low - d_big + margin, 0)``, mean over features (ELEKTRONN2
    ``RampLoss``): pushes ``d_low`` below ``d_big`` by at least ``margin``.

    Args:
        d_low: Values that should be the smaller ones (e.g. distances to positives).
        d_big: Values that should be larger by ``margin``, ``d_low``'s shape.
        margin: A live, non-trainable parameter; ``None`` (ELEKTRONN2's default) means 0.
        name: Node name.
        print_repr: Log the node description.

    ELEKTRONN2's signature had ``name`` and ``print_repr`` before ``margin``; pass ``margin`` by
    keyword.

    Example:
        >>> import numpy as np
        >>> import ekn_core.neuromancer as nm
        >>> _ = nm.model_manager.newmodel("doc_ramp")
        >>> lo = nm.Input((1, 2), 'b,f', name='lo')
        >>> hi = nm.Input((1, 2), 'b,f', name='hi')
        >>> ramp = RampLoss(lo, hi, margin=0.5)
        >>> float(ramp(np.array([[1, 0]], 'float32'), np.array([[0.5, 2]], 'float32'))[0, 0])
        0.5
    """

    kind = "losses"

    def __init__(self, d_low: Node, d_big: Node, margin: float | None = None, name: str = "ramp_loss",
                 print_repr: bool = True):
        super().__init__([d_low, d_big], name, print_repr)
        _optional_param(self, "margin", margin)

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        low, big = parent_shapes
        self.shape_check(big.shape == low.shape, f"d_big has shape {big.shape}, d_low {low.shape}")
        return low.updateshape("f", 1)

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        margin = self.params["margin"].variable if "margin" in self.params else None
        return F.ramp_loss(inputs[0], inputs[1], margin=margin)


def SobelizedLoss(pred: Node, target: Node, loss_type: str = "abs",  # noqa: N802  (ELEKTRONN2 name)
                  loss_kwargs: dict[str, Any] | None = None) -> Node:
    """Loss between the Sobel gradients of ``pred`` and ``target`` (ELEKTRONN2 ``SobelizedLoss``).

    Both go through a ``conv`` layer with constant (non-trainable, saved) Sobel weights, zero
    ``'same'`` padding and no bias: for each feature and each spatial axis ``a`` one output feature,
    ``scipy.ndimage.sobel(x, axis=a, mode='constant')`` (see
    :func:`ekn_plugins.losses.functional.sobel_kernel`). The result is an :class:`AbsLoss` (or
    :class:`SquaredLoss`) of the two. Only registered nodes are built, so models using it save
    and load like any other.

    Args:
        pred: Prediction with tags ``b``, ``f`` and 1-3 spatial axes.
        target: Target of the same shape (float).
        loss_type: ``'abs'`` (AbsLoss) or ``'squared'`` (SquaredLoss).
        loss_kwargs: Keyword arguments of the loss node (``margin``, ``scale_correction``,
            ``ignore_value``, ``name``).

    Returns:
        The loss node.

    Example:
        >>> import numpy as np
        >>> import ekn_core.neuromancer as nm
        >>> _ = nm.model_manager.newmodel("doc_sobel")
        >>> p = nm.Input((1, 1, 3, 3), 'b,f,x,y', name='p')
        >>> t = nm.Input((1, 1, 3, 3), 'b,f,x,y', name='t')
        >>> loss = SobelizedLoss(p, t)
        >>> ramp = np.arange(3, dtype='float32')[None, None, :, None] * np.ones((1, 1, 3, 3), 'float32')
        >>> float(loss(ramp, ramp).max()), loss.shape.shape
        (0.0, (1, 1, 3, 3))
    """
    from ekn_core.plugins import registry

    losses = {"abs": "abs_loss", "squared": "squared_loss"}
    if loss_type not in losses:
        raise ConfigError(f"SobelizedLoss: loss_type must be one of {sorted(losses)}, got {loss_type!r}")
    kwargs = dict(loss_kwargs or {})
    pred_shape, target_shape = pred.shape, target.shape
    if target_shape.shape != pred_shape.shape or target_shape.tags != pred_shape.tags:
        raise ShapeError(f"SobelizedLoss: the target has shape {target_shape.shape} {target_shape.tags}, the "
                         f"prediction {pred_shape.shape} {pred_shape.tags}")
    if not pred_shape.hastag("f"):
        raise ShapeError(f"SobelizedLoss: the prediction needs an 'f' axis, got tags {pred_shape.tags}")
    n_f, n_dim = pred_shape["f"], pred_shape.ndim
    kernel = F.sobel_kernel(n_dim)  # (3,)*n_dim + (n_dim,)
    w = np.zeros((3,) * n_dim + (n_f, n_f * n_dim), "float32")
    for i in range(n_f):
        w[..., i, i * n_dim:(i + 1) * n_dim] = kernel
    b = np.zeros(n_f * n_dim, "float32")
    conv = registry("layers").get("conv")
    sobel = [conv(node, n_f * n_dim, (3,) * n_dim, conv_mode="same", activation_func="lin",
                  w=[w.copy(), "const"], b=[b.copy(), "const"], name=f"sobel_{what}", print_repr=False)
             for what, node in (("pred", pred), ("target", target))]
    return registry("losses").get(losses[loss_type])(sobel[0], sobel[1], **kwargs)


class SoftDice(ChecksClassIds, Node):
    """Soft Dice loss of a :class:`Softmax` prediction, averaged over classes (and groups).

    Args:
        pred: A Softmax node.
        target: Sparse ids or one-hot, as :class:`MultinoulliNLL`.
        target_is_sparse: Whether ``target`` holds class ids.
        class_weights: Weights of the per-class losses (weighted mean).
        ignore_label: A class id to ignore besides negative ids.
        smooth: Added to numerator and denominator.
        per_example: One loss per example, output ``(b, 1)``; else one for the batch, ``(1,)``.
        name: Node name.
        print_repr: Log the node description.
    """

    kind = "losses"

    def __init__(self, pred: Node, target: Node, target_is_sparse: bool = False, class_weights: Any = None,
                 ignore_label: int | None = None, smooth: float = 1.0, per_example: bool = False, name: str = "dice",
                 print_repr: bool = True):
        softmax = _check_softmax(pred, f"SoftDice {name!r}")
        super().__init__([softmax, target], name, print_repr)
        self.n_class, self.n_indep = softmax.n_class, softmax.n_indep
        self.target_is_sparse, self.ignore_label = bool(target_is_sparse), ignore_label
        self.smooth, self.per_example = float(smooth), bool(per_example)
        self.class_weights = None if class_weights is None else [float(w) for w in np.ravel(class_weights)]

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        pred, target = parent_shapes
        _check_same_grid(self, pred, target, "the target")
        if self.per_example:
            return TaggedShape((pred["b"] if pred.hastag("b") else 1, 1), "b,f")
        return TaggedShape((1,), "f")

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        loss = F.soft_dice(inputs[0], inputs[1], n_indep=self.n_indep, target_is_sparse=self.target_is_sparse,
                           class_weights=self.class_weights, ignore_label=self.ignore_label, smooth=self.smooth,
                           per_example=self.per_example)
        return tf.reshape(loss, [-1, 1] if self.per_example else [1])


class AggregateLoss(Node):
    """Scalar objective: ``mean_i(mixing_weights[i] * mean(component_i))`` (ELEKTRONN2 semantics).

    Args:
        parent_nodes: One loss node or a list of them.
        mixing_weights: One weight per component (default all 1); a non-trainable parameter
            ``mixing_weights``, changeable at run time through ``model.mixing`` (no retrace) and
            schedulable as ``schedules = {'mixing': ...}``.
        name: Node name.
        print_repr: Log the node description.
    """

    kind = "losses"

    def __init__(self, parent_nodes: Node | Sequence[Node], mixing_weights: Sequence[float] | None = None,
                 name: str = "total_loss", print_repr: bool = True):
        parents = [parent_nodes] if isinstance(parent_nodes, Node) else list(parent_nodes)
        super().__init__(parents, name, print_repr)
        weights = np.ones(len(parents)) if mixing_weights is None else np.asarray(mixing_weights, float).ravel()
        if weights.size != len(parents):
            raise ConfigError(f"AggregateLoss {name!r}: {len(parents)} components but {weights.size} mixing weights.")
        self.add_param("mixing_weights", weights.astype("float32"), trainable=False)

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        return TaggedShape((1,), "f")

    def _compute_cost(self) -> float:
        return float(sum(p.shape.stripnone_prod for p in self.parents))

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        means = tf.stack([tf.reduce_mean(tf.cast(x, tf.float32)) for x in inputs])
        return tf.reshape(tf.reduce_mean(means * self.params["mixing_weights"].variable), [1])
