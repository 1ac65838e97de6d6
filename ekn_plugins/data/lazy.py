"""Lazy views of data volumes: a region, a fixed number of axes, grey scaling or a dtype cast per read.

Data sources cut patches from volumes that may be larger than memory (KNOSSOS, big HDF5 / zarr,
TIFF stacks, Neuroglancer precomputed). A :class:`LazyView` presents one volume (or a region of
it) the way the source wants to see it, and converts only what is read: each read box is scaled
to float32 grey values (:func:`ekn_core.grey.grey_range`) or cast to a label dtype (checking that the values
fit). Reading the whole view gives exactly the in-memory array, so lazy and in-memory sources
produce bit-identical batches. :meth:`LazyView.in_memory` reads the data into memory in their stored
dtype (uint8 raw: a quarter of float32; float raw wider than float32 as float32, see
:attr:`LazyView.held_dtype`) and still converts per read.

Example:
    >>> import numpy as np
    >>> view = LazyView(np.arange(60, dtype=np.uint8).reshape(3, 4, 5), region=((1, 0, 2), (3, 4, 5)),
    ...                 ndim=4, grey=True)
    >>> view.shape, view.dtype, view[:, 0:1, 0:1, 0:2] * 255
    ((1, 2, 4, 3), dtype('float32'), array([[[[22., 23.]]]], dtype=float32))
    >>> labels = LazyView(np.array([[[1, 300]]]), ndim=4, dtype="uint8", name="lab.h5")
    >>> labels[:, :, :, :1]
    array([[[[1]]]], dtype=uint8)
    >>> labels[:, :, :, :]
    Traceback (most recent call last):
    ...
    ekn_core.errors.ShapeError: lab.h5: label values [1, 300] do not fit the target dtype uint8; choose a wider target dtype
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ekn_core.errors import ShapeError
from ekn_core.grey import is_float_dtype, scaling_range, to_grey
from ekn_core.volumes import VolumeBase

log = logging.getLogger("ekn.data")

def cast_labels(data: np.ndarray, dtype: Any, name: str) -> np.ndarray:
    """``data`` cast to ``dtype``; for an integer ``dtype`` every value must be a whole number that fits.

    Example:
        >>> cast_labels(np.array([1.0, 2.0]), "int16", "lab.h5")
        array([1, 2], dtype=int16)
        >>> cast_labels(np.array([1.0, 0.5]), "int16", "lab.h5")
        Traceback (most recent call last):
        ...
        ekn_core.errors.ShapeError: lab.h5: label value 0.5 is not a whole number, but the target dtype int16 ...
    """
    dtype, data = np.dtype(dtype), np.asarray(data)
    if np.issubdtype(dtype, np.integer) and data.size and data.dtype != dtype:
        if is_float_dtype(data.dtype):
            values = np.asarray(data, dtype=np.float64)
            fractional = values[values != np.floor(values)]  # NaN counts as fractional
            if fractional.size:
                raise ShapeError(f"{name}: label value {fractional[0]:g} is not a whole number, but the target dtype "
                                 f"{dtype} holds class ids; store whole-number labels (round or threshold them), "
                                 "or use a float target dtype for soft or regression targets")
        info, low, high = np.iinfo(dtype), data.min(), data.max()
        if high > info.max or low < info.min:
            raise ShapeError(f"{name}: label values [{low}, {high}] do not fit the target dtype {dtype}; choose a "
                             "wider target dtype")
    return data.astype(dtype, copy=False)


class LazyView(VolumeBase):
    """A volume (or its spatial ``region``) with ``ndim`` axes, read lazily and converted per read.

    The spatial axes are the last three (``(y, x)`` sources get a leading size-1 ``z``); leading
    size-1 axes are added (``(z, y, x)`` seen as ``(1, z, y, x)``) or a leading size-1 channel
    axis is dropped to reach ``ndim``. Reads take one entry per axis: slices of step 1 on the
    spatial axes, a slice or a list of indices on the channel axis. Only the requested box is read.

    Args:
        volume: Array or lazy volume (:func:`~ekn_core.volumes.open_volume`).
        region: ``((z0, y0, x0), (z1, y1, x1))`` to see only that part (index 0 is ``(z0, y0, x0)``).
        ndim: Number of axes of the view: 3 ``(z, y, x)`` or 4 ``(c, z, y, x)``.
        grey: Return float32 grey values, :func:`ekn_core.grey.grey_range` mapped to [0, 1].
        grey_range: With ``grey``: the raw values ``(low, high)`` mapped to 0 and 1 instead of the
            dtype's range (e.g. ``(0, 4095)`` for 12-bit data in uint16).
        dtype: Otherwise cast each read to this dtype (integer dtypes: values must fit).
        name: Name in error messages.
        owned: Close ``volume`` in :meth:`close` (set when the view opened it).
    """

    def __init__(self, volume: Any, region: Any = None, ndim: int = 4, grey: bool = False, dtype: Any = None,
                 name: str = "volume", owned: bool = False, grey_range: Any = None):
        source = tuple(int(s) for s in volume.shape)
        self.volume, self.name, self.owned = volume, name, owned
        if not 2 <= len(source) <= 4 or ndim not in (3, 4):
            raise ShapeError(f"{name}: data must be (z, y, x) or (c, z, y, x), got shape {source}")
        self.n_spatial = min(3, len(source))
        self.has_channel = len(source) == 4
        if region is None:
            lo, hi = (0,) * self.n_spatial, source[-self.n_spatial:]
        elif self.n_spatial < 3 or any(b > s for b, s in zip(region[1], source[-3:])):
            raise ShapeError(f"{name}: region {region} does not fit into the volume's spatial shape "
                             f"{source[-self.n_spatial:]}")
        else:
            lo, hi = tuple(int(v) for v in region[0]), tuple(int(v) for v in region[1])
        missing = 3 - self.n_spatial  # (y, x) data: a size-1 z axis
        self.start = np.asarray((0,) * missing + tuple(lo), np.int64)
        shape = source[:len(source) - self.n_spatial] + (1,) * missing + tuple(b - a for a, b in zip(lo, hi))
        self.drop = len(shape) > ndim
        if self.drop and shape[0] != 1:
            raise ShapeError(f"{name}: data must be (z, y, x) or (1, z, y, x), got shape {source}")
        self.shape = shape[1:] if self.drop else (1,) * (ndim - len(shape)) + shape
        self.source_dtype = np.dtype(volume.dtype)
        self.grey = grey
        #: The stated raw values mapped to 0 and 1 (``grey`` only), or None for the dtype's range.
        self.grey_range = None if grey_range is None else scaling_range(self.source_dtype, grey_range)
        self.dtype = np.dtype(np.float32) if grey else np.dtype(dtype if dtype is not None else self.source_dtype)
        self.axes = "czyx"[4 - ndim:]
        self.chunks = getattr(volume, "chunks", None)

    @property
    def size(self) -> int:
        """Number of elements of the view."""
        return int(np.prod(self.shape))

    def __getitem__(self, index: Any) -> np.ndarray:
        data = self._stored(index)
        if self.grey:
            return to_grey(data, self.grey_range)
        return cast_labels(data, self.dtype, self.name)

    def _stored(self, index: Any) -> np.ndarray:
        """The box ``index`` of the view, in the stored dtype."""
        index = index if isinstance(index, tuple) else (index,)
        spatial = index[-3:]
        if len(index) != len(self.shape) or not all(isinstance(i, slice) and i.step in (None, 1) for i in spatial):
            raise IndexError(f"{self.name}: a lazy view of shape {self.shape} is read by one entry per axis, "
                             f"slices of step 1 on the spatial axes, got {index!r}")
        box = tuple(slice(a + o, max(a, b) + o) for (a, b, _), o in
                    zip((i.indices(n) for i, n in zip(spatial, self.shape[-3:])), self.start))
        box = box[3 - self.n_spatial:]
        channel, pick = (index[0] if len(index) == 4 else slice(None)), None
        if not isinstance(channel, slice):  # a list of channels: read the span, then pick
            pick = np.asarray(channel, dtype=np.int64).reshape(-1)
            channel = slice(int(pick.min()), int(pick.max()) + 1)
            pick = pick - channel.start
        if self.has_channel:
            data = np.asarray(self.volume[(0 if self.drop else channel, *box)])
        else:
            data = np.asarray(self.volume[box])
        data = data.reshape(data.shape[:data.ndim - self.n_spatial] + (1,) * (3 - self.n_spatial)
                            + data.shape[data.ndim - self.n_spatial:])
        if len(self.shape) == 4 and not self.has_channel:
            data = data[None][channel]
        return data if pick is None else data[pick]

    def read(self) -> np.ndarray:
        """The whole view as an array, converted."""
        return self[tuple(slice(None) for _ in self.shape)]

    @property
    def held_dtype(self) -> np.dtype:
        """The dtype :meth:`in_memory` holds the data in: the stored one, except float32 for grey
        values stored as wider floats (float64: :func:`~ekn_core.grey.to_grey` casts to float32 first,
        so reads give the same values for half the memory).

        Example:
            >>> LazyView(np.zeros((2, 3, 4)), grey=True).held_dtype, LazyView(np.zeros((2, 3, 4))).held_dtype
            (dtype('float32'), dtype('float64'))
        """
        wide = self.grey and is_float_dtype(self.source_dtype) and self.source_dtype.itemsize > 4
        return np.dtype(np.float32) if wide else self.source_dtype

    def in_memory(self) -> LazyView:
        """The same view with its data read into memory in :attr:`held_dtype`, converted per read
        (reads give exactly what this view's reads give).

        Example:
            >>> view = LazyView(np.full((2, 3, 4), 51, np.uint8), ndim=4, grey=True)
            >>> held = view.in_memory()
            >>> held.volume.dtype, held.shape, float(held[:, :1, :1, :1].item())
            (dtype('uint8'), (1, 2, 3, 4), 0.2)
        """
        data = np.ascontiguousarray(self._stored(tuple(slice(None) for _ in self.shape)), dtype=self.held_dtype)
        return LazyView(data, ndim=len(self.shape), grey=self.grey, dtype=None if self.grey else self.dtype,
                        name=self.name, grey_range=self.grey_range)

    def close(self) -> None:
        """Closes the underlying volume if this view opened it."""
        if self.owned:
            self.volume.close()


def open_view(path: str, region: Any = None, options: dict[str, Any] | None = None, ndim: int = 4, grey: bool = False,
              dtype: Any = None, grey_range: Any = None) -> LazyView:
    """A :class:`LazyView` of the volume at ``path``, opened by :func:`~ekn_core.volumes.open_volume`
    with the reader ``options`` (e.g. ``{"mag": 2}`` for KNOSSOS); the view closes it. ``grey_range``:
    see :class:`LazyView`.

    Example:
        >>> import h5py, os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "raw.h5")
        >>> with h5py.File(path, "w") as f:
        ...     f["raw"] = np.full((4, 6, 6), 51, np.uint8)
        >>> with open_view(path + ":raw", region=((1, 1, 1), (3, 5, 5)), grey=True) as view:
        ...     view.shape, float(view[:, :1, :1, :1].item())
        ((1, 2, 4, 4), 0.2)
    """
    from ekn_core.volumes import open_volume

    return LazyView(open_volume(path, **(options or {})), region, ndim=ndim, grey=grey, dtype=dtype, name=path,
                    owned=True, grey_range=grey_range)

