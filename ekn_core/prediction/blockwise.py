"""Out-of-core dense prediction: any ``open_volume`` input into a chunked ``create_volume``
output, block by block, with peak memory bounded by a budget and not by the volume size.

The output region (input coordinates; the whole volume or a ROI) is cut into blocks that are
unions of tiles of one global :class:`~ekn_core.prediction.tiling.TileGrid`. A block reads its
input once (its tiles' windows, the net's context included; mirrored beyond the volume border),
is predicted by :func:`~ekn_core.prediction.dense.predict_region`, and is written to the output,
whose chunks divide the block shape. Every finished block is appended to a progress log
(``OUTPUT.ekn-progress``, fsync'ed after the output was flushed and synced to the disk); a rerun
of the same job skips finished blocks, so a killed run resumes and ends identical to an
uninterrupted one.

Example:
    >>> import numpy as np, os, tempfile
    >>> from ekn_core.prediction.tiling import TileGeometry
    >>> plan = make_plan(TileGeometry((5, 9, 9), (1, 1, 1), (1, 4, 4)), in_shape=(40, 300, 300),
    ...                  in_channels=1, n_lab=2, memory_budget=64 * 2**20)
    >>> plan.out_shape, plan.block, len(plan.blocks()) > 1
    ((40, 300, 300), (25, 188, 188), True)
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np

from ekn_core.atomic import sync_file_system
from ekn_core.errors import ConfigError, EknError, ShapeError
from ekn_core.prediction.dense import auto_batch_size, predict_region, progress_label, to_uint8
from ekn_core.grey import check_grey, to_grey
from ekn_core.prediction.source import ChannelFirst, read_window
from ekn_core.prediction.tiling import Shape, TileGeometry, TileGrid, blend_mode, box_window, tile_step
from ekn_core.prediction.tta import describe, model_net, transforms_of, tta_net
from ekn_core.training_data import prediction_grey_range, training_data_of

log = logging.getLogger("ekn.prediction")

#: Largest block (output voxels) even when the budget allows more: keeps resume granularity.
MAX_BLOCK_VOXELS = 2**25

#: Largest output chunk per axis.
CHUNK_CAP = 128


@dataclass(frozen=True)
class Plan:
    """How a volume is predicted: the global grid, the block shape and the batching.

    Attributes:
        geometry: Net geometry (3 spatial axes; 2-D nets are lifted with a z patch of 1).
        origin, end: Output region in input coordinates.
        block: Block shape in output voxels (a multiple of the grid step); the last block of an axis
            may be longer by less than a tile (:attr:`block_counts`).
        overlap: Tile overlap; blend: blend mode when tiles overlap (else None).
        batch_size: Forward passes per call.
        tta: Test-time augmentation transforms (:mod:`ekn_core.prediction.tta`); ``()``: none.
        affinity_offsets: With ``tta``, the per-channel offsets of an affinity net (None: per-voxel
            outputs); Dask workers restore the channels with them.
        grey_range: The raw values mapped to 0 and 1 (None: the dtype's range,
            :func:`ekn_core.grey.to_grey`).
        anchor: A point of the tile lattice of the whole volume when ``origin`` is not on it (a
            ROI of a net with a shift period > 1; :class:`~ekn_core.prediction.tiling.TileGrid`).
        blend_asked: The blend mode the job asked for. Not part of the plan itself: the fingerprint
            names it where tiles overlap only through the shift period, as earlier versions, which
            blended such tiles (to the same output), did, so their unfinished jobs resume.
    """

    geometry: TileGeometry
    origin: Shape
    end: Shape
    block: Shape
    overlap: Shape
    blend: str | None
    batch_size: int
    tta: tuple[str, ...] = ()
    affinity_offsets: tuple[tuple[int, ...], ...] | None = None
    grey_range: tuple[float, float] | None = None
    anchor: Shape | None = None
    blend_asked: str | None = None

    @property
    def grid(self) -> TileGrid:
        """The global tile grid."""
        return TileGrid(self.geometry, self.origin, self.end, self.overlap, self.anchor)

    @property
    def out_shape(self) -> Shape:
        """Spatial shape of the output volume."""
        return tuple(e - o for o, e in zip(self.origin, self.end))

    @property
    def block_counts(self) -> Shape:
        """Blocks per axis: one per seam of the block lattice at or before the last tile start, so
        that the last tile (moved back to end at ``end``, :func:`~ekn_core.prediction.tiling.tile_starts`)
        lies in the last block, which reaches to ``end``."""
        grid = self.grid
        return tuple(1 + (s[-1] - b) // k for s, b, k in zip(grid.starts, grid.base, self.block))

    def block_bounds(self, index: int) -> tuple[Shape, Shape]:
        """``(lo, hi)`` of block ``index`` (C order over the blocks; input coordinates). Blocks are laid
        out from the grid's first tile start, so their seams fall between tiles also where the region
        does not start on the tile lattice (the first block is then cut at ``origin``); the last block of
        an axis ends at ``end`` (it is longer than ``block`` by less than a tile where the last tile
        was moved back across a seam of the lattice, see :attr:`block_counts`)."""
        counts = self.block_counts
        pos = np.unravel_index(index, counts)
        lo = tuple(b + int(p) * s for b, p, s in zip(self.grid.base, pos, self.block))
        return (tuple(max(l, o) for l, o in zip(lo, self.origin)),
                tuple(e if p == n - 1 else l + s
                      for l, s, e, p, n in zip(lo, self.block, self.end, pos, counts)))

    def blocks(self) -> list[tuple[Shape, Shape]]:
        """``(lo, hi)`` of every block, in C order."""
        return [self.block_bounds(i) for i in range(int(np.prod(self.block_counts)))]

    def chunks(self, cap: int = CHUNK_CAP) -> Shape:
        """Output chunk shape (:func:`chunk_shape` of the blocks), so blocks write whole chunks where
        ``origin`` is on the tile lattice (else the first block is cut at ``origin`` and seams can fall
        inside chunks: safe, since one process writes the blocks one after another)."""
        return chunk_shape(self.block, self.out_shape, cap)

    def to_json(self) -> dict[str, Any]:
        """JSON-able description (part of the resume fingerprint)."""
        data = asdict(self)
        data["geometry"] = asdict(self.geometry)
        del data["blend_asked"]
        if self.blend is None and tile_step(self.geometry.tile_out, self.geometry.period) != self.geometry.tile_out:
            data["blend"] = self.blend_asked  # the fingerprint of earlier versions (see blend_asked)
        if not self.tta:
            del data["tta"]  # plans without TTA keep the fingerprint of earlier versions (resume)
        for optional in ("affinity_offsets", "grey_range", "anchor"):
            if data[optional] is None:
                del data[optional]
        if self.block_counts != self.lattice_counts:  # a layout earlier versions did not make: no resume of theirs
            data["block_counts"] = list(self.block_counts)
        return json.loads(json.dumps(data))

    @property
    def lattice_counts(self) -> Shape:
        """Blocks per axis of the whole block lattice up to ``end``: :attr:`block_counts`, plus one where
        the last tile starts before the last seam: the layout of progress logs whose plan has no
        ``block_counts`` (ekn wrote none before the last tile was kept in one block)."""
        return tuple(-(-(e - b) // s) for b, e, s in zip(self.grid.base, self.end, self.block))


def chunk_shape(block: Shape, shape: Shape, cap: int = CHUNK_CAP) -> Shape:
    """Chunks for an output written in blocks: per axis the largest divisor of the block size up to
    ``cap``, so every block writes whole chunks (``cap``, or the axis if shorter, where one block
    covers the axis).

    Example:
        >>> chunk_shape((64, 200, 393), (100, 150, 1000))
        (64, 128, 3)
    """
    return tuple(min(e, cap) if b >= e else _largest_divisor(b, cap) for b, e in zip(block, shape))


def _largest_divisor(n: int, cap: int) -> int:
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


def chunk_friendly_overlap(step: Shape, period: Shape, overlap: Shape, cap: int = CHUNK_CAP) -> Shape:
    """``overlap``, grown where a grid step longer than ``cap`` has no divisor of at least ``cap / 2``
    (e.g. a step of 131 voxels, whose blocks could only have chunks of a divisor of the number of
    tiles): the step shrinks to the nearest multiple of the period with one (131 → 130, chunks of
    65), at most by a quarter. Tiles then overlap by the difference, written over without blending;
    valid nets give the same values there.

    Example:
        >>> chunk_friendly_overlap((131, 84, 262), (1, 4, 2), (0, 0, 0))
        (1, 0, 2)
    """
    out = []
    for s, p, o in zip(step, period, overlap):
        shrink = 0
        if s > cap and _largest_divisor(s, cap) < cap // 2:
            for smaller in range(s - p, (3 * s) // 4 - 1, -p):
                if _largest_divisor(smaller, cap) >= cap // 2:
                    shrink = s - smaller
                    break
        out.append(int(o) + shrink)
    return tuple(out)


def _block_bytes(block: Shape, g: TileGeometry, in_channels: int, n_lab: int) -> float:
    window = np.prod([b + t for b, t in zip(block, g.tile_in)])
    return 4.0 * (2 * in_channels * window + 3 * n_lab * np.prod([b + t for b, t in zip(block, g.tile_out)]))


def make_plan(geometry: TileGeometry, in_shape: Shape, in_channels: int, n_lab: int,
              roi: tuple[Shape, Shape] | None = None, pad: bool = True, overlap: int | Shape = 0,
              blend: str = "gaussian", memory_budget: int = 2**31, batch_size: int | None = None,
              bytes_per_voxel: float = 0.0, fixed_batch: int | None = None,
              tta: tuple[str, ...] = (), affinity_offsets: tuple[tuple[int, ...], ...] | None = None,
              grey_range: tuple[float, float] | None = None) -> Plan:
    """Plans a volume prediction within ``memory_budget`` bytes.

    Half the budget goes to the net (batched passes), half to the block buffers; blocks grow by
    whole grid steps along the axis where they are smallest relative to the region. Tiles keep to
    the lattice of the whole volume (a ROI's result equals that part of the whole volume's), and a
    grid step without a good chunk size is shortened (:func:`chunk_friendly_overlap`).

    Args:
        geometry: Net geometry, 3 spatial axes.
        in_shape: Spatial shape of the input volume.
        in_channels, n_lab: Input and output channels.
        roi: ``(lo, hi)`` output region in input coordinates (default: everything).
        pad: Mirror at the volume border so the whole volume/ROI is predicted; False keeps only
            voxels whose full context lies inside the volume.
        overlap, blend: Tile overlap and blend mode.
        memory_budget: Bytes.
        batch_size: Forward passes per call (default from the budget).
        bytes_per_voxel: Net memory per input voxel per pass (for the default batch size).
        fixed_batch: The net's fixed batch size, if any.
        tta: Test-time augmentation transforms (each runs the batch once more; memory is that
            of one plain call, so the budget is unchanged).
        affinity_offsets: Per-channel offsets of an affinity net under TTA (recorded in the plan).
        grey_range: The raw values mapped to 0 and 1 (None: the dtype's range).
    """
    g = geometry
    lo, hi = roi if roi is not None else ((0,) * len(in_shape), tuple(in_shape))
    lo, hi = tuple(int(v) for v in lo), tuple(int(v) for v in hi)
    if any(l < 0 or h > s or l >= h for l, h, s in zip(lo, hi, in_shape)) or len(lo) != len(in_shape):
        raise ConfigError(f"ROI {lo}..{hi} must be a non-empty box inside the volume {tuple(in_shape)}")
    if not pad:
        lo = tuple(max(l, c) for l, c in zip(lo, g.context_lo))
        hi = tuple(min(h, s - c) for h, s, c in zip(hi, in_shape, g.context_hi))
        if any(l >= h for l, h in zip(lo, hi)):
            raise ShapeError(f"no voxel of {tuple(in_shape)} (ROI {roi}) has its full context "
                             f"{tuple(x + 1 for x in g.lead)} inside the volume; predict with padding")
    ov = (overlap,) * len(lo) if isinstance(overlap, (int, np.integer)) else tuple(int(o) for o in overlap)
    blending = blend_mode(g, ov, blend)  # the overlap asked for, not the chunk-friendly one, is blended
    ov = chunk_friendly_overlap(tile_step(g.tile_out, g.period, ov), g.period, ov)
    whole = (0,) * len(lo) if pad else g.context_lo  # the start of the whole volume's tile grid
    grid = TileGrid(g, lo, hi, ov, whole)
    anchor = whole if grid.base != lo else None
    step = grid.step
    extent = tuple(h - l for l, h in zip(lo, hi))

    class _Budget:  # what auto_batch_size reads
        batch, geometry = fixed_batch, g

    _Budget.bytes_per_voxel = bytes_per_voxel or 1.0
    batch = batch_size or auto_batch_size(_Budget(), memory_budget // 2)
    block = list(step)
    while True:
        ratios = [b / e if b < e else np.inf for b, e in zip(block, extent)]
        axis = int(np.argmin(ratios))
        if ratios[axis] == np.inf:
            break
        trial = list(block)
        trial[axis] += step[axis]
        if (_block_bytes(tuple(trial), g, in_channels, n_lab) > memory_budget // 2
                or np.prod(trial) > MAX_BLOCK_VOXELS):
            break
        block = trial
    return Plan(g, lo, hi, tuple(block), ov, blending, int(batch), tuple(tta), affinity_offsets,
                None if grey_range is None else tuple(float(v) for v in grey_range), anchor, blend)


def as_channel_volume(volume: Any) -> Any:
    """Input volume ``(z, y, x)`` or ``(c, z, y, x)`` → ``(c, z, y, x)`` view."""
    if len(volume.shape) == 3:
        return ChannelFirst(volume)
    if len(volume.shape) == 4:
        return volume
    raise ShapeError(f"input volume must be (z, y, x) or (c, z, y, x), it has shape {tuple(volume.shape)}")


def predict_block(net: Any, volume: Any, plan: Plan, index: int) -> np.ndarray:
    """Predicts block ``index`` of ``plan`` from a ``(c, z, y, x)`` volume; ``(n_lab, *block)``."""
    lo, hi = plan.block_bounds(index)
    g, grid = plan.geometry, plan.grid
    tiles = grid.tiles(lo, hi, blended=plan.blend is not None)
    in_lo = tuple(min(t[a] for t in tiles) - g.context_lo[a] for a in range(g.ndim))
    in_hi = tuple(max(t[a] for t in tiles) - g.context_lo[a] + g.tile_in[a] for a in range(g.ndim))
    data = to_grey(read_window(volume, in_lo, in_hi), plan.grey_range)

    def read(a: Shape, b: Shape) -> np.ndarray:
        return data[(slice(None), *(slice(x - o, y - o) for x, y, o in zip(a, b, in_lo)))]

    return predict_region(net, read, grid, lo, hi, blend=plan.blend, batch_size=plan.batch_size)


class ProgressLog:
    """Append-only record of finished blocks next to the output (crash-safe).

    The first line is the job's JSON fingerprint (written atomically); each finished block adds
    one fsync'ed line. Only complete (newline-terminated) lines count, so a line torn by a crash
    (``done 1`` of ``done 12``) is ignored, and a resumed run marks it torn and starts a new line.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "out.ekn-progress")
        >>> with ProgressLog(path, {"job": 1}) as plog:
        ...     plog.mark(3)
        >>> sorted(ProgressLog(path, {"job": 1}).done), ProgressLog(path, {"job": 2}).done
        ([3], set())
    """

    def __init__(self, path: str, fingerprint: dict[str, Any]):
        self.path, self.fingerprint = path, fingerprint
        self.done: set[int] = set()
        self.resumed = self._torn = False
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                lines = f.read().split("\n")
            try:
                header = json.loads(lines[0])
            except ValueError:
                header = None
            if header == fingerprint:
                self.resumed, self._torn = True, lines[-1] != ""
                for line in lines[1:-1]:  # the last piece has no newline: torn or empty
                    if line.startswith("done ") and line[5:].isdigit():
                        self.done.add(int(line[5:]))
        self._file = None

    def start(self) -> None:
        """Opens the log for appending (a fresh log replaces one of another job)."""
        if not self.resumed:
            write_log_header(self.path, self.fingerprint)
            self.done.clear()
            self.resumed, self._torn = True, False
        self._file = open(self.path, "a", encoding="utf-8")
        if self._torn:  # end the torn line so that it never reads as a block
            self._file.write(" (torn)\n")
            self._torn = False

    def forget(self) -> None:
        """Treats the job as new (its output is gone): :meth:`start` writes a fresh log."""
        self.resumed = False
        self.done.clear()

    def mark(self, index: int) -> None:
        """Records block ``index`` as written (call after the output was flushed)."""
        if self._file is None:
            self.start()
        self._file.write(f"done {index}\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.done.add(index)

    def close(self) -> None:
        """Closes the log file."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "ProgressLog":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def write_log_header(path: str, header: dict[str, Any]) -> None:
    """Replaces the progress log at ``path`` by one holding only ``header`` (atomically, fsync'ed)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(header) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


#: The header of a progress log whose job is replacing the output (no job resumes it).
REPLACING = {"replacing": "an ekn job started replacing this output; rerun a job to start over"}


def progress_path(output: str) -> str:
    """The progress log of an output path (``file.h5:key`` → ``file.h5.key.ekn-progress``; a section
    glob ``out/s*.tif`` → ``out.s_.tif.ekn-progress``, beside its folder, one per pattern).

    Example:
        >>> progress_path("pred.h5:probs"), progress_path("pred.zarr/"), progress_path("pred/*.tif")
        ('pred.h5.probs.ekn-progress', 'pred.zarr.ekn-progress', 'pred._.tif.ekn-progress')
        >>> progress_path("precomputed://file:///data/pred")
        '/data/pred.ekn-progress'
    """
    from ekn_core.volumes import local_path, split_key

    base, key = split_key(os.fspath(output))
    local = local_path(base)
    if local is None:
        raise EknError(f"{output!r} is not on a local disk, but the progress log of a resumable prediction "
                       "lives next to the output: predict to a local path (e.g. precomputed://file:///...) "
                       "and copy the result")
    if glob.has_magic(os.path.basename(local)):
        pattern = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(local))
        local = f"{os.path.dirname(local)}.{pattern}"
    base = local.rstrip("/")
    return f"{base}.{key}.ekn-progress" if key else f"{base}.ekn-progress"


def prediction_status(output: str) -> tuple[dict[str, Any], int, int] | None:
    """What :func:`predict_volume` recorded about ``output``: the header of its progress log
    (``input``, ``input_shape``, ``plan``, ``channel``, ...), the blocks finished and the blocks
    of the plan; None when it has no readable record (made otherwise, or the log was deleted).

    Example:
        >>> prediction_status("/nonexistent/pred.zarr") is None
        True
    """
    try:
        with open(progress_path(output), encoding="utf-8") as f:
            header = json.loads(f.readline())
        plan = header["plan"]
        counts = plan.get("block_counts") or Plan(
            TileGeometry(**plan["geometry"]),
            **{k: v for k, v in plan.items() if k != "geometry"}).lattice_counts
        total = int(np.prod(counts))
    except (OSError, ValueError, TypeError, KeyError, EknError):
        return None
    if not isinstance(header, dict) or not {"input_shape", "input"} <= set(header):
        return None
    done = ProgressLog(progress_path(output), header).done
    return header, len({i for i in done if i < total}), total


def finished_prediction(output: str) -> dict[str, Any] | None:
    """The record of a prediction that :func:`predict_volume` finished (see
    :func:`prediction_status`), None without a record.

    Raises:
        ConfigError: The prediction was stopped before all its blocks were written (the rest
            would be read as zeros).
    """
    status = prediction_status(output)
    if status is None:
        return None
    record, done, total = status
    if done < total:
        raise ConfigError(f"the prediction {output!r} is incomplete: resume `ekn predict … {output}` first "
                          f"({done} of {total} blocks done; the same command resumes it)")
    return record


@dataclass(frozen=True)
class NetSpec:
    """A picklable recipe that loads the net in any process (Dask workers included).

    ``model`` is a saved model (``ekn_core.persistence.modelload``) or ``module:factory``, a
    callable taking the same keyword options and returning a node or model.

    Example:
        >>> NetSpec("my_nets:build", mfp=True).options()
        {'override_mfp_to_active': True, 'imposed_patch_size': None, 'imposed_batch_size': 1}
    """

    model: str
    mfp: bool = False
    patch: Shape | None = None
    batch: int | None = None

    def options(self) -> dict[str, Any]:
        """Keyword options for ``modelload`` / the factory (MFP needs batch 1)."""
        return {"override_mfp_to_active": self.mfp, "imposed_patch_size": self.patch,
                "imposed_batch_size": 1 if self.mfp else self.batch}

    def is_factory(self) -> bool:
        """True for ``module:callable`` specs."""
        import re

        return bool(re.fullmatch(r"[\w.]+:[\w.]+", self.model)) and not os.path.exists(self.model)

    def load(self) -> Any:
        """Loads and returns the prediction node.

        Raises:
            EknError: The file does not exist, or the factory cannot be imported or called with the
                options (the message names the working directory and host, e.g. of a Dask worker).
        """
        if self.is_factory():
            result = self.factory()(**self.options())
        else:
            if not os.path.exists(self.model):
                raise EknError(f"model {self.model!r} does not exist{_where(self.model)} (give a saved model "
                               "file or module:factory)")
            from ekn_core.persistence import modelload

            result = modelload(self.model, **self.options())
        node = getattr(result, "prediction_node", None) or result
        if not hasattr(node, "input_nodes"):
            raise EknError(f"{self.model!r} gave {result!r}, which is neither a model with a prediction "
                           "node nor a node")
        return node

    def factory(self) -> Callable[..., Any]:
        """The callable of a ``module:factory`` spec, checked to accept :meth:`options`.

        Example:
            >>> NetSpec("numpy:zeross").factory()
            Traceback (most recent call last):
            ...
            ekn_core.errors.EknError: model 'numpy:zeross': module 'numpy' has no 'zeross' (did you mean 'zeros'?); ...
        """
        import difflib
        import importlib

        from ekn_core.errors import keyword_names

        module, attr = self.model.split(":")
        try:
            obj: Any = importlib.import_module(module)
        except ImportError as err:
            raise EknError(f"model {self.model!r} is read as module:factory, but importing {module!r} failed "
                           f"({type(err).__name__}: {err}){_where('')}: put the folder holding {module!r} on "
                           "PYTHONPATH, or give a saved model file that exists") from None
        for part in attr.split("."):
            if not hasattr(obj, part):
                close = difflib.get_close_matches(part, [n for n in dir(obj) if not n.startswith("_")], n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise EknError(f"model {self.model!r}: module {module!r} has no {attr!r}{hint}; give "
                               "module:factory with a callable that returns a node or model")
            obj = getattr(obj, part)
        names = keyword_names(obj) if callable(obj) else []
        missing = [k for k in self.options() if names is not None and k not in names]
        if missing:
            raise EknError(f"model factory {self.model!r} takes no {', '.join(missing)}: a factory must accept "
                           "the keyword options override_mfp_to_active, imposed_patch_size and imposed_batch_size "
                           "(or **options)")
        return obj

    def fingerprint(self) -> dict[str, Any]:
        """Identity of the model for resume checks (file size and mtime for files)."""
        data: dict[str, Any] = {"model": self.model, "mfp": self.mfp, "patch": self.patch, "batch": self.batch}
        if os.path.exists(self.model):
            st = os.stat(self.model)
            data["size"], data["mtime_ns"] = st.st_size, st.st_mtime_ns
        return json.loads(json.dumps(data))


def _where(path: str) -> str:
    """Where a relative path (or an import) is looked up: the working directory and host."""
    if os.path.isabs(path):
        return ""
    import socket

    return f" (working directory {os.getcwd()!r} on {socket.gethostname()!r})"


def node_fingerprint(node: Any) -> dict[str, Any]:
    """Identity of an in-memory node for resume checks: class, geometry and a weights digest."""
    return {"class": f"{type(node).__module__}.{type(node).__qualname__}",
            "geometry": repr(adapt(node).geometry), "weights": weights_digest(node)}


def weights_digest(node: Any) -> str:
    """SHA-1 of the parameter values of a node's graph (``get_param_values``; empty without).

    Example:
        >>> class Node:
        ...     def __init__(self, w): self.w = w
        ...     def get_param_values(self): return {"conv": {"w": np.full(3, self.w)}}
        >>> weights_digest(Node(1.0)) == weights_digest(Node(1.0)) != weights_digest(Node(2.0))
        True
    """
    import hashlib

    digest = hashlib.sha1()
    params = node.get_param_values() if hasattr(node, "get_param_values") else {}
    for name in sorted(params):
        value = params[name]
        for key in sorted(value) if isinstance(value, dict) else [None]:
            array = np.ascontiguousarray(value[key] if key is not None else value)
            digest.update(f"{name}/{key}{array.shape}{array.dtype}".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def input_stamp(path: str) -> dict[str, int] | None:
    """Size and modification time of what identifies an input volume on a local disk, for resume
    checks: the file (HDF5, TIFF, a KNOSSOS config), else the array's metadata file (zarr, N5) or
    folder; None for remote volumes.

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "raw.h5")
        >>> _ = open(path, "wb").write(b"12345")
        >>> input_stamp(path + ":raw")["size"], input_stamp("https://host/raw")
        (5, None)
    """
    from ekn_core.volumes import local_path, split_key

    base, key = split_key(os.fspath(path))
    local = local_path(base)
    if local is None:
        return None
    if glob.has_magic(local):
        local = os.path.dirname(local)
    if key and os.path.isdir(os.path.join(local, key)):
        local = os.path.join(local, key)
    if os.path.isdir(local):
        local = next((os.path.join(local, m) for m in ("zarr.json", ".zarray", "attributes.json")
                      if os.path.isfile(os.path.join(local, m))), local)
    try:
        st = os.stat(local)
    except OSError:
        return None
    return {"size": int(st.st_size) if os.path.isfile(local) else 0, "mtime_ns": int(st.st_mtime_ns)}


def absolute(path: str) -> str:
    """``path`` with its file part made absolute when it exists here (for Dask workers).

    Example:
        >>> absolute("tcp://host/raw.zarr")
        'tcp://host/raw.zarr'
    """
    from ekn_core.volumes import split_key

    base, key = split_key(os.fspath(path))
    if not os.path.exists(base):
        return os.fspath(path)
    return os.path.abspath(base) + (f":{key}" if key else "")


def output_reader(output: str) -> str | None:
    """The reader for an output path: the detected one, else ``zarr`` (the default format).

    Example:
        >>> output_reader("pred.h5:probs"), output_reader("predictions")
        ('hdf5', 'zarr')
    """
    from ekn_core.hooks import host
    from ekn_core.volumes import split_key

    return host().get_reader(split_key(os.fspath(output))[0]) or "zarr"


def adapt(node: Any, tta: str | Sequence[str] | None = None, affinity_offsets: Any = None) -> Any:
    """The engine's view of a node: 3-D nets as they are, 2-D nets slice-wise; with ``tta``
    averaged over its transforms (of the net's own axes; affinity channels restored with
    ``affinity_offsets`` or the offsets the net's affinity loss declares)."""
    from ekn_core.prediction.net import NetAdapter, SliceWise
    from ekn_core.prediction.tta import with_tta

    net = with_tta(NetAdapter(node), tta, affinity_offsets)
    return SliceWise(net) if net.ndim == 2 else net


def parse_size(text: str | int | None) -> int | None:
    """``"1.5G"``, ``"512M"``, ``"2e9"`` → bytes.

    Example:
        >>> parse_size("1.5G"), parse_size("512M"), parse_size(1000)
        (1610612736, 536870912, 1000)
    """
    if text is None or isinstance(text, int):
        return text
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(float(t))
    except ValueError:
        raise ConfigError(f"cannot read memory size {text!r}; write e.g. 2G, 512M or 1e9") from None


#: This process's control groups (``/proc/self/cgroup``: ``0::/path`` for cgroup v2,
#: ``N:...,memory,...:/path`` for the v1 memory controller).
CGROUP_SELF = "/proc/self/cgroup"

#: Per limit file, where its hierarchy is mounted (cgroup v2, v1 memory controller).
CGROUP_MOUNTS = {"memory.max": "/sys/fs/cgroup", "memory.limit_in_bytes": "/sys/fs/cgroup/memory"}


def cgroup_memory_limit() -> int | None:
    """The smallest memory limit of this process's control group and its ancestors (a Slurm job, a
    container, a systemd slice), cgroup v2 or v1; None where none is set. Inside a cgroup namespace
    (the group shows as ``/``) the limits are those at the mount point.

    Example:
        >>> limit = cgroup_memory_limit()
        >>> limit is None or limit > 0
        True
    """
    groups = dict.fromkeys(CGROUP_MOUNTS, "/")
    try:
        with open(CGROUP_SELF, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "" and path:
            groups["memory.max"] = path
        elif "memory" in controllers.split(","):
            groups["memory.limit_in_bytes"] = path
    limits = []
    for name, mount in CGROUP_MOUNTS.items():
        parts = [p for p in groups[name].split("/") if p not in ("", ".", "..")]
        for depth in range(len(parts) + 1):
            try:
                with open(os.path.join(mount, *parts[:depth], name), encoding="ascii") as f:
                    text = f.read().strip()
            except OSError:
                continue
            if text.isdigit():  # "max" (v2) means no limit; v1 without one gives a huge number
                limits.append(int(text))
    return min(limits, default=None)


def default_memory_budget() -> int:
    """A quarter of the memory this process may use, at most 8 GiB: of the machine's memory, or of
    its control group's limit where one is set (:func:`cgroup_memory_limit`). Fixed per machine and
    limit, so a resumed run plans the same blocks.

    Example:
        >>> 0 < default_memory_budget() <= 8 * 2**30
        True
    """
    import psutil

    limit = min(psutil.virtual_memory().total, cgroup_memory_limit() or np.inf)
    return int(min(8 * 2**30, limit // 4))


def predict_volume(model: str | NetSpec | Any, input: str, output: str, *,
                   roi: tuple[Shape, Shape] | None = None, pad: bool = True, mfp: bool = False,
                   tile: Shape | str | None = "auto", overlap: int | Shape = 0, blend: str = "gaussian",
                   as_uint8: bool = False, channel: int | None = None,
                   memory_budget: int | str | None = None, batch_size: int | None = None,
                   scheduler: str | None = None, workers: int | None = None,
                   progress: bool = True, input_options: dict[str, Any] | None = None,
                   output_options: dict[str, Any] | None = None,
                   on_block: Callable[[int], Any] | None = None,
                   tta: str | Sequence[str] | None = None, affinity_offsets: Any = None,
                   grey_range: tuple[float, float] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Predicts a volume from ``input`` into ``output``, out of core and resumable.

    Args:
        model: Model file, ``module:factory``, a :class:`NetSpec`, or a node (single process only).
        input: Input volume for ``open_volume`` (``file.h5:key``, ``x.zarr``, a KNOSSOS config).
        output: Output for ``create_volume``: ``(n_lab, z, y, x)`` or, with ``channel``,
            ``(z, y, x)``; zarr, HDF5 or KNOSSOS by its suffix. It may not be, lie inside, contain
            or share the file of the input (:func:`~ekn_core.volumes.check_distinct`). An output of
            the same job is resumed; one another ekn job wrote is replaced; a volume no ekn job wrote,
            or a group holding other arrays, is refused unless ``overwrite`` (:func:`open_output`).
        roi: Output region ``(lo, hi)`` in input voxels (default the whole volume).
        pad: Mirror at the volume border (output = volume/ROI shape); False: only voxels with
            their full context inside the volume (``shape - (fov - 1)``).
        mfp: Reload the model with MFP active (one pass per tile).
        tile: ``"auto"`` (fastest patch within the budget), an explicit patch, or None (the
            model's own patch). A node object keeps its own patch: an explicit patch is refused, and
            ``"auto"`` warns.
        overlap, blend: Tile overlap and blending.
        as_uint8: Write uint8 (× 255) instead of float32.
        channel: Write only this output channel.
        memory_budget: Bytes (or ``"4G"``) for net and buffers of this machine; default a quarter of the
            RAM (or of the control group's limit), at most 8 GiB (:func:`default_memory_budget`). With
            ``workers`` the local workers share it (each plans with budget / N); with ``scheduler`` it
            is the budget of each worker.
        batch_size: Forward passes per call.
        scheduler: Dask scheduler address; ``workers``: start a local cluster with N workers.
        progress: tqdm bar in voxels.
        input_options, output_options: Passed to ``open_volume`` / ``create_volume``.
        on_block: Called with each block index after it was recorded (for tests and monitors).
        tta: Test-time augmentation, ``"flips"``, ``"flips+transpose"`` or a list of transforms
            (:mod:`ekn_core.prediction.tta`); costs one pass per transform.
        affinity_offsets: With ``tta``, the edge offsets of an affinity net's channels, rows in the
            order of the volume's spatial axes (``(z, y, x)``, ``(y, x)`` for 2-D nets; a net tagged
            ``z,x,y`` names the same axes ``(z, x, y)``); one per channel or per 2-class softmax pair, for nets
            whose loss does not declare them and whose model file does not record them (see
            :func:`~ekn_core.prediction.dense.predict_dense`); they must agree with either.
        grey_range: ``(low, high)``: the raw values mapped to 0 and 1 instead of the input dtype's
            range. Without it, integer input whose dtype range differs from the scaling the net was
            trained with (recorded in its model file) is refused
            (:func:`~ekn_core.training_data.prediction_grey_range`).
        overwrite: Replace an existing output that no ekn job wrote (and a group holding arrays
            there).

    Returns:
        Summary: ``blocks``, ``skipped`` (already done), ``voxels``, ``seconds``, ``shape``.
    """
    from ekn_core.volumes import check_distinct, local_path, open_volume, split_key

    check_distinct(output, [input])
    budget = parse_size(memory_budget) or default_memory_budget()
    if workers is not None and (isinstance(workers, bool) or int(workers) < 1):
        raise ConfigError(f"workers must be a number of local Dask workers >= 1, got {workers!r}")
    if workers and not scheduler:  # the local workers share this machine's budget
        budget //= int(workers)
    spec = model if isinstance(model, NetSpec) else NetSpec(model, mfp=mfp) if isinstance(model, str) else None
    if spec is None and tile == "auto":
        log.warning("tile='auto' reloads a model file or module:factory with another patch; a node object "
                    "predicts with its own patch (give tile=None to say so)")
    elif spec is None and tile is not None:
        raise ConfigError(f"tile={tile!r} reloads the model with another patch, which needs the model as a file "
                          "or module:factory; a node object predicts with its own patch: give tile=None")
    in_vol = open_volume(input, **(input_options or {}))
    if (output_options or {}).get("reader", output_reader(output)) == "knossos":
        as_uint8, output_options = _knossos_output_options(in_vol, as_uint8, output_options)
    try:
        volume = as_channel_volume(in_vol)
        if spec is None:
            node = model
        else:  # loaded once, at the patch it predicts with
            planned = spec if tile is None else _planned_spec(spec, tile, volume.shape[1:], roi, budget, tta,
                                                             affinity_offsets)
            node, spec = _load_planned(planned, spec, tile)
        net = adapt(node, tta, affinity_offsets)
        if volume.shape[0] != net.in_channels:
            raise ShapeError(f"input {input!r} has {volume.shape[0]} channel(s), the net expects {net.in_channels}")
        scale = prediction_grey_range(training_data_of(node), in_vol.dtype, grey_range, input)
        check_grey(volume, in_vol.dtype, input, scale)  # the net sees the data as training scaled it: say if not
        wrapped = tta_net(net)
        plan = make_plan(net.geometry, volume.shape[1:], net.in_channels, net.n_lab, roi=roi, pad=pad,
                         overlap=overlap, blend=blend, memory_budget=budget, batch_size=batch_size,
                         bytes_per_voxel=net.bytes_per_voxel, fixed_batch=net.batch, tta=transforms_of(net),
                         affinity_offsets=wrapped.affinity_offsets if wrapped is not None else None,
                         grey_range=scale)
        if channel is not None and not 0 <= channel < net.n_lab:
            raise ConfigError(f"channel {channel} does not exist; the net predicts {net.n_lab} channels")
        dtype = np.uint8 if as_uint8 else np.float32
        out_shape = plan.out_shape if channel is not None else (net.n_lab, *plan.out_shape)
        chunks = plan.chunks() if channel is not None else (net.n_lab, *plan.chunks())
        model_record = spec.fingerprint() if spec else node_fingerprint(node)
        if spec is not None and spec.is_factory():  # a factory's weights may change under the same name
            model_record["weights"] = weights_digest(node)
        fingerprint = {"version": 1, "model": model_record, "input": absolute(input),
                       "input_stamp": input_stamp(input), "input_shape": list(volume.shape),
                       "plan": plan.to_json(), "dtype": np.dtype(dtype).name, "channel": channel,
                       "shape": list(out_shape)}
        plog = ProgressLog(progress_path(output), fingerprint)  # refuses an output not on a local disk
        disk = local_path(split_key(os.fspath(output))[0])  # e.g. precomputed://file:///data/pred: /data/pred
        if plog.resumed and not _readable(output, output_options):
            log.warning("the output %s of the finished blocks in %s is gone: predicting it anew", output, plog.path)
            plog.forget()
        out_vol = open_output(output, plog.resumed, out_shape, dtype, chunks, output_options, overwrite)
        blocks = plan.blocks()
        pending = [i for i in range(len(blocks)) if i not in plog.done]
        summary = {"blocks": len(blocks), "skipped": len(blocks) - len(pending),
                   "voxels": int(np.prod(plan.out_shape)), "shape": tuple(out_shape)}
        log.info("predicting %s → %s: %d blocks of %s (%d done), tile %s, %d passes/tile, batch %d",
                 input, output, len(blocks), plan.block, summary["skipped"], plan.geometry.patch,
                 plan.geometry.passes, plan.batch_size)
        if describe(net):
            log.info(describe(net))
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=summary["voxels"], unit="vox", unit_scale=True, desc=progress_label(net),
                       initial=sum(int(np.prod(np.subtract(blocks[i][1], blocks[i][0]))) for i in plog.done
                                   if i < len(blocks)))
        t0 = time.perf_counter()

        def write(index: int, pred: np.ndarray) -> None:
            lo, hi = blocks[index]
            sel = box_window(lo, hi, plan.origin)
            data = pred if channel is None else pred[channel]
            data = to_uint8(data) if as_uint8 else data
            out_vol[sel if channel is not None else (slice(None), *sel)] = data
            flush = getattr(out_vol, "flush", None)
            if flush is not None:
                flush()
            sync_file_system(disk)  # the block's data is on disk before the log says so
            plog.mark(index)
            if bar is not None:
                bar.update(int(np.prod(np.subtract(hi, lo))))
            if on_block is not None:
                on_block(index)

        try:
            plog.start()
            if scheduler or workers:
                if spec is None:
                    raise ConfigError("distributed prediction needs the model as a file or module:factory, "
                                      "not a node object")
                from ekn_core.prediction.distributed import BlockJob, run_blocks

                if os.path.exists(spec.model):  # workers may run in another directory
                    spec = replace(spec, model=os.path.abspath(spec.model))
                job = BlockJob(spec, absolute(input), dict(input_options or {}), plan)
                run_blocks(job, pending, write, scheduler=scheduler, workers=workers)
            else:
                for index in pending:
                    write(index, predict_block(net, volume, plan, index))
        finally:
            plog.close()
            if bar is not None:
                bar.close()
            out_vol.close()
        summary["seconds"] = time.perf_counter() - t0
        return summary
    finally:
        in_vol.close()


def _readable(output: str, options: dict[str, Any] | None) -> bool:
    """Whether the output of a resumed job can be opened (it may have been deleted)."""
    from ekn_core.volumes import open_volume, reopen_options

    options = {"reader": output_reader(output), **(options or {})}
    try:
        open_volume(output, **reopen_options(output, options)).close()
    except EknError:
        return False
    return True


def _knossos_output_options(in_vol: Any, as_uint8: bool,
                            options: dict[str, Any] | None) -> tuple[bool, dict[str, Any]]:
    """KNOSSOS stores no floating point (probabilities go out as uint8 × 255) and the output data
    set keeps the input's voxel size when the input has one."""
    if not as_uint8:
        log.info("KNOSSOS stores no floating point: writing uint8 probabilities (x 255)")
    options = dict(options or {})
    voxel_size = getattr(in_vol, "voxel_size", None)
    if voxel_size is None and getattr(in_vol, "arrays", None):
        voxel_size = getattr(in_vol.arrays[0], "voxel_size", None)
    if voxel_size is not None:
        options.setdefault("voxel_size", tuple(float(v) for v in voxel_size)[::-1])  # KNOSSOS: x, y, z
    return True, options


def open_output(output: str, resume: bool, shape: Shape, dtype: Any, chunks: Shape,
                options: dict[str, Any] | None, overwrite: bool = False) -> Any:
    """Reopens the output of a resumed job, or creates it (chunks dividing the blocks) where
    :func:`check_output_replaceable` allows; with ``overwrite``, readers that take the option get
    it too (so that they replace a group holding arrays there). Before an output is created, its
    progress log is replaced by a :data:`REPLACING` header, so that a job interrupted between the
    two leaves no earlier job's record of finished blocks over the new output; the caller's
    :meth:`ProgressLog.start` writes its own header after the creation succeeded."""
    from ekn_core.errors import keyword_names
    from ekn_core.plugin_checks import checked, reader_problem
    from ekn_core.volumes import create_volume, open_volume, reopen_options

    options = {"reader": output_reader(output), **(options or {})}
    if resume:
        volume = open_volume(output, mode="r+", **reopen_options(output, options))
        if tuple(volume.shape) != tuple(shape):
            volume.close()
            raise EknError(f"{output!r} has shape {tuple(volume.shape)}, the resumed job writes {tuple(shape)}; "
                           "delete it and its progress log to start over")
        return volume
    check_output_replaceable(output, options["reader"], overwrite)
    takes = keyword_names(checked("readers", options["reader"], reader_problem).create)  # None: **options
    if overwrite and (takes is None or "overwrite" in takes):
        options.setdefault("overwrite", True)
    if options["reader"] == "knossos":
        chunks = None  # KNOSSOS keeps its cube shape; the single writer merges partial cubes
        if os.path.exists(progress_path(output)):  # an earlier job's output; KNOSSOS replaces it only when asked
            options.setdefault("overwrite", True)
    elif options["reader"] in ("hdf5", "zarr"):
        options.setdefault("axes", "czyx" if len(shape) == 4 else "zyx")
    write_log_header(progress_path(output), REPLACING)  # the earlier job's record goes before its output
    return create_volume(output, shape=shape, dtype=dtype, chunks=chunks, **options)


def check_output_replaceable(output: str, reader: str | None = None, overwrite: bool = False) -> None:
    """The one rule of the block jobs (``ekn predict``, ``ekn segment``, ``ekn evaluate``'s
    predictions) for what is already at ``output``: the output of an ekn job (it has a progress log,
    :func:`progress_path`) is resumed by the same job and replaced by another; a volume no ekn job
    wrote is replaced only with ``overwrite``.

    Raises:
        ConfigError: A volume no ekn job wrote is at ``output`` and ``overwrite`` is False.

    Example:
        >>> import numpy as np, os, tempfile, zarr
        >>> path = os.path.join(tempfile.mkdtemp(), "mine.zarr")
        >>> zarr.save_array(path, np.zeros((2, 3), np.uint8))
        >>> check_output_replaceable(path)
        Traceback (most recent call last):
        ...
        ekn_core.errors.ConfigError: '...mine.zarr' already holds a uint8 volume of shape (2, 3) that no ekn job ...
        >>> check_output_replaceable(path, overwrite=True)
    """
    from ekn_core.volumes import open_volume

    if overwrite or os.path.exists(progress_path(output)):
        return
    try:
        with open_volume(output, reader=reader or output_reader(output)) as volume:
            found = f"a {volume.dtype} volume of shape {tuple(volume.shape)}"
    except EknError:  # nothing readable there: the reader's create decides
        return
    raise ConfigError(f"{output!r} already holds {found} that no ekn job wrote (there is no progress log "
                      f"{os.path.basename(progress_path(output))!r} beside it); it is not replaced unless asked: give "
                      "--overwrite (overwrite=True in Python) to replace it, or choose another output")


def _planned_spec(spec: NetSpec, tile: Any, in_shape: Shape, roi: Any, budget: int,
                 tta: str | Sequence[str] | None = None, affinity_offsets: Any = None) -> NetSpec:
    """``spec`` at the patch prediction uses: ``tile`` (a 2-D net run slice-wise takes its last two
    entries), or for ``"auto"`` the fastest patch within ``budget`` for the extent of ``roi`` (else
    ``in_shape``) (:func:`~ekn_core.prediction.tiling.choose_patch`). It is planned on a shape-only
    build of the net (no weights, no variables; :func:`~ekn_core.node.shape_only`), so the net is then
    loaded once, at that patch; ``spec`` itself where the patch is the model's own.
    """
    from ekn_core.node import model_manager, shape_only
    from ekn_core.prediction.tiling import choose_patch

    with shape_only():
        node = spec.load()
        net = adapt(node, tta, affinity_offsets)
    model = getattr(node, "model", None)
    if model is not None and model_manager.models.get(getattr(model, "name", None)) is model:
        model_manager.remove(model.name)  # the plan's build, not the net that predicts
    own = model_net(net)  # the model's geometry, without slice-wise lifting or TTA's larger patch
    lifted = net.ndim != own.ndim  # a 2-D net run slice-wise
    g = own.geometry
    if tile == "auto":
        extent = tuple(h - l for l, h in zip(*roi)) if roi else tuple(in_shape)
        square = any(t.endswith("t") for t in transforms_of(net))  # TTA's y/x swap needs y = x
        patch = choose_patch(g, extent[1:] if lifted else extent, own.bytes_per_voxel,
                             budget // (4 * (net.batch or 1)), square=square).patch
    else:
        patch = tuple(int(t) for t in tile)
        if lifted and len(patch) == 3:
            patch = patch[1:]
    return spec if patch == g.patch else NetSpec(spec.model, spec.mfp, patch, spec.batch)


def _load_planned(planned: NetSpec, spec: NetSpec, tile: Any) -> tuple[Any, NetSpec]:
    """The node of ``planned`` and that spec; for ``tile="auto"``, where loading at the chosen patch
    fails, the node of ``spec`` (the model's own patch), with a warning."""
    try:
        return planned.load(), planned
    except (EknError, ValueError) as err:
        if tile != "auto" or planned == spec:
            raise
        log.warning("keeping the model's patch: loading it with the patch %s failed (%s)", planned.patch, err)
        return spec.load(), spec
