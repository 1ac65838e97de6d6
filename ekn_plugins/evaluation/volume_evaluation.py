"""The evaluation of one volume: its prediction (made by the model into ``OUT/<name>/prediction.zarr``,
cached, or the given one), the threshold sweep of the labelled box chunk by chunk, the figures,
and with ids the segmentation search and the best segmentation (``OUT/<name>/segmentation.zarr``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from typing import Any

import numpy as np

from ekn_core.errors import ConfigError, EknError
from ekn_core.prediction.tiling import Shape, box_window
from ekn_plugins.evaluation.affinities import affinity_labels
from ekn_plugins.evaluation.binary import BinaryEvaluation, ThresholdCurves
from ekn_plugins.evaluation.box_layout import box_layout
from ekn_plugins.evaluation.ground_truth import labels_from_ids, open_labelled_volume, read_ids
from ekn_plugins.evaluation.options import EvaluationOptions
from ekn_plugins.evaluation.prediction_reading import (grid_blocks, open_prediction, prediction_values, read_window,
                                                       spatial_chunks)
from ekn_plugins.validation.segmentation_metrics import check_memory
from ekn_plugins.validation.spec import ValidationVolume

log = logging.getLogger("ekn.evaluation")

#: The curve arrays left out of ``evaluation.json`` (``ThresholdCurves`` rebuilds them from the histograms).
CURVE_FIELDS = ("roc_fpr", "roc_tpr", "pr_recall", "pr_precision")


def binary_record(ev: BinaryEvaluation) -> dict[str, Any]:
    """The record of a threshold sweep in ``evaluation.json``: its summary without the curve arrays."""
    return {key: value for key, value in ev.to_dict().items() if key not in CURVE_FIELDS}


def write_figures(ev: BinaryEvaluation, folder: str, title: str) -> dict[str, str]:
    """Writes ``performance.png`` and ``error_histogram.png`` of a sweep into ``folder``; returns their paths."""
    from ekn_plugins.evaluation.binary import plot_error_histogram, plot_performance

    return {"performance": plot_performance(ev, os.path.join(folder, "performance.png"), title=title),
            "error_histogram": plot_error_histogram(ev, os.path.join(folder, "error_histogram.png"))}


def relative_paths(paths: dict[str, str], out_dir: str) -> dict[str, str]:
    """``paths`` relative to ``out_dir`` (as ``evaluation.json`` records them)."""
    return {key: os.path.relpath(path, out_dir) for key, path in paths.items()}


def evaluated_values(pred: Any, window: tuple[slice, ...], options: EvaluationOptions) -> np.ndarray:
    """The evaluated probabilities of a window of the prediction: ``(z, y, x)`` of the channel,
    or ``(n_edges, z, y, x)`` of P(connected)."""
    values = prediction_values(pred[(options.read_channels(), *window)])
    return values if options.affinities else values[0]


def sweep_box(pred: Any, pred_offset: Shape, box: tuple[Shape, Shape], views: dict[str, Any],
              offsets: dict[str, Shape], options: EvaluationOptions, name: str) -> ThresholdCurves:
    """The threshold sweep of the box, chunk by chunk of the prediction (at ``pred_offset``)."""
    if options.affinities is not None:
        nhood = np.array(options.affinities["nhood"])
    elif "labels" in views:
        labels, label_offset = views["labels"], offsets["labels"]
    curves = ThresholdCurves(options.bins, options.positive)
    for sel in grid_blocks(*(tuple(c - o for c, o in zip(corner, pred_offset)) for corner in box),
                           spatial_chunks(pred)):
        lo, hi = (tuple(getattr(s, end) + o for s, o in zip(sel, pred_offset)) for end in ("start", "stop"))
        if options.affinities is None:  # ignore_label is a value of given labels, not of those from ids (0/1)
            truth = (read_window(labels, box_window(lo, hi, label_offset)) if "labels" in views  # else chunk by chunk:
                     else labels_from_ids(views["ids"], (lo, hi), offsets["ids"], options.interior))
            ignore = options.ignore_label if "labels" in views else None
        else:
            ids, inner = read_ids(views["ids"], (lo, hi), offsets["ids"], halo=int(np.abs(nhood).max()))
            truth, ignore = affinity_labels(ids, nhood, options.ignore_label)[(slice(None), *inner)], None
        try:
            curves.add(evaluated_values(pred, sel, options), truth, ignore)
        except EknError as err:
            raise type(err)(f"volume {name!r}, {options.describe_channels()}: {err}") from None
    return curves


def evaluate_volume(model: str | None, volume: ValidationVolume, folder: str, options: EvaluationOptions,
                    n_points: int, progress: bool, net_channel: int | None = None) -> tuple[dict[str, Any],
                                                                                        ThresholdCurves]:
    """Prediction (or the given one), threshold sweep, figures and segmentation search of one volume
    (``net_channel``: the net's output channel that ``options.channel`` is, recorded with the search)."""
    from ekn_core.prediction.blockwise import predict_volume

    seconds = {}
    with open_labelled_volume(volume) as views, contextlib.ExitStack() as stack:
        given = None if options.prediction is None else stack.enter_context(open_prediction(options.prediction))
        box, offsets = box_layout(volume, views, None if given is None else (options.prediction, given[0].shape[1:]))
        box_shape = tuple(b - a for a, b in zip(*box))
        use_ids = "ids" in views and options.segmentation
        if use_ids:
            try:
                check_memory(box_shape, min(options.n_proc, n_points),
                             *options.memory_per_voxel(), fix="evaluate a part with --roi z0:z1,y0:y1,x0:x1 "
                             "(region= of the volume in Python), use fewer --processes, or --no-segmentation")
            except ConfigError as err:
                raise ConfigError(f"volume {volume.name!r}: {err}") from None
        if given is None:
            log.info("volume %s: predicting the labelled box %s..%s into %s", volume.name, box[0], box[1], folder)
            t = time.perf_counter()
            path = os.path.join(folder, "prediction.zarr")
            summary = predict_volume(model, volume.raw, path, roi=box, pad=True, mfp=options.mfp,
                                     tile=options.tile, memory_budget=options.memory_budget, workers=options.workers,
                                     scheduler=options.scheduler, progress=progress, tta=options.tta,
                                     affinity_offsets=options.tta_affinity_offsets, grey_range=options.grey_range,
                                     overwrite=options.overwrite)
            seconds["prediction"] = time.perf_counter() - t
            pred, pred_offset = stack.enter_context(open_prediction(path))[0], box[0]
            pred_record = {"path": os.path.relpath(path, os.path.dirname(folder)), "blocks": summary["blocks"],
                           "cached_blocks": summary["skipped"]}
        else:
            pred, pred_offset = given[0], offsets["prediction"]
            pred_record = {"path": options.prediction, "offset": list(pred_offset)}
        t = time.perf_counter()
        curves = sweep_box(pred, pred_offset, box, views, offsets, options, volume.name)
        values = evaluated_values(pred, box_window(*box, pred_offset), options) if use_ids else None
        ev = curves.result()
        seconds["curves"] = time.perf_counter() - t
        t = time.perf_counter()
        figures = write_figures(ev, folder, volume.name)
        seconds["figures"] = time.perf_counter() - t
        search = None
        if values is not None:
            t = time.perf_counter()
            ids, inner = read_ids(views["ids"], box, offsets["ids"])
            log.info("volume %s: segmentation search over %d grid points (%d process(es))", volume.name, n_points,
                     options.n_proc)
            search = segment_box(1.0 - values if options.interior else values, ids[inner], folder, options,
                                 net_channel)
            seconds["segmentation"] = time.perf_counter() - t
    record = {
        "name": volume.name, "raw": volume.raw, "labels": volume.labels, "ids": volume.ids,
        "labels_from_ids": "labels" not in views,
        "region": None if volume.region is None else [list(c) for c in volume.region],
        "box": {"lo": list(box[0]), "hi": list(box[1]), "shape": list(box_shape)},
        "prediction": pred_record, "binary": binary_record(ev),
        "figures": relative_paths(figures, os.path.dirname(folder)),
        "segmentation": search, "seconds": seconds,
    }
    return record, curves


def segment_box(values: np.ndarray, ids: np.ndarray, folder: str, options: EvaluationOptions,
                net_channel: int | None) -> dict[str, Any]:
    """Searches the segmentation parameters, saves the table (with the net's channel and its
    polarity, for ``ekn segment --params``) and the best segmentation."""
    from ekn_plugins.evaluation.seg_search import search_segmentation
    from ekn_plugins.evaluation.segmentation import save_segmentation

    search = search_segmentation(values, ids, options.grid, options.metric, options.n_proc, options.base(),
                                 ignore_labels=options.ignore_ids)
    search = dataclasses.replace(search, channel=net_channel, interior=options.interior)
    json_path, md_path = search.save(folder + os.sep)
    seg_path = save_segmentation(search.best_params.segment(values), os.path.join(folder, "segmentation.zarr"))
    parent = os.path.dirname(folder)
    return {"segmenter": search.segmenter, "metric": search.metric, "points": len(search.rows),
            "params": search.best_params.to_dict(), "scores": search.best_scores,
            "table": os.path.relpath(md_path, parent), "search": os.path.relpath(json_path, parent),
            "volume": os.path.relpath(seg_path, parent)}
