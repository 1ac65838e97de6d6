"""``ekn segment``: watershed segmentation of a boundary map (or a segmentation of affinities) of any
size, block by block, with ids stitched across blocks
(:func:`~ekn_plugins.evaluation.blockwise_segmentation.segment_volume`).

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> SegmentCommand().add_arguments(parser)
    >>> args = parser.parse_args(["pred.zarr", "seg.zarr", "--threshold", "0.3", "--block", "32,128,128"])
    >>> args.threshold, parse_shape(args.block, "--block"), args.halo, args.processes
    (0.3, (32, 128, 128), None, 1)
"""

from __future__ import annotations

import argparse
from typing import Any

from ekn_core.commands import Command, add_renamed_option
from ekn_core.errors import ConfigError
from ekn_plugins.commands.evaluate import parse_anisotropy
from ekn_plugins.commands.predict import add_overwrite_option, parse_roi

#: Options that set one watershed parameter (option name → WatershedParams field).
PARAM_OPTIONS = {"threshold": float, "seed_erosion": float, "min_seed_size": int, "mask_threshold": float,
                 "min_size": int}


def parse_shape(text: str | None, option: str) -> tuple[int, int, int] | None:
    """``"Z,Y,X"`` (or one number for all three axes) → a tuple of three ints; errors name ``option``.

    Example:
        >>> parse_shape("8,32,32", "--halo"), parse_shape("16", "--halo")
        ((8, 32, 32), (16, 16, 16))
    """
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise ConfigError(f"{option} {text!r}: write three whole numbers Z,Y,X (or one for all axes), e.g. 64,256,256")
    return values


def segmentation_params(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The parameters of the command line: ``--params`` (or the watershed's defaults), with each
    parameter option given on top (for an affinity segmenter, those among its parameters); and what
    the ``--params`` search segmented (:func:`~ekn_plugins.evaluation.blockwise_segmentation.read_params`),
    from one read of the file.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> SegmentCommand().add_arguments(parser)
        >>> params, searched = segmentation_params(parser.parse_args(["p.zarr", "s.zarr", "--params",
        ...                                                          '{"threshold": 0.3}', "--min-size", "9"]))
        >>> params.threshold, params.min_size, searched
        (0.3, 9, {})
    """
    import dataclasses

    from ekn_plugins.evaluation.blockwise_segmentation import read_params
    from ekn_plugins.evaluation.segmentation import WatershedParams

    params, searched = read_params(args.params) if args.params else (WatershedParams(), {})
    changes = {name: getattr(args, name) for name in PARAM_OPTIONS if getattr(args, name) is not None}
    if args.per_slice:
        changes["per_slice"] = True
    if args.anisotropy is not None:
        changes["anisotropy"] = parse_anisotropy(args.anisotropy)
    fields = {field.name for field in dataclasses.fields(params)}
    foreign = sorted(set(changes) - fields)
    if foreign:
        raise ConfigError(f"--params holds parameters of the {params.kind} segmenter, which has no "
                          f"{', '.join('--' + name.replace('_', '-') for name in foreign)}: leave them out")
    return dataclasses.replace(params, **changes), searched


class SegmentCommand(Command):
    """Segment a boundary map of any size by watershed, block by block, ids stitched across blocks.

    INPUT holds boundary probabilities (1 = membrane), e.g. ekn predict's output: (c, z, y, x) or
    (z, y, x), float in [0, 1] or uint8 (p x 255); or affinities, when --params holds the
    parameters of an affinity segmenter (affinity, waterz, mutex: the seg_params.json of ekn
    evaluate --affinities). Every block is segmented with a halo; segments
    of neighbouring blocks that are each other's majority in their overlap are joined, and OUTPUT
    gets consecutive ids (uint32, uint64 if they do not fit). The parameters come from --params
    (the seg_params.json of ekn evaluate, whose channel and --interior are used unless given)
    and the options. Rerunning the same command after an
    interruption skips finished blocks; intermediate files are kept in OUTPUT.ekn-segment/. An
    OUTPUT that no ekn job wrote is refused unless --overwrite.
    """

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("input", help="boundary probabilities (or affinities, see --params), e.g. pred.zarr, "
                            "pred.h5:probs")
        parser.add_argument("output", help="segmentation, e.g. seg.zarr (default format), seg.h5:seg")
        parser.add_argument("--channel", type=int, help="channel of a (c, z, y, x) input (default: the one the "
                            "--params search of ekn evaluate segmented, else 1 of two softmax channels, 0 of one)")
        parser.add_argument("--interior", action="store_true", default=None, help="the channel is the interior "
                            "(cell) probability: segment 1 - p (default: as the --params search of ekn evaluate "
                            "did)")
        parser.add_argument("--params", help="parameters as a JSON file (seg_params.json of ekn evaluate) or JSON "
                            "text: an object such as {\"threshold\": 0.3, \"min_size\": 50} (watershed) or {\"segmenter\": \"waterz\", "
                            "\"threshold\": 0.4} (an affinity segmenter: INPUT holds affinities); the options below "
                            "override it")
        parser.add_argument("--threshold", type=float, help="voxels below it are interior; their components are the "
                            "seeds (default 0.5)")
        parser.add_argument("--seed-erosion", type=float, help="erode the seeds by this distance (voxels of the "
                            "finest axis; default 0)")
        parser.add_argument("--min-seed-size", type=int, help="drop seeds of fewer voxels (default 1)")
        parser.add_argument("--mask-threshold", type=float, help="voxels above it stay 0 (default: flood all)")
        parser.add_argument("--min-size", type=int, help="segments of fewer voxels: the watershed merges them into "
                            "their neighbours (counting the voxels within a block with its halo); an affinity "
                            "segmenter (affinity, waterz, mutex) leaves them unassigned, 0 (counting the voxels of "
                            "the whole stitched segment) (default 1)")
        parser.add_argument("--per-slice", action="store_true", help="segment every z slice on its own")
        parser.add_argument("--anisotropy", help="voxel size z,y,x for the seed erosion and the halo, e.g. 2,1,1")
        parser.add_argument("--block", default="64,256,256", help="block (core) shape Z,Y,X (default 64,256,256)")
        parser.add_argument("--halo", help="voxels segmented around each block, Z,Y,X (default: 16 plus the seed "
                            "erosion along the finest axis, scaled by the anisotropy; 0 along z with --per-slice)")
        parser.add_argument("--roi", help="segment only this box, z0:z1,y0:y1,x0:x1 in input voxels (default: all)")
        where = parser.add_mutually_exclusive_group()
        where.add_argument("--processes", type=int, default=1, metavar="N", help="processes that segment blocks "
                           "(default 1)")
        where.add_argument("--scheduler", metavar="ADDRESS", help="Dask scheduler, e.g. tls://host:8786, whose "
                           "workers segment the blocks (they must see INPUT and OUTPUT's folder under the same paths)")
        add_renamed_option(parser, "--workers", "--processes", " (local processes; --workers N of ekn predict and "
                           "ekn evaluate starts a local Dask cluster)")
        add_overwrite_option(parser)
        parser.add_argument("--no-progress", action="store_true", help="no progress bars")

    def run(self, args: argparse.Namespace) -> int:
        from ekn_plugins.evaluation.blockwise_segmentation import segment_volume

        params, searched = segmentation_params(args)
        summary = segment_volume(
            args.input, args.output, params, block=parse_shape(args.block, "--block"),
            halo=parse_shape(args.halo, "--halo"), roi=parse_roi(args.roi), channel=args.channel,
            interior=args.interior, searched=searched, workers=args.processes, scheduler=args.scheduler,
            progress=not args.no_progress, overwrite=args.overwrite)
        rate = summary["voxels"] / max(summary["seconds"], 1e-9)
        print(f"wrote {args.output} {summary['shape']} {summary['dtype']}: {summary['segments']} segments, "
              f"{summary['blocks']} blocks ({summary['skipped']} already done), {summary['merges']} merges "
              f"across block faces, in {summary['seconds']:.1f} s, {rate:.3g} voxels/s")
        return 0
