"""Neuroglancer precomputed volumes through tensorstore (``ekn.readers`` name ``precomputed``).

Paths: ``precomputed://file:///abs/path`` (any tensorstore key-value store URL after
``precomputed://``, e.g. ``gs://bucket/vol``), or a local directory that holds an ``info`` file
with ``"type": "image"`` or ``"segmentation"``. The key after a colon selects the scale: its index
(``vol:0``, the default) or its key (``vol:8_8_40``).

Axes: the files store voxels as (x, y, z, channel) with x fastest; ekn shows them in its own
C-order **(z, y, x)**, or ``(c, z, y, x)`` with several channels, shifted so that the scale's
``voxel_offset`` is index 0 (``vol.voxel_offset`` and ``vol.voxel_size`` (the scale's resolution, nm) are in (z, y, x)).
Every encoding and sharding tensorstore reads works (raw, jpeg, png, compressed_segmentation);
raw chunk files that were gzip-compressed on a local disk (CloudVolume's ``compress="gzip"``) are
refused with how to decompress them. Volumes opened read-only are read with a chunk cache
(:func:`~ekn_plugins.readers.tensorstore_volume.read_spec`). :meth:`PrecomputedReader.create`
writes one raw-encoded, unsharded scale.

Example:
    >>> import numpy as np, os, tempfile
    >>> url = "precomputed://file://" + os.path.join(tempfile.mkdtemp(), "vol")
    >>> with PrecomputedReader.create(url, shape=(2, 3, 4), dtype="uint8", resolution=(40, 8, 8)) as vol:
    ...     vol[:] = np.arange(24).reshape(2, 3, 4)
    >>> vol = PrecomputedReader.open(url, key="8_8_40")
    >>> vol.shape, vol.axes, vol[1, 2].tolist(), vol.voxel_size
    ((2, 3, 4), 'zyx', [20, 21, 22, 23], (40.0, 8.0, 8.0))
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Sequence

import numpy as np

from ekn_core.errors import EknError
from ekn_core.volumes import local_path
from ekn_plugins.readers.tensorstore_volume import TensorStoreVolume, read_spec

SCHEME = "precomputed://"
#: Data types of the format (numpy names).
DATA_TYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "float32")
#: Default chunk edge of created scales.
DEFAULT_CHUNK = 64
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def kvstore_url(path: str) -> str:
    """The tensorstore key-value store URL of a path, with a trailing slash.

    Example:
        >>> kvstore_url("precomputed://gs://bucket/em"), kvstore_url("/data/em/")
        ('gs://bucket/em/', 'file:///data/em/')
    """
    if path.startswith(SCHEME):
        path = path[len(SCHEME):]
    if not _URL.match(path):
        path = "file://" + os.path.abspath(os.path.expanduser(path))
    return path.rstrip("/") + "/"


def is_precomputed_dir(path: str) -> bool:
    """Whether ``path`` is a local directory with a precomputed ``info`` file."""
    info = os.path.join(path, "info")
    if not os.path.isfile(info):
        return False
    try:
        with open(info) as f:
            return json.load(f).get("type") in ("image", "segmentation")
    except (OSError, ValueError, AttributeError):
        return False


def _drop_scale(directory: str, key: str) -> None:
    """Removes scale ``key`` (its entry in ``info`` and its chunk folder) from a local volume, so that
    it can be created afresh; the other scales stay. A volume left without scales is removed whole."""
    import shutil

    from ekn_core.atomic import write_json

    info_path = os.path.join(directory, "info")
    with open(info_path) as f:
        info = json.load(f)
    scales = [scale for scale in info.get("scales", []) if scale.get("key") != key]
    if len(scales) == len(info.get("scales", [])):
        return
    shutil.rmtree(os.path.join(directory, key), ignore_errors=True)
    if scales:
        write_json(info_path, {**info, "scales": scales})
    else:
        os.remove(info_path)


def read_info(url: str) -> dict[str, Any]:
    """The ``info`` JSON of the volume at a key-value store URL."""
    import tensorstore as ts

    try:
        result = ts.KvStore.open(url).result().read("info").result()
    except Exception as err:  # tensorstore raises ValueError/OSError variants per store
        raise EknError(f"cannot read the precomputed info file at {url}info: {err}") from err
    if result.state == "missing":
        raise EknError(f"{url} has no 'info' file: it is not a Neuroglancer precomputed volume")
    try:
        info = json.loads(bytes(result.value))
    except ValueError as err:
        raise EknError(f"{url}info is not valid JSON: {err}") from err
    if info.get("type") not in ("image", "segmentation"):
        raise EknError(f"{url}info has type {info.get('type')!r}; ekn reads 'image' and 'segmentation' volumes")
    return info


def select_scale(info: dict[str, Any], key: str | None, url: str) -> int:
    """The index of the scale named by ``key``: an index, a scale key, or None (scale 0)."""
    scales = info.get("scales") or []
    names = [str(s.get("key")) for s in scales]
    if key is None:
        key = "0"
    if key.isdigit() and int(key) < len(scales):
        return int(key)
    if key in names:
        return names.index(key)
    raise EknError(f"{url} has no scale {key!r}; its scales are {list(range(len(scales)))} with keys {names}")


def _check_not_gzip(directory: str, scale: dict[str, Any]) -> None:
    """Refuses gzip-compressed raw chunk files, which tensorstore reads only over HTTP."""
    if scale.get("encoding") != "raw" or scale.get("sharding"):
        return
    folder = os.path.join(directory, str(scale.get("key")))
    if not os.path.isdir(folder):
        return
    with os.scandir(folder) as entries:
        first = next((e for e in entries if e.is_file()), None)
    if first is None:
        return
    with open(first.path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    if gzipped or first.name.endswith(".gz"):
        raise EknError(f"the chunk files in {folder!r} are gzip-compressed, which ekn reads only over HTTP. "
                       f"Decompress them in place first: cd {folder!r} && for f in *; do gzip -dc \"$f\" > "
                       "\"${f%.gz}.raw\" && rm \"$f\" && mv \"${f%.gz}.raw\" \"${f%.gz}\"; done")


class PrecomputedVolume(TensorStoreVolume):
    """One scale of a precomputed volume as a lazy ``(z, y, x)`` or ``(c, z, y, x)`` array."""

    def __init__(self, store: Any, scale: dict[str, Any], num_channels: int, writable: bool):
        view = store.translate_to[0].T  # (c, z, y, x), index 0 at voxel_offset
        chunk = tuple(int(c) for c in scale["chunk_sizes"][0][::-1])
        super().__init__(view[0] if num_channels == 1 else view,
                         chunks=chunk if num_channels == 1 else (num_channels, *chunk),
                         axes="zyx" if num_channels == 1 else "czyx", writable=writable, kind="precomputed")
        self.declared_axes = self.axes  # the format fixes the order (x, y, z, c in its files)
        self.voxel_size = tuple(float(r) for r in scale["resolution"][::-1])
        self.voxel_offset = tuple(int(o) for o in scale.get("voxel_offset", (0, 0, 0))[::-1])


class PrecomputedReader:
    """Reads and writes Neuroglancer precomputed volumes (one scale at a time)."""

    @classmethod
    def open(cls, path: str, key: str | None = None, mode: str = "r") -> PrecomputedVolume:
        """Opens scale ``key`` (index or scale key, default 0) of a volume; ``mode='r+'`` to write."""
        import tensorstore as ts

        url = kvstore_url(path)
        info = read_info(url)
        index = select_scale(info, key, url)
        scale = info["scales"][index]
        directory = local_path(url)
        if directory is not None:
            _check_not_gzip(directory, scale)
        spec = {"driver": "neuroglancer_precomputed", "kvstore": url, "scale_index": index}
        try:
            store = ts.open(spec if mode != "r" else read_spec(spec), read=True, write=mode != "r").result()
        except Exception as err:  # tensorstore reports unsupported metadata as ValueError
            raise EknError(f"cannot open scale {index} of {url}: {err}") from err
        return PrecomputedVolume(store, scale, int(info.get("num_channels", 1)), writable=mode != "r")

    @classmethod
    def create(cls, path: str, shape: tuple[int, ...], dtype: Any, key: str | None = None,
               chunks: tuple[int, ...] | None = None, resolution: Sequence[float] = (1, 1, 1),
               voxel_offset: Sequence[int] = (0, 0, 0), volume_type: str = "image") -> PrecomputedVolume:
        """Creates a raw-encoded, unsharded scale: a new volume, or a new scale of an existing
        volume (its other scales are kept; a scale with the same key is replaced, as HDF5's
        ``create`` replaces only its own dataset).

        Args:
            path: ``precomputed://file:///abs/dir`` or a directory (empty, or a precomputed volume).
            shape: ``(z, y, x)`` or ``(c, z, y, x)``.
            dtype: One of :data:`DATA_TYPES`.
            key: The scale's key (default from the resolution, e.g. ``8_8_40``).
            chunks: Chunk shape (spatial part used; default 64 per axis, at most the volume).
            resolution: Voxel size in nm, (z, y, x).
            voxel_offset: Position of voxel 0 in the scale's grid, (z, y, x).
            volume_type: ``"image"`` or ``"segmentation"``.
        """
        import tensorstore as ts

        shape = tuple(int(s) for s in shape)
        if len(shape) not in (3, 4):
            raise EknError(f"precomputed volumes are (z, y, x) or (c, z, y, x), not shape {shape}")
        dtype = np.dtype(dtype)
        if dtype.name not in DATA_TYPES:
            raise EknError(f"precomputed volumes store {', '.join(DATA_TYPES)}, not {dtype.name}; convert first")
        if volume_type not in ("image", "segmentation"):
            raise EknError(f"volume_type must be 'image' or 'segmentation', not {volume_type!r}")
        url = kvstore_url(path)
        directory = local_path(url)
        spatial = shape[-3:]
        chunk = tuple(int(c) for c in chunks[-3:]) if chunks else tuple(min(s, DEFAULT_CHUNK) for s in spatial)
        res_xyz = [float(r) for r in tuple(resolution)[::-1]]
        key = key or "_".join(f"{r:g}" for r in res_xyz)
        if directory is not None and os.path.isdir(directory) and os.listdir(directory):
            if not is_precomputed_dir(directory):
                raise EknError(f"{directory!r} is not empty and not a precomputed volume; choose a new directory")
            _drop_scale(directory, key)
        spec = {"driver": "neuroglancer_precomputed", "kvstore": url,
                "multiscale_metadata": {"type": volume_type, "data_type": dtype.name,
                                        "num_channels": shape[0] if len(shape) == 4 else 1},
                "scale_metadata": {"key": key, "size": list(spatial[::-1]), "chunk_size": list(chunk[::-1]),
                                   "resolution": res_xyz, "voxel_offset": [int(o) for o in tuple(voxel_offset)[::-1]],
                                   "encoding": "raw"},
                "create": True, "open": True}
        try:
            store = ts.open(spec).result()
        except Exception as err:  # tensorstore: ValueError/FailedPrecondition for mismatched metadata
            raise EknError(f"cannot add scale {key!r} of {dtype.name} x {spec['multiscale_metadata']['num_channels']} "
                           f"channel(s) to {url}: {err}. A volume holds one data type and channel count: "
                           "write to a new directory") from err
        scale = {"chunk_sizes": [list(chunk[::-1])], "resolution": res_xyz,
                 "voxel_offset": list(tuple(voxel_offset)[::-1])}
        return PrecomputedVolume(store, scale, spec["multiscale_metadata"]["num_channels"], writable=True)
