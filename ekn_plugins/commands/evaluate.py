"""``ekn evaluate``: a trained model, or an existing prediction, on labelled volumes: cached
predictions, threshold curves, segmentation search, report
(:func:`~ekn_plugins.evaluation.model_evaluation.evaluate_model`).

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> EvaluateCommand().add_arguments(parser)
    >>> args = parser.parse_args(["run/", "raw.h5:raw", "--ids", "ids.h5:ids", "--grid", '{"threshold": [0.3]}'])
    >>> model_and_raw(args), args.labels, args.ids, parse_grid(args.grid), args.processes, args.affinities
    (('run/', 'raw.h5:raw'), None, 'ids.h5:ids', {'threshold': [0.3]}, 1, None)
    >>> model_and_raw(parser.parse_args(["--prediction", "pred.zarr", "raw.h5:raw", "--ids", "ids.h5:ids"]))
    (None, 'raw.h5:raw')
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from ekn_core.commands import Command, add_gpu_option, add_renamed_option, use_gpu
from ekn_core.errors import ConfigError
from ekn_plugins.commands.predict import (add_grey_range_option, add_overwrite_option, add_prediction_options,
                                          parse_roi, parse_tile)
from ekn_plugins.evaluation.affinities import AFFINITY_SEGMENTERS, DEFAULT_AFFINITY_SEGMENTER, NHOODS


def parse_grid(text: str | None) -> dict[str, Any] | None:
    """``--grid``: a JSON object of value lists by watershed parameter, or the path of a file with one.

    Example:
        >>> parse_grid('{"threshold": [0.2, 0.4], "min_size": [1, 50]}')
        {'threshold': [0.2, 0.4], 'min_size': [1, 50]}
    """
    if text is None:
        return None
    source = text
    if os.path.isfile(text):
        with open(text, encoding="utf-8") as f:
            source = f.read()
    try:
        grid = json.loads(source)
    except ValueError as err:
        raise ConfigError(f"--grid {text!r} is neither JSON nor a JSON file ({err}); write e.g. "
                          "'{\"threshold\": [0.2, 0.3, 0.5], \"min_size\": [1, 50]}'") from None
    if not isinstance(grid, dict):
        raise ConfigError(f"--grid must be a JSON object of lists by parameter, got {grid!r}")
    return grid


def parse_anisotropy(text: str) -> tuple[float, float, float]:
    """``--anisotropy z,y,x`` voxel size.

    Example:
        >>> parse_anisotropy("2,1,1")
        (2.0, 1.0, 1.0)
    """
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise ConfigError(f"--anisotropy {text!r}: write the voxel size z,y,x, e.g. 2,1,1")
    return values


def parse_ids(text: str) -> tuple[int, ...]:
    """``--ignore-ids A,B``: ground-truth ids.

    Example:
        >>> parse_ids("0,5")
        (0, 5)
    """
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--ignore-ids {text!r}: write ids separated by commas, e.g. 0,5") from None


def model_and_raw(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """``(MODEL, RAW)`` of the positional arguments: ``MODEL [RAW]``, or with ``--prediction``
    only ``[RAW]``.

    Raises:
        ConfigError: No model and no ``--prediction``, or both.
    """
    if args.prediction is None:
        if args.model is None:
            raise ConfigError("give a MODEL (model file or run directory) or an existing prediction: "
                              "ekn evaluate --prediction PRED [RAW] --labels LABELS / --ids IDS")
        return args.model, args.raw
    if args.raw is not None or (args.model is not None and _is_model(args.model)):
        raise ConfigError(f"--prediction {args.prediction} replaces MODEL: give either a MODEL or --prediction, "
                          "with at most RAW as positional argument (ekn evaluate --prediction PRED [RAW] --ids IDS)")
    return None, args.model


def segmenter_params(args: argparse.Namespace) -> Any:
    """The segmenter's parameters outside the grid from ``--segmenter``, ``--per-slice`` and
    ``--anisotropy`` (None: the default segmenter with its defaults).

    Example:
        >>> segmenter_params(argparse.Namespace(segmenter="waterz", per_slice=False, anisotropy=None)).kind
        'waterz'
    """
    from ekn_plugins.evaluation.seg_search import SEGMENTERS
    from ekn_plugins.evaluation.segmentation import WatershedParams

    watershed = args.per_slice or args.anisotropy
    if args.segmenter is not None:
        if watershed:
            raise ConfigError("--per-slice and --anisotropy are options of the watershed of a boundary map; "
                              f"--segmenter {args.segmenter} segments affinities: leave them out")
        return SEGMENTERS[args.segmenter]()
    if watershed:
        return WatershedParams(per_slice=args.per_slice, anisotropy=parse_anisotropy(args.anisotropy or "1,1,1"))
    return None


def _is_model(path: str) -> bool:
    """A model file or a run directory (what MODEL names)."""
    return path.endswith(".mdl") or os.path.isfile(os.path.join(path, "run.json"))


class EvaluateCommand(Command):
    """Evaluate a trained model, or an existing prediction, on labelled volumes: curves,
    segmentation search and a report.

    MODEL is a model file or a run directory (its models/best.mdl, else latest.mdl). RAW with
    --labels (binary, 1 = what the evaluated channel predicts) and/or --ids (ground-truth object
    ids; without --labels, their boundaries are the labels) is the volume; without RAW, a run's
    volume_validation volumes are evaluated. The labelled box is predicted into
    OUT/<name>/prediction.zarr (reused by a rerun), swept over all thresholds (ROC, precision-
    recall, F1) and, with ids, segmented by a watershed whose parameters are searched.
    --prediction PRED evaluates what ekn predict wrote instead of MODEL (RAW, if given, only
    checks the shapes). Affinity nets (MALIS: found in the model; --affinities) are swept against
    the affinity graph of --ids and segmented by connected components, waterz's agglomeration or
    the mutex watershed (--segmenter).
    OUT/evaluation.json holds the numbers, OUT/REPORT.md the report with its figures.
    """

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", nargs="?", metavar="MODEL", help="model file, or a run directory (its best "
                            "model, else the latest); left out with --prediction, where the one positional "
                            "argument is RAW")
        parser.add_argument("raw", nargs="?", metavar="RAW", help="raw volume, e.g. raw.h5:raw (default: the "
                            "run's volume_validation volumes)")
        parser.add_argument("--prediction", metavar="PRED", help="evaluate this prediction (what ekn predict "
                            "wrote: the raw volume's shape, or centred in it with --valid; (n_lab, z, y, x) or, "
                            "with --channel, (z, y, x); uint8 = probability x 255) instead of a MODEL")
        parser.add_argument("--labels", help="binary labels, the same size as RAW or smaller and centred in it")
        parser.add_argument("--ids", help="ground-truth object ids (neurons), centred in RAW, for the "
                            "segmentation search; without --labels their boundaries are the labels")
        parser.add_argument("--roi", help="evaluate only this box of RAW, z0:z1,y0:y1,x0:x1 in raw voxels")
        add_renamed_option(parser, "--region", "--roi")
        parser.add_argument("--name", help="name of the volume (default: RAW's file name, else PRED's)")
        add_renamed_option(parser, "--out", "--output")
        parser.add_argument("--output", metavar="DIR", help="output folder (default: RUN/evaluation/<model>/, "
                            "<model>.evaluation/ or <PRED>.evaluation/)")
        parser.add_argument("--channel", type=int, help="output channel to evaluate (default: 1 of two "
                            "softmax channels, 0 of a single sigmoid channel)")
        parser.add_argument("--interior", action="store_true", help="the channel is the interior (cell) "
                            "probability: segment 1 - p, and labels from --ids are the non-boundary voxels")
        parser.add_argument("--positive", type=int, help="class of multi-class labels the channel predicts "
                            "(the others are negative); default: binary labels 0/1")
        parser.add_argument("--ignore-label", type=int, help="label value of unlabelled voxels in --labels; not "
                            "for labels derived from --ids (0/1: leave ids out with --ignore-ids); with --affinities: "
                            "the id whose edges are unlabelled (it is then also left out of the segmentation scores)")
        parser.add_argument("--ignore-ids", default="0", help="ground-truth ids left out of the segmentation "
                            "scores (VI, adapted Rand error), comma-separated (default 0)")
        parser.add_argument("--bins", type=int, default=1000, help="histogram bins of the threshold sweep "
                            "(thresholds resolved to 1/bins)")
        parser.add_argument("--affinities", action=argparse.BooleanOptionalAction, help="the channels are "
                            "affinities: swept against the affinity graph of --ids, segmented by connected "
                            "components (default: when the model feeds an affinity loss such as MalisNLL or its "
                            "file records the affinities it was trained on)")
        parser.add_argument("--nhood", choices=tuple(NHOODS), help="neighbourhood of the affinity channels "
                            "(default: the MalisNLL node's, else the one the model file records, else 3d): "
                            + "; ".join(f"{k}: {d}" for k, d in NHOODS.items()))
        parser.add_argument("--segmenter", choices=tuple(AFFINITY_SEGMENTERS), help="how affinities are segmented "
                            f"(default {DEFAULT_AFFINITY_SEGMENTER}): "
                            + "; ".join(f"{k}: {d}" for k, d in AFFINITY_SEGMENTERS.items()))
        add_prediction_options(parser)
        add_grey_range_option(parser)
        add_overwrite_option(parser, "OUT/<name>/prediction.zarr")
        add_gpu_option(parser)
        parser.add_argument("--no-segmentation", action="store_true", help="skip the segmentation search")
        parser.add_argument("--metric", default="vi", choices=("vi", "adapted_rand_error"),
                            help="score the segmentation search minimises")
        parser.add_argument("--grid", help="segmentation grid as JSON (or a JSON file), e.g. "
                            "'{\"threshold\": [0.2, 0.3, 0.5], \"min_size\": [1, 50]}' (default: 30 watershed "
                            "points; affinities: 12 of connected components, 17 of waterz, 9 of the mutex watershed, "
                            "7 without long-range edges)")
        parser.add_argument("--per-slice", action="store_true", help="watershed: segment every z slice on its own")
        parser.add_argument("--anisotropy", help="watershed: voxel size z,y,x for the seed erosion (default 1,1,1)")
        parser.add_argument("--processes", type=int, default=1, metavar="N", help="processes of the segmentation "
                            "search (default 1)")
        add_renamed_option(parser, "--n-proc", "--processes")

    def run(self, args: argparse.Namespace) -> int:
        from ekn_core.volumes import volume_name
        from ekn_plugins.evaluation.model_evaluation import evaluate_model
        from ekn_plugins.evaluation.report import summary_table
        from ekn_plugins.validation.spec import ValidationVolume

        model, raw = model_and_raw(args)
        if model is None and args.gpu is not None:
            raise ConfigError("--gpu chooses the device that runs a MODEL; with --prediction no model runs: "
                              "leave it out")
        use_gpu(args)
        volumes = None
        if raw is not None or (args.prediction is not None and (args.labels or args.ids)):
            named = raw or args.prediction
            name = args.name or volume_name(named)
            volumes = [ValidationVolume(raw, args.labels, None, name, args.ids)]
        elif args.labels or args.ids or args.name:
            raise ConfigError("--labels, --ids and --name describe a volume RAW: give it after the model, e.g. "
                              "ekn evaluate MODEL raw.h5:raw --labels labels.h5:lab")
        record = evaluate_model(
            model, volumes, args.output, prediction=args.prediction, channel=args.channel, interior=args.interior,
            positive=args.positive, ignore_label=args.ignore_label, ignore_ids=parse_ids(args.ignore_ids),
            region=parse_roi(args.roi),
            bins=args.bins, affinities=args.affinities, nhood=args.nhood, segmentation=not args.no_segmentation,
            grid=parse_grid(args.grid), metric=args.metric, n_proc=args.processes,
            base_params=segmenter_params(args),
            mfp=args.mfp, tta=args.tta, tile=parse_tile(args.tile), memory_budget=args.memory_budget,
            workers=args.workers, scheduler=args.scheduler, progress=not args.no_progress,
            grey_range=args.grey_range, overwrite=args.overwrite)
        print(_evaluated_line(record))
        print(summary_table(record))
        print(f"report: {os.path.join(record['out_dir'], 'REPORT.md')}")
        return 0


def _evaluated_line(record: dict[str, Any]) -> str:
    """``model PATH (...), channel K`` or ``prediction PATH (shape), ...``: what was evaluated."""
    model, settings = record["model"], record["settings"]
    if model is None:
        prediction = record["prediction"]
        source = f"prediction {prediction['path']} {tuple(prediction['shape'])}"
    else:
        which = f" (the {model['which']} model of run {model['run']})" if model["which"] else ""
        source = f"model {model['path']}{which}"
    affinities = settings["affinities"]
    what = (f"affinity channels {affinities['channels']} ({affinities['nhood_source']})" if affinities
            else f"channel {settings['channel']}")
    return f"{source}, {what}"
