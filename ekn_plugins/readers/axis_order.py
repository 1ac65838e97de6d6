"""Stored axis orders → ekn's ``(c, z, y, x)``: volumes whose axis names say another order are
read (and written) through a lazy transposed view.

HDF5, zarr and N5 datasets may name their axes (an ``axes`` attribute: a string such as
``"zcyx"`` or a list of one-letter names, e.g. ImageJ's and BigDataViewer's (x, y, c, z)); ekn's
volumes are always channels first and spatial axes last. :func:`in_ekn_order` gives a volume as it
is when it is stored that way, a :class:`Transposed` view when its names are another order of
``c``, ``z``, ``y`` and ``x``, and refuses other names (``t``, ``channel``, …) with what to do.

Example:
    >>> import numpy as np
    >>> from ekn_core.volumes import VolumeBase
    >>> class Stored(VolumeBase):  # a (z, c, y, x) array as a reader would return it
    ...     def __init__(self, data, axes):
    ...         self.data, self.shape, self.dtype, self.axes = data, data.shape, data.dtype, axes
    ...     def __getitem__(self, index):
    ...         return self.data[index]
    >>> stored = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    >>> vol = in_ekn_order(Stored(stored, "zcyx"), "example")
    >>> vol.axes, vol.shape, bool((vol[1, :, 2] == stored[:, 1, 2]).all())
    ('czyx', (3, 2, 4, 5), True)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ekn_core.errors import EknError
from ekn_core.volumes import VolumeBase
from ekn_plugins.readers.indexing import bounding_box, local_index, normalize_index

#: ekn's axis order: channels, then z, y, x.
EKN_ORDER = "czyx"
#: Axis names of volumes stored without names, by number of dimensions.
DEFAULT_AXES = {2: "yx", 3: "zyx", 4: "czyx"}


def axis_names(names: Any, ndim: int, where: str) -> str:
    """The axis names of a dataset as a lower-case string, checked: ``names`` is an ``axes``
    attribute (a string, bytes, or a list of one-letter names in storage order), or None for the
    default of ``ndim`` dimensions.

    Raises:
        EknError: Names other than c, z, y, x, repeated ones, or not one per dimension.

    Example:
        >>> axis_names(["Z", "C", "Y", "X"], 4, "a.zarr"), axis_names(None, 3, "a.zarr")
        ('zcyx', 'zyx')
    """
    if not names_declared(names):
        return DEFAULT_AXES.get(ndim, "")
    if isinstance(names, bytes):
        names = names.decode()
    if not isinstance(names, str):
        items = [n.decode() if isinstance(n, bytes) else n for n in np.asarray(names, dtype=object).ravel()]
        names = "".join(items) if all(isinstance(n, str) and len(n) == 1 for n in items) else repr(list(items))
    text = names.lower()
    if len(text) != ndim or set(text) - set(EKN_ORDER) or len(set(text)) != ndim or not {"y", "x"} <= set(text):
        raise EknError(f"{where} names its {ndim} axes {names!r}; ekn reads volumes whose axes are c (channels), "
                       "z, y and x, one letter per dimension, y and x among them. Correct or delete the 'axes' "
                       "attribute, or save the data as (c, z, y, x)")
    return text


def names_declared(names: Any) -> bool:
    """Whether a dataset's ``axes`` attribute ``names`` names its axes (not missing or empty).

    Example:
        >>> names_declared("zyx"), names_declared(["z", "y", "x"]), names_declared(None), names_declared(b"")
        (True, True, False, False)
    """
    return not (names is None or (isinstance(names, (str, bytes)) and not names))


def ekn_order(axes: str) -> str:
    """``axes`` sorted into ekn's order (channels first, spatial axes last).

    Example:
        >>> ekn_order("zyxc"), ekn_order("xyz")
        ('czyx', 'zyx')
    """
    return "".join(sorted(axes, key=EKN_ORDER.index))


def in_ekn_order(volume: Any, where: str) -> Any:
    """``volume`` in ekn's axis order: itself when its ``axes`` already are, else a
    :class:`Transposed` view; closes it and raises :class:`EknError` for names it cannot order.
    ``declared_axes`` of the volume it gives are the stored names when the dataset declares them,
    else None (its ``axes`` are then the default of its dimensions).

    Example:
        >>> from ekn_core.volumes import VolumeBase
        >>> class Stored(VolumeBase):
        ...     def __init__(self, axes):
        ...         self.shape, self.dtype, self.axes = (2, 3, 4), np.uint8, axes
        >>> [(v.axes, v.declared_axes) for v in (in_ekn_order(Stored(a), "a.h5:raw") for a in ("zyx", None, "xyz"))]
        [('zyx', 'zyx'), ('zyx', None), ('zyx', 'xyz')]
    """
    try:
        stored = axis_names(volume.axes, len(volume.shape), where)
    except EknError:
        volume.close()
        raise
    volume.declared_axes = stored if names_declared(volume.axes) else None
    volume.axes = stored
    return volume if stored == ekn_order(stored) else Transposed(volume)


class Transposed(VolumeBase):
    """A volume stored in another order of ``c``, ``z``, ``y``, ``x``, seen in ekn's order.

    Reads (ints, slices with any step, ``...``) read the bounding box in storage order and
    transpose it; writes take boxes of step 1.

    Args:
        volume: The stored volume, with its ``axes`` (e.g. ``"zcyx"``).
    """

    def __init__(self, volume: Any):
        self._volume = volume
        self.declared_axes = getattr(volume, "declared_axes", None)
        self.axes = ekn_order(volume.axes)
        self._stored = [volume.axes.index(a) for a in self.axes]  # stored axis of each axis here
        self.shape = tuple(int(volume.shape[i]) for i in self._stored)
        self.dtype = np.dtype(volume.dtype)
        chunks = getattr(volume, "chunks", None)
        self.chunks = None if chunks is None else tuple(int(chunks[i]) for i in self._stored)
        stored_size = getattr(volume, "voxel_size", None)  # along the stored spatial axes
        stored_spatial = [a for a in volume.axes if a in "zyx"]
        self.voxel_size = None if stored_size is None else tuple(
            stored_size[stored_spatial.index(a)] for a in self.axes if a in "zyx")

    def _box(self, index: Any) -> tuple[list[range], list[int], list[bool], tuple, list[int]]:
        """The index as ranges, the bounding box's starts, dropped axes, the stored index of the box,
        and the order (here) of the box's kept axes as they come out of storage."""
        ranges, dropped = normalize_index(index, self.shape)
        starts, stops = bounding_box(ranges)
        stored_index: list[Any] = [None] * len(self.shape)
        for axis, stored in enumerate(self._stored):
            stored_index[stored] = starts[axis] if dropped[axis] else slice(starts[axis], stops[axis])
        kept = [axis for axis in range(len(self.shape)) if not dropped[axis]]
        storage_order = sorted(kept, key=lambda axis: self._stored[axis])
        return ranges, starts, dropped, tuple(stored_index), [storage_order.index(axis) for axis in kept]

    def __getitem__(self, index: Any) -> np.ndarray:
        ranges, starts, dropped, stored_index, order = self._box(index)
        box = np.asarray(self._volume[stored_index]).transpose(order)
        kept = [axis for axis in range(len(self.shape)) if not dropped[axis]]
        return box[local_index([ranges[a] for a in kept], [starts[a] for a in kept])]

    def __setitem__(self, index: Any, value: Any) -> None:
        ranges, starts, dropped, stored_index, order = self._box(index)
        if any(r.step != 1 for r in ranges if len(r) > 1):
            raise IndexError("writes into a volume stored in another axis order take contiguous boxes (step 1)")
        selected = tuple(len(r) for r, d in zip(ranges, dropped) if not d)
        block = np.broadcast_to(np.asarray(value, dtype=self.dtype), selected)
        self._volume[stored_index] = block.transpose(np.argsort(order))

    def flush(self) -> None:
        """Flushes the stored volume where it buffers writes."""
        flush = getattr(self._volume, "flush", None)
        if flush is not None:
            flush()

    def close(self) -> None:
        self._volume.close()


def created_axes(axes: str | None, ndim: int, where: str) -> str:
    """The checked ``axes`` of a volume to create (None: the default of ``ndim``, possibly ''):
    ekn writes only in its own order.

    Raises:
        EknError: Bad names, or names in another order.

    Example:
        >>> created_axes("czyx", 4, "out.zarr"), created_axes(None, 2, "out.zarr")
        ('czyx', 'yx')
    """
    names = axis_names(axes, ndim, where)
    if names != ekn_order(names):
        raise EknError(f"ekn writes volumes in its own axis order, channels first and spatial axes last: create "
                       f"{where} with axes={ekn_order(names)!r} and the data transposed to it, not {axes!r}")
    return names
