"""Zarr arrays (format 2 and 3) through zarr-python (``ekn.readers`` name ``zarr``).

A path names either an array directly (``out.zarr``) or a group, with the array's key after a
colon (``data.zarr:raw``; nested keys such as ``data.zarr:volumes/raw`` work too). Created
arrays are chunked, so prediction output larger than memory can be written block by block.

Arrays opened read-only (``mode='r'``, the default) are read through tensorstore, whose C++
decoder and chunk cache (:func:`~ekn_plugins.readers.tensorstore_volume.read_spec`) make small box
reads 10-25x faster than zarr-python's; arrays that tensorstore cannot open, and arrays opened for
writing, are read and written through zarr-python. An ``axes`` attribute in another order of c, z,
y, x (e.g. ``"zcyx"``) is read as ekn's ``(c, z, y, x)``
(:mod:`~ekn_plugins.readers.axis_order`). An OME-Zarr image (NGFF 0.4 or 0.5: a group with
``multiscales`` metadata, :mod:`~ekn_plugins.readers.ome_zarr`) opens at its first, highest-resolution
level (``img.ome.zarr``), or at the level its key names (``img.ome.zarr:1``, also
``img.ome.zarr:labels/cells`` and ``img.ome.zarr/1``), with the axes of its metadata: a time axis of
length 1 is dropped (a longer one refused) and ``vol.voxel_size`` is the voxel size in nm (z, y, x).
Creating an array replaces an array at the same place,
never a group holding arrays unless ``overwrite=True``, nor a folder that is not a zarr store.

Example:
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.zarr")
    >>> with ZarrReader.create(path, shape=(4, 6), dtype="uint8", key="raw", chunks=(2, 3)) as v:
    ...     v[:2] = 7
    >>> vol = ZarrReader.open(path, key="raw")
    >>> vol.shape, vol.chunks, int(vol[1, 5]), int(vol[3, 0])
    ((4, 6), (2, 3), 7, 0)
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from ekn_core.errors import EknError
from ekn_core.volumes import VolumeBase
from ekn_plugins.readers.axis_order import created_axes, in_ekn_order
from ekn_plugins.readers.indexing import read_through_box
from ekn_plugins.readers.ome_zarr import OmeLevel, check_shape, ome_level
from ekn_plugins.readers.replacing import ARRAY, GROUP, check_replaceable
from ekn_plugins.readers.tensorstore_volume import read_spec

log = logging.getLogger("ekn.readers")

#: Default chunk edge along each spatial axis of a created array.
DEFAULT_CHUNK = 64


class ZarrVolume(VolumeBase):
    """One zarr array, read and written lazily with numpy slicing (its ``axes`` attribute as
    stored, or those of its OME-Zarr level ``ome``, without a time axis of length 1;
    :func:`~ekn_plugins.readers.axis_order.in_ekn_order` checks and orders them)."""

    def __init__(self, array: Any, writable: bool, fast_view: Any = None, ome: OmeLevel | None = None):
        self._array, self._writable = array, writable
        self._time = (0,) if ome is not None and ome.drop_time else ()  # index of the dropped time axis
        self._fast_view = fast_view[0] if self._time and fast_view is not None else fast_view
        self.shape, self.dtype = tuple(array.shape)[len(self._time):], np.dtype(array.dtype)
        self.chunks = tuple(array.chunks)[len(self._time):]
        self.axes = array.attrs.get("axes") if ome is None else ome.axes
        self.voxel_size = None if ome is None else ome.voxel_size

    def _stored(self, index: Any) -> Any:
        """``index`` into the stored array (the dropped time axis at 0)."""
        return self._time + (index if isinstance(index, tuple) else (index,)) if self._time else index

    def __getitem__(self, index: Any) -> np.ndarray:
        if self._fast_view is not None:
            return read_through_box(self._fast_view, index)
        return np.asarray(self._array[self._stored(index)])

    def __setitem__(self, index: Any, value: Any) -> None:
        if not self._writable:
            raise EknError("this zarr volume was opened read-only; open it with mode='r+' to write")
        self._array[self._stored(index)] = value


def _tensorstore_view(path: str, key: str | None, array: Any) -> Any:
    """A read-only tensorstore view of the zarr ``array`` at ``path`` (``key`` inside it), or None
    where tensorstore cannot open it (zarr-python then reads it)."""
    import tensorstore as ts

    driver = {2: "zarr", 3: "zarr3"}.get(array.metadata.zarr_format)
    location = os.path.join(os.path.abspath(path), key) if key else os.path.abspath(path)
    spec = read_spec({"driver": driver, "kvstore": {"driver": "file", "path": location}})
    try:
        view = ts.open(spec, read=True).result()
    except Exception as err:  # tensorstore reports unsupported codecs or metadata as ValueError variants
        log.debug("tensorstore cannot open %s (%s); reading it through zarr-python", location, err)
        return None
    if tuple(view.shape) != tuple(array.shape) or view.dtype.numpy_dtype != np.dtype(array.dtype):
        log.debug("tensorstore sees %s as %s %s, zarr-python as %s %s; reading it through zarr-python",
                  location, view.shape, view.dtype, array.shape, array.dtype)
        return None
    return view


def _array_in_group(root: Any, path: str, key: str | None) -> tuple[Any, str, OmeLevel | None]:
    """``(array, key, OME-Zarr level or None)`` that ``path:key`` names in the zarr group ``root``:
    the array ``key``, the first level of the OME-Zarr image that ``key`` (or ``root``) is, or
    ``root``'s only array."""
    import zarr

    group = root
    if key is not None:
        if key not in root:
            raise EknError(f"{path!r} has no array {key!r}; it has {sorted(root.keys())}")
        group = root[key]
        if isinstance(group, zarr.Array):
            parent, _, name = key.rpartition("/")
            return group, key, ome_level((root[parent] if parent else root).attrs, name, f"{path}:{key}")
    where = f"{path}:{key}" if key else path
    level = ome_level(group.attrs, None, where)
    if level is not None:
        array = group.get(level.path)
        if not isinstance(array, zarr.Array):
            raise EknError(f"{where}: the OME-Zarr image has no array {level.path!r}, its first level")
        return array, "/".join(p for p in (key, level.path) if p), level
    if key is not None:
        raise EknError(f"{where} is a group, not an array; it has {sorted(group.keys())}")
    names = sorted(root.array_keys())
    if len(names) != 1:
        raise EknError(f"{path!r} is a zarr group with arrays {names}; name one as '{path}:KEY'")
    return root[names[0]], names[0], None


def _level_in_parent_folder(path: str) -> OmeLevel | None:
    """The OME-Zarr level that the array at ``path`` is (``img.ome.zarr/0``), if its folder is an
    OME-Zarr image group that names it."""
    import zarr

    folder, name = os.path.split(os.path.normpath(os.path.abspath(path)))
    if not any(os.path.exists(os.path.join(folder, marker)) for marker in (".zattrs", "zarr.json")):
        return None
    try:
        parent = zarr.open_group(folder, mode="r")
    except Exception:  # zarr raises several unrelated types for folders that are no group
        return None
    return ome_level(parent.attrs, name, path)


def _default_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """One chunk per channel, ``DEFAULT_CHUNK`` voxels along the (up to three) spatial axes."""
    n_spatial = min(3, len(shape))
    lead = tuple(1 for _ in shape[: len(shape) - n_spatial])
    return lead + tuple(max(1, min(s, DEFAULT_CHUNK)) for s in shape[len(shape) - n_spatial:])


class ZarrReader:
    """Reads and writes zarr arrays (``path.zarr`` or ``path.zarr:key``)."""

    @classmethod
    def open(cls, path: str, key: str | None = None, mode: str = "r") -> ZarrVolume:
        """Opens an existing array; ``key`` selects one inside a group."""
        import zarr

        if not os.path.exists(path):
            raise EknError(f"zarr store {path!r} does not exist")
        try:
            node = zarr.open(path, mode=mode)
        except Exception as err:  # zarr raises several unrelated types for unreadable stores
            raise EknError(f"{path!r} is not a readable zarr store: {err}") from err
        if isinstance(node, zarr.Group):
            node, key, ome = _array_in_group(node, path, key)
        elif key is not None:
            raise EknError(f"{path!r} is a single zarr array, not a group; open it without ':{key}'")
        else:
            ome = _level_in_parent_folder(path)
        where = f"{path}:{key}" if key else path
        if ome is not None:
            check_shape(ome, tuple(node.shape), where)
        writable = mode != "r"
        volume = ZarrVolume(node, writable, None if writable else _tensorstore_view(path, key, node), ome)
        return in_ekn_order(volume, where)

    @classmethod
    def create(cls, path: str, shape: tuple[int, ...], dtype: Any, key: str | None = None,
               chunks: tuple[int, ...] | None = None, axes: str | None = None,
               fill_value: Any = 0, overwrite: bool = False) -> ZarrVolume:
        """Creates (or replaces) a chunked array; ``key`` puts it inside a group at ``path``. A group
        holding arrays there is only replaced with ``overwrite=True``."""
        import zarr

        shape = tuple(int(s) for s in shape)
        where = f"{path}:{key}" if key else path
        chunks = tuple(int(c) for c in chunks) if chunks else _default_chunks(shape)
        if len(chunks) != len(shape):
            raise EknError(f"chunks {chunks} must have one entry per axis of shape {shape}")
        axes = created_axes(axes, len(shape), where) if axes else None
        _check_replaceable(path, key, overwrite)
        array = zarr.create_array(store=path, name=key, shape=shape, dtype=np.dtype(dtype), chunks=chunks,
                                  fill_value=fill_value, overwrite=True)
        if axes:
            array.attrs["axes"] = axes
        return in_ekn_order(ZarrVolume(array, writable=True), where)


def _check_replaceable(path: str, key: str | None, overwrite: bool) -> None:
    """Refuses to create an array at ``path`` (``key`` inside it) where that would delete other
    arrays or go inside one (:func:`~ekn_plugins.readers.replacing.check_replaceable`), or replace
    anything that is not zarr (always)."""
    import zarr

    if not os.path.exists(path):
        return
    try:
        root = zarr.open(path, mode="r")
    except Exception as err:  # zarr raises several unrelated types for folders that are no store
        if os.path.isdir(path) and not os.listdir(path):
            return
        raise EknError(f"{path!r} exists and is not a zarr store ({err}); choose a new path") from err

    def node(inner: str) -> Any:
        return root.get(inner) if inner else root

    def node_kind(inner: str) -> str | None:
        found = node(inner)
        return ARRAY if isinstance(found, zarr.Array) else GROUP if isinstance(found, zarr.Group) else None

    def arrays(inner: str) -> list[str]:
        return sorted(name for name, member in node(inner).members(max_depth=None) if isinstance(member, zarr.Array))

    check_replaceable(path, key, overwrite, format_name="zarr", noun="array", node_kind=node_kind, arrays=arrays)
