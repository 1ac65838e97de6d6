"""``ekn evaluate``: a trained model on labelled volumes: cached predictions, threshold curves,
segmentation search, report (:func:`~ekn_plugins.evaluation.model_evaluation.evaluate_model`).

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> EvaluateCommand().add_arguments(parser)
    >>> args = parser.parse_args(["run/", "raw.h5:raw", "--ids", "ids.h5:ids", "--grid", '{"threshold": [0.3]}'])
    >>> args.raw, args.labels, args.ids, parse_grid(args.grid), args.n_proc, args.tile
    ('raw.h5:raw', None, 'ids.h5:ids', {'threshold': [0.3]}, 1, 'auto')
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from ekn_core.commands import Command
from ekn_core.errors import ConfigError
from ekn_plugins.commands.predict import add_prediction_options, parse_roi, parse_tile


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


class EvaluateCommand(Command):
    """Evaluate a trained model on labelled volumes: curves, segmentation search and a report.

    MODEL is a model file or a run directory (its models/best.mdl, else latest.mdl). RAW with
    --labels (binary, 1 = what the evaluated channel predicts) and/or --ids (ground-truth object
    ids; without --labels, their boundaries are the labels) is the volume; without RAW, a run's
    volume_validation volumes are evaluated. The labelled box is predicted into
    OUT/<name>/prediction.zarr (reused by a rerun), swept over all thresholds (ROC, precision-
    recall, F1) and, with ids, segmented by a watershed whose parameters are searched.
    OUT/evaluation.json holds the numbers, OUT/REPORT.md the report with its figures.
    """

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", help="model file, or a run directory (its best model, else the latest)")
        parser.add_argument("raw", nargs="?", help="raw volume, e.g. raw.h5:raw (default: the run's "
                            "volume_validation volumes)")
        parser.add_argument("--labels", help="binary labels, the same size as RAW or smaller and centred in it")
        parser.add_argument("--ids", help="ground-truth object ids (neurons), centred in RAW, for the "
                            "segmentation search; without --labels their boundaries are the labels")
        parser.add_argument("--region", help="evaluate only this box of RAW, z0:z1,y0:y1,x0:x1 in raw voxels")
        parser.add_argument("--name", help="name of the volume (default: RAW's file name)")
        parser.add_argument("--out", help="output folder (default: RUN/evaluation/<model>/ or "
                            "<model>.evaluation/)")
        parser.add_argument("--channel", type=int, help="output channel to evaluate (default: 1 of two "
                            "softmax channels, 0 of a single sigmoid channel)")
        parser.add_argument("--interior", action="store_true", help="the channel is the interior (cell) "
                            "probability: segment 1 - p, and labels from --ids are the non-boundary voxels")
        parser.add_argument("--positive", type=int, help="class of multi-class labels the channel predicts "
                            "(the others are negative); default: binary labels 0/1")
        parser.add_argument("--ignore-label", type=int, help="label value of unlabelled voxels")
        parser.add_argument("--bins", type=int, default=1000, help="histogram bins of the threshold sweep "
                            "(thresholds resolved to 1/bins)")
        add_prediction_options(parser)
        parser.add_argument("--no-segmentation", action="store_true", help="skip the segmentation search")
        parser.add_argument("--metric", default="vi", choices=("vi", "adapted_rand_error"),
                            help="score the segmentation search minimises")
        parser.add_argument("--grid", help="watershed grid as JSON (or a JSON file), e.g. "
                            "'{\"threshold\": [0.2, 0.3, 0.5], \"min_size\": [1, 50]}' (default: 30 points)")
        parser.add_argument("--per-slice", action="store_true", help="segment every z slice on its own")
        parser.add_argument("--anisotropy", default="1,1,1", help="voxel size z,y,x for the seed erosion")
        parser.add_argument("--n-proc", type=int, default=1, help="processes of the segmentation search")

    def run(self, args: argparse.Namespace) -> int:
        from ekn_core.volumes import split_key
        from ekn_plugins.evaluation.model_evaluation import evaluate_model
        from ekn_plugins.evaluation.report import summary_table
        from ekn_plugins.evaluation.segmentation import WatershedParams
        from ekn_plugins.validation.spec import ValidationVolume

        volumes = None
        if args.raw is not None:
            name = args.name or os.path.splitext(os.path.basename(split_key(args.raw)[0].rstrip("/")))[0]
            volumes = [ValidationVolume(args.raw, args.labels, None, name, args.ids)]
        elif args.labels or args.ids or args.name:
            raise ConfigError("--labels, --ids and --name describe a volume RAW: give it after the model, e.g. "
                              "ekn evaluate MODEL raw.h5:raw --labels labels.h5:lab")
        record = evaluate_model(
            args.model, volumes, args.out, channel=args.channel, interior=args.interior, positive=args.positive,
            ignore_label=args.ignore_label, region=parse_roi(args.region, "--region"), bins=args.bins,
            segmentation=not args.no_segmentation, grid=parse_grid(args.grid), metric=args.metric,
            n_proc=args.n_proc,
            base_params=WatershedParams(per_slice=args.per_slice, anisotropy=parse_anisotropy(args.anisotropy)),
            mfp=args.mfp, tta=args.tta, tile=parse_tile(args.tile), memory_budget=args.memory_budget,
            workers=args.workers, scheduler=args.scheduler, progress=not args.no_progress)
        model = record["model"]
        which = f" (the {model['which']} model of run {model['run']})" if model["which"] else ""
        print(f"model {model['path']}{which}, channel {record['settings']['channel']}")
        print(summary_table(record))
        print(f"report: {os.path.join(record['out_dir'], 'REPORT.md')}")
        return 0
