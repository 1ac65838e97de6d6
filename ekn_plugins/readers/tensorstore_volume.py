"""A lazy volume over a tensorstore view: reads and box writes with numpy basic indexing.

The readers that go through tensorstore (Neuroglancer precomputed, N5) present their view in
ekn's C-order axes and wrap it in :class:`TensorStoreVolume`; they and the zarr reader open
read-only stores with :func:`read_spec` (a chunk cache per volume).

Example:
    >>> import numpy as np, tensorstore as ts
    >>> vol = TensorStoreVolume(ts.array(np.zeros((2, 3, 4), np.uint8)), chunks=(1, 3, 4), axes="zyx",
    ...                         writable=True, kind="example")
    >>> vol[1, :, 1:3] = 5
    >>> vol[1].tolist()
    [[0, 5, 5, 0], [0, 5, 5, 0], [0, 5, 5, 0]]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ekn_core.errors import EknError
from ekn_core.volumes import VolumeBase
from ekn_plugins.readers.indexing import bounding_box, normalize_index, read_through_box

#: Bytes of decoded chunks that tensorstore keeps per read-only volume.
READ_CACHE_BYTES = 64 << 20


def read_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A tensorstore ``spec`` for reading with a chunk cache of :data:`READ_CACHE_BYTES`, revalidated
    against the stored chunks on every read (writes by other handles are seen at once); small box
    reads that share chunks (random patches) decode each chunk once.

    Example:
        >>> read_spec({"driver": "n5"})["context"]
        {'cache_pool': {'total_bytes_limit': 67108864}}
    """
    return {**spec, "context": {"cache_pool": {"total_bytes_limit": READ_CACHE_BYTES}}, "recheck_cached_data": True}


class TensorStoreVolume(VolumeBase):
    """A tensorstore ``view`` as a lazy numpy-indexed volume.

    Args:
        view: The tensorstore view, already in ekn's axis order.
        chunks: Chunk shape in the view's axis order.
        axes: Axis names, e.g. ``"zyx"``.
        writable: Whether writes are allowed.
        kind: The format's name for error messages (``"precomputed"``, ``"N5"``).
    """

    def __init__(self, view: Any, chunks: tuple[int, ...], axes: str, writable: bool, kind: str):
        self._view, self.chunks, self.axes, self.writable, self._kind = view, chunks, axes, writable, kind
        self.shape, self.dtype = tuple(view.shape), np.dtype(view.dtype.numpy_dtype)

    def __getitem__(self, index: Any) -> np.ndarray:
        return read_through_box(self._view, index)

    def __setitem__(self, index: Any, value: Any) -> None:
        if not self.writable:
            raise EknError(f"this {self._kind} volume was opened read-only; open it with mode='r+' to write")
        ranges, dropped = normalize_index(index, self.shape)
        if any(r.step != 1 for r in ranges if len(r) > 1):
            raise IndexError(f"writes into a {self._kind} volume take contiguous boxes (step 1)")
        starts, stops = bounding_box(ranges)
        selected = tuple(b - a for a, b, d in zip(starts, stops, dropped) if not d)
        try:
            block = np.broadcast_to(np.asarray(value, dtype=self.dtype), selected)
        except ValueError:
            raise ValueError(f"cannot write an array of shape {np.shape(value)} into a box of shape "
                             f"{selected}") from None
        block = block.reshape(tuple(b - a for a, b in zip(starts, stops)))
        self._view[tuple(slice(a, b) for a, b in zip(starts, stops))].write(block).result()
