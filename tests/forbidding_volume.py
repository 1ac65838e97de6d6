"""A test volume larger than memory: it refuses to read more than a limit at once."""

import numpy as np


class Forbidding:
    """A lazy volume that refuses to read more than ``limit`` voxels at once (a volume larger than
    memory); ``closed`` tells whether the data source closed it.

    Example:
        >>> vol = Forbidding(np.zeros((4, 4, 4)), limit=16)
        >>> vol[0:1, :, :].shape
        (1, 4, 4)
        >>> vol[:, :, :]
        Traceback (most recent call last):
        ...
        MemoryError: read 64 voxels at once, more than 16
    """

    def __init__(self, volume, limit):
        self.volume, self.limit, self.shape, self.dtype = volume, limit, volume.shape, volume.dtype
        self.closed = False

    def __getitem__(self, index):
        box = [s.indices(n) for s, n in zip(index[-3:], self.shape[-3:])]
        size = np.prod([max(b - a, 0) for a, b, _ in box])
        if size > self.limit:
            raise MemoryError(f"read {size} voxels at once, more than {self.limit}")
        return np.asarray(self.volume[index])

    def close(self):
        self.closed = True
        getattr(self.volume, "close", lambda: None)()
