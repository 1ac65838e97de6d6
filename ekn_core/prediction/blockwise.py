"""Out-of-core dense prediction: any ``open_volume`` input into a chunked ``create_volume``
output, block by block, with peak memory bounded by a budget and not by the volume size.

The output region (input coordinates; the whole volume or a ROI) is cut into blocks that are
unions of tiles of one global :class:`~ekn_core.prediction.tiling.TileGrid`. A block reads its
input once (its tiles' windows, the net's context included; mirrored beyond the volume border),
is predicted by :func:`~ekn_core.prediction.dense.predict_region`, and is written to the output,
whose chunks divide the block shape. Every finished block is appended to a progress log
(``OUTPUT.ekn-progress``, fsync'ed after the output was flushed); a rerun of the same job skips
finished blocks, so a killed run resumes and ends identical to an uninterrupted one.

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
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ekn_core.errors import ConfigError, EknError, ShapeError
from ekn_core.prediction.dense import auto_batch_size, predict_region, progress_label, to_uint8
from ekn_core.grey import check_grey, to_grey
from ekn_core.prediction.source import ChannelFirst, read_window
from ekn_core.prediction.tiling import Shape, TileGeometry, TileGrid, box_window
from ekn_core.prediction.tta import describe, model_net, transforms_of, tta_net

log = logging.getLogger("ekn.prediction")

#: Largest block (output voxels) even when the budget allows more: keeps resume granularity.
MAX_BLOCK_VOXELS = 2**25


@dataclass(frozen=True)
class Plan:
    """How a volume is predicted: the global grid, the block shape and the batching.

    Attributes:
        geometry: Net geometry (3 spatial axes; 2-D nets are lifted with a z patch of 1).
        origin, end: Output region in input coordinates.
        block: Block shape in output voxels (a multiple of the grid step).
        overlap: Tile overlap; blend: blend mode when tiles overlap (else None).
        batch_size: Forward passes per call.
        tta: Test-time augmentation transforms (:mod:`ekn_core.prediction.tta`); ``()``: none.
        affinity_offsets: With ``tta``, the per-channel offsets of an affinity net (None: per-voxel
            outputs); Dask workers restore the channels with them.
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

    @property
    def grid(self) -> TileGrid:
        """The global tile grid."""
        return TileGrid(self.geometry, self.origin, self.end, self.overlap)

    @property
    def out_shape(self) -> Shape:
        """Spatial shape of the output volume."""
        return tuple(e - o for o, e in zip(self.origin, self.end))

    @property
    def block_counts(self) -> Shape:
        """Blocks per axis."""
        return tuple(-(-(e - o) // b) for o, e, b in zip(self.origin, self.end, self.block))

    def block_bounds(self, index: int) -> tuple[Shape, Shape]:
        """``(lo, hi)`` of block ``index`` (C order over the blocks; input coordinates)."""
        pos = np.unravel_index(index, self.block_counts)
        lo = tuple(o + int(p) * b for o, p, b in zip(self.origin, pos, self.block))
        return lo, tuple(min(l + b, e) for l, b, e in zip(lo, self.block, self.end))

    def blocks(self) -> list[tuple[Shape, Shape]]:
        """``(lo, hi)`` of every block, in C order."""
        return [self.block_bounds(i) for i in range(int(np.prod(self.block_counts)))]

    def chunks(self, cap: int = 128) -> Shape:
        """Output chunk shape (:func:`chunk_shape` of the blocks), so blocks write whole chunks."""
        return chunk_shape(self.block, self.out_shape, cap)

    def to_json(self) -> dict[str, Any]:
        """JSON-able description (part of the resume fingerprint)."""
        data = asdict(self)
        data["geometry"] = asdict(self.geometry)
        if not self.tta:
            del data["tta"]  # plans without TTA keep the fingerprint of earlier versions (resume)
        if self.affinity_offsets is None:
            del data["affinity_offsets"]
        return json.loads(json.dumps(data))


def chunk_shape(block: Shape, shape: Shape, cap: int = 128) -> Shape:
    """Chunks for an output written in blocks: per axis the largest divisor of the block size up to
    ``cap`` (the whole axis when one block covers it), so every block writes whole chunks.

    Example:
        >>> chunk_shape((64, 200, 256), (100, 150, 1000))
        (64, 100, 128)
    """
    return tuple(min(e, max(d for d in range(1, min(b, cap) + 1) if b % d == 0)) for b, e in zip(block, shape))


def _block_bytes(block: Shape, g: TileGeometry, in_channels: int, n_lab: int) -> float:
    window = np.prod([b + t for b, t in zip(block, g.tile_in)])
    return 4.0 * (2 * in_channels * window + 3 * n_lab * np.prod([b + t for b, t in zip(block, g.tile_out)]))


def make_plan(geometry: TileGeometry, in_shape: Shape, in_channels: int, n_lab: int,
              roi: tuple[Shape, Shape] | None = None, pad: bool = True, overlap: int | Shape = 0,
              blend: str = "gaussian", memory_budget: int = 2**31, batch_size: int | None = None,
              bytes_per_voxel: float = 0.0, fixed_batch: int | None = None,
              tta: tuple[str, ...] = (), affinity_offsets: tuple[tuple[int, ...], ...] | None = None) -> Plan:
    """Plans a volume prediction within ``memory_budget`` bytes.

    Half the budget goes to the net (batched passes), half to the block buffers; blocks grow by
    whole grid steps along the axis where they are smallest relative to the region.

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
    grid = TileGrid(g, lo, hi, overlap)
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
    blend_mode = blend if any(s < t for s, t in zip(step, g.tile_out)) else None
    ov = (overlap,) * len(step) if isinstance(overlap, (int, np.integer)) else tuple(overlap)
    return Plan(g, lo, hi, tuple(block), tuple(int(o) for o in ov), blend_mode, int(batch), tuple(tta),
                affinity_offsets)


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
    tiles = grid.tiles(lo, hi)
    in_lo = tuple(min(t[a] for t in tiles) - g.context_lo[a] for a in range(g.ndim))
    in_hi = tuple(max(t[a] for t in tiles) - g.context_lo[a] + g.tile_in[a] for a in range(g.ndim))
    data = to_grey(read_window(volume, in_lo, in_hi))

    def read(a: Shape, b: Shape) -> np.ndarray:
        return data[(slice(None), *(slice(x - o, y - o) for x, y, o in zip(a, b, in_lo)))]

    return predict_region(net, read, grid, lo, hi, blend=plan.blend, batch_size=plan.batch_size)


class ProgressLog:
    """Append-only record of finished blocks next to the output (crash-safe).

    The first line is the job's JSON fingerprint (written atomically); each finished block adds
    one fsync'ed line. A torn last line after a crash is ignored.

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
        self.resumed = False
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                lines = f.read().split("\n")
            try:
                header = json.loads(lines[0])
            except ValueError:
                header = None
            if header == fingerprint:
                self.resumed = True
                for line in lines[1:]:
                    if line.startswith("done ") and line[5:].isdigit():
                        self.done.add(int(line[5:]))
        self._file = None

    def start(self) -> None:
        """Opens the log for appending (a fresh log replaces one of another job)."""
        if not self.resumed:
            tmp = f"{self.path}.tmp{os.getpid()}"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(json.dumps(self.fingerprint) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            self.done.clear()
            self.resumed = True
        self._file = open(self.path, "a", encoding="utf-8")

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
        total = int(np.prod([-(-(e - o) // b) for o, e, b in zip(plan["origin"], plan["end"], plan["block"])]))
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
        """Loads and returns the prediction node."""
        if self.is_factory():
            import importlib

            module, attr = self.model.split(":")
            obj: Any = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
            result = obj(**self.options())
        else:
            if not os.path.exists(self.model):
                raise EknError(f"model {self.model!r} does not exist (give a saved model file or "
                               "module:factory)")
            from ekn_core.persistence import modelload

            result = modelload(self.model, **self.options())
        node = getattr(result, "prediction_node", None) or result
        if not hasattr(node, "input_nodes"):
            raise EknError(f"{self.model!r} gave {result!r}, which is neither a model with a prediction "
                           "node nor a node")
        return node

    def fingerprint(self) -> dict[str, Any]:
        """Identity of the model for resume checks (file size and mtime for files)."""
        data: dict[str, Any] = {"model": self.model, "mfp": self.mfp, "patch": self.patch, "batch": self.batch}
        if os.path.exists(self.model):
            st = os.stat(self.model)
            data["size"], data["mtime_ns"] = st.st_size, st.st_mtime_ns
        return json.loads(json.dumps(data))


def node_fingerprint(node: Any) -> dict[str, Any]:
    """Identity of an in-memory node for resume checks: class, geometry and a weights digest."""
    import hashlib

    digest = hashlib.sha1()
    params = node.get_param_values() if hasattr(node, "get_param_values") else {}
    for name in sorted(params):
        value = params[name]
        for key in sorted(value) if isinstance(value, dict) else [None]:
            array = np.ascontiguousarray(value[key] if key is not None else value)
            digest.update(f"{name}/{key}{array.shape}{array.dtype}".encode())
            digest.update(array.tobytes())
    return {"class": f"{type(node).__module__}.{type(node).__qualname__}",
            "geometry": repr(adapt(node).geometry), "weights": digest.hexdigest()}


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


def default_memory_budget() -> int:
    """A quarter of the machine's memory, at most 8 GiB (fixed per machine, so a resumed run
    plans the same blocks)."""
    import psutil

    return int(min(8 * 2**30, psutil.virtual_memory().total // 4))


def predict_volume(model: str | NetSpec | Any, input: str, output: str, *,
                   roi: tuple[Shape, Shape] | None = None, pad: bool = True, mfp: bool = False,
                   tile: Shape | str | None = "auto", overlap: int | Shape = 0, blend: str = "gaussian",
                   as_uint8: bool = False, channel: int | None = None,
                   memory_budget: int | str | None = None, batch_size: int | None = None,
                   scheduler: str | None = None, workers: int | None = None,
                   progress: bool = True, input_options: dict[str, Any] | None = None,
                   output_options: dict[str, Any] | None = None,
                   on_block: Callable[[int], Any] | None = None,
                   tta: str | Sequence[str] | None = None, affinity_offsets: Any = None) -> dict[str, Any]:
    """Predicts a volume from ``input`` into ``output``, out of core and resumable.

    Args:
        model: Model file, ``module:factory``, a :class:`NetSpec`, or a node (single process only).
        input: Input volume for ``open_volume`` (``file.h5:key``, ``x.zarr``, a KNOSSOS config).
        output: Output for ``create_volume``: ``(n_lab, z, y, x)`` or, with ``channel``,
            ``(z, y, x)``; zarr, HDF5 or KNOSSOS by its suffix. It may not be, lie inside, contain
            or share the file of the input (:func:`~ekn_core.volumes.check_distinct`). An output of
            the same job is resumed; another job's output, or another array at the same place, is
            replaced; a group holding other arrays is refused (``output_options={"overwrite": True}``
            replaces it).
        roi: Output region ``(lo, hi)`` in input voxels (default the whole volume).
        pad: Mirror at the volume border (output = volume/ROI shape); False: only voxels with
            their full context inside the volume (``shape - (fov - 1)``).
        mfp: Reload the model with MFP active (one pass per tile).
        tile: ``"auto"`` (fastest patch within the budget), an explicit patch, or None (the
            model's own patch).
        overlap, blend: Tile overlap and blending.
        as_uint8: Write uint8 (× 255) instead of float32.
        channel: Write only this output channel.
        memory_budget: Bytes (or ``"4G"``) for net and buffers; default a quarter of the RAM, at most 8 GiB.
        batch_size: Forward passes per call.
        scheduler: Dask scheduler address; ``workers``: start a local cluster with N workers.
        progress: tqdm bar in voxels.
        input_options, output_options: Passed to ``open_volume`` / ``create_volume``.
        on_block: Called with each block index after it was recorded (for tests and monitors).
        tta: Test-time augmentation, ``"flips"``, ``"flips+transpose"`` or a list of transforms
            (:mod:`ekn_core.prediction.tta`); costs one pass per transform.
        affinity_offsets: With ``tta``, the edge offsets of an affinity net's channels (``(z, y, x)``
            rows, ``(y, x)`` for 2-D nets; one per channel or per 2-class softmax pair), for nets
            whose loss does not declare them (see :func:`~ekn_core.prediction.dense.predict_dense`).

    Returns:
        Summary: ``blocks``, ``skipped`` (already done), ``voxels``, ``seconds``, ``shape``.
    """
    from ekn_core.prediction.tiling import choose_patch
    from ekn_core.volumes import check_distinct, open_volume

    check_distinct(output, [input])
    budget = parse_size(memory_budget) or default_memory_budget()
    spec = model if isinstance(model, NetSpec) else NetSpec(model, mfp=mfp) if isinstance(model, str) else None
    node = spec.load() if spec is not None else model
    net = adapt(node, tta, affinity_offsets)
    in_vol = open_volume(input, **(input_options or {}))
    if (output_options or {}).get("reader", output_reader(output)) == "knossos":
        as_uint8, output_options = _knossos_output_options(in_vol, as_uint8, output_options)
    try:
        volume = as_channel_volume(in_vol)
        if volume.shape[0] != net.in_channels:
            raise ShapeError(f"input {input!r} has {volume.shape[0]} channel(s), the net expects {net.in_channels}")
        check_grey(volume, in_vol.dtype, input)  # the net sees the data as training scaled it: say when that misfits
        if tile is not None and spec is not None:
            spec, node, net = _resize(spec, node, net, tile, volume.shape[1:], roi, budget, choose_patch,
                                      tta, affinity_offsets)
        wrapped = tta_net(net)
        plan = make_plan(net.geometry, volume.shape[1:], net.in_channels, net.n_lab, roi=roi, pad=pad,
                         overlap=overlap, blend=blend, memory_budget=budget, batch_size=batch_size,
                         bytes_per_voxel=net.bytes_per_voxel, fixed_batch=net.batch, tta=transforms_of(net),
                         affinity_offsets=wrapped.affinity_offsets if wrapped is not None else None)
        if channel is not None and not 0 <= channel < net.n_lab:
            raise ConfigError(f"channel {channel} does not exist; the net predicts {net.n_lab} channels")
        dtype = np.uint8 if as_uint8 else np.float32
        out_shape = plan.out_shape if channel is not None else (net.n_lab, *plan.out_shape)
        chunks = plan.chunks() if channel is not None else (net.n_lab, *plan.chunks())
        fingerprint = {"version": 1, "model": spec.fingerprint() if spec else node_fingerprint(node),
                       "input": absolute(input), "input_shape": list(volume.shape),
                       "plan": plan.to_json(), "dtype": np.dtype(dtype).name, "channel": channel,
                       "shape": list(out_shape)}
        plog = ProgressLog(progress_path(output), fingerprint)
        out_vol = open_output(output, plog.resumed, out_shape, dtype, chunks, output_options)
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
                options: dict[str, Any] | None) -> Any:
    """Reopens the output of a resumed job, or creates it (chunks dividing the blocks)."""
    from ekn_core.volumes import create_volume, open_volume

    options = {"reader": output_reader(output), **(options or {})}
    if resume:
        volume = open_volume(output, mode="r+", **options)
        if tuple(volume.shape) != tuple(shape):
            volume.close()
            raise EknError(f"{output!r} has shape {tuple(volume.shape)}, the resumed job writes {tuple(shape)}; "
                           "delete it and its progress log to start over")
        return volume
    if options["reader"] == "knossos":
        chunks = None  # KNOSSOS keeps its cube shape; the single writer merges partial cubes
        if os.path.exists(progress_path(output)):  # an earlier job's output: a different job starts over
            options.setdefault("overwrite", True)
    elif options["reader"] in ("hdf5", "zarr"):
        options.setdefault("axes", "czyx" if len(shape) == 4 else "zyx")
    return create_volume(output, shape=shape, dtype=dtype, chunks=chunks, **options)


def _resize(spec: NetSpec, node: Any, net: Any, tile: Any, in_shape: Shape, roi: Any, budget: int,
            choose_patch: Callable, tta: str | Sequence[str] | None,
            affinity_offsets: Any) -> tuple[NetSpec, Any, Any]:
    """Reloads the model with the requested or automatically chosen patch size."""
    own = model_net(net)  # the model's geometry, without slice-wise lifting or TTA's larger patch
    lifted = net.ndim != own.ndim  # a 2-D net run slice-wise
    g = own.geometry
    if tile == "auto":
        extent = tuple(h - l for l, h in zip(*roi)) if roi else tuple(in_shape)
        patch = choose_patch(g, extent[1:] if lifted else extent, own.bytes_per_voxel,
                             budget // (4 * (net.batch or 1))).patch
    else:
        patch = tuple(int(t) for t in tile)
        if lifted and len(patch) == 3:
            patch = patch[1:]
    if patch == g.patch:
        return spec, node, net
    resized = NetSpec(spec.model, spec.mfp, patch, spec.batch)
    try:
        new_node = resized.load()
    except (EknError, ValueError) as err:
        if tile != "auto":
            raise
        log.warning("keeping the model's patch %s: reloading with %s failed (%s)", g.patch, patch, err)
        return spec, node, net
    return resized, new_node, adapt(new_node, tta, affinity_offsets)
