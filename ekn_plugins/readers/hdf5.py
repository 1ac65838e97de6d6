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


def _default_axes(ndim: int) -> str:
    return {2: "yx", 3: "zyx", 4: "czyx"}.get(ndim, "")


class HDF5Volume(VolumeBase):
    """One dataset of an HDF5 file, read lazily with numpy slicing."""

    def __init__(self, file: Any, dataset: Any):
        self._file, self._dataset = file, dataset
        self.shape, self.dtype, self.chunks = dataset.shape, dataset.dtype, dataset.chunks
        self.axes = dataset.attrs.get("axes", _default_axes(dataset.ndim))
        if isinstance(self.axes, bytes):
            self.axes = self.axes.decode()

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
    """Reads and writes datasets of HDF5 files (``path.h5:key``)."""

    @classmethod
    def open(cls, path: str, key: str | None = None, mode: str = "r", **_: Any) -> HDF5Volume:
        import h5py  # imported on use: `ekn plugins` imports every reader module

        if not os.path.exists(path):
            raise EknError(f"HDF5 file {path!r} does not exist")
        file = h5py.File(path, mode)
        if key is None:
            keys = [k for k in file.keys() if isinstance(file[k], h5py.Dataset)]
            if len(keys) != 1:
                file.close()
                raise EknError(f"{path!r} holds datasets {keys}; name one as '{path}:KEY'")
            key = keys[0]
        if key not in file:
            keys = list(file.keys())
            file.close()
            raise EknError(f"{path!r} has no dataset {key!r}; it has {keys}")
        return HDF5Volume(file, file[key])

    @classmethod
    def create(cls, path: str, shape: tuple[int, ...], dtype: Any, key: str | None = None,
               chunks: tuple[int, ...] | None = None, compression: str | None = "gzip",
               axes: str | None = None, **_: Any) -> HDF5Volume:
        import h5py

        file = h5py.File(path, "a")
        key = key or "data"
        if key in file:
            del file[key]
        dataset = file.create_dataset(key, shape=shape, dtype=dtype, chunks=chunks or True,
                                      compression=compression)
        if axes:
            dataset.attrs["axes"] = axes
        return HDF5Volume(file, dataset)
