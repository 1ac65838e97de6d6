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

The steps are modules of their own: :mod:`~ekn_plugins.evaluation.inputs` (checks and defaults),
:mod:`~ekn_plugins.evaluation.options` (the settings), :mod:`~ekn_plugins.evaluation.volume_evaluation`
(one volume) over :mod:`~ekn_plugins.evaluation.box_layout` (where the box lies),
:mod:`~ekn_plugins.evaluation.ground_truth` (labels and ids) and
:mod:`~ekn_plugins.evaluation.prediction_reading` (the prediction, block by block); this module
holds :func:`evaluate_model`, which runs them and pools the volumes.

``OUT/evaluation.json`` holds everything machine-readable and ``OUT/REPORT.md``
(:mod:`~ekn_plugins.evaluation.report`) the human-readable summary; every file is written
atomically.

Without labels, the binary labels are the boundaries of the ids: ELEKTRONN2's ``ids2barriers``
with :data:`~ekn_plugins.evaluation.ground_truth.BARRIER_OPTIONS` (the labels ``ekn data synth``
writes). ``interior=True`` says the evaluated channel is the interior (cell) probability: the
segmentation floods ``1 - p`` and labels derived from ids are the non-boundary voxels; given labels
are always compared with the channel as they are (1 = what the channel predicts).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Sequence

import numpy as np

from ekn_core.errors import ConfigError
from ekn_core.prediction.tiling import Shape
from ekn_plugins.data.patches import Region, parse_region
from ekn_plugins.evaluation.affinities import recorded_nhood
from ekn_plugins.evaluation.binary import ThresholdCurves
from ekn_plugins.evaluation.ground_truth import BARRIER_OPTIONS
from ekn_plugins.evaluation.inputs import (affinity_setup, check_label_values, check_outputs, check_source,
                                          checked_volumes, evaluated_channel, ignored_ids, prediction_out_dir,
                                          single_channel, tta_offsets)
from ekn_plugins.evaluation.options import EvaluationOptions
from ekn_plugins.evaluation.prediction_reading import open_prediction
from ekn_plugins.evaluation.runs import default_out_dir, model_fingerprint, resolve_model, run_validation_spec
from ekn_plugins.evaluation.seg_search import METRICS, Params, default_grid, grid_points
from ekn_plugins.evaluation.segmentation import AffinitySegmenter, WatershedParams
from ekn_plugins.evaluation.volume_evaluation import binary_record, evaluate_volume, relative_paths, write_figures
from ekn_plugins.validation.spec import ValidationVolume

log = logging.getLogger("ekn.evaluation")


def evaluate_model(model: str | None = None, volumes: Sequence[ValidationVolume] | None = None,
                   out_dir: str | None = None, *, prediction: str | None = None,
                   channel: int | None = None, interior: bool = False, positive: int | None = None,
                   ignore_label: int | None = None, ignore_ids: Sequence[int] = (0,), region: Region | None = None,
                   bins: int = 1000,
                   affinities: bool | None = None, nhood: str | Any = None,
                   segmentation: bool = True, grid: dict[str, Sequence[Any]] | None = None, metric: str = "vi",
                   n_proc: int = 1, base_params: Params | None = None, mfp: bool = False,
                   tta: Any = None, tile: Shape | str | None = "auto", memory_budget: int | str | None = None,
                   workers: int | None = None, scheduler: str | None = None, progress: bool = True,
                   grey_range: tuple[float, float] | None = None, overwrite: bool = False) -> dict[str, Any]:
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
        channel: Output channel to evaluate (default: see :func:`~ekn_plugins.evaluation.inputs.evaluated_channel`).
        interior: The channel is the interior (cell) probability, not the boundary probability.
        positive: Class id of multi-class labels that the channel predicts (the others are
            negative); None: binary labels 0/1.
        ignore_label: Label value of unlabelled voxels in the volumes' ``labels`` (None: the run's
            ``volume_validation`` ``ignore_label`` for run volumes, applied to those with labels);
            refused when a volume has no labels (its labels derived from the ids are 0 and 1 only:
            leave ids out with ``ignore_ids``). For affinities, the id whose edges are unlabelled
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
            None: True when the model feeds an affinity loss (``MalisNLL``) or its model file records
            the affinity offsets of its training targets (:mod:`ekn_core.training_data`), False for
            a given prediction.
        nhood: The affinities' neighbourhood: a name of
            :data:`~ekn_plugins.evaluation.affinities.NHOODS` or ``(n_edges, 3)`` offsets; default
            the ``MalisNLL`` node's, else the one the model file records, else ``'3d'``.
        segmentation: Search the segmentation parameters for volumes with ids.
        grid, metric, n_proc, base_params: Of :func:`~ekn_plugins.evaluation.seg_search.search_segmentation`
            (``base_params``: e.g. ``per_slice`` and ``anisotropy`` of :class:`WatershedParams`, or
            an affinity segmenter's (:class:`~ekn_plugins.evaluation.segmentation.AffinityParams`, the
            default, ``WaterzParams`` or ``MutexParams``), whose ``nhood`` is replaced by the evaluated
            one).
        mfp, tta, tile, memory_budget, workers, scheduler, progress, grey_range, overwrite: Of
            :func:`~ekn_core.prediction.blockwise.predict_volume` (not with ``prediction``;
            ``overwrite`` replaces an ``OUT/<name>/prediction.zarr`` that no ekn job wrote).

    Returns:
        The record written to ``evaluation.json``.
    """
    from ekn_core.atomic import write_json
    from ekn_core.prediction.blockwise import NetSpec, adapt
    from ekn_core.prediction.net import affinity_loss_node
    from ekn_plugins.evaluation.report import write_report

    started = time.perf_counter()
    check_source(model, prediction, volumes, {"mfp": mfp, "tta": tta, "tile": tile != "auto",
                                              "memory_budget": memory_budget, "workers": workers,
                                              "scheduler": scheduler, "grey_range": grey_range,
                                              "overwrite": overwrite})
    chosen, loss, given, recorded = None, None, None, None
    given_ignore_label = ignore_label  # not the run's, which applies to its labels only
    if prediction is None:
        chosen = resolve_model(model)
        if chosen.which:
            log.info("evaluating %s (the %s model of run %s)", chosen.path, chosen.which, chosen.run.path)
        node = NetSpec(chosen.path).load()
        n_lab, loss = adapt(node).n_lab, affinity_loss_node(node)
        recorded = recorded_nhood(node)  # the affinities it was trained on, if its file says
    else:
        with open_prediction(prediction) as (view, shape):
            n_lab, given = view.shape[0], {"path": prediction, "shape": list(shape), "dtype": str(view.dtype)}
    affinities = (loss is not None or recorded is not None) if affinities is None else bool(affinities)
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
    volumes = checked_volumes(volumes, affinities)
    if not affinities:
        check_label_values(volumes, given_ignore_label)
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if isinstance(n_proc, bool) or not isinstance(n_proc, (int, np.integer)) or n_proc < 1:
        raise ConfigError(f"n_proc must be a number of processes >= 1, got {n_proc!r}")
    if affinities:
        affinity, base = affinity_setup(loss, nhood, n_lab, channel=channel, interior=interior, positive=positive,
                                        base_params=base_params, recorded=recorded)
        channel = net_channel = None
    else:
        if nhood is not None:
            raise ConfigError("nhood describes affinity channels: evaluate them with --affinities (affinities=True)")
        if isinstance(base_params, AffinitySegmenter):
            raise ConfigError(f"{type(base_params).__name__} segment affinities: evaluate them with --affinities "
                              "(affinities=True)")
        one_channel = given is not None and len(given["shape"]) == 3
        if one_channel:  # the file's one channel, the net's recorded one
            given["net_channel"], channel = single_channel(prediction, channel), 0
        affinity, base, channel = None, base_params or WatershedParams(), evaluated_channel(n_lab, channel)
        net_channel = given["net_channel"] if one_channel else channel  # recorded with the segmentation search
    n_points = len(grid_points(grid, base))  # checks the grid before anything is predicted
    ignore_ids = ignored_ids(ignore_ids, ignore_label if affinities else None)
    options = EvaluationOptions(channel, affinity, bool(interior), positive, ignore_label, ignore_ids, bins,
                                segmentation, base.kind,
                                {k: list(v) for k, v in (default_grid(base) if grid is None else grid).items()},
                                metric, n_proc, base.to_dict(), prediction, mfp, tta, tile, memory_budget, workers,
                                scheduler, tta_offsets(affinity, tta, loss, recorded),
                                None if grey_range is None else tuple(float(v) for v in grey_range), bool(overwrite))
    out_dir = os.path.abspath(out_dir or (default_out_dir(chosen) if chosen else prediction_out_dir(prediction)))
    check_outputs(out_dir, volumes, prediction)
    pooled, records = ThresholdCurves(bins, positive), []
    for volume in volumes:
        record, curves = evaluate_volume(chosen.path if chosen else None, volume, os.path.join(out_dir, volume.name),
                                         options, n_points, progress, net_channel)
        pooled.merge(curves)
        records.append(record)
    pooled_ev = pooled.result()
    pooled_figures = write_figures(pooled_ev, out_dir, "pooled over " + ", ".join(v.name for v in volumes))
    result = {
        "format": "ekn-evaluation", "version": 1, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "model": model_fingerprint(chosen) if chosen else None, "prediction": given, "out_dir": out_dir,
        "settings": {**dataclasses.asdict(options), "labels_from_ids": BARRIER_OPTIONS},
        "volumes": records,
        "pooled": {"binary": binary_record(pooled_ev), "figures": relative_paths(pooled_figures, out_dir)},
        "seconds": time.perf_counter() - started,
    }
    write_json(os.path.join(out_dir, "evaluation.json"), result, strict=True)  # NaN (e.g. precision at 1) -> null
    write_report(result, os.path.join(out_dir, "REPORT.md"))
    return result