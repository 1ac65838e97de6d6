"""Evaluation of a trained model, or of an existing prediction, on labelled volumes: ELEKTRONN2's
``evaluate_model_binary`` and ``evaluate(gt, preds)``, out of core and resumable (``ekn evaluate``).

For every volume (a :class:`~ekn_plugins.validation.spec.ValidationVolume`: raw, binary labels
and/or ground-truth ids, optional region):

1. the labelled box (labels smaller than raw are centred in it, cut to ``region``) is predicted
   with :func:`~ekn_core.prediction.blockwise.predict_volume` into ``OUT/<name>/prediction.zarr``
   (all channels, mirrored at the raw border as ``ekn predict`` does); the prediction is cached:
   a rerun with the same model, volume and plan reuses the finished blocks;
2. the evaluated channel is swept against the binary labels chunk by chunk of the cached
   prediction (:class:`~ekn_plugins.evaluation.binary.ThresholdCurves`, never the whole volume),
   per volume and pooled over the volumes, with ``performance.png`` and ``error_histogram.png``;
3. with ids: the boundary probability of the box is held in memory (after checking that the
   memory suffices), the watershed parameters are searched
   (:func:`~ekn_plugins.evaluation.seg_search.search_segmentation`; ``seg_params.json`` and
   ``.md``) and the best segmentation is saved as ``OUT/<name>/segmentation.zarr``.

A given prediction (``prediction=``, what ``ekn predict`` wrote) replaces step 1: it has the raw
volume's shape, or is smaller and centred in it (``ekn predict --valid``); labels and ids are
centred in it as in the raw volume, and the box is cut to it. Without a raw volume, the frame is
the box whose every axis is the largest of the prediction's, labels' and ids'. uint8 predictions
are probabilities x 255.

Affinity nets (``affinities=True``, automatic for models that feed an affinity loss such as
``MalisNLL``): the channels of P(connected) (:mod:`~ekn_plugins.evaluation.affinities`) are swept
against the true affinity graph of the ids, pooled over the edges, and the segmentation search
varies the parameters of an affinity segmenter: the connected components' threshold and minimum
size (:class:`~ekn_plugins.evaluation.segmentation.AffinityParams`, the default), or those of
waterz's agglomeration or the mutex watershed (``base_params``:
:class:`~ekn_plugins.evaluation.agglomeration.WaterzParams`,
:class:`~ekn_plugins.evaluation.agglomeration.MutexParams`).

``OUT/evaluation.json`` holds everything machine-readable and ``OUT/REPORT.md``
(:mod:`~ekn_plugins.evaluation.report`) the human-readable summary; every file is written
atomically.

Without labels, the binary labels are the boundaries of the ids: ELEKTRONN2's ``ids2barriers``
with :data:`BARRIER_OPTIONS` (the labels ``ekn data synth`` writes). ``interior=True`` says the
evaluated channel is the interior (cell) probability: the segmentation floods ``1 - p`` and labels
derived from ids are the non-boundary voxels; given labels are always compared with the channel as
they are (1 = what the channel predicts).

Example:
    >>> evaluated_channel(2), evaluated_channel(1), evaluated_channel(3, 2)
    (1, 0, 2)
    >>> evaluated_channel(3)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ekn_core.errors.ConfigError: channel: the net predicts 3 channels (0, 1, 2); say which one to evaluate ...
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import logging
import os
import time
from collections.abc import Iterator
from typing import Any, Sequence

import numpy as np

from ekn_core.errors import ConfigError, EknError
from ekn_core.prediction.tiling import Shape, box_window
from ekn_plugins.data.image import center_offset
from ekn_plugins.data.patches import Region, parse_region
from ekn_plugins.evaluation.affinities import affinity_labels, connected_channels, resolve_nhood
from ekn_plugins.evaluation.binary import BinaryEvaluation, ThresholdCurves
from ekn_plugins.evaluation.runs import ChosenModel, default_out_dir, resolve_model, run_validation_spec
from ekn_plugins.evaluation.seg_search import METRICS, SEGMENTERS, Params, default_grid, grid_points
from ekn_plugins.evaluation.segmentation import AffinityParams, AffinitySegmenter, WatershedParams
from ekn_plugins.validation.evaluate import evaluation_roi, open_volumes
from ekn_plugins.validation.segmentation_metrics import boundary_channel, check_memory
from ekn_plugins.validation.spec import ValidationVolume

log = logging.getLogger("ekn.evaluation")

#: ``ids2barriers`` options for binary labels derived from ids: 2-voxel boundaries between
#: different ids along every axis, extracellular space (id 0) counted as boundary.
BARRIER_OPTIONS = {"dilute": False, "connectivity": True, "ecs_as_barr": True}
#: Memory of an affinity net's segmentation (instead of the boundary map's
#: :data:`~ekn_plugins.validation.segmentation_metrics.BOX_BYTES_PER_VOXEL` and ``SEARCH_BYTES_PER_VOXEL``):
#: per voxel the ids and the best segmentation in the box, and per voxel and
#: edge of the nhood the affinities in the box (float64 at most) and, in a worker, the edge lists
#: of the connected components (measured: 144 bytes for 3 edges, 385 for 11).
AFFINITY_BYTES_PER_VOXEL = {"box": 16, "box_per_edge": 8, "search": 64, "search_per_edge": 32}
#: A search worker's bytes per voxel, and per voxel and edge, for the agglomerating segmenters instead
#: (measured on 32 x 256 x 256 noisy affinities: waterz 81 bytes, it reads 3 edges of any nhood; the mutex
#: watershed 190 for 3 edges, 746 for 11).
AGGLOMERATION_SEARCH_BYTES = {"waterz": (96, 0), "mutex": (32, 72)}
#: The same for waterz with a quantile (``hist_quant_*``) scoring in the grid: a 256-bin histogram (1 KiB) per
#: contact of two fragments (measured 1092 bytes on the noisy affinities above; cleaner ones have fewer fragments).
WATERZ_HISTOGRAM_SEARCH_BYTES = 1200
#: Block read at a time from a prediction that has no chunks (e.g. a TIFF stack).
READ_BLOCK = (32, 512, 512)
#: The curve arrays left out of ``evaluation.json`` (``ThresholdCurves`` rebuilds them from the histograms).
CURVE_FIELDS = ("roc_fpr", "roc_tpr", "pr_recall", "pr_precision")


def evaluated_channel(n_lab: int, channel: int | None = None) -> int:
    """The output channel to evaluate: ``channel`` if given, else 1 of a 2-class softmax
    (2 channels), 0 of a single sigmoid channel
    (:func:`~ekn_plugins.validation.segmentation_metrics.boundary_channel`).

    Raises:
        ConfigError: ``channel`` does not exist, or the net has more channels and none was given.
    """
    return boundary_channel(n_lab, channel, name="channel", source="the net predicts",
                            ask="say which one to evaluate with --channel K (channel= in Python): the "
                                "probability of the labels' positive class")


def _blocks(lo: Shape, hi: Shape, block: Shape) -> Iterator[tuple[slice, ...]]:
    """The cells of the grid of ``block`` (from 0) that overlap ``[lo, hi)``, cut to it, in C order.

    Example:
        >>> [s[0] for s in _blocks((3,), (9,), (4,))]
        [slice(3, 4, None), slice(4, 8, None), slice(8, 9, None)]
    """
    starts = [range(a // b * b, c, b) for a, c, b in zip(lo, hi, block)]
    for corner in itertools.product(*starts):
        yield tuple(slice(max(k, a), min(k + b, c)) for k, a, c, b in zip(corner, lo, hi, block))


def prediction_values(data: Any) -> np.ndarray:
    """Probabilities of a block read from a prediction: uint8 (``ekn predict --uint8``, KNOSSOS:
    probability x 255, :func:`~ekn_core.prediction.dense.to_uint8`) as float64 / 255, float16
    as float32, other floats as they are.

    Example:
        >>> prediction_values(np.array([0, 51, 255], np.uint8)).tolist()
        [0.0, 0.2, 1.0]
    """
    data = np.asarray(data)
    if data.dtype == np.uint8:
        return data / 255.0
    return data.astype(np.float32) if data.dtype == np.float16 else data


@contextlib.contextmanager
def _open_prediction(path: str) -> Iterator[tuple[Any, Shape]]:
    """A prediction (what ``ekn predict`` writes: ``(n_lab, z, y, x)``, or ``(z, y, x)`` with
    ``--channel``) as a channels-first view, and its own shape; shape and dtype checked."""
    from ekn_core.prediction.blockwise import as_channel_volume
    from ekn_core.volumes import open_volume

    try:
        volume = open_volume(path)
    except Exception as err:  # any reader's error: name the prediction
        raise ConfigError(f"cannot read the prediction {path!r}: {type(err).__name__}: {err}") from err
    with volume:
        shape, dtype = tuple(volume.shape), np.dtype(volume.dtype)
        if len(shape) not in (3, 4):
            raise ConfigError(f"the prediction {path!r} has shape {shape}; give what ekn predict writes: "
                              "(n_lab, z, y, x), or (z, y, x) with --channel")
        if dtype != np.uint8 and not np.issubdtype(dtype, np.floating):
            raise ConfigError(f"the prediction {path!r} has dtype {dtype}; give probabilities: floats in [0, 1] "
                              "or uint8 (probability x 255, ekn predict --uint8)")
        yield as_channel_volume(volume), shape


def _spatial_chunks(view: Any) -> Shape:
    """The chunk shape ``(z, y, x)`` of a channels-first view (:data:`READ_BLOCK` without chunks)."""
    chunks = getattr(view, "chunks", None) or getattr(getattr(view, "volume", None), "chunks", None)
    return tuple(chunks[-3:]) if chunks else READ_BLOCK


def _read(view: Any, window: tuple[slice, ...]) -> np.ndarray:
    """The spatial ``window`` of a one-channel ``(1, z, y, x)`` view as ``(z, y, x)``."""
    return np.asarray(view[(slice(None), *window)])[0]


@contextlib.contextmanager
def _opened(volume: ValidationVolume) -> Iterator[dict[str, Any]]:
    """The volume's raw, labels and ids (those given), channels first; labels one channel."""
    with open_volumes(volume) as views:
        if "labels" in views and views["labels"].shape[0] != 1:
            raise ConfigError(f"volume {volume.name!r}: labels {volume.labels!r} has {views['labels'].shape[0]} "
                              "channels; give one (z, y, x) labels volume")
        yield views


def _recorded_placement(volume: ValidationVolume, views: dict[str, Any], path: str,
                        shape: Shape) -> tuple[Shape | None, Shape | None]:
    """The raw frame and the prediction's offset in it from ``ekn predict``'s record (``--roi`` and
    ``--valid`` predictions included); ``(None, None)`` without a record. A record of another raw
    volume than the given one is an error: the prediction would be compared with the wrong voxels."""
    from ekn_core.prediction.blockwise import finished_prediction, progress_path

    record = finished_prediction(path)
    if record is None:
        return None, None
    frame, origin = tuple(record["input_shape"][-3:]), tuple(record["plan"]["origin"])
    if "raw" in views and tuple(views["raw"].shape[1:]) != frame:
        raise ConfigError(f"volume {volume.name!r}: the prediction {path!r} was predicted from {record['input']!r} "
                          f"of shape {frame}, but the raw volume {volume.raw!r} has shape "
                          f"{tuple(views['raw'].shape[1:])}: give the raw volume it was predicted from, or predict "
                          "this one")
    if any(o + s > f for o, s, f in zip(origin, shape, frame)):
        log.warning("volume %s: the record of ekn predict (%s) places the prediction %s at %s, outside the volume "
                    "%s it was predicted from (replaced by hand?); centring it instead", volume.name,
                    progress_path(path), shape, origin, frame)
        return None, None
    return frame, origin


def _layout(volume: ValidationVolume, views: dict[str, Any],
            prediction: tuple[str, Shape] | None = None) -> tuple[tuple[Shape, Shape], dict[str, Shape]]:
    """The evaluated box and the offsets of labels, ids and a given ``prediction`` (its path and
    spatial shape), all in the frame: the raw volume, or without one the box whose every axis is
    the largest of the prediction's, labels' and ids' (each is centred in it). A prediction that
    ``ekn predict`` wrote is placed where its record says (the raw volume it came from is then the
    frame); others are centred like the labels."""
    extents = {what: tuple(views[what].shape[1:]) for what in ("labels", "ids") if what in views}
    recorded_frame, recorded_origin = (None, None) if prediction is None else _recorded_placement(
        volume, views, *prediction)
    if prediction is not None and recorded_origin is None:
        extents["prediction"] = tuple(prediction[1])
    frame = tuple(views["raw"].shape[1:]) if "raw" in views else recorded_frame or tuple(
        max(e) for e in zip(*extents.values()))
    offsets = {} if recorded_origin is None else {"prediction": recorded_origin}
    for what, extent in extents.items():
        try:
            offsets[what] = center_offset(frame, extent)
        except EknError as err:
            why = (_uncentred(prediction[0], extents, frame, "raw" in views)
                   if "prediction" in extents and ("raw" not in views or what == "prediction") else err)
            raise ConfigError(f"volume {volume.name!r}: {why}") from None
    try:
        box = evaluation_roi(frame, extents["labels" if "labels" in views else "ids"], volume.region)
    except EknError as err:
        raise ConfigError(f"volume {volume.name!r}: {err}") from None
    if prediction is not None:
        box = _inside_prediction(volume.name, box, offsets["prediction"], tuple(prediction[1]))
    if "labels" in views and "ids" in views:
        ids_hi = tuple(o + s for o, s in zip(offsets["ids"], extents["ids"]))
        if any(a < o or b > h for a, b, o, h in zip(*box, offsets["ids"], ids_hi)):
            raise ConfigError(f"volume {volume.name!r}: the ids {extents['ids']} (raw voxels {offsets['ids']}.."
                              f"{ids_hi}) do not cover the labelled box {box[0]}..{box[1]}; give ids at least as "
                              "large as the labels, or a --region inside both")
    return box, offsets


def _uncentred(path: str, extents: dict[str, Shape], frame: Shape, has_raw: bool) -> str:
    """Why a given prediction and the labels / ids cannot be centred in each other."""
    if has_raw:
        problem = f"the prediction {path!r} {extents['prediction']} cannot be centred in the raw volume {frame}"
    else:
        shapes = ", ".join(f"{what} {extent}" for what, extent in extents.items())
        problem = f"the {shapes} (prediction {path!r}) cannot be centred in each other"
    return (f"{problem}: each size difference must be even and >= 0. ekn predict writes the raw volume's shape, or "
            "with --valid a box smaller by the net's fov - 1, centred; give a prediction of the whole raw volume")


def _inside_prediction(name: str, box: tuple[Shape, Shape], offset: Shape,
                       shape: Shape) -> tuple[Shape, Shape]:
    """The labelled ``box`` cut to a given prediction of ``shape`` at ``offset``."""
    end = tuple(o + s for o, s in zip(offset, shape))
    lo, hi = tuple(max(a, o) for a, o in zip(box[0], offset)), tuple(min(b, e) for b, e in zip(box[1], end))
    if any(a >= b for a, b in zip(lo, hi)):
        raise ConfigError(f"volume {name!r}: the prediction covers {offset}..{end}, which holds no voxel of "
                          f"the labelled box {box[0]}..{box[1]}; choose a --region inside both")
    if (lo, hi) != box:
        log.info("volume %s: the prediction covers %s..%s; evaluating the labelled voxels inside it, %s..%s",
                 name, offset, end, lo, hi)
    return lo, hi


def _read_ids(ids: Any, box: tuple[Shape, Shape], offset: Shape, halo: int = 0) -> tuple[np.ndarray, tuple[slice, ...]]:
    """The ids of ``box`` with up to ``halo`` voxels more on each side (as far as the ids reach),
    and the slices that cut the box out of them."""
    extent = ids.shape[1:]
    lo = tuple(max(a - o - halo, 0) for a, o in zip(box[0], offset))
    hi = tuple(min(b - o + halo, s) for b, o, s in zip(box[1], offset, extent))
    inner = tuple(slice(a - o - l, b - o - l) for a, b, o, l in zip(*box, offset, lo))
    return _read(ids, tuple(slice(a, b) for a, b in zip(lo, hi))), inner


def labels_from_ids(ids: Any, box: tuple[Shape, Shape], offset: Shape, interior: bool = False) -> np.ndarray:
    """Binary labels of ``box`` (raw coordinates) from ground-truth ids ``(1, z, y, x)`` at
    ``offset``: ``ids2barriers`` with :data:`BARRIER_OPTIONS`, read with one voxel more on each
    side so that boundaries on the box's faces are the same as in the whole volume.

    Args:
        interior: Label the interior (1 - boundary) instead.

    Example:
        >>> ids = np.array([[[[1, 1, 1, 2, 0]]]])                          # (1, z, y, x)
        >>> labels_from_ids(ids, ((0, 0, 1), (1, 1, 3)), (0, 0, 0)).tolist()  # x 1..3: ids 1, 1
        [[[0, 1]]]
    """
    from ekn_plugins.data.image import ids2barriers

    block, inner = _read_ids(ids, box, offset, halo=1)
    barrier = ids2barriers(block, **BARRIER_OPTIONS)[inner]
    return 1 - barrier if interior else barrier


def _binary_record(ev: BinaryEvaluation) -> dict[str, Any]:
    return {key: value for key, value in ev.to_dict().items() if key not in CURVE_FIELDS}


def _figures(ev: BinaryEvaluation, folder: str, title: str) -> dict[str, str]:
    from ekn_plugins.evaluation.binary import plot_error_histogram, plot_performance

    return {"performance": plot_performance(ev, os.path.join(folder, "performance.png"), title=title),
            "error_histogram": plot_error_histogram(ev, os.path.join(folder, "error_histogram.png"))}


def model_fingerprint(chosen: ChosenModel) -> dict[str, Any]:
    """Path, run, size, modification time and SHA-256 of the evaluated model file."""
    record: dict[str, Any] = {"path": chosen.path, "run": chosen.run.path if chosen.run else None,
                              "which": chosen.which}
    if os.path.isfile(chosen.path):
        st = os.stat(chosen.path)
        digest = hashlib.sha256()
        with open(chosen.path, "rb") as f:
            for part in iter(lambda: f.read(2**20), b""):
                digest.update(part)
        record.update(size=st.st_size, mtime=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st.st_mtime)),
                      sha256=digest.hexdigest())
    return record


@dataclasses.dataclass(frozen=True)
class _Options:
    """The settings of one evaluation (recorded in ``evaluation.json``).

    ``channel`` is the evaluated channel of a boundary/foreground net (None for affinities);
    ``affinities`` holds ``nhood``, ``nhood_source`` and ``channels`` (those of P(connected)) of
    an affinity net (None otherwise); ``prediction`` is the given prediction (None: the model
    predicts).
    """

    channel: int | None
    affinities: dict[str, Any] | None
    interior: bool
    positive: int | None
    ignore_label: int | None
    ignore_ids: tuple[int, ...]
    bins: int
    segmentation: bool
    segmenter: str
    grid: dict[str, list[Any]]
    metric: str
    n_proc: int
    base_params: dict[str, Any]
    prediction: str | None
    mfp: bool
    tta: Any
    tile: Any
    memory_budget: Any
    workers: int | None
    scheduler: str | None
    tta_affinity_offsets: list[list[int]] | None = None

    def read_channels(self) -> slice:
        """The channels the evaluation reads: the evaluated one, or those of P(connected)."""
        if self.affinities is None:
            return slice(self.channel, self.channel + 1)
        channels = self.affinities["channels"]
        return slice(channels[0], channels[-1] + 1, channels[1] - channels[0] if len(channels) > 1 else 1)

    def describe_channels(self) -> str:
        """``channel K`` or ``affinity channels [...]`` (for messages)."""
        if self.affinities is None:
            return f"channel {self.channel}"
        return f"affinity channels {self.affinities['channels']}"

    def base(self) -> Params:
        """The segmenter's parameters outside the grid."""
        return SEGMENTERS[self.segmenter](**self.base_params)

    def memory_per_voxel(self) -> tuple[int | None, int | None]:
        """Bytes per voxel of the box held for the segmentation, and of one search worker (None:
        those of a boundary map, :func:`~ekn_plugins.validation.segmentation_metrics.check_memory`'s)."""
        if self.affinities is None:
            return None, None  # check_memory's of a boundary map
        n, b = len(self.affinities["nhood"]), AFFINITY_BYTES_PER_VOXEL
        search, per_edge = AGGLOMERATION_SEARCH_BYTES.get(self.segmenter, (b["search"], b["search_per_edge"]))
        if self.segmenter == "waterz" and set(self.grid.get("scoring", [self.base_params["scoring"]])) != {"mean"}:
            search = WATERZ_HISTOGRAM_SEARCH_BYTES
        return b["box"] + b["box_per_edge"] * n, search + per_edge * n


def evaluate_model(model: str | None = None, volumes: Sequence[ValidationVolume] | None = None,
                   out_dir: str | None = None, *, prediction: str | None = None,
                   channel: int | None = None, interior: bool = False, positive: int | None = None,
                   ignore_label: int | None = None, ignore_ids: Sequence[int] = (0,), region: Region | None = None,
                   bins: int = 1000,
                   affinities: bool | None = None, nhood: str | Any = None,
                   segmentation: bool = True, grid: dict[str, Sequence[Any]] | None = None, metric: str = "vi",
                   n_proc: int = 1, base_params: Params | None = None, mfp: bool = False,
                   tta: Any = None, tile: Shape | str | None = "auto", memory_budget: int | str | None = None,
                   workers: int | None = None, scheduler: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Evaluates a model, or an existing prediction, on labelled volumes and writes
    ``OUT/evaluation.json`` and ``OUT/REPORT.md``.

    Args:
        model: Model file, ``module:factory``, or a run directory (its ``models/best.mdl``, else
            ``models/latest.mdl``). None with ``prediction``.
        volumes: The volumes; each needs ``labels`` (binary, 1 = what the channel predicts) or
            ``ids`` (ground-truth object ids; then the labels are their boundaries) or both.
            None: the ``volume_validation`` volumes of the model's run.
        out_dir: Output folder; None: ``<run>/evaluation/<model stem>`` for a model of a run, else
            ``<model without .mdl>.evaluation`` (``<prediction without suffix>.evaluation``). It
            may not be or lie inside an input volume, nor its ``<volume>/prediction.zarr`` and
            ``segmentation.zarr`` be one (:func:`~ekn_core.volumes.check_distinct`).
        prediction: Evaluate this prediction (what ``ekn predict`` wrote: ``(n_lab, z, y, x)``, or
            ``(z, y, x)`` with ``--channel``; float probabilities or uint8 x 255) instead of
            predicting with a model; exactly one volume, whose ``raw`` may be None. The prediction
            has the raw volume's shape (or, with ``--valid``, is smaller and centred in it):
            labels and ids are centred in it as in the raw volume.
        channel: Output channel to evaluate (default: see :func:`evaluated_channel`).
        interior: The channel is the interior (cell) probability, not the boundary probability.
        positive: Class id of multi-class labels that the channel predicts (the others are
            negative); None: binary labels 0/1.
        ignore_label: Label value of unlabelled voxels (None: the run's ``volume_validation``
            ``ignore_label`` for run volumes); for affinities, the id whose edges are unlabelled
            (the run's labels and ``ignore_label`` do not apply: run volumes need ids; that id is
            then not scored by the segmentation search either).
        ignore_ids: Ground-truth ids whose voxels the segmentation scores (VI, adapted Rand
            error) leave out; default id 0 (background, unlabelled). ``ignore_label`` is a value
            of the binary labels and does not touch the ids, except for affinities (see there).
        region: Evaluate only this box ``((z0, y0, x0), (z1, y1, x1))`` of every raw volume,
            instead of the volumes' own regions (e.g. a part that fits into memory).
        bins: Histogram bins of the threshold sweep (:class:`ThresholdCurves`).
        affinities: The channels are affinities (:mod:`~ekn_plugins.evaluation.affinities`):
            swept against the affinity graph of the ids, segmented by connected components.
            None: True when the model feeds an affinity loss (``MalisNLL``), False for a given
            prediction.
        nhood: The affinities' neighbourhood: a name of
            :data:`~ekn_plugins.evaluation.affinities.NHOODS` or ``(n_edges, 3)`` offsets; default
            the ``MalisNLL`` node's, else ``'3d'``.
        segmentation: Search the segmentation parameters for volumes with ids.
        grid, metric, n_proc, base_params: Of :func:`~ekn_plugins.evaluation.seg_search.search_segmentation`
            (``base_params``: e.g. ``per_slice`` and ``anisotropy`` of :class:`WatershedParams`, or
            an affinity segmenter's (:class:`AffinityParams`, the default, ``WaterzParams`` or
            ``MutexParams``), whose ``nhood`` is replaced by the evaluated one).
        mfp, tta, tile, memory_budget, workers, scheduler, progress: Of
            :func:`~ekn_core.prediction.blockwise.predict_volume` (not with ``prediction``).

    Returns:
        The record written to ``evaluation.json``.
    """
    from ekn_core.atomic import write_json
    from ekn_core.prediction.blockwise import NetSpec, adapt
    from ekn_core.prediction.net import affinity_loss_node
    from ekn_plugins.evaluation.report import write_report

    started = time.perf_counter()
    _check_source(model, prediction, volumes, {"mfp": mfp, "tta": tta, "tile": tile != "auto",
                                                "memory_budget": memory_budget, "workers": workers,
                                                "scheduler": scheduler})
    chosen, loss, given = None, None, None
    if prediction is None:
        chosen = resolve_model(model)
        if chosen.which:
            log.info("evaluating %s (the %s model of run %s)", chosen.path, chosen.which, chosen.run.path)
        node = NetSpec(chosen.path).load()
        n_lab, loss = adapt(node).n_lab, affinity_loss_node(node)
    else:
        with _open_prediction(prediction) as (view, shape):
            n_lab, given = view.shape[0], {"path": prediction, "shape": list(shape), "dtype": str(view.dtype)}
    affinities = loss is not None if affinities is None else bool(affinities)
    if volumes is None:
        if chosen.run is None:
            raise ConfigError(f"{model} belongs to no run directory, so there are no run volumes to evaluate: give "
                              "the volumes (ekn evaluate MODEL RAW --labels LABELS or --ids IDS)")
        spec = run_validation_spec(chosen.run)
        if affinities:  # evaluated against the affinity graph of the ids; the run's ignore_label is a label value
            volumes = [dataclasses.replace(v, labels=None) if v.ids else v for v in spec.volumes]
        else:
            volumes = spec.volumes
            ignore_label = spec.ignore_label if ignore_label is None else ignore_label
    if region is not None:
        volumes = [dataclasses.replace(v, region=parse_region(region, "region")) for v in volumes]
    volumes = _checked_volumes(volumes, affinities)
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if isinstance(n_proc, bool) or not isinstance(n_proc, (int, np.integer)) or n_proc < 1:
        raise ConfigError(f"n_proc must be a number of processes >= 1, got {n_proc!r}")
    if affinities:
        affinity, base = _affinity_setup(loss, nhood, n_lab, channel=channel, interior=interior, positive=positive,
                                         base_params=base_params)
        channel = None
    else:
        if nhood is not None:
            raise ConfigError("nhood describes affinity channels: evaluate them with --affinities (affinities=True)")
        if isinstance(base_params, AffinitySegmenter):
            raise ConfigError(f"{type(base_params).__name__} segment affinities: evaluate them with --affinities "
                              "(affinities=True)")
        if given is not None and len(given["shape"]) == 3:  # the file's one channel, the net's recorded one
            given["net_channel"], channel = _single_channel(prediction, channel), 0
        affinity, base, channel = None, base_params or WatershedParams(), evaluated_channel(n_lab, channel)
    n_points = len(grid_points(grid, base))  # checks the grid before anything is predicted
    ignore_ids = _ignore_ids(ignore_ids, ignore_label if affinities else None)
    options = _Options(channel, affinity, bool(interior), positive, ignore_label, ignore_ids, bins, segmentation,
                       base.kind,
                       {k: list(v) for k, v in (default_grid(base) if grid is None else grid).items()}, metric,
                       n_proc, base.to_dict(), prediction, mfp, tta, tile, memory_budget, workers, scheduler,
                       _tta_offsets(affinity, tta, loss))
    out_dir = os.path.abspath(out_dir or (default_out_dir(chosen) if chosen else _prediction_out_dir(prediction)))
    _check_outputs(out_dir, volumes, prediction)
    pooled, records = ThresholdCurves(bins, positive), []
    for volume in volumes:
        record, curves = _evaluate_volume(chosen.path if chosen else None, volume, os.path.join(out_dir, volume.name),
                                          options, n_points, progress)
        pooled.merge(curves)
        records.append(record)
    pooled_ev = pooled.result()
    pooled_figures = _figures(pooled_ev, out_dir, "pooled over " + ", ".join(v.name for v in volumes))
    result = {
        "format": "ekn-evaluation", "version": 1, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "model": model_fingerprint(chosen) if chosen else None, "prediction": given, "out_dir": out_dir,
        "settings": {**dataclasses.asdict(options), "labels_from_ids": BARRIER_OPTIONS},
        "volumes": records,
        "pooled": {"binary": _binary_record(pooled_ev), "figures": _relative(pooled_figures, out_dir)},
        "seconds": time.perf_counter() - started,
    }
    write_json(os.path.join(out_dir, "evaluation.json"), result, strict=True)  # NaN (e.g. precision at 1) -> null
    write_report(result, os.path.join(out_dir, "REPORT.md"))
    return result


def _check_source(model: str | None, prediction: str | None, volumes: Sequence[ValidationVolume] | None,
                  predict_options: dict[str, Any]) -> None:
    """Checks that a model or a prediction is given, not both, and what goes with it."""
    if (model is None) == (prediction is None):
        raise ConfigError("give either a MODEL (model file, module:factory or run directory) or an existing "
                          "prediction (--prediction PRED, prediction= in Python)"
                          + (", not both" if model is not None else ""))
    if prediction is None:
        return
    if volumes is None or len(volumes) != 1:
        raise ConfigError("--prediction is evaluated on the one volume it predicts: give its --labels and/or --ids "
                          "(and RAW, to check that the prediction is its prediction)")
    used = [name for name, value in predict_options.items() if value not in (None, False)]
    if used:
        raise ConfigError(f"{', '.join(used)} set how a model predicts; a given prediction is read as it is: "
                          "leave them out")


def _check_outputs(out_dir: str, volumes: Sequence[ValidationVolume], prediction: str | None) -> None:
    """Refuses an output folder that is or lies inside an input, and volumes written over inputs."""
    from ekn_core.volumes import check_distinct

    inputs = [prediction, *(path for v in volumes for path in (v.raw, v.labels, v.ids))]
    check_distinct(out_dir, inputs, folder=True)
    for volume in volumes:
        written = ["segmentation.zarr"] + (["prediction.zarr"] if prediction is None else [])
        for name in written:
            check_distinct(os.path.join(out_dir, volume.name, name), inputs)


def _ignore_ids(ids: Sequence[int], unlabelled: int | None) -> tuple[int, ...]:
    """The ids the segmentation scores leave out: ``ids`` and the ``unlabelled`` id (affinities'
    ``ignore_label``), sorted.

    Example:
        >>> _ignore_ids((0,), 5), _ignore_ids([3, 0], None)
        ((0, 5), (0, 3))
    """
    ids = [ids] if np.ndim(ids) == 0 else list(ids)
    if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ConfigError(f"ignore_ids must be ground-truth ids (whole numbers >= 0), e.g. --ignore-ids 0,5; "
                          f"got {ids!r}")
    return tuple(sorted({int(i) for i in ids} | ({int(unlabelled)} if unlabelled is not None else set())))


def _single_channel(path: str, channel: int | None) -> int | None:
    """The net's channel that a ``(z, y, x)`` prediction holds (``ekn predict --channel K``, from its
    record; None without one), checked against ``channel``: None, or that channel (0 without a record).

    Raises:
        ConfigError: ``channel`` names another channel of the net.
    """
    from ekn_core.prediction.blockwise import finished_prediction

    record = finished_prediction(path)
    recorded = None if record is None else record.get("channel")
    if channel not in (None, 0 if recorded is None else recorded):
        held = "" if recorded is None else f", channel {recorded} of the net (ekn predict --channel {recorded})"
        raise ConfigError(f"the prediction {path!r} is one (z, y, x) channel{held} and not channel {channel}: "
                          "leave --channel out, or predict that channel")
    if recorded == 0 and channel is None:
        log.warning("the prediction %s is channel 0 of the net (ekn predict --channel 0), evaluated as the "
                    "probability of the labels' positive class; of a 2-class softmax that is channel 1 (channel 0 "
                    "is the background): predict --channel 1, or give --channel 0 if channel 0 is meant", path)
    return recorded if channel is None else channel


def _prediction_out_dir(prediction: str) -> str:
    """``<prediction without suffix>.evaluation`` beside it."""
    from ekn_core.volumes import split_key

    return os.path.splitext(split_key(prediction)[0].rstrip("/"))[0] + ".evaluation"


def _tta_offsets(affinity: dict[str, Any] | None, tta: Any, loss: Any) -> list[list[int]] | None:
    """The nhood the prediction engine needs for exact TTA of affinities: given only when the model's
    loss does not declare its offsets itself (a net trained with a plain loss, evaluated with --nhood)."""
    if affinity is None or tta is None or hasattr(loss, "affinity_offsets"):
        return None
    return affinity["nhood"]


def _affinity_setup(loss: Any, nhood: Any, n_lab: int, *, channel: int | None, interior: bool, positive: int | None,
                    base_params: Params | None) -> tuple[dict[str, Any], AffinitySegmenter]:
    """The ``affinities`` record of the options and the base parameters of an affinity net."""
    for name, value in (("channel", channel), ("interior", interior or None), ("positive", positive)):
        if value is not None:
            raise ConfigError(f"{name} selects a boundary channel, but the channels are affinities (one per edge of "
                              "the nhood); leave --" + name + " out")
    if isinstance(base_params, WatershedParams):
        raise ConfigError("per_slice and anisotropy (WatershedParams) are watershed parameters; affinities are "
                          "segmented by an affinity segmenter (AffinityParams, WaterzParams, MutexParams): leave them "
                          "out")
    nh, source = resolve_nhood(loss, nhood)
    channels = connected_channels(n_lab, len(nh))
    record = {"nhood": nh.tolist(), "nhood_source": source, "channels": list(range(n_lab))[channels]}
    return record, dataclasses.replace(base_params or AffinityParams(), nhood=nh)


def _checked_volumes(volumes: Sequence[ValidationVolume], affinities: bool) -> list[ValidationVolume]:
    volumes = list(volumes)
    if not volumes:
        raise ConfigError("no volumes to evaluate; give at least one raw volume with labels or ids")
    names = [v.name for v in volumes]
    if len(set(names)) < len(names):
        raise ConfigError(f"volume names {names} repeat; give each volume a distinct name (--name)")
    for v in volumes:
        if v.labels is None and v.ids is None:
            raise ConfigError(f"volume {v.name!r} has neither labels nor ids; give binary labels (--labels), "
                              "ground-truth ids (--ids), or both")
        if affinities and v.ids is None:
            raise ConfigError(f"volume {v.name!r} has no ids: affinities are evaluated against the affinity graph "
                              "of ground-truth ids; give them (--ids)")
        if affinities and v.labels is not None:
            raise ConfigError(f"volume {v.name!r}: affinities are evaluated against the affinity graph of the ids, "
                              "not against binary labels; leave --labels out")
    return volumes


def _relative(paths: dict[str, str], out_dir: str) -> dict[str, str]:
    return {key: os.path.relpath(path, out_dir) for key, path in paths.items()}


def _values(pred: Any, window: tuple[slice, ...], options: _Options) -> np.ndarray:
    """The evaluated probabilities of a window of the prediction: ``(z, y, x)`` of the channel,
    or ``(n_edges, z, y, x)`` of P(connected)."""
    values = prediction_values(pred[(options.read_channels(), *window)])
    return values if options.affinities else values[0]


def _sweep(pred: Any, pred_offset: Shape, box: tuple[Shape, Shape], views: dict[str, Any], offsets: dict[str, Shape],
           options: _Options, name: str) -> ThresholdCurves:
    """The threshold sweep of the box, chunk by chunk of the prediction (at ``pred_offset``)."""
    if options.affinities is not None:
        nhood = np.array(options.affinities["nhood"])
    elif "labels" in views:
        labels, label_offset = views["labels"], offsets["labels"]
    curves = ThresholdCurves(options.bins, options.positive)
    for sel in _blocks(*(tuple(c - o for c, o in zip(corner, pred_offset)) for corner in box), _spatial_chunks(pred)):
        lo, hi = (tuple(getattr(s, end) + o for s, o in zip(sel, pred_offset)) for end in ("start", "stop"))
        if options.affinities is None:
            truth = (_read(labels, box_window(lo, hi, label_offset)) if "labels" in views  # else chunk by chunk:
                     else labels_from_ids(views["ids"], (lo, hi), offsets["ids"], options.interior))
            ignore = options.ignore_label
        else:
            ids, inner = _read_ids(views["ids"], (lo, hi), offsets["ids"], halo=int(np.abs(nhood).max()))
            truth, ignore = affinity_labels(ids, nhood, options.ignore_label)[(slice(None), *inner)], None
        try:
            curves.add(_values(pred, sel, options), truth, ignore)
        except EknError as err:
            raise type(err)(f"volume {name!r}, {options.describe_channels()}: {err}") from None
    return curves


def _evaluate_volume(model: str | None, volume: ValidationVolume, folder: str, options: _Options, n_points: int,
                     progress: bool) -> tuple[dict[str, Any], ThresholdCurves]:
    """Prediction (or the given one), threshold sweep, figures and segmentation search of one volume."""
    from ekn_core.prediction.blockwise import predict_volume

    seconds = {}
    with _opened(volume) as views, contextlib.ExitStack() as stack:
        given = None if options.prediction is None else stack.enter_context(_open_prediction(options.prediction))
        box, offsets = _layout(volume, views, None if given is None else (options.prediction, given[0].shape[1:]))
        box_shape = tuple(b - a for a, b in zip(*box))
        use_ids = "ids" in views and options.segmentation
        if use_ids:
            try:
                check_memory(box_shape, min(options.n_proc, n_points),
                             *options.memory_per_voxel(), fix="evaluate a part with --region z0:z1,y0:y1,x0:x1 "
                             "(region= of the volume in Python), use fewer --n-proc, or --no-segmentation")
            except ConfigError as err:
                raise ConfigError(f"volume {volume.name!r}: {err}") from None
        if given is None:
            log.info("volume %s: predicting the labelled box %s..%s into %s", volume.name, box[0], box[1], folder)
            t = time.perf_counter()
            path = os.path.join(folder, "prediction.zarr")
            summary = predict_volume(model, volume.raw, path, roi=box, pad=True, mfp=options.mfp,
                                     tile=options.tile, memory_budget=options.memory_budget, workers=options.workers,
                                     scheduler=options.scheduler, progress=progress, tta=options.tta,
                                     affinity_offsets=options.tta_affinity_offsets)
            seconds["prediction"] = time.perf_counter() - t
            pred, pred_offset = stack.enter_context(_open_prediction(path))[0], box[0]
            pred_record = {"path": os.path.relpath(path, os.path.dirname(folder)), "blocks": summary["blocks"],
                           "cached_blocks": summary["skipped"]}
        else:
            pred, pred_offset = given[0], offsets["prediction"]
            pred_record = {"path": options.prediction, "offset": list(pred_offset)}
        t = time.perf_counter()
        curves = _sweep(pred, pred_offset, box, views, offsets, options, volume.name)
        values = _values(pred, box_window(*box, pred_offset), options) if use_ids else None
        ev = curves.result()
        seconds["curves"] = time.perf_counter() - t
        t = time.perf_counter()
        figures = _figures(ev, folder, volume.name)
        seconds["figures"] = time.perf_counter() - t
        search = None
        if values is not None:
            t = time.perf_counter()
            ids, inner = _read_ids(views["ids"], box, offsets["ids"])
            log.info("volume %s: segmentation search over %d grid points (%d process(es))", volume.name, n_points,
                     options.n_proc)
            search = _segment(1.0 - values if options.interior else values, ids[inner], folder, options)
            seconds["segmentation"] = time.perf_counter() - t
    record = {
        "name": volume.name, "raw": volume.raw, "labels": volume.labels, "ids": volume.ids,
        "labels_from_ids": "labels" not in views,
        "region": None if volume.region is None else [list(c) for c in volume.region],
        "box": {"lo": list(box[0]), "hi": list(box[1]), "shape": list(box_shape)},
        "prediction": pred_record, "binary": _binary_record(ev), "figures": _relative(figures, os.path.dirname(folder)),
        "segmentation": search, "seconds": seconds,
    }
    return record, curves


def _segment(values: np.ndarray, ids: np.ndarray, folder: str, options: _Options) -> dict[str, Any]:
    """Searches the segmentation parameters, saves the table and the best segmentation."""
    from ekn_plugins.evaluation.seg_search import search_segmentation
    from ekn_plugins.evaluation.segmentation import save_segmentation

    search = search_segmentation(values, ids, options.grid, options.metric, options.n_proc, options.base(),
                                 ignore_labels=options.ignore_ids)
    json_path, md_path = search.save(folder + os.sep)
    seg_path = save_segmentation(search.best_params.segment(values), os.path.join(folder, "segmentation.zarr"))
    parent = os.path.dirname(folder)
    return {"segmenter": search.segmenter, "metric": search.metric, "points": len(search.rows),
            "params": search.best_params.to_dict(), "scores": search.best_scores,
            "table": os.path.relpath(md_path, parent), "search": os.path.relpath(json_path, parent),
            "volume": os.path.relpath(seg_path, parent)}
