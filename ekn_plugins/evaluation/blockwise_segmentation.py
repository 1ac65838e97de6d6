"""Watershed segmentation of boundary maps larger than memory, block by block, with ids stitched
across blocks (``ekn segment``); affinities likewise, with the parameters of an affinity segmenter
(connected components, waterz, mutex watershed).

The region (the whole volume or a ROI) is cut into blocks on a regular grid. Three passes, each
resumable block by block (a :class:`~ekn_core.prediction.blockwise.ProgressLog` per pass, whose
fingerprint holds the input, the channel, the parameters, the ROI, block and halo):

1. **segment**: every block is segmented with
   :func:`~ekn_plugins.evaluation.segmentation.watershed_segmentation` (or the affinity
   segmenter of the parameters, on the affinity channels, with ``min_size=1``) on the block plus
   a halo (clipped to the region). Its core (the block without halo, with its ids and their
   voxel counts) and, for each neighbouring block, its segmentation of the slab the two blocks
   are matched over (the face ± half the halo) are saved as one compressed ``.npz`` per block
   (numpy arrays, no pickle), written atomically, in the work folder beside the output
   (``OUTPUT.ekn-segment/``).
2. **stitch**: for every face, :func:`~ekn_plugins.evaluation.stitching.overlap_matches` pairs
   the two blocks' segments that are each other's majority in the slab, among the segments each
   block has in its core; the pairs go to one ``.npy`` per block.
3. **relabel**: the matched pairs of all faces are joined (union-find:
   :func:`~ekn_plugins.evaluation.stitching.final_ids`) into consecutive ids, uint32 where they
   fit, else uint64 (an affinity segmenter's segments of fewer than ``min_size`` voxels, counted
   over all cores, become 0); every block's core is written into the output with them. A block's
   write is recomputed from its ``.npz`` whenever it was not recorded, so a killed run never
   leaves a half-written block marked done.

Memory is bounded by a block with its halo (the watershed's working arrays), plus one integer
per segment of the whole volume for the final table. Workers (processes) segment and stitch
blocks in parallel; the output is written by the calling process only (HDF5 included).

Example:
    >>> import numpy as np, os, tempfile
    >>> from ekn_core.volumes import open_volume
    >>> from ekn_plugins.evaluation.segmentation import save_segmentation
    >>> prob = np.zeros((4, 20, 30), np.float32); prob[:, 9:11, :] = 1.0; prob[:, :, 14:16] = 1.0
    >>> folder = tempfile.mkdtemp()
    >>> source = save_segmentation(np.uint8(prob * 255), os.path.join(folder, "prob.h5"), key="p")
    >>> summary = segment_volume(source, os.path.join(folder, "seg.zarr"), block=(4, 8, 8), halo=(2, 2, 2),
    ...                          progress=False)
    >>> summary["blocks"], summary["segments"]              # four cells, each across several blocks
    (12, 4)
    >>> with open_volume(os.path.join(folder, "seg.zarr")) as seg:
    ...     seg[0, ::5, ::8].tolist(), str(seg.dtype)
    ([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]], 'uint32')
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import multiprocessing
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ekn_core.errors import ConfigError, EknError
from ekn_core.prediction.tiling import Shape, box_window
from ekn_plugins.evaluation.seg_search import SEGMENTERS, Params, SegmentationSearch, start_method
from ekn_plugins.evaluation.segmentation import AffinitySegmenter, WatershedParams, watershed_segmentation
from ekn_plugins.evaluation.stitching import final_ids, overlap_matches

log = logging.getLogger("ekn.segment")

#: Default block shape (z, y, x): 4.2 million voxels, 8 million with the default halo; the watershed
#: needs some 70-100 bytes per voxel of a block with its halo, so about 0.8 GB per worker.
DEFAULT_BLOCK: Shape = (64, 256, 256)
#: Default halo along the finest axis (voxels), before the seed erosion is added (see :func:`default_halo`).
DEFAULT_HALO = 16


@dataclass(frozen=True)
class BlockGrid:
    """Blocks over a region: cores on a regular grid, each segmented with a halo.

    Attributes:
        origin, end: The region (input voxels, ``end`` exclusive).
        block: Core shape (the last block per axis may be smaller).
        halo: Voxels added on each side of a core (clipped to the region).

    Example:
        >>> grid = BlockGrid((0, 0, 0), (10, 20, 20), (10, 8, 8), (0, 2, 2))
        >>> grid.counts, grid.core(4), grid.domain(4)
        ((1, 3, 3), ((0, 8, 8), (10, 16, 16)), ((0, 6, 6), (10, 18, 18)))
        >>> grid.neighbour(4, 2, +1), grid.face(4, 2)           # the slab matched with block 5
        (5, ((0, 8, 15), (10, 16, 17)))
    """

    origin: Shape
    end: Shape
    block: Shape
    halo: Shape

    @property
    def counts(self) -> Shape:
        """Blocks per axis."""
        return tuple(-(-(e - o) // b) for o, e, b in zip(self.origin, self.end, self.block))

    def __len__(self) -> int:
        return math.prod(self.counts)

    def core(self, index: int) -> tuple[Shape, Shape]:
        """``(lo, hi)`` of block ``index``'s core (C order over the blocks)."""
        position = np.unravel_index(index, self.counts)
        lo = tuple(o + int(p) * b for o, p, b in zip(self.origin, position, self.block))
        return lo, tuple(min(l + b, e) for l, b, e in zip(lo, self.block, self.end))

    def domain(self, index: int) -> tuple[Shape, Shape]:
        """``(lo, hi)`` of what block ``index`` segments: its core with the halo, inside the region."""
        lo, hi = self.core(index)
        return (tuple(max(l - h, o) for l, h, o in zip(lo, self.halo, self.origin)),
                tuple(min(u + h, e) for u, h, e in zip(hi, self.halo, self.end)))

    def neighbour(self, index: int, axis: int, step: int) -> int | None:
        """The block next to ``index`` along ``axis`` (``step`` +1 or -1), None at the region's border."""
        position = list(np.unravel_index(index, self.counts))
        position[axis] += step
        if not 0 <= position[axis] < self.counts[axis]:
            return None
        return int(np.ravel_multi_index(position, self.counts))

    def face(self, index: int, axis: int) -> tuple[Shape, Shape]:
        """The slab over which block ``index`` and its upper neighbour along ``axis`` are matched:
        the face between their cores ± half the halo along ``axis`` (at least 1 voxel), the core's
        extent along the others. Both blocks segment it; the outer half of each one's halo, where
        it sees least of the map around a voxel, is left out."""
        lo, hi = self.core(index)
        f, width = hi[axis], max(1, self.halo[axis] // 2)
        face_lo, face_hi = list(lo), list(hi)
        face_lo[axis] = max(f - width, self.origin[axis])
        face_hi[axis] = min(f + width, self.end[axis])
        return tuple(face_lo), tuple(face_hi)

    def stitched_axes(self) -> list[int]:
        """The axes along which neighbouring blocks overlap (halo > 0)."""
        return [axis for axis in range(3) if self.halo[axis] > 0]


def _planar(params: Params) -> bool:
    """The segmentation joins nothing across z slices: ``per_slice``, or affinities of a 2-D net."""
    if isinstance(params, WatershedParams):
        return params.per_slice
    return all(offset[0] == 0 for offset in params.nhood)


def default_halo(params: Params, halo: int = DEFAULT_HALO) -> Shape:
    """The default halo for ``params``: ``halo`` plus the seed erosion, in voxels of the finest
    axis, converted with the anisotropy; 0 along z for ``per_slice`` (and affinities without z
    offsets); ``halo`` along every axis for the other affinity segmenters.

    Example:
        >>> default_halo(WatershedParams(anisotropy=(2, 1, 1), seed_erosion=2))
        (9, 18, 18)
        >>> default_halo(WatershedParams(per_slice=True))
        (0, 16, 16)
        >>> from ekn_plugins.evaluation.agglomeration import WaterzParams
        >>> default_halo(WaterzParams()), default_halo(WaterzParams(nhood=[[0, -1, 0], [0, 0, -1]]))
        ((16, 16, 16), (0, 16, 16))
    """
    if not isinstance(params, WatershedParams):
        return (0 if _planar(params) else halo, halo, halo)
    finest = min(params.anisotropy)
    distance = halo + math.ceil(params.seed_erosion)
    sizes = tuple(math.ceil(distance * finest / a) for a in params.anisotropy)
    return (0, *sizes[1:]) if params.per_slice else sizes


def _three(value: Any, name: str, minimum: int) -> Shape:
    """``value`` (three numbers, or one for all axes) as three ints >= ``minimum``."""
    values = [value] * 3 if np.ndim(value) == 0 else list(np.ravel(value))
    if len(values) != 3 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= minimum
                                   for v in values):
        raise ConfigError(f"{name} must be three whole numbers >= {minimum} (z, y, x), got {value!r}")
    return tuple(int(v) for v in values)


def make_grid(shape: Sequence[int], block: Any, halo: Any, params: Params,
              roi: tuple[Sequence[int], Sequence[int]] | None = None) -> BlockGrid:
    """Checks block, halo and ROI against the volume ``shape`` and the parameters.

    Raises:
        ConfigError: A block or halo that is not three whole numbers, a ROI outside the volume, no
            halo along an axis with several blocks (their segments could not be stitched), or a
            halo shorter than the seed erosion (seeds near the faces would erode differently from
            the whole volume).
    """
    shape = tuple(int(s) for s in shape)
    lo, hi = roi if roi is not None else ((0, 0, 0), shape)
    lo, hi = tuple(int(v) for v in lo), tuple(int(v) for v in hi)
    if len(lo) != 3 or len(hi) != 3 or any(l < 0 or h > s or l >= h for l, h, s in zip(lo, hi, shape)):
        raise ConfigError(f"ROI {lo}..{hi} must be a non-empty box inside the volume {shape}")
    grid = BlockGrid(lo, hi, _three(block, "block", 1), _three(halo, "halo", 0))
    erosion, spacing = ((params.seed_erosion, params.anisotropy) if isinstance(params, WatershedParams)
                        else (0.0, (1.0, 1.0, 1.0)))
    for axis, name in enumerate("zyx"):
        if grid.counts[axis] == 1 or (axis == 0 and _planar(params)):
            continue
        if grid.halo[axis] == 0:
            raise ConfigError(f"halo along {name} is 0, but the region has {grid.counts[axis]} blocks along {name}: "
                              "segments could not be stitched across them; give a halo >= 1 (default "
                              f"{default_halo(params)[axis]}) or one block along {name}")
        if grid.halo[axis] * spacing[axis] / min(spacing) < erosion:
            raise ConfigError(f"halo along {name} ({grid.halo[axis]} voxels) is shorter than the seed erosion "
                              f"({erosion} voxels of the finest axis): seeds near the block faces "
                              f"would erode differently; give a halo of at least "
                              f"{math.ceil(erosion * min(spacing) / spacing[axis])} along {name}")
    return grid


def load_params(path: str | os.PathLike) -> Params:
    """Segmentation parameters from a JSON file, or from JSON text (starting with ``{``): the
    ``seg_params.json`` of ``ekn evaluate`` (a segmentation search; its best parameters, of any
    segmenter), or one object of parameters: of :class:`WatershedParams`, or of the segmenter named
    by its ``"segmenter"`` key (``affinity``, ``waterz``, ``mutex``). With the channel and polarity
    the search segmented: :func:`read_params`.

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "p.json")
        >>> _ = open(path, "w").write('{"threshold": 0.3, "min_size": 50}')
        >>> load_params(path).threshold
        0.3
        >>> _ = open(path, "w").write('{"segmenter": "waterz", "threshold": 0.4}')
        >>> load_params(path).kind
        'waterz'
        >>> load_params('{"threshold": 0.2}').threshold
        0.2
    """
    return read_params(path)[0]


def read_params(path: str | os.PathLike) -> tuple[Params, dict[str, Any]]:
    """The parameters of ``path`` (as :func:`load_params` reads them, in one read) and what they were
    searched on, as the ``seg_params.json`` of ``ekn evaluate`` records it: ``channel`` (the net's
    output channel; None for affinities or where unknown) and ``interior`` (the channel is the
    interior probability, segmented as ``1 - p``); ``{}`` for plain parameters and for search records
    written before ekn recorded them. :func:`segment_volume` adopts them (``searched=``) and refuses
    a contradiction.

    Example:
        >>> read_params('{"threshold": 0.2}')[1]
        {}
        >>> row = '{"params": {"threshold": 0.3}, "scores": {"vi": 0}}'
        >>> params, searched = read_params(f'{{"metric": "vi", "channel": 0, "interior": true, "rows": [{row}]}}')
        >>> params.threshold, searched
        (0.3, {'channel': 0, 'interior': True})
    """
    text = os.fspath(path)
    try:
        if text.lstrip().startswith("{"):
            record = json.loads(text)
        else:
            with open(text, encoding="utf-8") as f:
                record = json.load(f)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read the segmentation parameters {text!r}: {err}") from None
    if isinstance(record, dict) and "rows" in record:
        try:
            search = SegmentationSearch.from_dict(record)
            searched = {} if search.interior is None else {"channel": search.channel, "interior": search.interior}
            return search.best_params, searched
        except (KeyError, TypeError, IndexError, ValueError) as err:
            raise ConfigError(f"{os.fspath(path)!r} is no valid segmentation search record: {err}") from None
    kind = record.get("segmenter", "watershed") if isinstance(record, dict) else None
    fields = {field.name for field in dataclasses.fields(SEGMENTERS.get(str(kind), WatershedParams))}
    if str(kind) in SEGMENTERS and set(record) - {"segmenter"} <= fields:
        return SEGMENTERS[kind](**{k: v for k, v in record.items() if k != "segmenter"}), {}
    raise ConfigError(f"{os.fspath(path)!r} holds neither a segmentation search (seg_params.json of ekn evaluate) "
                      f"nor an object of watershed parameters ({', '.join(sorted(fields))}) or of another segmenter "
                      f"named by a \"segmenter\" key ({', '.join(k for k in SEGMENTERS if k != 'watershed')})")


def _searched_polarity(searched: dict[str, Any], interior: bool | None) -> bool:
    """``interior``, or where None the searched one (default False).

    Raises:
        ConfigError: ``interior`` contradicts the searched one.
    """
    recorded = searched.get("interior")
    if interior is None:
        return bool(recorded)
    if recorded is not None and bool(interior) != recorded:
        searched_on = "the interior (cell) probability, with --interior" if recorded else "the boundary probability"
        raise ConfigError(f"the segmentation parameters were searched (ekn evaluate) on {searched_on}; "
                          f"interior={bool(interior)} would segment the opposite polarity: leave --interior "
                          "(interior=) out to use the recorded one")
    return bool(interior)


def _searched_channel(searched: dict[str, Any], channel: int | None, n_channels: int, input: str,
                      record: dict[str, Any] | None) -> int | None:
    """``channel``, or where None the searched channel of the net as a channel of the input (0 of a
    one-channel input, ekn predict --channel K, that holds it).

    Raises:
        ConfigError: ``channel``, or the net's channel that a one-channel input holds, is not the
            searched one.
    """
    wanted = searched.get("channel")
    if wanted is None:
        return channel
    if n_channels == 1:
        held = None if record is None else record.get("channel")
        if held is not None and held != wanted:
            raise ConfigError(f"{input!r} is channel {held} of the net (ekn predict --channel {held}), but the "
                              f"segmentation parameters were searched (ekn evaluate) on channel {wanted}: segment a "
                              f"prediction of channel {wanted}, or search the parameters for channel {held}")
        return channel
    if channel is not None and channel != wanted:
        raise ConfigError(f"the segmentation parameters were searched (ekn evaluate) on channel {wanted} of the net; "
                          f"channel {channel} is another: leave --channel (channel=) out to use channel {wanted}")
    return wanted


def work_folder(output: str) -> str:
    """Folder of the intermediate files of a segmentation beside its output.

    Example:
        >>> work_folder("seg.zarr"), work_folder("out.h5:seg")
        ('seg.zarr.ekn-segment', 'out.h5.seg.ekn-segment')
    """
    from ekn_core.prediction.blockwise import progress_path

    return progress_path(output).removesuffix(".ekn-progress") + ".ekn-segment"


@dataclass(frozen=True)
class _Job:
    """What a worker needs to segment or stitch any block (picklable)."""

    input: str
    input_options: dict[str, Any]
    channels: slice
    interior: bool
    params: Params
    grid: BlockGrid
    folder: str

    def block_file(self, index: int) -> str:
        return os.path.join(self.folder, f"block_{index:07d}.npz")

    def merges_file(self, index: int) -> str:
        return os.path.join(self.folder, f"merges_{index:07d}.npy")


@dataclass
class _OpenInput:
    """An input volume this process opened, its ``(c, z, y, x)`` view and how many blocks read it now."""

    volume: Any
    view: Any
    readers: int = 0


# the input volumes opened by this process (job input -> _OpenInput), shared by its threads (Dask
# workers may run several); the lock makes their check-open-count and closing one step
_OPEN: dict[str, _OpenInput] = {}
_OPEN_LOCK = threading.RLock()


@contextlib.contextmanager
def _input(job: _Job) -> Iterator[Any]:
    """The job's input as a ``(c, z, y, x)`` view for the block, opened once per process; opening
    another input closes the previous ones that no thread reads."""
    key = repr((job.input, sorted(job.input_options.items())))
    with _OPEN_LOCK:
        opened = _OPEN.get(key)
        if opened is None:
            from ekn_core.prediction.blockwise import as_channel_volume
            from ekn_core.volumes import open_volume

            _close_inputs()
            volume = open_volume(job.input, **job.input_options)
            opened = _OPEN[key] = _OpenInput(volume, as_channel_volume(volume))
        opened.readers += 1
    try:
        yield opened.view
    finally:
        with _OPEN_LOCK:
            opened.readers -= 1


def _close_inputs() -> None:
    """Closes the inputs of this process that no thread reads."""
    with _OPEN_LOCK:
        for key in [key for key, opened in _OPEN.items() if opened.readers == 0]:
            _OPEN.pop(key).volume.close()


def _save(path: str, save: Callable[[Any], None]) -> None:
    from ekn_core.atomic import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            save(f)

    atomic_write(path, write)


def _segment_block(job: _Job, index: int) -> int:
    """Segments block ``index`` with its halo; saves its core (with its ids and their sizes) and
    face slabs. An affinity segmenter's ``min_size`` is left to the relabel pass (:func:`_table`),
    which counts the voxels of whole stitched segments."""
    from ekn_plugins.evaluation.prediction_reading import prediction_values  # as ekn evaluate's search reads them

    grid = job.grid
    lo, hi = grid.domain(index)
    with _input(job) as volume:
        values = prediction_values(volume[(job.channels, *(slice(l, h) for l, h in zip(lo, hi)))])
    if isinstance(job.params, WatershedParams):
        seg = watershed_segmentation(1.0 - values[0] if job.interior else values[0], job.params)
    else:
        seg = dataclasses.replace(job.params, min_size=1).segment(values)
    core = seg[box_window(*grid.core(index), lo)]
    core_ids, core_sizes = np.unique(core[core > 0], return_counts=True)
    arrays = {"core": core, "n_ids": np.int64(seg.max(initial=0)), "core_ids": core_ids,
              "core_sizes": core_sizes.astype(np.int64)}
    for axis in grid.stitched_axes():
        if grid.neighbour(index, axis, +1) is not None:
            arrays[f"hi{axis}"] = seg[box_window(*grid.face(index, axis), lo)]
        lower = grid.neighbour(index, axis, -1)
        if lower is not None:
            arrays[f"lo{axis}"] = seg[box_window(*grid.face(lower, axis), lo)]
    _save(job.block_file(index), lambda f: np.savez_compressed(f, **arrays))
    return index


def _block_arrays(job: _Job, index: int, names: Sequence[str]) -> list[np.ndarray]:
    try:
        with np.load(job.block_file(index), allow_pickle=False) as data:
            return [data[name] for name in names]
    except (OSError, KeyError, ValueError) as err:
        raise EknError(f"block {index}'s file {job.block_file(index)!r} is missing or damaged ({err}); delete it "
                       "if it is there and run again: blocks without their file are segmented again") from None


def _stitch_block(job: _Job, index: int) -> int:
    """Matches block ``index``'s segments to those of its upper neighbours; saves the pairs as
    ``(block, id, neighbour, id)`` rows."""
    rows = []
    for axis in job.grid.stitched_axes():
        upper = job.grid.neighbour(index, axis, +1)
        if upper is None:
            continue
        mine, my_core = _block_arrays(job, index, [f"hi{axis}", "core_ids"])
        theirs, their_core = _block_arrays(job, upper, [f"lo{axis}", "core_ids"])
        pairs = overlap_matches(mine, theirs, my_core, their_core)  # a segment in no core joins nothing
        rows.append(np.column_stack([np.full(len(pairs), index), pairs[:, 0], np.full(len(pairs), upper),
                                     pairs[:, 1]]))
    merges = np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 4), np.int64)
    _save(job.merges_file(index), lambda f: np.save(f, merges, allow_pickle=False))
    return index


def _run_pass(plog: Any, pending: list[int], work: Callable[[_Job, int], int], job: _Job, workers: int,
              progress: bool, on_block: Callable[[str, int], Any] | None, scheduler: str | None = None) -> None:
    """Runs ``work(job, index)`` on the ``pending`` blocks (in ``workers`` processes, or on the Dask
    cluster at ``scheduler``) and records each finished one in ``plog``, a
    :class:`~ekn_core.prediction.blockwise.ProgressLog`."""
    name = plog.fingerprint["pass"]
    bar = None
    if progress and pending:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(job.grid), initial=len(job.grid) - len(pending), unit="block", desc=name)

    def finished(index: int) -> None:
        plog.mark(index)
        if bar is not None:
            bar.update(1)
        if on_block is not None:
            on_block(name, index)

    try:
        plog.start()
        if scheduler and pending:
            from ekn_core.prediction.distributed import as_finished, connect

            client, close = connect(scheduler)
            try:
                for index in as_finished(client, work, pending, job, name=f"ekn-segment-{name}"):
                    finished(index)
            finally:
                close()
        elif workers <= 1 or len(pending) <= 1:
            for index in pending:
                finished(work(job, index))
        else:
            context = multiprocessing.get_context(start_method(reads_volumes=True))
            with ProcessPoolExecutor(min(workers, len(pending)), context) as pool:
                try:
                    running = {pool.submit(work, job, index) for index in pending}
                    while running:
                        ready, running = wait(running, return_when=FIRST_COMPLETED)
                        for future in ready:
                            finished(future.result())
                finally:
                    pool.shutdown(wait=True, cancel_futures=True)
    finally:
        plog.close()
        if bar is not None:
            bar.close()


def _pass_log(job: _Job, name: str, fingerprint: dict[str, Any], done_file: Callable[[int], str],
              path: str | None = None) -> tuple[Any, list[int]]:
    """The progress log of a pass and its pending blocks: those not recorded, or whose file is gone."""
    from ekn_core.prediction.blockwise import ProgressLog

    plog = ProgressLog(path or os.path.join(job.folder, f"{name}.ekn-progress"), {**fingerprint, "pass": name})
    return plog, [i for i in range(len(job.grid)) if i not in plog.done or not os.path.exists(done_file(i))]


def _table(job: _Job) -> tuple[np.ndarray, np.ndarray, int]:
    """The final id of every block's local ids (``final[offsets[k] + id - 1]``), the offsets,
    and the number of matched pairs. An affinity segmenter's segments of fewer than ``min_size``
    voxels (summed over the cores of all blocks) become 0, the others keep their order."""
    n_ids, written, sizes, merges = [], [], [], []
    for index in range(len(job.grid)):
        count, core_ids, core_sizes = _block_arrays(job, index, ["n_ids", "core_ids", "core_sizes"])
        n_ids.append(int(count))
        written.append(core_ids)
        sizes.append(core_sizes)
        merges.append(np.load(job.merges_file(index), allow_pickle=False))
    matches = np.concatenate(merges)
    final, offsets = final_ids(n_ids, matches, written)
    if isinstance(job.params, AffinitySegmenter) and job.params.min_size > 1:
        nodes = np.concatenate([offset + ids.astype(np.int64) - 1 for offset, ids in zip(offsets, written)])
        size = np.bincount(final[nodes], weights=np.concatenate(sizes), minlength=int(final.max(initial=0)) + 1)
        keep = size >= job.params.min_size
        keep[0] = False
        final = np.where(keep[final], np.cumsum(keep)[final], 0)
    return final, offsets, len(matches)


def _affinity_channels(params: AffinitySegmenter, n_channels: int, channel: int | None,
                       interior: bool | None) -> tuple[slice, list[int]]:
    """The channels of P(connected) of an affinity input (the slice to read, and as a list).

    Raises:
        ConfigError: ``channel`` or ``interior`` given (they choose a boundary channel), or a
            channel count that fits neither layout of the nhood.
    """
    from ekn_plugins.evaluation.affinities import connected_channels

    if channel is not None or interior:
        raise ConfigError(f"--channel and --interior choose a boundary channel; {params.kind} parameters segment "
                          f"the affinity channels of their nhood ({len(params.nhood)} edges): leave them out")
    n_edges = len(params.nhood)
    if n_channels not in (n_edges, 2 * n_edges):
        raise ConfigError(f"the input has {n_channels} channel(s), but affinities of the {params.kind} parameters' "
                          f"nhood ({n_edges} edges) have {n_edges} (one sigmoid per edge) or {2 * n_edges} (a 2-class "
                          "softmax per edge); give the parameters found for this net (seg_params.json of ekn evaluate "
                          "--affinities)")
    channels = connected_channels(n_channels, n_edges)
    return channels, list(range(n_channels))[channels]


def segment_volume(input: str, output: str, params: Params | str | os.PathLike | None = None, *,
                   block: Sequence[int] = DEFAULT_BLOCK, halo: Sequence[int] | int | None = None,
                   roi: tuple[Sequence[int], Sequence[int]] | None = None, channel: int | None = None,
                   interior: bool | None = None, searched: dict[str, Any] | None = None, workers: int = 1,
                   scheduler: str | None = None, progress: bool = True, input_options: dict[str, Any] | None = None,
                   output_options: dict[str, Any] | None = None,
                   on_block: Callable[[str, int], Any] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Segments a boundary probability volume (or affinities) of any size block by block; resumable.

    For a map without ties (no voxel equally far, in flooding order, from two seeds) and a halo
    that reaches the seeds of every voxel of a core, the result equals
    :func:`~ekn_plugins.evaluation.segmentation.watershed_segmentation` of the whole region up to
    the numbering of the segments. The watershed's ``min_size`` and ``min_seed_size`` count the
    voxels of a segment or seed inside one block with its halo: a segment cut by the halo can be
    merged into a neighbour where the whole volume would keep it (a halo of a few cell radii makes
    that rare).

    With the parameters of an affinity segmenter, the input holds affinities and each block (with
    its halo) is segmented by that segmenter; edges from a block's voxels to voxels outside it
    are left out there. Its ``min_size`` counts the voxels of the whole stitched segment (the
    blocks are segmented with ``min_size=1``), as on the whole volume. Agglomeration (waterz, the
    mutex watershed) is not local: near a block's faces it can decide otherwise than on the whole
    volume, which the halo and the stitching absorb as they do the watershed's differences.

    Args:
        input: Boundary probabilities (1 = boundary) for ``open_volume``: ``(z, y, x)`` or
            ``(c, z, y, x)`` (``ekn predict``'s output), float in [0, 1] or uint8 (p × 255); for
            an affinity segmenter, affinities ``(c, z, y, x)``: one sigmoid channel per edge of
            its ``nhood``, or a 2-class softmax per edge (P(connected) the second).
        output: The segmentation for ``create_volume`` (zarr by default, ``file.h5:key``, ...); not
            the input, nor inside, around or in the file of it (:func:`~ekn_core.volumes.check_distinct`).
            The output of an ekn job is replaced, a volume no ekn job wrote only with ``overwrite``
            (:func:`~ekn_core.prediction.blockwise.check_output_replaceable`, checked before the
            first block).
        params: Watershed parameters (default :class:`WatershedParams()`), or those of an
            affinity segmenter (:data:`~ekn_plugins.evaluation.seg_search.SEGMENTERS`); or a
            path (or JSON text) for :func:`read_params`, whose searched input is then ``searched``
            (giving ``searched`` too is an error).
        block: Core shape (z, y, x) of a block.
        halo: Voxels segmented around each core, (z, y, x) or one number (default
            :func:`default_halo`).
        roi: ``(lo, hi)`` region of the input to segment (default everything); it is segmented
            as if it were the whole volume (no voxel outside it is read).
        channel: Channel of a ``(c, z, y, x)`` input (default: the searched one, else 1 of two
            softmax channels, 0 of one); not for affinities.
        interior: The channel is the interior (cell) probability: segment ``1 - p`` (default: the
            searched polarity, else False); not for affinities.
        searched: What the parameters were searched on (the second value of :func:`read_params` of
            a ``seg_params.json``): its channel and polarity are used where ``channel`` and
            ``interior`` are None; ones that contradict them are an error.
        workers: Processes that segment and stitch blocks (1: this process). They are forked, or
            started from a fork server where forking is unsafe (a zarr, N5 or precomputed input, or
            TensorFlow imported: :func:`~ekn_plugins.evaluation.seg_search.start_method`), which
            imports a calling script again: its top level must be guarded by
            ``if __name__ == "__main__":``.
        scheduler: Address of a Dask scheduler (``tls://host:8786``) whose workers segment and stitch
            the blocks instead (they must see ``input`` and the output's folder under the same paths,
            e.g. on a shared file system); the relabelling into ``output`` runs here.
        progress: tqdm bars (blocks) per pass.
        input_options, output_options: Passed to ``open_volume`` / ``create_volume``.
        on_block: Called with ``(pass, index)`` after each block was recorded (tests, monitors).
        overwrite: Replace an existing output that no ekn job wrote.

    Returns:
        Summary: ``blocks``, ``skipped`` (blocks of the first pass already done), ``segments``,
        ``merges`` (matched pairs across faces), ``voxels``, ``seconds``, ``shape``, ``dtype``.
    """
    from ekn_core.prediction.blockwise import (absolute, as_channel_volume, check_output_replaceable, chunk_shape,
                                               finished_prediction, open_output, output_reader, progress_path)
    from ekn_core.volumes import check_distinct, open_volume
    from ekn_plugins.validation.segmentation_metrics import boundary_channel

    if isinstance(params, (str, os.PathLike)):
        if searched is not None:
            raise ConfigError("params is a file (or JSON text), whose recorded search input is used; searched= "
                              "is for parameters given as objects: leave it out, or pass read_params(file)")
        params, searched = read_params(params)
    params, searched = params or WatershedParams(), searched or {}
    if not isinstance(params, (WatershedParams, AffinitySegmenter)):
        raise ConfigError(f"params must be WatershedParams or those of an affinity segmenter, got "
                          f"{type(params).__name__}")
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ConfigError(f"workers must be a number of processes >= 1, got {workers!r}")
    if scheduler and workers > 1:
        raise ConfigError("give either workers (processes on this machine) or scheduler (a Dask cluster), not both")
    check_distinct(output, [input])
    check_output_replaceable(output, (output_options or {}).get("reader", output_reader(output)), overwrite)
    with open_volume(input, **(input_options or {})) as raw:
        volume = as_channel_volume(raw)
        n_channels, shape, dtype = int(volume.shape[0]), tuple(int(s) for s in volume.shape[1:]), np.dtype(raw.dtype)
    if dtype != np.uint8 and not np.issubdtype(dtype, np.floating):
        raise ConfigError(f"{input!r} holds {dtype} values; ekn segment reads boundary probabilities (or affinities) "
                          "as floats in [0, 1] or uint8 (p x 255)")
    record = finished_prediction(input)  # a prediction that ekn predict has not finished is mostly zeros
    if isinstance(params, AffinitySegmenter):
        channels, channel = _affinity_channels(params, n_channels, channel, interior)
        interior = False
    else:
        interior = _searched_polarity(searched, interior)
        channel = _searched_channel(searched, channel, n_channels, input, record)
        if searched:
            log.info("the parameters were searched (ekn evaluate) on channel %s of the net as the %s probability",
                     searched.get("channel"), "interior" if searched.get("interior") else "boundary")
        if n_channels == 1 and record is not None and record.get("channel") == 0 and not interior:
            log.warning("%s is channel 0 of the net (ekn predict --channel 0), segmented as the boundary "
                        "probability; of a 2-class softmax that is the background: use --interior, or predict "
                        "--channel 1", input)
        channel = boundary_channel(n_channels, channel, name="channel", source=f"the input {input!r} has",
                                   ask="say which one holds the boundary probability with --channel K (channel= in "
                                       "Python; with --interior for an interior, cell probability)")
        channels = slice(channel, channel + 1)
    grid = make_grid(shape, block, default_halo(params) if halo is None else halo, params, roi)
    folder = work_folder(output)
    os.makedirs(folder, exist_ok=True)
    job = _Job(absolute(input), dict(input_options or {}), channels, bool(interior), params, grid,
               os.path.abspath(folder))
    fingerprint = {"version": 2, "input": job.input, "input_shape": [n_channels, *shape], "dtype": dtype.name,
                   "channel": channel, "interior": job.interior, "params": params.to_dict(),
                   "grid": json.loads(json.dumps(dataclasses.asdict(grid)))}
    log.info("segmenting %s -> %s: %d blocks of %s with halo %s (%s)", input, output, len(grid), grid.block,
             grid.halo, params)
    t0 = time.perf_counter()
    try:
        plog, pending = _pass_log(job, "segment", fingerprint, job.block_file)
        skipped = len(grid) - len(pending)
        _run_pass(plog, pending, _segment_block, job, int(workers), progress, on_block, scheduler)
        _run_pass(*_pass_log(job, "stitch", fingerprint, job.merges_file), _stitch_block, job, int(workers),
                  progress, on_block, scheduler)
    finally:
        _close_inputs()
    final, offsets, n_merges = _table(job)
    n_segments = int(final.max(initial=0))
    out_dtype = np.dtype(np.uint32 if n_segments < 2**32 else np.uint64)
    out_shape = tuple(e - o for o, e in zip(grid.origin, grid.end))
    plog, pending = _pass_log(job, "relabel", {**fingerprint, "dtype_out": out_dtype.name}, job.block_file,
                              progress_path(output))
    if pending:
        out = open_output(output, plog.resumed, out_shape, out_dtype, chunk_shape(grid.block, out_shape),
                          output_options, overwrite)

        def relabel(job: _Job, index: int) -> int:
            (core,) = _block_arrays(job, index, ["core"])
            lookup = np.concatenate([[0], final[offsets[index]:offsets[index] + int(core.max(initial=0))]])
            lo, hi = grid.core(index)
            out[box_window(lo, hi, grid.origin)] = lookup[core].astype(out_dtype)
            getattr(out, "flush", lambda: None)()
            return index

        try:
            _run_pass(plog, pending, relabel, job, 1, progress, on_block)
        finally:
            out.close()
    seconds = time.perf_counter() - t0
    voxels = math.prod(out_shape)
    log.info("%d segments, %d merges across faces, %.1f s", n_segments, n_merges, seconds)
    return {"blocks": len(grid), "skipped": skipped, "segments": n_segments, "merges": n_merges, "voxels": voxels,
            "seconds": seconds, "shape": out_shape, "dtype": out_dtype.name}

