"""Dense prediction of whole images: :func:`predict_dense` and the tile engine
:func:`predict_region` that the out-of-core and Dask paths share.

The engine walks a :class:`~ekn_core.prediction.tiling.TileGrid`; each tile needs
``geometry.passes`` forward passes (one per stride phase, ELEKTRONN2's loop; one for nets with
strides 1, e.g. a model reloaded with MFP active). Passes of consecutive tiles are batched
(``batch_size`` samples per call). Tiles are written in grid order; with ``overlap > 0`` they
are blended with weights (see :func:`~ekn_core.prediction.tiling.blend_weights`).

Example:
    >>> import numpy as np
    >>> from ekn_core.prediction.net import NetAdapter
    >>> class S:
    ...     def __init__(self, shape, strides=(1, 1, 1)):
    ...         self.shape, self.tags, self.strides = shape, ("b", "f", "z", "y", "x"), strides
    ...         self.spatial_shape = shape[2:]
    ...     def __getitem__(self, t): return self.shape[self.tags.index(t)]
    >>> class Mean3:  # 3x3x3 box filter, valid
    ...     input_nodes = [type("I", (), {"shape": S((None, 1, 5, 5, 5))})()]
    ...     shape = S((None, 1, 3, 3, 3))
    ...     def __call__(self, x):
    ...         from numpy.lib.stride_tricks import sliding_window_view as win
    ...         return win(x, (3, 3, 3), axis=(2, 3, 4)).mean(axis=(-3, -2, -1))
    >>> raw = np.random.default_rng(0).random((9, 10, 11)).astype(np.float32)
    >>> pred = predict_dense(Mean3(), raw)
    >>> pred.shape
    (1, 7, 8, 9)
    >>> bool(np.allclose(pred[0, 0, 0, 0], raw[:3, :3, :3].mean()))
    True
    >>> predict_dense(Mean3(), raw, pad_raw=True).shape
    (1, 9, 10, 11)
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import numpy as np

from ekn_core.errors import ShapeError
from ekn_core.prediction.net import NetAdapter, SliceWise
from ekn_core.grey import to_grey
from ekn_core.training_data import prediction_grey_range, training_data_of
from ekn_core.prediction.source import read_window
from ekn_core.prediction.tiling import TileGrid, blend_mode, blend_weights
from ekn_core.prediction.tta import describe, tta_factor, with_tta

log = logging.getLogger("ekn.prediction")

#: Default memory budget for batching when none is given (bytes).
DEFAULT_MEMORY_BUDGET = 2 * 2**30


def auto_batch_size(net: Any, memory_budget: int | None = None) -> int:
    """Passes per forward call: the net's fixed batch, else as many as fit ``memory_budget``
    (at most one tile's passes, at least 1; a larger patch is the better way to use memory).

    Example:
        >>> class N: batch, bytes_per_voxel = None, 1000.0
        ...
        >>> from ekn_core.prediction.tiling import TileGeometry
        >>> N.geometry = TileGeometry((10, 10, 10), (1, 1, 1), (2, 2, 2))
        >>> auto_batch_size(N(), 4_000_000)
        4
    """
    if net.batch is not None:
        return int(net.batch)
    per_pass = net.bytes_per_voxel * float(np.prod(net.geometry.patch))
    fit = int((memory_budget or DEFAULT_MEMORY_BUDGET) // max(per_pass, 1.0))
    return max(1, min(net.geometry.passes, fit))


def predict_region(net: Any, read: Callable[[tuple, tuple], np.ndarray], grid: TileGrid,
                   lo: tuple[int, ...], hi: tuple[int, ...], *, blend: str | None = None,
                   batch_size: int = 1, progress: Callable[[int], Any] | None = None) -> np.ndarray:
    """Predicts the output voxels ``[lo, hi)`` (output coordinates) tile by tile.

    Args:
        net: :class:`~ekn_core.prediction.net.NetAdapter` (or :class:`SliceWise`).
        read: ``read(in_lo, in_hi) -> (channels, ...)`` float32 input window (any range; the
            caller handles borders).
        grid: The global tile grid; ``[lo, hi)`` must lie inside ``[grid.origin, grid.end)``.
        lo, hi: Region to predict.
        blend: None to overwrite overlapping tiles in grid order, or a blend mode.
        batch_size: Forward passes per call.
        progress: Called with the number of region voxels each finished tile completes.

    Returns:
        ``(n_lab, *(hi - lo))`` float32.
    """
    g = grid.geometry
    size = tuple(h - l for l, h in zip(lo, hi))
    acc = np.zeros((net.n_lab, *size), np.float32)
    wsum = np.zeros(size, np.float32) if blend else None
    weights = blend_weights(g.tile_out, blend) if blend else None
    phases = g.phases()
    tiles = grid.tiles(lo, hi, blended=blend is not None)
    if net.batch is None:
        batch_size = max(1, min(batch_size, len(tiles) * len(phases)))
    pending: list[tuple] = []          # starts of tiles queued, not yet written
    queue: list[np.ndarray] = []       # sub-patches waiting for a forward pass
    outputs: list[np.ndarray] = []     # pass outputs in queue order

    def commit(start: tuple, dense: np.ndarray) -> None:
        dst = tuple(slice(max(s, l) - l, min(s + t, h) - l) for s, t, l, h in zip(start, g.tile_out, lo, hi))
        src = tuple(slice(max(s, l) - s, min(s + t, h) - s) for s, t, l, h in zip(start, g.tile_out, lo, hi))
        if blend:
            w = weights[src]
            acc[(slice(None), *dst)] += dense[(slice(None), *src)] * w
            wsum[dst] += w
        else:
            acc[(slice(None), *dst)] = dense[(slice(None), *src)]
        if progress is not None:
            progress(grid.owned(start, lo, hi))

    def run_queue(final: bool) -> None:
        while len(queue) >= batch_size or (final and queue):
            n = min(batch_size, len(queue))
            # a short last batch is zero-filled (one input shape, one compiled function), unless the
            # net has a fixed batch: its adapter calls it per batch of its own size
            fill = batch_size - n if net.batch is None else 0
            chunk = np.stack(queue[:n] + [np.zeros_like(queue[0])] * fill)
            del queue[:n]
            outputs.extend(net(chunk)[:n])
        while pending and len(outputs) >= len(phases):
            start = pending.pop(0)
            dense = np.empty((net.n_lab, *g.tile_out), np.float32)
            for phase, out in zip(phases, outputs[:len(phases)]):
                dense[(slice(None), *(slice(o, None, s) for o, s in zip(phase, g.strides)))] = out
            del outputs[:len(phases)]
            commit(start, dense)

    for start in tiles:
        in_lo = tuple(s - c for s, c in zip(start, g.context_lo))
        tile = read(in_lo, tuple(a + t for a, t in zip(in_lo, g.tile_in)))
        pending.append(start)
        for phase in phases:
            queue.append(tile[(slice(None), *(slice(o, o + p) for o, p in zip(phase, g.patch)))])
        run_queue(final=False)
    run_queue(final=True)
    if blend:
        acc /= wsum
    return acc


def _as_channels_first(raw: np.ndarray, net: NetAdapter) -> tuple[np.ndarray, bool, bool]:
    """Raw image → ``(ch, z, y, x)``; returns (array, net is 2-D, output keeps no z axis)."""
    ch = net.in_channels
    if net.ndim == 3:
        if raw.ndim == 4:
            data = raw
        elif raw.ndim == 3 and ch == 1:
            data = raw[None]
        else:
            raise ShapeError(f"a 3-D net with {ch} input channel(s) needs raw (ch, z, y, x)"
                             f"{' or (z, y, x)' if ch == 1 else ''}, got shape {raw.shape}")
        if data.shape[0] != ch:
            raise ShapeError(f"raw has {data.shape[0]} channels (axis 0 of {raw.shape}), the net expects {ch}")
        return data, False, False
    if raw.ndim == 2 and ch == 1:
        return raw[None, None], True, True
    if raw.ndim == 3 and raw.shape[0] == ch:
        return raw[:, None], True, True
    if raw.ndim == 3 and ch == 1:
        return raw[None], True, False
    if raw.ndim == 4 and raw.shape[0] == ch:
        return raw, True, False
    raise ShapeError(f"a 2-D net with {ch} input channel(s) needs raw (ch, y, x) or a stack (ch, z, y, x)"
                     f"{' / (y, x) / (z, y, x)' if ch == 1 else ''}, got shape {raw.shape}")


def progress_label(net: Any) -> str:
    """The progress bar's label: ``predict``, with the TTA factor when there is one."""
    factor = tta_factor(net)
    return f"predict (TTA x{factor})" if factor else "predict"


def to_uint8(pred: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] → uint8 (×255, rounded, clipped).

    Example:
        >>> to_uint8(np.array([0.0, 0.5, 1.2])).tolist()
        [0, 128, 255]
    """
    return np.clip(np.rint(pred * 255.0), 0, 255).astype(np.uint8)


def predict_dense(node: Any, raw: np.ndarray, as_uint8: bool = False, pad_raw: bool = False, *,
                  overlap: int | tuple[int, ...] = 0, blend: str = "gaussian",
                  batch_size: int | None = None, memory_budget: int | None = None,
                  progress: bool = False, tta: str | list[str] | None = None,
                  affinity_offsets: Any = None, grey_range: tuple[float, float] | None = None) -> np.ndarray:
    """Dense prediction of a whole image with a node (ELEKTRONN2's ``Node.predict_dense``).

    Args:
        node: The prediction node (one image input).
        raw: ``(ch, z, y, x)``, or ``(z, y, x)`` for one channel. For 2-D nets ``(ch, y, x)`` /
            ``(y, x)`` is one image and ``(ch, z, y, x)`` / ``(z, y, x)`` a stack predicted slice
            by slice. Integer data is mapped to [0, 1] by its dtype's range (uint8 / 255,
            :func:`ekn_core.grey.to_grey`), floats are used as they are; integer data whose dtype
            range differs from the one the net was trained on (``model.training_data``) is refused
            unless ``grey_range`` states its scaling
            (:func:`~ekn_core.training_data.prediction_grey_range`).
        as_uint8: Return ``uint8`` (probabilities × 255) instead of float32.
        pad_raw: Mirror-pad the image by the net's context so the output covers the whole input;
            otherwise the output is ``raw - (fov - 1)`` per axis (``raw - 2*offset`` for odd FOVs).
        overlap: Output voxels by which neighbouring tiles overlap; the overlaps are blended (tiles that
            overlap only because their step keeps to the net's shift period are written over:
            :func:`~ekn_core.prediction.tiling.blend_mode`).
        blend: Blend mode for overlapping tiles (``gaussian``, ``linear``, ``constant``).
        batch_size: Forward passes per call (default: the net's batch, else what fits
            ``memory_budget``).
        memory_budget: Bytes the batching may use (default 2 GiB).
        progress: Show a tqdm bar in voxels.
        tta: Test-time augmentation: ``"flips"``, ``"flips+transpose"`` or a list of transforms
            (see :mod:`ekn_core.prediction.tta`); the prediction is the mean over the transformed
            inputs' predictions, each transformed back. Costs one pass per transform.
        affinity_offsets: With ``tta``, the edge offsets ``(y, x)`` / ``(z, y, x)`` of an affinity
            net's channels, columns in the order of the image's spatial axes (which a net tagged
            ``z,x,y`` names ``(z, x, y)``), one row per channel or per 2-class softmax pair (nets that feed an
            affinity loss such as ``MalisNLL`` declare them); each channel is then restored
            exactly (the edges to voxels beyond the image use its mirrored context, and without
            ``pad_raw`` the output loses the shifts' reach on each side). Nets trained on affinity
            targets with a plain loss take them from their model file (``model.training_data``).
        grey_range: ``(low, high)``: the raw values mapped to 0 and 1 instead of the dtype's range
            (e.g. ``(0, 4095)`` for 12-bit data in uint16, ``(0, 255)`` for a uint16 copy of 8-bit data).

    Returns:
        ``(n_lab, z, y, x)`` (``(n_lab, y, x)`` for a single 2-D image).
    """
    raw = np.asarray(raw)
    scale = prediction_grey_range(training_data_of(node), raw.dtype, grey_range, "predict_dense")
    net: Any = NetAdapter(node)
    data, is_2d, squeeze = _as_channels_first(raw, net)
    net = with_tta(net, tta, affinity_offsets)
    if is_2d:
        net = SliceWise(net)
    g = net.geometry
    spatial = data.shape[1:]
    if pad_raw:
        origin, end = (0,) * 3, tuple(spatial)
    else:
        origin, end = g.context_lo, tuple(s - h for s, h in zip(spatial, g.context_hi))
        if any(e <= o for o, e in zip(origin, end)):
            raise ShapeError(f"raw spatial shape {tuple(spatial)} is smaller than the net's field of view "
                             f"{tuple(x + 1 for x in g.lead)}: use pad_raw=True or a larger image")
    grid = TileGrid(g, origin, end, overlap)
    blending = blend_mode(g, overlap, blend)
    batch = batch_size or auto_batch_size(net, memory_budget)
    total = int(np.prod([e - o for o, e in zip(origin, end)]))
    log.info("predicting %s in %d tiles, %d passes each", tuple(spatial), len(grid.tiles(origin, end)), g.passes)
    if describe(net):
        log.info(describe(net))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="vox", unit_scale=True, desc=progress_label(net))
    t0 = time.perf_counter()
    try:
        pred = predict_region(net, lambda a, b: to_grey(read_window(data, a, b), scale), grid, origin, end,
                              blend=blending, batch_size=batch, progress=bar.update if bar else None)
    finally:
        if bar is not None:
            bar.close()
    log.info("%.3g voxels/s", total / max(time.perf_counter() - t0, 1e-9))
    if squeeze:
        pred = pred[:, 0]
    return to_uint8(pred) if as_uint8 else pred
