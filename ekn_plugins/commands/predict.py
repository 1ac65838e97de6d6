"""``ekn predict``: dense prediction of a volume of any size, resumable, optionally on Dask.

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> PredictCommand().add_arguments(parser)
    >>> args = parser.parse_args(["m.ekn", "raw.h5:raw", "out.zarr", "--roi", "0:10,5:50,5:50"])
    >>> parse_roi(args.roi), args.tile
    (((0, 5, 5), (10, 50, 50)), 'auto')
"""

from __future__ import annotations

import argparse

from ekn_core.commands import Command, add_gpu_option, use_gpu
from ekn_core.errors import ConfigError
from ekn_core.prediction.tta import PRESETS
from ekn_plugins.evaluation.affinities import NHOODS, named_nhood


def parse_roi(text: str | None, option: str = "--roi") -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """``"z0:z1,y0:y1,x0:x1"`` → ``((z0, y0, x0), (z1, y1, x1))``; errors name ``option``.

    Example:
        >>> parse_roi("0:8,10:20,3:9")
        ((0, 10, 3), (8, 20, 9))
    """
    if not text:
        return None
    try:
        parts = [tuple(int(v) for v in axis.split(":")) for axis in text.split(",")]
        if len(parts) != 3 or any(len(p) != 2 for p in parts):
            raise ValueError
    except ValueError:
        raise ConfigError(f"{option} {text!r}: write three ranges start:stop for z, y, x, "
                          "e.g. 0:64,0:512,0:512") from None
    return tuple(p[0] for p in parts), tuple(p[1] for p in parts)


def parse_tile(text: str) -> tuple[int, ...] | str | None:
    """``auto``, ``model`` (the model's own patch) or a patch ``Z,Y,X`` / ``Y,X``.

    Example:
        >>> parse_tile("23,185,185"), parse_tile("model"), parse_tile("auto")
        ((23, 185, 185), None, 'auto')
    """
    if text in ("auto", "model"):
        return None if text == "model" else text
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--tile {text!r}: use auto, model, or a patch such as 23,185,185") from None


def parse_overlap(text: str) -> int | tuple[int, ...]:
    """``N`` (every axis) or ``Z,Y,X`` output voxels of tile overlap.

    Example:
        >>> parse_overlap("8"), parse_overlap("2,8,8")
        (8, (2, 8, 8))
    """
    try:
        values = tuple(int(v) for v in text.split(","))
        if len(values) not in (1, 3):
            raise ValueError
    except ValueError:
        raise ConfigError(f"--overlap {text!r}: give one number for every axis, or three: Z,Y,X (e.g. 2,16,16)"
                          ) from None
    return values[0] if len(values) == 1 else values


def add_prediction_options(parser: argparse.ArgumentParser) -> None:
    """Adds the options of how a model predicts (``--mfp``, ``--tile``, ``--memory-budget``,
    ``--scheduler``/``--workers``, ``--tta``, ``--no-progress``), shared by the commands that
    predict (``ekn predict``, ``ekn evaluate``).

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_prediction_options(parser)
        >>> args = parser.parse_args(["--mfp", "--workers", "2", "--tta", "flips"])
        >>> args.mfp, args.tile, args.workers, args.scheduler, args.tta, args.no_progress
        (True, 'auto', 2, None, 'flips', False)
    """
    parser.add_argument("--mfp", action="store_true", help="reload the model with max-fragment pooling "
                        "active: one forward pass per tile")
    parser.add_argument("--tile", default="auto", help="input patch per pass: auto (fastest within the "
                        "memory budget), model (the model's own), or Z,Y,X")
    parser.add_argument("--memory-budget", help="memory of this machine for nets and buffers, e.g. 4G "
                        "(default: a quarter of the RAM or of a Slurm job's/container's limit, at most 8G; "
                        "--workers N share it, each --scheduler worker has it)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="Dask scheduler, e.g. tls://host:8786 (secure it: "
                       "a scheduler runs the code its clients send)")
    where.add_argument("--workers", type=int, metavar="N", help="start a local Dask cluster with N workers "
                       "(TLS with temporary credentials)")
    parser.add_argument("--tta", choices=PRESETS, help="test-time augmentation: mean "
                        "over all flips of the spatial axes (8 passes in 3-D), +transpose also swaps y and x "
                        "(16 passes)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_grey_range_option(parser: argparse.ArgumentParser) -> None:
    """Adds ``--grey-range LOW HIGH``, the raw values a model's input maps to 0 and 1 (``ekn predict``,
    ``ekn evaluate``; ``grey_range=`` of :func:`~ekn_core.prediction.blockwise.predict_volume`).

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_grey_range_option(parser)
        >>> parser.parse_args(["--grey-range", "0", "4095"]).grey_range
        [0.0, 4095.0]
    """
    parser.add_argument("--grey-range", nargs=2, type=float, metavar=("LOW", "HIGH"), help="raw values mapped "
                        "to 0 and 1 (default: the input dtype's range, e.g. 0 255 for uint8), for data whose "
                        "dtype misleads: 0 4095 for 12-bit data in uint16, 0 255 for a uint16 copy of 8-bit data; "
                        "raw whose dtype range differs from the raw the model was trained on is refused without it")


def add_overwrite_option(parser: argparse.ArgumentParser, output: str = "OUTPUT") -> None:
    """Adds ``--overwrite``: replace an existing ``output`` that no ekn job wrote (the rule of
    :func:`~ekn_core.prediction.blockwise.check_output_replaceable`; ``ekn predict``, ``ekn segment``,
    ``ekn evaluate``).

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_overwrite_option(parser)
        >>> parser.parse_args([]).overwrite, parser.parse_args(["--overwrite"]).overwrite
        (False, True)
    """
    parser.add_argument("--overwrite", action="store_true", help=f"replace an existing {output} that no ekn job "
                        "wrote (outputs of ekn jobs are resumed or replaced without it)")


class PredictCommand(Command):
    """Predict a volume densely with a trained model (out of core, resumable, optionally on Dask).

    MODEL is a saved model file or module:factory; INPUT and OUTPUT are volumes (file.h5:key,
    x.zarr, a KNOSSOS data set). OUTPUT gets (n_lab, z, y, x) float32 chunks as blocks finish
    (zarr by default; uint8 probabilities for KNOSSOS, which stores no floating point);
    rerunning the same command after an interruption skips finished blocks. An OUTPUT that no ekn
    job wrote is refused unless --overwrite; INPUT whose dtype range differs from the raw the model
    was trained on is refused unless --grey-range states its scaling.
    """

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", help="saved model file, or module:factory returning a node")
        parser.add_argument("input", help="input volume, e.g. raw.h5:raw, raw.zarr, knossos.conf, "
                            "'sections/*.tif', stack.tif, precomputed://file:///data/em")
        parser.add_argument("output", help="output volume, e.g. pred.zarr (default format), pred.h5:probs, "
                            "'pred/*.tif' (one TIFF per section), precomputed://file:///data/pred")
        parser.add_argument("--roi", help="output region z0:z1,y0:y1,x0:x1 in input voxels (default: all)")
        parser.add_argument("--overlap", default="0", help="tile overlap in output voxels (blended), N or Z,Y,X")
        parser.add_argument("--blend", default="gaussian", choices=("gaussian", "linear", "constant"),
                            help="blending of overlapping tiles")
        parser.add_argument("--valid", action="store_true", help="predict only voxels whose whole field of "
                            "view is inside the volume (default: mirror at the border, output = input shape)")
        parser.add_argument("--uint8", action="store_true", help="write uint8 (probability x 255)")
        parser.add_argument("--channel", type=int, help="write only this output channel, as (z, y, x)")
        parser.add_argument("--batch-size", type=int, help="forward passes per call (default: from the budget)")
        add_grey_range_option(parser)
        add_overwrite_option(parser)
        add_prediction_options(parser)
        add_gpu_option(parser)
        parser.add_argument("--nhood", choices=tuple(NHOODS), help="with --tta: the model predicts affinities "
                            "of this neighbourhood (one channel or 2-class softmax pair per edge), restored exactly "
                            "under the flips; models with an affinity loss (MalisNLL) or trained on the patch "
                            "source's affinities know theirs: "
                            + "; ".join(f"{k}: {v}" for k, v in NHOODS.items()))

    def run(self, args: argparse.Namespace) -> int:
        from ekn_core.prediction.blockwise import predict_volume

        if args.nhood and not args.tta:
            raise ConfigError("--nhood tells --tta how to restore affinity channels; without --tta it does "
                              "nothing: add --tta or leave --nhood out")
        use_gpu(args)
        summary = predict_volume(
            args.model, args.input, args.output, roi=parse_roi(args.roi), pad=not args.valid, mfp=args.mfp,
            tile=parse_tile(args.tile), overlap=parse_overlap(args.overlap), blend=args.blend,
            as_uint8=args.uint8, channel=args.channel, memory_budget=args.memory_budget, batch_size=args.batch_size,
            scheduler=args.scheduler, workers=args.workers, progress=not args.no_progress, tta=args.tta,
            affinity_offsets=named_nhood(args.nhood) if args.nhood else None, grey_range=args.grey_range,
            overwrite=args.overwrite)
        rate = summary["voxels"] / max(summary["seconds"], 1e-9)
        print(f"wrote {args.output} {summary['shape']}: {summary['blocks']} blocks "
              f"({summary['skipped']} already done) in {summary['seconds']:.1f} s, {rate:.3g} voxels/s")
        return 0
