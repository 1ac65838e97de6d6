"""Evaluation of a trained model on labelled volumes: ELEKTRONN2's ``evaluate_model_binary``, out
of core and resumable (``ekn evaluate``).

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
    ekn_core.errors.ConfigError: the net predicts 3 channels (0, 1, 2); say which one to evaluate ...
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from typing import Any, Sequence

import numpy as np

from ekn_core.errors import ConfigError, EknError
from ekn_core.prediction.tiling import Shape
from ekn_plugins.data.image import center_offset
from ekn_plugins.data.patches import Region, parse_region
from ekn_plugins.evaluation.binary import BinaryEvaluation, ThresholdCurves
from ekn_plugins.evaluation.runs import ChosenModel, default_out_dir, resolve_model, run_validation_spec
from ekn_plugins.evaluation.seg_search import DEFAULT_GRID, METRICS, grid_points
from ekn_plugins.evaluation.segmentation import WatershedParams
from ekn_plugins.validation.evaluate import evaluation_roi
from ekn_plugins.validation.spec import ValidationVolume

log = logging.getLogger("ekn.evaluation")

#: ``ids2barriers`` options for binary labels derived from ids: 2-voxel boundaries between
#: different ids along every axis, extracellular space (id 0) counted as boundary.
BARRIER_OPTIONS = {"dilute": False, "connectivity": True, "ecs_as_barr": True}
#: Memory per voxel of the box held for the segmentation: ids, boundary probability, the best segmentation.
BOX_BYTES_PER_VOXEL = 24
#: Memory per voxel of one segmentation worker (watershed, seeds, distances, scores; about 100 measured).
SEARCH_BYTES_PER_VOXEL = 128
#: The curve arrays left out of ``evaluation.json`` (``ThresholdCurves`` rebuilds them from the histograms).
CURVE_FIELDS = ("roc_fpr", "roc_tpr", "pr_recall", "pr_precision")


def evaluated_channel(n_lab: int, channel: int | None = None) -> int:
    """The output channel to evaluate: ``channel`` if given, else 1 of a 2-class softmax
    (2 channels), 0 of a single sigmoid channel.

    Raises:
        ConfigError: ``channel`` does not exist, or the net has more channels and none was given.
    """
    channels = ", ".join(str(c) for c in range(n_lab))
    if channel is None:
        if n_lab in (1, 2):
            return n_lab - 1
        raise ConfigError(f"the net predicts {n_lab} channels ({channels}); say which one to evaluate with "
                          "--channel K (channel= in Python): the probability of the labels' positive class")
    if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)) or not 0 <= channel < n_lab:
        raise ConfigError(f"channel {channel!r} does not exist: the net predicts {n_lab} channel(s) ({channels})")
    return int(channel)


def _blocks(shape: Shape, block: Shape) -> Iterator[tuple[slice, ...]]:
    """The boxes of a grid of ``block`` over ``shape``, in C order (the last ones cut)."""
    counts = [-(-s // b) for s, b in zip(shape, block)]
    for index in np.ndindex(*counts):
        yield tuple(slice(i * b, min((i + 1) * b, s)) for i, b, s in zip(index, block, shape))


def _window(lo: Shape, hi: Shape, offset: Shape) -> tuple[slice, ...]:
    return tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, offset))


def _read(view: Any, window: tuple[slice, ...]) -> np.ndarray:
    """The spatial ``window`` of a one-channel ``(1, z, y, x)`` view as ``(z, y, x)``."""
    return np.asarray(view[(slice(None), *window)])[0]


@contextlib.contextmanager
def _opened(volume: ValidationVolume) -> Iterator[dict[str, Any]]:
    """The volume's raw, labels and ids (those given), channels first."""
    from ekn_core.prediction.blockwise import as_channel_volume
    from ekn_core.volumes import open_volume

    with contextlib.ExitStack() as stack:
        views = {}
        for what in ("raw", "labels", "ids"):
            path = getattr(volume, what)
            if path is None:
                continue
            try:
                views[what] = as_channel_volume(stack.enter_context(open_volume(path)))
            except Exception as err:  # any reader's error: name the volume
                raise ConfigError(f"volume {volume.name!r}: cannot read {what} {path!r}: "
                                  f"{type(err).__name__}: {err}") from err
            if what != "raw" and views[what].shape[0] != 1:
                raise ConfigError(f"volume {volume.name!r}: {what} {path!r} has {views[what].shape[0]} channels; "
                                  f"give one (z, y, x) {what} volume")
        yield views


def _layout(volume: ValidationVolume, views: dict[str, Any]) -> tuple[tuple[Shape, Shape], dict[str, Shape]]:
    """The evaluated box (raw coordinates) and the offsets of labels and ids in raw."""
    raw_shape = tuple(views["raw"].shape[1:])
    offsets, extents = {}, {}
    try:
        for what in ("labels", "ids"):
            if what in views:
                extents[what] = tuple(views[what].shape[1:])
                offsets[what] = center_offset(raw_shape, extents[what])
        box = evaluation_roi(raw_shape, extents["labels" if "labels" in views else "ids"], volume.region)
    except EknError as err:
        raise ConfigError(f"volume {volume.name!r}: {err}") from None
    if "labels" in views and "ids" in views:
        ids_hi = tuple(o + s for o, s in zip(offsets["ids"], extents["ids"]))
        if any(a < o or b > h for a, b, o, h in zip(*box, offsets["ids"], ids_hi)):
            raise ConfigError(f"volume {volume.name!r}: the ids {extents['ids']} (raw voxels {offsets['ids']}.."
                              f"{ids_hi}) do not cover the labelled box {box[0]}..{box[1]}; give ids at least as "
                              "large as the labels, or a --region inside both")
    return box, offsets


def check_memory(name: str, box_shape: Shape, workers: int) -> None:
    """Checks that the box of a volume fits into the available memory for the segmentation
    (``workers`` segmentation processes, 0 without the search).

    Raises:
        EknError: It does not, with what to do instead.
    """
    import psutil

    voxels = int(np.prod(box_shape))
    need = voxels * (BOX_BYTES_PER_VOXEL + SEARCH_BYTES_PER_VOXEL * workers)
    available = psutil.virtual_memory().available
    if need > available:
        search = f" and a segmentation search in {workers} process(es)" if workers else ""
        raise EknError(f"volume {name!r}: holding its labelled box {tuple(box_shape)} ({voxels} voxels) in memory for "
                       f"the ids{search} needs about {need / 2**20:,.0f} MiB, but {available / 2**20:,.0f} MiB are "
                       "available; evaluate a part with --region z0:z1,y0:y1,x0:x1 (region= of the volume in "
                       "Python), use fewer --n-proc, or --no-segmentation")


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
    """The settings of one evaluation (recorded in ``evaluation.json``)."""

    channel: int
    interior: bool
    positive: int | None
    ignore_label: int | None
    bins: int
    segmentation: bool
    grid: dict[str, list[Any]]
    metric: str
    n_proc: int
    base_params: dict[str, Any]
    mfp: bool
    tta: Any
    tile: Any
    memory_budget: Any
    workers: int | None
    scheduler: str | None


def evaluate_model(model: str, volumes: Sequence[ValidationVolume] | None = None, out_dir: str | None = None, *,
                   channel: int | None = None, interior: bool = False, positive: int | None = None,
                   ignore_label: int | None = None, region: Region | None = None, bins: int = 1000,
                   segmentation: bool = True, grid: dict[str, Sequence[Any]] | None = None, metric: str = "vi",
                   n_proc: int = 1,
                   base_params: WatershedParams | None = None, mfp: bool = False, tta: Any = None,
                   tile: Shape | str | None = "auto", memory_budget: int | str | None = None,
                   workers: int | None = None, scheduler: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Evaluates a model on labelled volumes and writes ``OUT/evaluation.json`` and ``OUT/REPORT.md``.

    Args:
        model: Model file, ``module:factory``, or a run directory (its ``models/best.mdl``, else
            ``models/latest.mdl``).
        volumes: The volumes; each needs ``labels`` (binary, 1 = what the channel predicts) or
            ``ids`` (ground-truth object ids; then the labels are their boundaries) or both.
            None: the ``volume_validation`` volumes of the model's run.
        out_dir: Output folder; None: ``<run>/evaluation/<model stem>`` for a model of a run, else
            ``<model without .mdl>.evaluation``.
        channel: Output channel to evaluate (default: see :func:`evaluated_channel`).
        interior: The channel is the interior (cell) probability, not the boundary probability.
        positive: Class id of multi-class labels that the channel predicts (the others are
            negative); None: binary labels 0/1.
        ignore_label: Label value of unlabelled voxels (None: the run's ``volume_validation``
            ``ignore_label`` for run volumes).
        region: Evaluate only this box ``((z0, y0, x0), (z1, y1, x1))`` of every raw volume,
            instead of the volumes' own regions (e.g. a part that fits into memory).
        bins: Histogram bins of the threshold sweep (:class:`ThresholdCurves`).
        segmentation: Search the watershed parameters for volumes with ids.
        grid, metric, n_proc, base_params: Of :func:`~ekn_plugins.evaluation.seg_search.search_segmentation`
            (``base_params``: e.g. ``per_slice`` and ``anisotropy``).
        mfp, tta, tile, memory_budget, workers, scheduler, progress: Of
            :func:`~ekn_core.prediction.blockwise.predict_volume`.

    Returns:
        The record written to ``evaluation.json``.
    """
    from ekn_core.atomic import write_json
    from ekn_core.prediction.blockwise import NetSpec, adapt
    from ekn_plugins.evaluation.report import write_report

    started = time.perf_counter()
    chosen = resolve_model(model)
    if volumes is None:
        if chosen.run is None:
            raise ConfigError(f"{model} belongs to no run directory, so there are no run volumes to evaluate: give "
                              "the volumes (ekn evaluate MODEL RAW --labels LABELS or --ids IDS)")
        spec = run_validation_spec(chosen.run)
        volumes = spec.volumes
        ignore_label = spec.ignore_label if ignore_label is None else ignore_label
    if region is not None:
        volumes = [dataclasses.replace(v, region=parse_region(region, "region")) for v in volumes]
    volumes = _checked_volumes(volumes)
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if isinstance(n_proc, bool) or not isinstance(n_proc, (int, np.integer)) or n_proc < 1:
        raise ConfigError(f"n_proc must be a number of processes >= 1, got {n_proc!r}")
    base_params = base_params or WatershedParams()
    n_points = len(grid_points(grid, base_params))  # checks the grid before anything is predicted
    pooled = ThresholdCurves(bins, positive)
    if chosen.which:
        log.info("evaluating %s (the %s model of run %s)", chosen.path, chosen.which, chosen.run.path)
    n_lab = adapt(NetSpec(chosen.path).load()).n_lab
    options = _Options(evaluated_channel(n_lab, channel), bool(interior), positive, ignore_label, bins, segmentation,
                       {k: list(v) for k, v in (DEFAULT_GRID if grid is None else grid).items()}, metric, n_proc,
                       base_params.to_dict(), mfp, tta, tile, memory_budget, workers, scheduler)
    out_dir = os.path.abspath(out_dir or default_out_dir(chosen))
    records = []
    for volume in volumes:
        record, curves = _evaluate_volume(chosen.path, volume, os.path.join(out_dir, volume.name), options,
                                          n_points, progress)
        pooled.merge(curves)
        records.append(record)
    pooled_ev = pooled.result()
    pooled_figures = _figures(pooled_ev, out_dir, "pooled over " + ", ".join(v.name for v in volumes))
    result = {
        "format": "ekn-evaluation", "version": 1, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "model": model_fingerprint(chosen), "out_dir": out_dir,
        "settings": {**dataclasses.asdict(options), "labels_from_ids": BARRIER_OPTIONS},
        "volumes": records,
        "pooled": {"binary": _binary_record(pooled_ev), "figures": _relative(pooled_figures, out_dir)},
        "seconds": time.perf_counter() - started,
    }
    write_json(os.path.join(out_dir, "evaluation.json"), result)
    write_report(result, os.path.join(out_dir, "REPORT.md"))
    return result


def _checked_volumes(volumes: Sequence[ValidationVolume]) -> list[ValidationVolume]:
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
    return volumes


def _relative(paths: dict[str, str], out_dir: str) -> dict[str, str]:
    return {key: os.path.relpath(path, out_dir) for key, path in paths.items()}


def _evaluate_volume(model: str, volume: ValidationVolume, folder: str, options: _Options, n_points: int,
                     progress: bool) -> tuple[dict[str, Any], ThresholdCurves]:
    """Prediction, threshold sweep, figures and segmentation search of one volume."""
    from ekn_core.prediction.blockwise import predict_volume
    from ekn_core.volumes import open_volume

    seconds = {}
    with _opened(volume) as views:
        box, offsets = _layout(volume, views)
        box_shape = tuple(b - a for a, b in zip(*box))
        use_ids = "ids" in views and (options.segmentation or "labels" not in views)
        if use_ids:
            check_memory(volume.name, box_shape, min(options.n_proc, n_points) if options.segmentation else 0)
        log.info("volume %s: predicting the labelled box %s..%s into %s", volume.name, box[0], box[1], folder)
        t = time.perf_counter()
        prediction = os.path.join(folder, "prediction.zarr")
        summary = predict_volume(model, volume.raw, prediction, roi=box, pad=True, mfp=options.mfp,
                                 tile=options.tile, memory_budget=options.memory_budget, workers=options.workers,
                                 scheduler=options.scheduler, progress=progress, tta=options.tta)
        seconds["prediction"] = time.perf_counter() - t
        t = time.perf_counter()
        if "labels" in views:
            labels, label_offset = views["labels"], offsets["labels"]
        else:
            labels, label_offset = labels_from_ids(views["ids"], box, offsets["ids"], options.interior)[None], box[0]
        curves = ThresholdCurves(options.bins, options.positive)
        with open_volume(prediction) as pred:
            for sel in _blocks(box_shape, tuple(pred.chunks[1:]) if pred.chunks else box_shape):
                lo = tuple(a + s.start for a, s in zip(box[0], sel))
                hi = tuple(a + s.stop for a, s in zip(box[0], sel))
                try:
                    curves.add(pred[(options.channel, *sel)], _read(labels, _window(lo, hi, label_offset)),
                               options.ignore_label)
                except EknError as err:
                    raise type(err)(f"volume {volume.name!r}, channel {options.channel}: {err}") from None
            boundary = np.asarray(pred[options.channel]) if use_ids and options.segmentation else None
        ev = curves.result()
        seconds["curves"] = time.perf_counter() - t
        t = time.perf_counter()
        figures = _figures(ev, folder, volume.name)
        seconds["figures"] = time.perf_counter() - t
        search = None
        if boundary is not None:
            t = time.perf_counter()
            ids, inner = _read_ids(views["ids"], box, offsets["ids"])
            log.info("volume %s: segmentation search over %d grid points (%d process(es))", volume.name, n_points,
                     options.n_proc)
            search = _segment(1.0 - boundary if options.interior else boundary, ids[inner], folder, options)
            seconds["segmentation"] = time.perf_counter() - t
    record = {
        "name": volume.name, "raw": volume.raw, "labels": volume.labels, "ids": volume.ids,
        "labels_from_ids": "labels" not in views,
        "region": None if volume.region is None else [list(c) for c in volume.region],
        "box": {"lo": list(box[0]), "hi": list(box[1]), "shape": list(box_shape)},
        "prediction": {"path": os.path.relpath(prediction, os.path.dirname(folder)), "blocks": summary["blocks"],
                       "cached_blocks": summary["skipped"]},
        "binary": _binary_record(ev), "figures": _relative(figures, os.path.dirname(folder)),
        "segmentation": search, "seconds": seconds,
    }
    return record, curves


def _segment(boundary: np.ndarray, ids: np.ndarray, folder: str, options: _Options) -> dict[str, Any]:
    """Searches the watershed parameters, saves the table and the best segmentation."""
    from ekn_plugins.evaluation.seg_search import search_segmentation
    from ekn_plugins.evaluation.segmentation import save_segmentation, watershed_segmentation

    search = search_segmentation(boundary, ids, options.grid, options.metric, options.n_proc,
                                 WatershedParams(**options.base_params))
    json_path, md_path = search.save(folder + os.sep)
    seg_path = save_segmentation(watershed_segmentation(boundary, search.best_params),
                                 os.path.join(folder, "segmentation.zarr"))
    parent = os.path.dirname(folder)
    return {"metric": search.metric, "points": len(search.rows), "params": search.best_params.to_dict(),
            "scores": search.best_scores, "table": os.path.relpath(md_path, parent),
            "search": os.path.relpath(json_path, parent), "volume": os.path.relpath(seg_path, parent)}
