"""Segmentations from boundary probabilities or affinities, and their scores against ground truth.

ELEKTRONN2 judged a membrane net by the watershed segmentation it gives (``seg_old``, scored by
the Rand index); ekn does the same with scikit-image's seeded watershed and the scores the
connectomics challenges use (CREMI, SNEMI3D):

* :func:`watershed_segmentation`: seeds are the connected components of the voxels whose boundary
  probability lies below :attr:`WatershedParams.threshold` (optionally eroded, small ones
  dropped); the seeds are flooded over the probability map, small segments are merged into their
  neighbours by a second flood;
* :func:`affinity_segmentation`: connected components of the edges of an affinity graph above a
  threshold (MALIS nets);
* :class:`WatershedParams` and :class:`AffinityParams` hold the parameters of either, check its
  input (``check``) and segment (``segment``): the search treats both alike;
* :func:`segmentation_scores`: variation of information (split and merge parts), adapted Rand
  error with its precision and recall, and the Rand index;
* :func:`save_segmentation`: writes a segmentation as an HDF5 or zarr volume, atomically.

The search for the parameters that score best is :mod:`ekn_plugins.evaluation.seg_search`.
Nothing here imports TensorFlow.

Example:
    >>> import numpy as np
    >>> true = np.ones((3, 2, 8), np.uint32); true[..., 4:] = 2    # two cells side by side, (z, y, x)
    >>> prob = np.zeros(true.shape); prob[..., 3:5] = 1.0          # the membrane between them
    >>> seg = watershed_segmentation(prob, WatershedParams(threshold=0.5))
    >>> seg[0].tolist(), seg.dtype
    ([[1, 1, 1, 1, 2, 2, 2, 2], [1, 1, 1, 1, 2, 2, 2, 2]], dtype('uint32'))
    >>> scores = segmentation_scores(true, seg)
    >>> scores["vi"], scores["adapted_rand_error"], scores["n_pred"]
    (0.0, 0.0, 2)
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from ekn_core.errors import ConfigError, EknError, ShapeError

#: The keys of :func:`segmentation_scores`, in order.
SCORE_NAMES = ("vi", "vi_split", "vi_merge", "adapted_rand_error", "rand_precision", "rand_recall",
               "rand_index", "n_true", "n_pred", "unassigned_fraction")


def _probability(value: Any, name: str) -> float:
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and 0.0 < value <= 1.0:
        return float(value)
    raise ConfigError(f"{name} must be a boundary probability in (0, 1], got {value!r}")


def unit_value(value: Any, name: str, what: str, upper_open: bool = False) -> float:
    """``value`` as a float in [0, 1] (or [0, 1) with ``upper_open``), else a ConfigError that names
    it as ``what``."""
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) \
            and 0.0 <= value and (value < 1.0 if upper_open else value <= 1.0):
        return float(value)
    raise ConfigError(f"{name} must be {what}, got {value!r}")


def voxel_count(value: Any, name: str) -> int:
    """``value`` as a whole number of voxels >= 1, else a ConfigError."""
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and value == int(value) >= 1:
        return int(value)
    raise ConfigError(f"{name} must be a whole number of voxels >= 1, got {value!r}")


@dataclass(frozen=True)
class WatershedParams:
    """How :func:`watershed_segmentation` turns a boundary probability map into segments.

    The defaults give the plain segmentation: interior components (probability < 0.5) flooded
    over the whole volume, nothing eroded, dropped or merged. :func:`search_segmentation
    <ekn_plugins.evaluation.seg_search.search_segmentation>` finds better values for a net.

    Attributes:
        threshold: Voxels with boundary probability below it are interior; the connected
            components (face connectivity) of the interior are the seeds. A low threshold gives
            small, separated seeds (splits); a high one lets the seeds leak across weak
            membranes (merges).
        seed_erosion: Erosion of the interior before it is split into seeds, as a distance in
            voxels of the finest axis: interior voxels at a distance of at most this (Euclidean,
            in physical units from ``anisotropy``) from a non-interior voxel are not seeds.
            Erosion separates cells joined through thin gaps in the predicted membrane; the
            eroded rim is flooded back. The volume's border does not erode.
        min_seed_size: Seeds of fewer voxels are dropped (their voxels are flooded from the
            neighbouring seeds): removes seeds from noise in the membrane.
        mask_threshold: Voxels with probability above it stay unassigned (id 0); None floods
            every voxel. Must be at least ``threshold``.
        min_size: Segments of fewer voxels are merged into their neighbours (removed, then the
            remaining segments are flooded again over the probability map). With a mask, a small
            segment without a neighbour in the mask becomes 0.
        per_slice: Segment every z slice on its own (2-D seeds, erosion, flooding and sizes) for
            anisotropic stacks whose membranes are unreliable across slices; ids are distinct
            across slices.
        anisotropy: Voxel size ``(z, y, x)`` for the seed erosion (e.g. ``(2, 1, 1)`` when z is
            sampled twice as coarsely); only its ratios matter.

    Example:
        >>> WatershedParams(threshold=0.3, min_size=50).to_dict()["min_size"]
        50
        >>> WatershedParams(threshold=0.3, mask_threshold=0.2)
        Traceback (most recent call last):
        ekn_core.errors.ConfigError: mask_threshold (0.2) must be at least threshold (0.3): seeds must lie inside the mask
    """

    threshold: float = 0.5
    seed_erosion: float = 0.0
    min_seed_size: int = 1
    mask_threshold: float | None = None
    min_size: int = 1
    per_slice: bool = False
    anisotropy: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        set_ = functools.partial(object.__setattr__, self)
        set_("threshold", _probability(self.threshold, "threshold"))
        if isinstance(self.seed_erosion, bool) or not isinstance(self.seed_erosion, (int, float, np.number)) \
                or not self.seed_erosion >= 0:
            raise ConfigError("seed_erosion must be a distance >= 0 (voxels of the finest axis), "
                              f"got {self.seed_erosion!r}")
        set_("seed_erosion", float(self.seed_erosion))
        set_("min_seed_size", voxel_count(self.min_seed_size, "min_seed_size"))
        set_("min_size", voxel_count(self.min_size, "min_size"))
        if self.mask_threshold is not None:
            set_("mask_threshold", _probability(self.mask_threshold, "mask_threshold"))
            if self.mask_threshold < self.threshold:
                raise ConfigError(f"mask_threshold ({self.mask_threshold}) must be at least threshold "
                                  f"({self.threshold}): seeds must lie inside the mask")
        if not isinstance(self.per_slice, (bool, np.bool_)):
            raise ConfigError(f"per_slice must be True or False, got {self.per_slice!r}")
        set_("per_slice", bool(self.per_slice))
        try:
            anisotropy = tuple(float(v) for v in np.ravel(self.anisotropy))
        except (TypeError, ValueError):
            anisotropy = ()
        if len(anisotropy) != 3 or not min(anisotropy) > 0:
            raise ConfigError(f"anisotropy must be three positive voxel sizes (z, y, x), got {self.anisotropy!r}")
        set_("anisotropy", anisotropy)

    #: The segmenter's name (in search records and reports).
    kind: ClassVar[str] = "watershed"

    def to_dict(self) -> dict[str, Any]:
        """The parameters as a JSON-ready dict (``WatershedParams(**d)`` rebuilds them)."""
        record = dataclasses.asdict(self)
        record["anisotropy"] = list(self.anisotropy)
        return record

    def check(self, boundary_prob: Any) -> np.ndarray:
        """The input as an array, checked (:func:`check_boundary_prob`)."""
        return check_boundary_prob(boundary_prob)

    def segment(self, boundary_prob: Any) -> np.ndarray:
        """:func:`watershed_segmentation` with these parameters."""
        return watershed_segmentation(boundary_prob, self)


class AffinitySegmenter:
    """What the parameter classes of affinity segmenters share (:class:`AffinityParams` here,
    :class:`~ekn_plugins.evaluation.agglomeration.WaterzParams` and
    :class:`~ekn_plugins.evaluation.agglomeration.MutexParams`): the ``nhood`` field, the check
    of their input and the JSON record.

    Example:
        >>> AffinityParams().check(np.zeros((2, 1, 1, 1)))
        Traceback (most recent call last):
        ekn_core.errors.ShapeError: affinities must be (n_edges, z, y, x) with one channel per edge of the nhood (3 edges), got shape (2, 1, 1, 1)
    """

    nhood: tuple[tuple[int, int, int], ...]

    def to_dict(self) -> dict[str, Any]:
        """The parameters as a JSON-ready dict (``type(self)(**d)`` rebuilds them)."""
        return {**dataclasses.asdict(self), "nhood": [list(r) for r in self.nhood]}

    def _check_shared(self) -> None:
        """Checks and normalises the fields every affinity segmenter has: ``min_size``, ``nhood``."""
        from ekn_plugins.evaluation.affinities import nhood_tuple

        object.__setattr__(self, "min_size", voxel_count(self.min_size, "min_size"))
        object.__setattr__(self, "nhood", nhood_tuple(self.nhood))

    def check(self, affinities: Any) -> np.ndarray:
        """The affinities as an array, after checking that they are ``(n_edges, z, y, x)`` floats
        in [0, 1] with one channel per edge of ``nhood``."""
        aff = np.asarray(affinities)
        n_edges = len(self.nhood)
        if aff.ndim != 4 or aff.shape[0] != n_edges:
            softmax = aff.ndim == 4 and aff.shape[0] == 2 * n_edges
            raise ShapeError(f"affinities must be (n_edges, z, y, x) with one channel per edge of the nhood "
                             f"({n_edges} edges), got shape {aff.shape}"
                             + ("; of a 2-class softmax per edge (disconnected, connected) pass the connected "
                                "channels, affinities[1::2]" if softmax else ""))
        return _check_unit_floats(aff, "affinities", "connected")


@dataclass(frozen=True)
class AffinityParams(AffinitySegmenter):
    """How :func:`affinity_segmentation` turns affinities into segments (the parameters that
    :func:`search_segmentation <ekn_plugins.evaluation.seg_search.search_segmentation>` varies
    for affinity nets).

    Attributes:
        threshold: Edges with affinity above it connect; in [0, 1).
        min_size: Components of fewer voxels become unassigned (0).
        nhood: ``(n_edges, 3)`` offsets ``(z, y, x)`` of the affinity channels (default
            ``mknhood3d(1)``); not searched.

    Example:
        >>> from ekn_plugins.malis import mknhood3d, seg_to_affgraph
        >>> params = AffinityParams(threshold=0.5, min_size=2)
        >>> params.nhood, params.to_dict()["min_size"]
        (((-1, 0, 0), (0, -1, 0), (0, 0, -1)), 2)
        >>> params.segment(seg_to_affgraph(np.array([[[1, 1, 0, 2, 2]]]), mknhood3d(1)) * 0.9)
        array([[[1, 1, 0, 2, 2]]], dtype=uint32)
    """

    threshold: float = 0.5
    min_size: int = 1
    nhood: tuple[tuple[int, int, int], ...] | None = dataclasses.field(default=None,
                                                                        metadata={"searchable": False})

    #: The segmenter's name (in search records and reports).
    kind: ClassVar[str] = "affinity"

    def __post_init__(self) -> None:
        object.__setattr__(self, "threshold", unit_value(self.threshold, "threshold", "an affinity in [0, 1)",
                                                         upper_open=True))
        self._check_shared()

    def segment(self, affinities: Any) -> np.ndarray:
        """:func:`affinity_segmentation` with these parameters (``affinities`` checked: :meth:`check`)."""
        return affinity_segmentation(self.check(affinities), self.threshold, np.array(self.nhood), self.min_size)


def check_boundary_prob(boundary_prob: Any) -> np.ndarray:
    """``boundary_prob`` as an array, after checking that it is a ``(z, y, x)`` float map in [0, 1]."""
    prob = np.asarray(boundary_prob)
    if prob.ndim != 3:
        hint = (" For a channel axis (c, z, y, x), pass the boundary channel, e.g. pred[1] of a 2-class softmax."
                if prob.ndim == 4 else " For one 2-D image, pass image[None].")
        raise ShapeError(f"boundary_prob must be a (z, y, x) volume, got shape {prob.shape}.{hint}")
    return _check_unit_floats(prob, "boundary_prob", "boundary")


def _check_unit_floats(prob: np.ndarray, name: str, one: str) -> np.ndarray:
    """``prob`` after checking that it is not empty and holds floats in [0, 1] (``one``: what 1 means)."""
    if prob.size == 0:
        raise ShapeError(f"the {name} array is empty (shape {prob.shape}): nothing to segment; pass a map with "
                         "at least one voxel along every axis")
    if not np.issubdtype(prob.dtype, np.floating):
        raise ConfigError(f"{name} must hold float probabilities in [0, 1], got dtype {prob.dtype} "
                          "(scale 8-bit maps with prob / 255)")
    low, high = float(prob.min()), float(prob.max())
    if not (0.0 <= low and high <= 1.0):  # also catches NaN
        raise ConfigError(f"{name} must lie in [0, 1] (1 = {one}), got values in [{low}, {high}]")
    return prob


def id_array(seg: np.ndarray) -> np.ndarray:
    """``seg`` as uint32 ids, uint64 where they do not fit."""
    return seg.astype(np.uint32 if seg.size == 0 or seg.max() < 2**32 else np.uint64, copy=False)


def _without_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """``labels`` with the segments of fewer than ``min_size`` voxels set to 0."""
    small = np.bincount(labels.ravel()) < min_size
    small[0] = False
    return np.where(small[labels], 0, labels)


def _flood(prob: np.ndarray, params: WatershedParams, spacing: Sequence[float]) -> np.ndarray:
    """Seeded watershed of one volume or slice; ids 1..n (int)."""
    from scipy import ndimage
    from skimage.segmentation import relabel_sequential, watershed

    interior = prob < params.threshold
    if params.seed_erosion > 0 and not interior.all():
        distance = ndimage.distance_transform_edt(interior, sampling=spacing)
        interior = distance > params.seed_erosion * min(spacing)
    seeds = _without_small(ndimage.label(interior)[0], params.min_seed_size)
    mask = None if params.mask_threshold is None else prob <= params.mask_threshold
    seg = watershed(prob, seeds, mask=mask)
    if params.min_size > 1:
        seg = watershed(prob, _without_small(seg, params.min_size), mask=mask)
    return relabel_sequential(seg)[0]


def watershed_segmentation(boundary_prob: Any, params: WatershedParams | None = None) -> np.ndarray:
    """Seeded watershed segmentation of a boundary probability map (see :class:`WatershedParams`).

    Args:
        boundary_prob: ``(z, y, x)`` float probabilities in [0, 1], 1 = boundary. Nets with a
            class axis give it as one channel: pass ``pred[1]`` of a 2-class softmax (or
            ``1 - pred[0]``), not the whole ``(c, z, y, x)`` array.
        params: The parameters (default :class:`WatershedParams()`).

    Returns:
        ``(z, y, x)`` uint32 ids (uint64 if they do not fit), 1..n in C order of the first voxel
        of each segment's seed, per slice or volume; 0 only where ``mask_threshold`` leaves voxels
        unassigned, or everywhere when no voxel is below ``threshold`` (no seeds).
    """
    prob = check_boundary_prob(boundary_prob)
    params = params or WatershedParams()
    if not params.per_slice:
        return id_array(_flood(prob, params, params.anisotropy))
    seg = np.zeros(prob.shape, dtype=np.int64)
    next_id = 0
    for z in range(prob.shape[0]):
        ids = _flood(prob[z], params, params.anisotropy[1:])
        seg[z] = np.where(ids > 0, ids + next_id, 0)
        next_id += int(ids.max(initial=0))
    return id_array(seg)


def affinity_segmentation(affinities: Any, threshold: float = 0.5, nhood: Any = None, min_size: int = 1) -> np.ndarray:
    """Connected components of an affinity graph's edges above ``threshold``.

    Args:
        affinities: ``(n_edges, z, y, x)`` affinities, 1 = connected; ``affinities[e, p]`` joins
            voxel ``p`` and ``p + nhood[e]`` (ELEKTRONN2's and :mod:`ekn_plugins.malis`' layout).
        threshold: Edges with affinity above it connect.
        nhood: ``(n_edges, 3)`` offsets; default :func:`~ekn_plugins.malis.mknhood3d` ``(1)``:
            ``-z, -y, -x``.
        min_size: Components of fewer voxels become unassigned (0); with 1 an isolated voxel is a
            segment of its own.

    Returns:
        uint32 ids ``(z, y, x)``: 0 unassigned, then 1, 2, ... in C order of each component's
        first voxel.

    Example:
        >>> from ekn_plugins.malis import mknhood3d, seg_to_affgraph
        >>> seg = np.array([[[1, 1, 0, 2, 2]]])
        >>> affinity_segmentation(seg_to_affgraph(seg, mknhood3d(1)) * 0.9, threshold=0.5, min_size=2)
        array([[[1, 1, 0, 2, 2]]], dtype=uint32)
    """
    from ekn_plugins.malis import affgraph_to_seg, mknhood3d

    aff = np.asarray(affinities)
    nhood = mknhood3d(1) if nhood is None else np.asarray(nhood)
    if aff.ndim != 4 or nhood.ndim != 2 or aff.shape[0] != len(nhood) or nhood.shape[1] != 3:
        raise ShapeError(f"affinities must be (n_edges, z, y, x) with one channel per nhood row; got affinities "
                         f"{aff.shape} and nhood {nhood.shape} (the default nhood has the 3 edges -z, -y, -x)")
    if not 0.0 <= float(threshold) < 1.0:
        raise ConfigError(f"threshold must be an affinity in [0, 1), got {threshold}")
    return id_array(affgraph_to_seg(aff > threshold, nhood, size_thresh=voxel_count(min_size, "min_size") - 1))


def segmentation_scores(seg_true: Any, seg_pred: Any, ignore_labels: Sequence[int] = (0,)) -> dict[str, float]:
    """Scores of a segmentation against ground truth ids (lower errors are better).

    Only voxels whose true id is not in ``ignore_labels`` count (CREMI: background 0 in the ground
    truth is ignored). Predicted id 0 (unassigned) follows each score's reference: one ordinary
    segment in the variation of information (CREMI's ``voi`` with ``ignore_reconstruction=[]``),
    a segment of its own for every such voxel in the Rand scores (SNEMI3D's and CREMI's adapted
    Rand error, :func:`ekn_plugins.malis.pair_counts`). Leaving uncertain voxels unassigned thus
    costs in the Rand scores, but in the VI no more than one extra segment.

    With ``T`` the true and ``P`` the predicted segmentation, entropies in bits (scikit-image's
    ``variation_of_information``; its first value is ``H(P|T)``):

    * ``vi_split = H(P|T)``: over-segmentation (a true cell cut into pieces);
    * ``vi_merge = H(T|P)``: under-segmentation (cells merged into one segment);
    * ``vi = vi_split + vi_merge``.

    The adapted Rand scores count the pairs of distinct voxels that ``T`` and ``P`` both put in one
    segment: ``rand_precision`` = those pairs / pairs in one predicted segment (1 = no false
    merges), ``rand_recall`` = those pairs / pairs in one true segment (1 = no false splits),
    ``adapted_rand_error = 1 - F1`` of the two (SNEMI3D). ``rand_index`` is the fraction of all
    voxel pairs on which ``T`` and ``P`` agree (:func:`ekn_plugins.malis.rand_index`). ``n_true``
    and ``n_pred`` count the true and the non-zero predicted ids among the scored voxels;
    ``unassigned_fraction`` is the fraction of scored voxels with predicted id 0.

    Args:
        seg_true: Ground-truth ids, any shape, integer.
        seg_pred: Predicted ids, the same shape, integer.
        ignore_labels: True ids whose voxels are not scored (any number of them, e.g. ``(0, 5)``
            for background and a glia id).

    Returns:
        Dict with the keys :data:`SCORE_NAMES`.

    Example:
        >>> true = np.array([1, 1, 1, 1, 2, 2, 2, 2])
        >>> split = segmentation_scores(true, np.array([1, 1, 2, 2, 3, 3, 4, 4]))
        >>> split["vi_split"], split["vi_merge"], split["rand_precision"], round(split["rand_recall"], 4)
        (1.0, 0.0, 1.0, 0.3333)
        >>> unassigned = segmentation_scores(np.ones(8, int), np.zeros(8, int))
        >>> unassigned["vi"], unassigned["rand_recall"], unassigned["adapted_rand_error"]
        (0.0, 0.0, 1.0)
    """
    from skimage.metrics import variation_of_information

    from ekn_plugins.malis.metrics import pair_counts

    true, pred = np.asarray(seg_true), np.asarray(seg_pred)
    if true.shape != pred.shape:
        raise ShapeError(f"seg_true {true.shape} and seg_pred {pred.shape} differ in shape; crop them to the same "
                         "region first (e.g. ekn_plugins.data.image.center_cubes)")
    for name, array in (("seg_true", true), ("seg_pred", pred)):
        if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
            raise ConfigError(f"{name} must hold integer ids, got dtype {array.dtype}")
    ignored = np.ravel(list(ignore_labels) if isinstance(ignore_labels, (set, frozenset)) else ignore_labels)
    if ignored.size and not np.issubdtype(ignored.dtype, np.integer):
        raise ConfigError(f"ignore_labels must be integer true ids, got {ignore_labels!r}")
    keep = ~np.isin(true, ignored)
    true, pred = true[keep], pred[keep]
    if true.size == 0:
        raise ConfigError(f"seg_true has no voxels outside ignore_labels {tuple(ignored.tolist())}: nothing to score")
    # compact ids 1..n (64-bit ids would make scikit-image's tables as long as the largest id)
    true = np.unique(true, return_inverse=True)[1].reshape(-1) + 1
    unassigned = pred == 0
    pred = np.unique(pred, return_inverse=True)[1].reshape(-1) + 1
    n_unassigned = int(unassigned.sum())
    n_pred = int(pred.max()) - (1 if n_unassigned else 0)
    pred[unassigned] = 0  # one label in the VI, unassigned in the pair counts

    vi_split, vi_merge = (float(v) for v in variation_of_information(true, pred))
    counts = pair_counts(true, pred)
    return {"vi": vi_split + vi_merge, "vi_split": vi_split, "vi_merge": vi_merge,
            "adapted_rand_error": counts.adapted_rand_error, "rand_precision": counts.precision,
            "rand_recall": counts.recall, "rand_index": counts.rand_index, "n_true": int(true.max()), "n_pred": n_pred,
            "unassigned_fraction": n_unassigned / true.size}


def _replace_directory(tmp: str, path: str) -> None:
    """Moves the finished directory ``tmp`` to ``path``; an existing ``path`` is moved aside first
    and deleted after (a crash in between leaves it beside as ``.<name>.old-*``)."""
    if os.path.exists(path):
        aside = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.old-{uuid.uuid4().hex[:8]}")
        os.rename(path, aside)
        os.rename(tmp, path)
        shutil.rmtree(aside)
    else:
        os.rename(tmp, path)


def save_segmentation(seg: Any, path: str | os.PathLike, key: str | None = None) -> str:
    """Writes a segmentation volume atomically: readers see the old volume or the complete new one.

    ``file.h5:key`` is written into a copy of the file (its other datasets are kept) that then
    replaces it (:func:`ekn_core.atomic.atomic_write`); ``dir.zarr`` and ``dir.zarr:key`` are
    written into a temporary array beside the target, which is then renamed into its place. Both go
    through :func:`ekn_core.volumes.create_volume` and open with
    :func:`~ekn_core.volumes.open_volume`.

    Args:
        seg: Integer ids, usually ``(z, y, x)``.
        path: ``*.h5[:key]`` (default key ``seg``) or ``*.zarr[:key]``.
        key: Dataset key (overrides one given in ``path``).

    Returns:
        The path with its key, for :func:`~ekn_core.volumes.open_volume`.

    Example:
        >>> import tempfile
        >>> from ekn_core.volumes import open_volume
        >>> target = save_segmentation(np.ones((2, 3, 4), np.uint32), os.path.join(tempfile.mkdtemp(), "s.h5"))
        >>> with open_volume(target) as vol:
        ...     print(target.endswith("s.h5:seg"), vol.dtype, int(vol[:].sum()))
        True uint32 24
    """
    from ekn_core.atomic import atomic_write
    from ekn_core.hooks import host
    from ekn_core.volumes import create_volume, split_key

    seg = np.asarray(seg)
    if not np.issubdtype(seg.dtype, np.integer):
        raise ConfigError(f"a segmentation holds integer ids, got dtype {seg.dtype}")
    base, path_key = split_key(os.fspath(path))
    key = key or path_key
    reader = host().get_reader(base)
    axes = {3: "zyx", 2: "yx"}.get(seg.ndim)

    def write(target: str, target_key: str | None) -> None:
        with create_volume(target, shape=seg.shape, dtype=seg.dtype, key=target_key, reader=reader, axes=axes) as vol:
            vol[...] = seg

    if reader == "hdf5":
        key = key or "seg"

        def write_h5(tmp: str) -> None:
            if os.path.exists(base):
                shutil.copyfile(base, tmp)
            else:
                os.remove(tmp)  # h5py creates it
            write(tmp, key)

        atomic_write(base, write_h5)
    elif reader == "zarr":
        target = os.path.join(base, key) if key else base
        tmp_name = f".{os.path.basename(target)}.tmp-{uuid.uuid4().hex[:8]}"
        tmp = os.path.join(os.path.dirname(target), tmp_name)
        try:
            if key:
                write(base, os.path.join(os.path.dirname(key), tmp_name))
            else:
                write(tmp, None)
            _replace_directory(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        raise EknError(f"segmentations are saved as HDF5 (file.h5:key) or zarr (dir.zarr[:key]); {base!r} is "
                       f"neither (its reader: {reader})")
    return f"{base}:{key}" if key else base
