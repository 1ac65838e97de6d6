"""HDF5 volumes through h5py (``ekn.readers`` name ``hdf5``).

Example:
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.h5")
    >>> with HDF5Reader.create(path, shape=(2, 3), dtype="float32", key="x") as v:
    ...     v[:] = 1.5
    >>> float(HDF5Reader.open(path, key="x")[1, 2])
    1.5
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ekn_core.errors import EknError
from ekn_core.volumes import VolumeBase
from ekn_plugins.readers.axis_order import created_axes, in_ekn_order
from ekn_plugins.readers.replacing import ARRAY, GROUP, check_replaceable


class HDF5Volume(VolumeBase):
    """One dataset of an HDF5 file, read lazily with numpy slicing (its ``axes`` attribute as
    stored; :func:`~ekn_plugins.readers.axis_order.in_ekn_order` checks and orders it)."""

    def __init__(self, file: Any, dataset: Any):
        self._file, self._dataset = file, dataset
        self.shape, self.dtype, self.chunks = dataset.shape, dataset.dtype, dataset.chunks
        self.axes = dataset.attrs.get("axes")

    def __getitem__(self, index: Any) -> np.ndarray:
        return self._dataset[index]

    def __setitem__(self, index: Any, value: Any) -> None:
        self._dataset[index] = value

    def flush(self) -> None:
        """Writes buffered data to disk (called by ``ekn predict`` after each block)."""
        if self._file.id.valid:
            self._file.flush()

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()


class HDF5Reader:
    """Reads and writes datasets of HDF5 files (``path.h5:key``); datasets whose ``axes``
    attribute names another order of c, z, y, x are seen in ekn's ``(c, z, y, x)``."""

    @classmethod
    def open(cls, path: str, key: str | None = None, mode: str = "r") -> HDF5Volume:
        import h5py  # imported on use: `ekn plugins` imports every reader module

        if not os.path.exists(path):
            raise EknError(f"HDF5 file {path!r} does not exist")
        file = h5py.File(path, mode)
        try:
            if key is None:
                keys = [k for k in file.keys() if isinstance(file[k], h5py.Dataset)]
                if len(keys) != 1:
                    raise EknError(f"{path!r} holds datasets {keys}; name one as '{path}:KEY'")
                key = keys[0]
            if key not in file:
                raise EknError(f"{path!r} has no dataset {key!r}; it has {list(file.keys())}")
            return in_ekn_order(HDF5Volume(file, file[key]), f"{path}:{key}")
        except BaseException:  # no file handle outlives a refused open
            file.close()
            raise

    @classmethod
    def create(cls, path: str, shape: tuple[int, ...], dtype: Any, key: str | None = None,
               chunks: tuple[int, ...] | None = None, compression: str | None = "gzip",
               axes: str | None = None, overwrite: bool = False) -> HDF5Volume:
        """Creates dataset ``key`` (default ``data``) in a new or existing file, replacing a dataset
        or a group without datasets of that name; a group holding datasets is only replaced with
        ``overwrite=True`` (:func:`~ekn_plugins.readers.replacing.check_replaceable`)."""
        import h5py

        key = key or "data"
        if axes:
            axes = created_axes(axes, len(shape), f"{path}:{key}")
        try:
            file = h5py.File(path, "a")
        except OSError as err:  # h5py: the file is open read-only here, or locked by another process
            raise EknError(f"cannot open {path!r} for writing: {err}. If it is open elsewhere (read as the input of "
                           "this job, or by another process), write to another file") from err
        try:
            check_replaceable(path, key, overwrite, format_name="HDF5", noun="dataset",
                              node_kind=lambda inner: _node_kind(file, inner),
                              arrays=lambda inner: _datasets(file[inner or "/"]))
            if key in file:
                del file[key]
            dataset = file.create_dataset(key, shape=shape, dtype=dtype, chunks=chunks or True,
                                          compression=compression)
            if axes:
                dataset.attrs["axes"] = axes
            return in_ekn_order(HDF5Volume(file, dataset), f"{path}:{key}")
        except BaseException:
            file.close()
            raise


def _node_kind(file: Any, key: str) -> str | None:
    """What ``key`` names in the open HDF5 ``file`` (``""``: its root group)."""
    import h5py

    found = file.get(key or "/")
    return ARRAY if isinstance(found, h5py.Dataset) else GROUP if isinstance(found, h5py.Group) else None


def _datasets(group: Any) -> list[str]:
    """The keys of the datasets inside an HDF5 group, at any depth, relative to it."""
    import h5py

    names: list[str] = []
    group.visititems(lambda name, member: names.append(name) if isinstance(member, h5py.Dataset) else None)
    return sorted(names)
