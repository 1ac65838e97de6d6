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

from ekn_core.errors import ConfigError
from ekn_core.lazy import tf
from ekn_core.node import Node
from ekn_core.shapes import TaggedShape
from ekn_plugins.losses import functional as F
from ekn_plugins.losses.outputs import SIGMOID_NAMES, Softmax


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


class MultinoulliNLL(Node):
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
        name: Node name.
        print_repr: Log the node description.
    """

    kind = "losses"

    def __init__(self, pred: Node, target: Node, target_is_sparse: bool = False, class_weights: Any = None,
                 example_weights: Node | None = None, ignore_label: int | None = None, focal_gamma: float = 0.0,
                 name: str = "nll", print_repr: bool = True):
        if not float(focal_gamma) >= 0:
            raise ConfigError(f"MultinoulliNLL {name!r}: focal_gamma must be >= 0, got {focal_gamma!r}")
        softmax = _check_softmax(pred, f"MultinoulliNLL {name!r}")
        parents = [softmax.parents[0], target]
        self._cw_node = isinstance(class_weights, Node)
        if self._cw_node:
            parents.append(class_weights)
        if example_weights is not None:
            parents.append(example_weights)
        super().__init__(parents, name, print_repr)
        self.n_class, self.n_indep = softmax.n_class, softmax.n_indep
        self.target_is_sparse, self.ignore_label = bool(target_is_sparse), ignore_label
        self.focal_gamma = float(focal_gamma)
        self.has_example_weights = example_weights is not None
        if class_weights is not None and not self._cw_node:
            self.add_param("class_weights", np.asarray(class_weights, "float32").ravel(), trainable=False)

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        pred, target = parent_shapes[:2]
        _check_same_grid(self, pred, target, "the target")
        want = self.n_indep if self.target_is_sparse else pred["f"]
        got = target["f"] if target.hastag("f") else 1
        self.shape_check(got == want, f"the target has {got} feature(s), expected {want} "
                                      f"({'one class id per group' if self.target_is_sparse else 'one-hot'})")
        return pred.updateshape("f", 1)

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        logits, target, rest = inputs[0], inputs[1], list(inputs[2:])
        cw = rest.pop(0) if self._cw_node else (self.params["class_weights"].variable
                                                 if "class_weights" in self.params else None)
        ew = rest.pop(0) if self.has_example_weights else None
        return F.multinoulli_nll(logits, target, n_indep=self.n_indep, target_is_sparse=self.target_is_sparse,
                                 class_weights=cw, example_weights=ew, ignore_label=self.ignore_label,
                                 focal_gamma=self.focal_gamma)


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


class SoftDice(Node):
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
