"""N5 containers through tensorstore (``ekn.readers`` name ``n5``).

A path names an N5 container (``data.n5``), with the dataset's path inside it after a colon
(``data.n5:volumes/raw``); without a key the container's only dataset is used. N5 lists the
dimensions fastest first (x, y, z, as Java tools such as BigDataViewer, Paintera and the N5 viewers
write them); ekn shows them reversed, in its C-order **(z, y, x)** (``(c, z, y, x)`` for a 4-D
dataset stored as (x, y, z, c)), as zarr-python's N5 store did. Every compression tensorstore
reads works (raw, gzip, bzip2, xz, blosc, zstd); :meth:`N5Reader.create` writes gzip-compressed
blocks. Axis names are N5's ``axes`` attribute (a list in N5 order, e.g. ``["x", "y", "z"]``),
reversed; created datasets get it. A dataset whose names are another order of c, z, y, x (e.g.
BigDataViewer's ``["x", "y", "c", "z"]``) is read as ekn's ``(c, z, y, x)``
(:mod:`~ekn_plugins.readers.axis_order`). Read-only datasets are read with a chunk cache
(:func:`~ekn_plugins.readers.tensorstore_volume.read_spec`). Creating a dataset replaces a dataset
at the same place, never a group holding datasets unless ``overwrite=True``.

Example:
    >>> import numpy as np, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "data.n5")
    >>> with N5Reader.create(path, shape=(2, 3, 4), dtype="uint16", key="raw", chunks=(1, 2, 2)) as vol:
    ...     vol[:] = np.arange(24).reshape(2, 3, 4)
    >>> vol = N5Reader.open(path)
    >>> vol.shape, vol.chunks, vol.axes, vol[1, 2].tolist()
    ((2, 3, 4), (1, 2, 2), 'zyx', [20, 21, 22, 23])
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from ekn_core.errors import EknError
from ekn_plugins.readers.axis_order import created_axes, in_ekn_order
from ekn_plugins.readers.replacing import ARRAY, GROUP, check_replaceable
from ekn_plugins.readers.tensorstore_volume import TensorStoreVolume, read_spec

#: The N5 specification version written into created containers.
N5_VERSION = "4.0.0"
#: Default chunk edge along each spatial axis of a created dataset.
DEFAULT_CHUNK = 64


def _attributes(directory: str) -> dict[str, Any]:
    """The ``attributes.json`` of an N5 group or dataset directory (empty where there is none)."""
    try:
        with open(os.path.join(directory, "attributes.json")) as f:
            attributes = json.load(f)
    except FileNotFoundError:
        return {}
    except ValueError as err:
        raise EknError(f"{directory}/attributes.json is not valid JSON: {err}") from err
    return attributes if isinstance(attributes, dict) else {}


def is_n5_container(path: str) -> bool:
    """Whether ``path`` is a directory whose ``attributes.json`` names an N5 version or a dataset."""
    if not os.path.isdir(path):
        return False
    try:
        attributes = _attributes(path)
    except EknError:
        return False
    return "n5" in attributes or "dimensions" in attributes


def datasets(root: str) -> list[str]:
    """The dataset paths inside an N5 container (``""`` for a container that is a dataset itself)."""
    found = []
    for directory, subdirectories, _ in os.walk(root):
        if "dimensions" in _attributes(directory):
            found.append(os.path.relpath(directory, root).replace(os.sep, "/").removeprefix("."))
            subdirectories.clear()  # a dataset's block folders are numbers, not datasets
        subdirectories.sort()
    return sorted(found)


class N5Reader:
    """Reads and writes N5 datasets (``path.n5`` or ``path.n5:dataset``)."""

    @classmethod
    def open(cls, path: str, key: str | None = None, mode: str = "r") -> TensorStoreVolume:
        """Opens a dataset; ``key`` is its path inside the container (default: its only dataset)."""
        import tensorstore as ts

        if not os.path.isdir(path):
            raise EknError(f"N5 container {path!r} does not exist")
        if key is None:
            names = datasets(path)
            if len(names) != 1:
                raise EknError(f"{path!r} is an N5 container with datasets {names}; name one as '{path}:DATASET'")
            key = names[0]
        location = os.path.join(os.path.abspath(path), key)
        attributes = _attributes(location)
        if "dimensions" not in attributes:
            raise EknError(f"{path!r} has no N5 dataset {key!r}; its datasets are {datasets(path)}")
        spec = {"driver": "n5", "kvstore": {"driver": "file", "path": location}}
        try:
            store = ts.open(spec if mode != "r" else read_spec(spec), read=True, write=mode != "r").result()
        except Exception as err:  # tensorstore reports unsupported metadata as ValueError variants
            raise EknError(f"cannot open the N5 dataset {location!r}: {err}") from err
        return _volume(store, attributes, writable=mode != "r", where=f"{path}:{key}" if key else path)

    @classmethod
    def create(cls, path: str, shape: tuple[int, ...], dtype: Any, key: str | None = None,
               chunks: tuple[int, ...] | None = None, axes: str | None = None,
               overwrite: bool = False) -> TensorStoreVolume:
        """Creates (or replaces) a gzip-compressed dataset; ``key`` puts it inside the container
        at ``path`` (whose root ``attributes.json`` gets the N5 version). A group holding datasets
        there is only replaced with ``overwrite=True``."""
        import tensorstore as ts

        from ekn_core.atomic import write_json

        shape = tuple(int(s) for s in shape)
        where = f"{path}:{key}" if key else path
        chunks = tuple(int(c) for c in chunks) if chunks else tuple(
            1 if i < len(shape) - 3 else max(1, min(s, DEFAULT_CHUNK)) for i, s in enumerate(shape))
        if len(chunks) != len(shape):
            raise EknError(f"chunks {chunks} must have one entry per axis of shape {shape}")
        axes = created_axes(axes, len(shape), where)
        if os.path.exists(path) and not is_n5_container(path) and (not os.path.isdir(path) or os.listdir(path)):
            raise EknError(f"{path!r} exists and is not an N5 container; choose a new path")
        _check_replaceable(path, key, overwrite)
        os.makedirs(path, exist_ok=True)
        location = os.path.join(os.path.abspath(path), key) if key else os.path.abspath(path)
        metadata = {"dimensions": list(shape[::-1]), "blockSize": list(chunks[::-1]),
                    "dataType": np.dtype(dtype).name, "compression": {"type": "gzip"}}
        if axes:
            metadata["axes"] = list(axes[::-1])
        spec = {"driver": "n5", "kvstore": {"driver": "file", "path": location}, "metadata": metadata,
                "create": True, "delete_existing": True}
        try:
            store = ts.open(spec).result()
        except Exception as err:  # tensorstore: ValueError for data types N5 lacks
            raise EknError(f"cannot create the N5 dataset {location!r} of {np.dtype(dtype).name}: {err}") from err
        root = _attributes(path)  # after the dataset: a dataset at the root replaced its attributes
        if "n5" not in root:
            write_json(os.path.join(path, "attributes.json"), {**root, "n5": N5_VERSION})
        return _volume(store, _attributes(location), writable=True, where=where)


def _check_replaceable(path: str, key: str | None, overwrite: bool) -> None:
    """Refuses to create a dataset at ``key`` inside the container ``path`` where that would delete
    other datasets or go inside one (:func:`~ekn_plugins.readers.replacing.check_replaceable`)."""

    def node_kind(inner: str) -> str | None:
        location = os.path.join(path, inner)
        return ARRAY if "dimensions" in _attributes(location) else GROUP if os.path.isdir(location) else None

    check_replaceable(path, key, overwrite, format_name="N5", noun="dataset", node_kind=node_kind,
                      arrays=lambda inner: datasets(os.path.join(path, inner)))


def _volume(store: Any, attributes: dict[str, Any], writable: bool, where: str) -> TensorStoreVolume:
    """The dataset in ekn's C order (N5's dimensions reversed; then by its axis names)."""
    view = store.T
    names = attributes.get("axes")
    axes = names[::-1] if isinstance(names, list) else names  # checked (and None told apart) by in_ekn_order
    chunks = tuple(int(c) for c in attributes["blockSize"][::-1])
    return in_ekn_order(TensorStoreVolume(view, chunks=chunks, axes=axes, writable=writable, kind="N5"), where)
