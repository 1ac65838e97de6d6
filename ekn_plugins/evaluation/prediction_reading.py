"""Reading a prediction (what ``ekn predict`` writes) for evaluation, block by block: opened with
its shape and dtype checked as a channels-first view, read in the blocks of its own chunk grid,
and its values turned into probabilities (uint8 is probability x 255).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np

from ekn_core.errors import ConfigError
from ekn_core.prediction.tiling import Shape

#: Block read at a time from a prediction that has no chunks (e.g. a TIFF stack).
READ_BLOCK = (32, 512, 512)


def grid_blocks(lo: Shape, hi: Shape, block: Shape) -> Iterator[tuple[slice, ...]]:
    """The cells of the grid of ``block`` (from 0) that overlap ``[lo, hi)``, cut to it, in C order.

    Example:
        >>> [s[0] for s in grid_blocks((3,), (9,), (4,))]
        [slice(3, 4, None), slice(4, 8, None), slice(8, 9, None)]
    """
    starts = [range(a // b * b, c, b) for a, c, b in zip(lo, hi, block)]
    for corner in itertools.product(*starts):
        yield tuple(slice(max(k, a), min(k + b, c)) for k, a, c, b in zip(corner, lo, hi, block))


def prediction_values(data: Any) -> np.ndarray:
    """Probabilities of a block read from a prediction: uint8 (``ekn predict --uint8``, KNOSSOS:
    probability x 255, :func:`~ekn_core.prediction.dense.to_uint8`) as float64 / 255, float16
    as float32, other floats as they are.

    Example:
        >>> prediction_values(np.array([0, 51, 255], np.uint8)).tolist()
        [0.0, 0.2, 1.0]
    """
    data = np.asarray(data)
    if data.dtype == np.uint8:
        return data / 255.0
    return data.astype(np.float32) if data.dtype == np.float16 else data


@contextlib.contextmanager
def open_prediction(path: str) -> Iterator[tuple[Any, Shape]]:
    """A prediction (what ``ekn predict`` writes: ``(n_lab, z, y, x)``, or ``(z, y, x)`` with
    ``--channel``) as a channels-first view, and its own shape; shape and dtype checked."""
    from ekn_core.prediction.blockwise import as_channel_volume
    from ekn_core.volumes import open_volume

    try:
        volume = open_volume(path)
    except Exception as err:  # any reader's error: name the prediction
        raise ConfigError(f"cannot read the prediction {path!r}: {type(err).__name__}: {err}") from err
    with volume:
        shape, dtype = tuple(volume.shape), np.dtype(volume.dtype)
        if len(shape) not in (3, 4):
            raise ConfigError(f"the prediction {path!r} has shape {shape}; give what ekn predict writes: "
                              "(n_lab, z, y, x), or (z, y, x) with --channel")
        if dtype != np.uint8 and not np.issubdtype(dtype, np.floating):
            raise ConfigError(f"the prediction {path!r} has dtype {dtype}; give probabilities: floats in [0, 1] "
                              "or uint8 (probability x 255, ekn predict --uint8)")
        yield as_channel_volume(volume), shape


def spatial_chunks(view: Any) -> Shape:
    """The chunk shape ``(z, y, x)`` of a channels-first view (:data:`READ_BLOCK` without chunks)."""
    chunks = getattr(view, "chunks", None) or getattr(getattr(view, "volume", None), "chunks", None)
    return tuple(chunks[-3:]) if chunks else READ_BLOCK


def read_window(view: Any, window: tuple[slice, ...]) -> np.ndarray:
    """The spatial ``window`` of a one-channel ``(1, z, y, x)`` view as ``(z, y, x)``."""
    return np.asarray(view[(slice(None), *window)])[0]
