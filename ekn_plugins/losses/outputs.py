"""Output and monitoring nodes: ``Softmax``, ``OneHot``, ``Classification`` and ``Errors``.

Example:
    >>> import numpy as np
    >>> from ekn_core.node import model_manager
    >>> from ekn_core.plugins import registry
    >>> _ = model_manager.newmodel("doc_outputs")
    >>> Input = registry("layers").get("input")
    >>> logits = Input((2, 4, 6), 'b,x,f')
    >>> sm = Softmax(logits, n_indep=2)
    >>> labels = Input((2, 4, 2), 'b,x,f', dtype='int16', name='labels')
    >>> err = Errors(sm, labels, target_is_sparse=True)
    >>> sm.n_class, err.shape.shape
    (3, (1,))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ekn_core.errors import ConfigError
from ekn_core.lazy import tf
from ekn_core.node import Node, added_constants, evaluate, value_sources
from ekn_core.shapes import TaggedShape
from ekn_plugins.losses import functional as F

SIGMOID_NAMES = ("sig", "logistic", "sigmoid")


def activation_of(node: Node) -> str:
    """The node's ``activation_func`` in lower case (``'lin'`` when it has none)."""
    return str(getattr(node, "activation_func", "lin")).strip().lower()


def fed_values(node: Node, feed: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The values ``node`` gets from the canonical arrays fed, computed on the host's CPU, when
    only nodes that move values lie between them (:func:`~ekn_core.node.value_sources`), e.g. one
    piece of a split target; else None (a node computes them, or a source is not fed).

    Example:
        >>> from ekn_core import neuromancer as nm
        >>> _ = nm.model_manager.newmodel("doc_fed_values")
        >>> lab = nm.Input((1, 3, 2, 2), 'b,f,x,y', dtype='int16', name='lab')
        >>> ids = np.arange(12, dtype='int16').reshape(1, 2, 2, 3)  # canonical: b,x,y,f
        >>> fed_values(nm.split(lab, 'f', index=2)[1], {'lab': ids}).ravel().tolist()
        [2, 5, 8, 11]
        >>> fed_values(nm.ApplyFunc(lab, 'neg'), {'lab': ids}) is None
        True
    """
    sources = value_sources(node)
    if not sources or any(s.name not in feed for s in sources):
        return None
    if node.is_source:
        return feed[node.name]
    with tf.device("/cpu:0"):
        return np.asarray(evaluate([node], {s.name: tf.constant(feed[s.name]) for s in sources}, training=False)[0])


class ChecksClassIds:
    """Mixin of nodes whose second parent is a target of class ids (attributes ``target_is_sparse``,
    ``n_class``, ``ignore_label``): its :meth:`~ekn_core.node.Node.check_feed` refuses ids
    ``>= n_class`` in the values that target gets from the arrays fed, also through nodes that only
    move values such as ``Crop`` or ``Split`` (:func:`fed_values`,
    :func:`~ekn_plugins.losses.functional.check_class_ids`): each head of a split target is checked
    against its own classes. A ``Pad`` of the target with such an id is named as the cause
    (:func:`~ekn_core.node.added_constants`)."""

    name: str
    parents: list[Node]
    target_is_sparse: bool
    n_class: int
    ignore_label: int | None

    def check_feed(self, feed: Mapping[str, np.ndarray]) -> None:
        if not self.target_is_sparse:
            return
        target = self.parents[1]
        sources = value_sources(target)
        if not sources or any(s.name not in feed for s in sources):  # computed values: the loss's own check
            return
        for name, value in added_constants(target).items():
            F.check_class_ids(np.array([value]), self.n_class, self.ignore_label,
                              f"{type(self).__name__} {self.name!r}: its target {target.name!r} (padded with "
                              f"{value:g} by {name!r}; pad a target with an id < n_class, a negative id or the ignore_label)")
        owner = (f"{type(self).__name__} {self.name!r}: its target {target.name!r}"
                 + ("" if target.is_source else f" (fed as {', '.join(repr(s.name) for s in sources)})"))
        try:  # the fed arrays hold every value the target gets: a cheap check for each step
            for source in sources:
                F.check_class_ids(feed[source.name], self.n_class, self.ignore_label, owner)
        except ConfigError:  # only the values the target gets count (one head of a split target)
            F.check_class_ids(fed_values(target, feed), self.n_class, self.ignore_label, owner)


def class_layout(pred: Node, n_class: int | str, n_indep: int | str) -> tuple[int, int, float | None]:
    """``(n_class, n_indep, threshold)`` of a prediction node, as ELEKTRONN2's ``Classification``.

    A :class:`Softmax` gives its groups; a sigmoid output gives ``n_indep = f`` binary tasks
    (threshold 0.5); anything else needs ``n_class`` and ``n_indep`` explicitly.
    """
    if isinstance(pred, Softmax):
        return pred.n_class, pred.n_indep, None
    if activation_of(pred) in SIGMOID_NAMES:
        return 2, int(pred.shape["f"]), 0.5
    if n_class == "auto" or n_indep == "auto":
        raise ConfigError(f"cannot infer the classes of {pred.name!r} (neither a Softmax nor a sigmoid output): "
                          "pass n_class and n_indep.")
    return int(n_class), int(n_indep), None


class Softmax(Node):
    """Softmax over the features, or over ``n_indep`` consecutive groups of ``n_class`` features.

    The parent must have a linear activation. Loss nodes given a Softmax read its parent (the
    logits) and use a fused log-softmax, which is exact for any logits.

    Args:
        parent: Node with ``f = n_class * n_indep`` features.
        n_class: Classes per group, or ``'auto'`` (``f // n_indep``).
        n_indep: Number of independent softmax groups (e.g. one per affinity channel).
        name: Node name.
        print_repr: Log the node description.
    """

    kind = "losses"

    def __init__(self, parent: Node, n_class: int | str = "auto", n_indep: int = 1, name: str = "softmax",
                 print_repr: bool = True):
        super().__init__(parent, name, print_repr)
        if activation_of(parent) not in ("lin", "linear"):
            raise ConfigError(f"the parent of Softmax {name!r} must have a linear activation, "
                              f"{parent.name!r} has {activation_of(parent)!r}; build it with activation_func='lin'.")
        if not isinstance(n_indep, int) or n_indep < 1:
            raise ConfigError(f"Softmax {name!r}: n_indep must be a positive integer, got {n_indep!r}.")
        self.n_indep = n_indep
        self.n_class = parent.shape["f"] // n_indep if n_class == "auto" else n_class

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        n_f = parent_shapes[0]["f"]
        self.shape_check(self.n_class * self.n_indep == n_f,
                         f"cannot make {self.n_indep} softmax group(s) of {self.n_class} classes from {n_f} features")
        return parent_shapes[0]

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        return F.softmax(inputs[0], self.n_indep)

    def _repr_extras(self) -> str:
        return f"n_class={self.n_class} n_indep={self.n_indep}"


class OneHot(Node):
    """One-hot encoding of sparse class ids: ``f = n_indep`` ids → ``n_indep * n_class`` features.

    Ids < 0 give all-zero rows (unlabelled).

    Args:
        target: Node of class ids.
        n_class: Number of classes.
        name: Node name.
        print_repr: Log the node description.
    """

    kind = "losses"

    def __init__(self, target: Node, n_class: int, name: str = "onehot", print_repr: bool = True):
        super().__init__(target, name, print_repr)
        self.n_class = int(n_class)

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        return parent_shapes[0].updateshape("f", self.n_class, mode="mult")

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        return F.one_hot(inputs[0], self.n_class)


class Classification(Node):
    """Predicted class ids, ``f = n_indep``: argmax per softmax group, or ``p > 0.5`` for sigmoids.

    Args:
        pred: A :class:`Softmax`, a sigmoid output, or any probability node (then give
            ``n_class`` and ``n_indep``).
        n_class: Classes per group or ``'auto'``.
        n_indep: Number of groups or ``'auto'``.
        name: Node name.
        print_repr: Log the node description.
    """

    kind = "losses"

    def __init__(self, pred: Node, n_class: int | str = "auto", n_indep: int | str = "auto", name: str = "cls",
                 print_repr: bool = True):
        super().__init__(pred, name, print_repr)
        self.n_class, self.n_indep, self.threshold = class_layout(pred, n_class, n_indep)

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        return parent_shapes[0].updateshape("f", self.n_indep)

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        return F.classify(inputs[0], self.n_indep, self.threshold)


class Errors(ChecksClassIds, Node):
    """Classification error rate over labelled voxels, shape ``(1,)``.

    Unlike ELEKTRONN2, unlabelled voxels (negative ids, all-zero one-hot rows, ``ignore_label``)
    are not counted.

    Args:
        pred: A :class:`Classification` node, or a prediction as accepted by it.
        target: Sparse ids (``f = n_indep``) or one-hot targets.
        target_is_sparse: Whether ``target`` holds class ids.
        n_class, n_indep: As :class:`Classification` (when ``pred`` is not one).
        ignore_label: A class id to ignore besides negative ids.
        name: Node name.
        print_repr: Log the node description.
    """

    kind = "losses"

    def __init__(self, pred: Node, target: Node, target_is_sparse: bool = False, n_class: int | str = "auto",
                 n_indep: int | str = "auto", ignore_label: int | None = None, name: str = "errors",
                 print_repr: bool = True):
        super().__init__([pred, target], name, print_repr)
        if isinstance(pred, Classification):
            self.n_class, self.n_indep, self.threshold = pred.n_class, pred.n_indep, pred.threshold
        else:
            self.n_class, self.n_indep, self.threshold = class_layout(pred, n_class, n_indep)
        self.target_is_sparse, self.ignore_label = bool(target_is_sparse), ignore_label

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        return TaggedShape((1,), "f")

    def _compute_cost(self) -> float:
        return float(self.parents[1].shape.stripnone_prod)

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        pred, target = inputs
        cls = pred if isinstance(self.parents[0], Classification) else F.classify(pred, self.n_indep, self.threshold)
        if self.threshold is not None and not self.target_is_sparse:
            ids = F.target_ids(target, 2, 1, target_is_sparse=True, ignore_label=self.ignore_label)
            ids = tf.where(ids >= 0, tf.cast(tf.cast(target, tf.float32) > self.threshold, tf.int64), ids)
        else:
            ids = F.target_ids(target, self.n_class, self.n_indep, self.target_is_sparse, self.ignore_label)
        return tf.reshape(F.classification_error(cls, ids), [1])
