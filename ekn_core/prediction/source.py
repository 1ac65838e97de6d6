"""Reading input windows for dense prediction from arrays and lazy volumes.

A window ``[lo, hi)`` may extend beyond the image on any side; voxels outside are filled by
symmetric (mirror) extension, ELEKTRONN2's ``pad_raw`` padding (``numpy.pad(mode="symmetric")``),
repeated periodically for windows wider than the image. Only the bounding box of the voxels
actually needed is read, so a window costs memory proportional to its own size.

Example:
    >>> import numpy as np
    >>> a = np.arange(4)[None]          # one channel, one spatial axis
    >>> read_window(a, (-2,), (6,))[0].tolist()
    [1, 0, 0, 1, 2, 3, 3, 2]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ekn_core.errors import ShapeError


def mirror_index(index: np.ndarray, size: int) -> np.ndarray:
    """Maps any integer index onto ``[0, size)`` by symmetric extension.

    Example:
        >>> mirror_index(np.arange(-3, 6), 3).tolist()
        [2, 1, 0, 0, 1, 2, 2, 1, 0]
    """
    m = np.mod(index, 2 * size)
    return np.where(m < size, m, 2 * size - 1 - m)


def read_window(volume: Any, lo: tuple[int, ...], hi: tuple[int, ...]) -> np.ndarray:
    """Reads ``volume[:, lo:hi]`` (channel axis first) with mirror extension outside the volume.

    Args:
        volume: numpy array or lazy volume of shape ``(channels, *spatial)``.
        lo: Window start per spatial axis (may be negative).
        hi: Window end per spatial axis (may exceed the volume).

    Returns:
        ``(channels, *(hi - lo))`` array in the volume's dtype.
    """
    spatial = tuple(volume.shape[1:])
    if len(lo) != len(spatial) or len(hi) != len(spatial):
        raise ShapeError(f"window {lo}..{hi} does not match volume spatial shape {spatial}")
    if all(0 <= l and h <= s for l, h, s in zip(lo, hi, spatial)):
        return np.asarray(volume[(slice(None), *(slice(l, h) for l, h in zip(lo, hi)))])
    index = [mirror_index(np.arange(l, h), s) for l, h, s in zip(lo, hi, spatial)]
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in index)
    data = np.asarray(volume[(slice(None), *box)])
    return data[np.ix_(range(data.shape[0]), *(i - b.start for i, b in zip(index, box)))]


class ChannelFirst:
    """A ``(z, y, x)`` volume seen as ``(1, z, y, x)`` (lazy; slicing passes through).

    Example:
        >>> ChannelFirst(np.zeros((2, 3, 4))).shape
        (1, 2, 3, 4)
    """

    def __init__(self, volume: Any):
        self.volume = volume
        self.shape = (1, *volume.shape)
        self.dtype = volume.dtype

    def __getitem__(self, index: tuple) -> np.ndarray:
        return np.asarray(self.volume[index[1:]])[None]
