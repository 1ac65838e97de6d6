"""MALIS (Turaga et al., 2009; ELEKTRONN2 ``elektronn2.malis``) without a compiled extension.

* :mod:`~ekn_plugins.malis.nhood`: neighbourhoods ``mknhood2d``, ``mknhood3d``, ``mknhood3d_aniso``;
* :mod:`~ekn_plugins.malis.affgraph`: ``seg_to_affgraph``, ``affgraph_to_seg``, ``nodelist_from_shape``;
* :mod:`~ekn_plugins.malis.metrics`: ``rand_index`` and ``pair_counts`` (false splits / merges,
  adapted Rand error) and
  ELEKTRONN2's ``compute_V_rand_N2``;
* :mod:`~ekn_plugins.malis.weights`: ``malis_weights`` (maximin edge counts, Kruskal + union-find,
  numba-compiled on first use) and ``malis_errors``.

The loss node is :class:`ekn_plugins.losses.malis.MalisNLL` (``nm.MalisNLL``). Nothing here
imports TensorFlow.

Affinity graphs have ELEKTRONN2's layout ``(n_edges, *spatial)``: ``aff[e, p]`` is the edge between
voxel ``p`` and voxel ``p + nhood[e]``; edges that leave the volume are 0 and never used.

Example:
    >>> import numpy as np
    >>> from ekn_plugins.malis import mknhood2d, seg_to_affgraph, affgraph_to_seg
    >>> seg = np.array([[1, 1, 0], [2, 2, 2]])
    >>> aff = seg_to_affgraph(seg, mknhood2d(1))
    >>> affgraph_to_seg(aff, mknhood2d(1))
    array([[1, 1, 0],
           [2, 2, 2]], dtype=int32)
"""

from ekn_plugins.malis.affgraph import affgraph_to_seg, nodelist_from_shape, seg_to_affgraph
from ekn_plugins.malis.metrics import PairCounts, RandScores, compute_V_rand_N2, pair_counts, rand_index
from ekn_plugins.malis.nhood import mknhood2d, mknhood3d, mknhood3d_aniso
from ekn_plugins.malis.weights import malis_errors, malis_weights

__all__ = ["mknhood2d", "mknhood3d", "mknhood3d_aniso", "nodelist_from_shape", "seg_to_affgraph",
           "affgraph_to_seg", "rand_index", "RandScores", "pair_counts", "PairCounts", "compute_V_rand_N2",
           "malis_weights", "malis_errors"]
