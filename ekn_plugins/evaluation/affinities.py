"""What ``ekn evaluate`` needs to judge an affinity net (MALIS or any net whose channels are
affinities): its neighbourhood, the channels that hold P(connected), and the true affinity graph
of ground-truth ids with its unlabelled edges.

Conventions (the same as training, :class:`~ekn_plugins.data.patches.PatchSource` with
``affinities=``): channel ``e`` (sigmoid) or the pair ``2e, 2e + 1`` (2-class softmax,
``MalisNLL``'s order: disconnected, connected) is the edge between voxel ``p`` and
``p + nhood[e]``; the true affinity is :func:`~ekn_plugins.malis.seg_to_affgraph` of the ids (1
where both voxels have the same non-zero id, so edges touching id 0 are negative). An edge is
unlabelled when its second voxel lies outside the ids, or when a voxel of it has the id
``ignore_label``. Offsets are in the order of the volume's axes ``(z, y, x)``; a 2-D net's
``(y, x)`` offsets get a zero ``z`` (it predicts slice by slice).

Nothing here imports numpy at module level: ``ekn evaluate --help`` lists :data:`NHOODS` without it.

Example:
    >>> import numpy as np
    >>> resolve_nhood(None, None)[0].tolist(), resolve_nhood(None, "2d")[0].tolist()
    ([[-1, 0, 0], [0, -1, 0], [0, 0, -1]], [[0, -1, 0], [0, 0, -1]])
    >>> connected_channels(3, 3), connected_channels(6, 3)
    (slice(0, 3, None), slice(1, 6, 2))
    >>> ids = np.array([[[1, 1, 2, 0]]])                        # (z, y, x)
    >>> affinity_labels(ids, np.array([[0, 0, -1]]))[0].tolist()  # edges to the left neighbour
    [[[-1, 1, 0, 0]]]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ekn_core.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

#: The ``--nhood`` choices. ``3d`` is the default, the one ``PatchSource`` uses for 3-D patches.
NHOODS = {"3d": "mknhood3d(1): the edges to the previous voxel in z, y and x (3 edges)",
          "2d": "mknhood2d(1): a 2-D net's edges to the previous voxel in y and x (2 edges, per slice)",
          "3d-aniso": "mknhood3d_aniso(1, 1.8): mknhood3d(1) and the edges to the previous slice at every "
                      "in-plane offset up to 1.8 (11 edges)"}
DEFAULT_NHOOD = "3d"
#: The ``--segmenter`` choices for affinities (the ``kind`` of their parameter classes in
#: :mod:`~ekn_plugins.evaluation.segmentation` and :mod:`~ekn_plugins.evaluation.agglomeration`).
#: ``affinity`` is the default.
AFFINITY_SEGMENTERS = {
    "affinity": "connected components of the edges above a threshold (AffinityParams)",
    "waterz": "fragments of an affinity watershed merged by mean (or quantile) affinity up to a threshold, by waterz; "
              "needs the edges to the previous voxel along z, y and x (WaterzParams)",
    "mutex": "mutex watershed of every edge of the nhood, long-range ones included, by mwatershed (MutexParams)"}
DEFAULT_AFFINITY_SEGMENTER = "affinity"


def as_volume_nhood(nhood: Any) -> np.ndarray:
    """``(n_edges, 3)`` int64 offsets; ``(n_edges, 2)`` ones (a 2-D net's) get a zero ``z``.

    Raises:
        ConfigError: Not a non-empty ``(n_edges, 2 or 3)`` integer array without zero offsets.
    """
    import numpy as np

    try:
        nh = np.asarray(nhood)
        ok = nh.ndim == 2 and nh.shape[1] in (2, 3) and len(nh) > 0 and np.array_equal(nh, nh.astype(np.int64))
    except (TypeError, ValueError):
        ok = False
    if not ok or not np.abs(nh).sum(axis=1).all():
        raise ConfigError(f"nhood must be non-empty (n_edges, 3) offsets (z, y, x) (or (n_edges, 2) of a 2-D net), "
                          f"none of them 0, got {nhood!r}")
    nh = nh.astype(np.int64)
    return np.concatenate([np.zeros((len(nh), 1), np.int64), nh], axis=1) if nh.shape[1] == 2 else nh


def nhood_tuple(nhood: Any) -> tuple[tuple[int, int, int], ...]:
    """The offsets as a tuple of ``(z, y, x)`` int tuples (a frozen field of the affinity
    segmenters' parameters): :func:`as_volume_nhood` of ``nhood``, or the :data:`DEFAULT_NHOOD`
    for None.

    Example:
        >>> nhood_tuple(None), nhood_tuple([[0, -1]])
        (((-1, 0, 0), (0, -1, 0), (0, 0, -1)), ((0, 0, -1),))
    """
    nh = named_nhood(DEFAULT_NHOOD) if nhood is None else as_volume_nhood(nhood)
    return tuple(tuple(int(v) for v in row) for row in nh)


def named_nhood(name: str) -> np.ndarray:
    """The neighbourhood of a :data:`NHOODS` name."""
    from ekn_plugins.malis import mknhood2d, mknhood3d, mknhood3d_aniso

    makers = {"3d": lambda: mknhood3d(1), "2d": lambda: mknhood2d(1), "3d-aniso": lambda: mknhood3d_aniso(1, 1.8)}
    if name not in makers:
        raise ConfigError(f"nhood {name!r} is unknown; choose " + "; ".join(f"{k} ({d})" for k, d in NHOODS.items()))
    return as_volume_nhood(makers[name]())


def recorded_nhood(node: Any) -> np.ndarray | None:
    """The nhood of the affinity targets the net of ``node`` was trained on, as its model file records
    it (:mod:`ekn_core.training_data`, e.g. the patch source's ``affinities=``), as
    :func:`as_volume_nhood` offsets whose columns are the volume's axes in the order the net sees them
    (that of its input's spatial tags, as the prediction engine reads them); None without a record.

    Example:
        >>> from ekn_core.training_data import TrainingData
        >>> class Model: training_data = TrainingData(affinity_offsets=((-1, 0), (0, -3)), affinity_axes="xy")
        >>> class Shape: tags = ("b", "f", "y", "x")
        >>> class Input: shape = Shape()
        >>> class Node: model, input_nodes = Model(), [Input()]
        >>> recorded_nhood(Node()).tolist()                 # columns x, y in the net's order y, x; z = 0
        [[0, 0, -1], [0, -3, 0]]
    """
    import numpy as np

    from ekn_core.prediction.affinity_tta import in_net_order
    from ekn_core.training_data import training_data_of

    record = training_data_of(node)
    if record is None or record.affinity_offsets is None:
        return None
    order = [t for t in node.input_nodes[0].shape.tags if t in "zyx"]
    return as_volume_nhood(in_net_order(np.asarray(record.affinity_offsets, np.int64), record.affinity_axes, order))


def resolve_nhood(loss_node: Any, nhood: Any, recorded: Any = None) -> tuple[np.ndarray, str]:
    """The neighbourhood of the evaluated affinities and where it comes from.

    Args:
        loss_node: The model's affinity loss node (``affinity_loss = True``), or None. Its
            ``nhood`` (``MalisNLL``) is used when it has one.
        nhood: A :data:`NHOODS` name, an offset array, or None (the loss node's, else
            ``recorded``, else :data:`DEFAULT_NHOOD`).
        recorded: The nhood of the affinities the net was trained on, as its model file records
            it (:func:`recorded_nhood`), or None.

    Returns:
        ``(nhood (n_edges, 3), source)``.

    Raises:
        ConfigError: ``nhood`` contradicts the loss node's or the recorded one.
    """
    import numpy as np

    given = None if nhood is None else named_nhood(nhood) if isinstance(nhood, str) else as_volume_nhood(nhood)
    own = getattr(loss_node, "nhood", None)
    if own is not None:
        own, source = as_volume_nhood(own), f"{type(loss_node).__name__} node {loss_node.name!r}"
    elif recorded is not None:
        own, source = as_volume_nhood(recorded), "training targets recorded in the model file"
    if own is not None:
        if given is not None and not np.array_equal(given, own):
            raise ConfigError(f"nhood {given.tolist()} contradicts the nhood {own.tolist()} of the model's "
                              f"{source}; leave --nhood out")
        return own, source
    if given is not None:
        return given, f"nhood {nhood!r}" if isinstance(nhood, str) else "nhood given"
    return named_nhood(DEFAULT_NHOOD), f"default nhood {DEFAULT_NHOOD!r}"


def connected_channels(n_lab: int, n_edges: int) -> slice:
    """The channels of P(connected): one sigmoid channel per edge (``n_lab == n_edges``) or the
    second of a 2-class softmax per edge (``n_lab == 2 * n_edges``).

    Raises:
        ConfigError: ``n_lab`` fits neither.
    """
    if n_lab == n_edges:
        return slice(0, n_edges)
    if n_lab == 2 * n_edges:
        return slice(1, 2 * n_edges, 2)
    raise ConfigError(f"the prediction has {n_lab} channel(s), but affinities of a nhood of {n_edges} edges have "
                      f"{n_edges} (one sigmoid per edge) or {2 * n_edges} (a 2-class softmax per edge: "
                      "disconnected, connected); give the net's nhood (--nhood)")


def affinity_labels(ids: np.ndarray, nhood: np.ndarray, ignore_label: int | None = None) -> np.ndarray:
    """True affinities of an ids block ``(z, y, x)``: int16 ``(n_edges, z, y, x)``, 1 connected,
    0 not, -1 unlabelled (the second voxel outside the block, or a voxel with id ``ignore_label``).

    Read the ids with a halo of ``abs(nhood).max()`` voxels and crop the result, so that only the
    edges leaving the ids volume are unlabelled.
    """
    import numpy as np

    from ekn_plugins.malis import seg_to_affgraph

    ids = np.asarray(ids)
    labelled = np.ones(ids.shape, np.int8) if ignore_label is None else (ids != ignore_label).astype(np.int8)
    return np.where(seg_to_affgraph(labelled, nhood) == 1, seg_to_affgraph(ids, nhood), -1).astype(np.int16)
