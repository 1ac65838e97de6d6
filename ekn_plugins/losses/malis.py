"""``MalisNLL``: the MALIS loss of an affinity prediction (ELEKTRONN2 ``MalisNLL``).

The MALIS weights (:func:`ekn_plugins.malis.malis_weights`) are computed on the CPU by
``tf.numpy_function`` in every step; no gradient flows through them. The node therefore cannot be
XLA-compiled (``xla_compatible = False``): a function that contains it runs with plain
``tf.function`` where XLA was chosen (logged once at INFO level).

Example:
    >>> import numpy as np
    >>> from ekn_core.node import model_manager
    >>> from ekn_core.plugins import registry
    >>> from ekn_plugins.losses.outputs import Softmax
    >>> from ekn_plugins.malis import mknhood2d, seg_to_affgraph
    >>> _ = model_manager.newmodel("doc_malis")
    >>> Input = registry("layers").get("input")
    >>> logits = Input((1, 4, 3, 3), 'b,f,x,y', name='logits')      # 2 edges x (neg, pos)
    >>> aff_gt = Input((1, 2, 3, 3), 'b,f,x,y', dtype='int16', name='aff_gt')
    >>> seg_gt = Input((1, 1, 3, 3), 'b,f,x,y', dtype='int32', name='seg_gt')
    >>> loss = MalisNLL(Softmax(logits, n_indep=2), aff_gt, seg_gt, mknhood2d(1))
    >>> seg = np.array([[1, 1, 0], [1, 0, 2], [0, 2, 2]], 'int32')
    >>> aff = seg_to_affgraph(seg, mknhood2d(1))
    >>> value = loss(np.zeros((1, 4, 3, 3), 'float32'), aff[None], seg[None, None])
    >>> value.shape, round(float(value.mean()), 6)                  # all p = 0.5: log 2 per pair
    ((1, 1, 3, 3), 0.693147)
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ekn_core.errors import ConfigError
from ekn_core.lazy import tf
from ekn_core.node import Node
from ekn_core.shapes import TaggedShape
from ekn_plugins.losses import functional as F
from ekn_plugins.losses.nodes import _check_same_grid, _check_softmax


def _batch_weights(aff: np.ndarray, aff_gt: np.ndarray, seg: np.ndarray, nhood: np.ndarray,
                   unrestrict_neg: bool) -> tuple[np.ndarray, np.ndarray]:
    """Channels-last batch ``(b, *spatial, n_edges)`` → float32 ``(pos, neg)`` of the same shape."""
    from ekn_plugins.malis.weights import malis_weights

    pos, neg = np.zeros(aff.shape, np.float32), np.zeros(aff.shape, np.float32)
    if seg.ndim == aff.ndim:
        seg = seg[..., 0]
    for i in range(aff.shape[0]):
        p, n = malis_weights(np.moveaxis(aff[i], -1, 0), np.moveaxis(aff_gt[i], -1, 0), seg[i], nhood,
                             unrestrict_neg=unrestrict_neg)
        pos[i], neg[i] = np.moveaxis(p, 0, -1), np.moveaxis(n, 0, -1)
    return pos, neg


class MalisNLL(Node):
    """MALIS loss of affinities predicted as 2-class softmax pairs (ELEKTRONN2 ``MalisNLL``).

    Per voxel and edge ``e``: ``-(w_pos·pos_e·log p_e + w_neg·neg_e·log(1 - p_e))·ew``, summed
    over the edges, where ``p_e`` is the predicted probability that the edge connects and
    ``pos_e``/``neg_e`` are the MALIS pair counts of :func:`ekn_plugins.malis.malis_weights`
    (constrained positive pass). The map (``f = 1``) is multiplied by
    ``n_voxels / max(Σpos + Σneg, 1)``, so its mean is the NLL per voxel pair. The log
    probabilities come from the Softmax's logits (fused log-softmax; ELEKTRONN2 used
    ``log(p + 1e-6)``). Any batch size works (ELEKTRONN2: 1); every example gets its own weights.

    Args:
        pred: ``Softmax(logits, n_indep=n_edges)`` with 2 classes per edge, in ELEKTRONN2's
            order ``(edge0 disconnected, edge0 connected, edge1 disconnected, ...)``.
        aff_gt: True affinities, ``f = n_edges`` (``seg_to_affgraph`` layout per example).
        seg_gt: True ids, ``f = 1`` or no ``f`` axis; 0 is background.
        nhood: ``(n_edges, n_spatial_axes)`` offsets (e.g. ``mknhood3d(1)``), in the spatial axis
            order of ``pred``'s canonical layout (``z, y, x`` / ``z, x, y`` as the tags list them).
        unrestrict_neg: Negative pass on the predictions alone (True, ELEKTRONN2's default here)
            or on ``max(pred, gt)``.
        class_weights: ``(w_neg, w_pos)``, weights of the disconnect and connect terms (saved as
            a non-trainable parameter). ELEKTRONN2 multiplied both counts by one weight tensor.
        example_weights: Node of per-voxel weights ``(b, spatial...)``.
        name: Node name.
        print_repr: Log the node description.

    Extra outputs: ELEKTRONN2 attached ``rand_index``, ``false_splits`` and ``false_merges`` to
    the node. ekn nodes have one output; compute them from a prediction with
    :func:`ekn_plugins.malis.malis_errors` (and :func:`ekn_plugins.malis.rand_index` for a
    segmentation).
    """

    kind = "losses"
    xla_compatible = False
    affinity_loss = True  # its prediction is an affinity graph (TTA, evaluation: see affinity_offsets)

    def __init__(self, pred: Node, aff_gt: Node, seg_gt: Node, nhood: Any, unrestrict_neg: bool = True,
                 class_weights: Sequence[float] | None = None, example_weights: Node | None = None,
                 name: str = "nll", print_repr: bool = True):
        softmax = _check_softmax(pred, f"MalisNLL {name!r}")
        if softmax.n_class != 2:
            raise ConfigError(f"MalisNLL {name!r}: the Softmax must have 2 classes per edge (disconnected, "
                              f"connected), {softmax.name!r} has {softmax.n_class}.")
        parents = [softmax.parents[0], aff_gt, seg_gt] + ([example_weights] if example_weights is not None else [])
        super().__init__(parents, name, print_repr)
        self.n_edges = softmax.n_indep
        self.nhood = np.asarray(nhood, dtype=np.int64)
        if self.nhood.ndim != 2 or self.nhood.shape[0] != self.n_edges:
            raise ConfigError(f"MalisNLL {name!r}: nhood must have shape ({self.n_edges}, n_spatial_axes) for "
                              f"{self.n_edges} edges, got {self.nhood.shape}.")
        self.unrestrict_neg = bool(unrestrict_neg)
        self.has_example_weights = example_weights is not None
        if class_weights is not None:
            cw = np.asarray(class_weights, "float32").ravel()
            if cw.size != 2:
                raise ConfigError(f"MalisNLL {name!r}: class_weights must be (w_neg, w_pos), got {class_weights!r}")
            self.add_param("class_weights", cw, trainable=False)

    def affinity_offsets(self) -> np.ndarray:
        """The edge offset of every channel of the prediction, ``(2 * n_edges, n_spatial_axes)``
        (``nhood``'s rows twice: disconnected, connected), in the spatial order of the node's tags:
        test-time augmentation restores the channels with it (:mod:`ekn_core.prediction.affinity_tta`).
        """
        return np.repeat(self.nhood, 2, axis=0)

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        pred, aff_gt, seg_gt = parent_shapes[:3]
        _check_same_grid(self, pred, aff_gt, "aff_gt")
        _check_same_grid(self, pred, seg_gt, "seg_gt")
        self.shape_check(aff_gt.hastag("f") and aff_gt["f"] == self.n_edges,
                         f"aff_gt must have f = {self.n_edges} (one channel per edge)")
        self.shape_check(not seg_gt.hastag("f") or seg_gt["f"] == 1, "seg_gt must have f = 1 or no f axis")
        self.shape_check(self.nhood.shape[1] == len(pred.spatial_shape),
                         f"nhood has {self.nhood.shape[1]} coordinates, the prediction {len(pred.spatial_shape)} "
                         "spatial axes")
        return pred.updateshape("f", 1)

    def _weights(self, aff: np.ndarray, aff_gt: np.ndarray, seg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _batch_weights(aff, aff_gt, seg, self.nhood, self.unrestrict_neg)

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        logits = tf.cast(inputs[0], tf.float32)
        logp = F.log_softmax(logits, n_indep=self.n_edges)
        logp_neg, logp_pos = logp[..., 0::2], logp[..., 1::2]
        aff = tf.stop_gradient(tf.exp(logp_pos))
        pos, neg = tf.numpy_function(self._weights, [aff, inputs[1], inputs[2]], [tf.float32, tf.float32],
                                     stateful=False, name="malis_weights")
        pos.set_shape(aff.shape)
        neg.set_shape(aff.shape)
        w_pos, w_neg = pos, neg
        if "class_weights" in self.params:
            cw = self.params["class_weights"].variable
            w_neg, w_pos = neg * cw[0], pos * cw[1]
        loss = -tf.reduce_sum(w_pos * logp_pos + w_neg * logp_neg, axis=-1, keepdims=True)
        if self.has_example_weights:
            loss = loss * F._voxel_weights(inputs[3], loss)
        n_voxels = tf.cast(tf.size(loss), tf.float32)
        return loss * (n_voxels / tf.maximum(tf.reduce_sum(pos) + tf.reduce_sum(neg), 1.0))
