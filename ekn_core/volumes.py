"""Volume access through reader plugins: :func:`open_volume` and :func:`create_volume`.

A *reader* is a class registered under ``ekn.readers``. It implements two class methods:

- ``open(path, key=None, mode="r", **options) -> Volume`` for an existing volume;
- ``create(path, shape, dtype, key=None, chunks=None, **options) -> Volume`` for a new,
  writable one (readers that cannot write raise :class:`NotImplementedError`).

A :class:`Volume` is a lazy, numpy-like array: ``shape``, ``dtype``, ``ndim``, ``axes`` (a
string such as ``"zyx"`` or ``"czyx"``), ``chunks`` (or None), ``vol[slices] -> np.ndarray``,
``vol[slices] = array`` when writable, and ``close()`` (also a context manager). Volumes are
always in C order with the spatial axes last, ``(z, y, x)`` or ``(c, z, y, x)``.

Paths may carry a container key after a colon, ``"raw_0.h5:raw"``; a reader is found through
the ``ekn_get_reader`` hook (first answer wins) unless one is named with ``reader=``.

Example:
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "v.h5")
    >>> with create_volume(path + ":raw", shape=(4, 8, 8), dtype="uint8") as vol:
    ...     vol[:] = np.arange(256, dtype="uint8").reshape(4, 8, 8)
    >>> with open_volume(path + ":raw") as vol:
    ...     print(vol.shape, vol[1, 0, :3])
    (4, 8, 8) [64 65 66]
"""

from __future__ import annotations

import os
import re
from typing import Any, Protocol, runtime_checkable

from ekn_core.errors import EknError


@runtime_checkable
class Volume(Protocol):
    """The lazy array every reader returns."""

    shape: tuple[int, ...]
    dtype: Any
    axes: str

    def __getitem__(self, index: Any) -> Any: ...

    def close(self) -> None: ...


class VolumeBase:
    """Convenience base for readers' volumes: ``ndim``, context manager, ``repr``, ``__array__``."""

    shape: tuple[int, ...]
    dtype: Any
    axes: str = ""
    chunks: tuple[int, ...] | None = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        import numpy as np

        data = self[tuple(slice(None) for _ in self.shape)]
        return np.asarray(data, dtype=dtype)

    def close(self) -> None:
        """Releases file handles; the default has none."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} shape={self.shape} dtype={self.dtype} axes={self.axes!r}>"


_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def split_key(path: str) -> tuple[str, str | None]:
    """Splits ``"file.h5:raw"`` into ``("file.h5", "raw")``; URLs and drive letters stay intact.

    Example:
        >>> split_key("data/raw_0.h5:raw")
        ('data/raw_0.h5', 'raw')
        >>> split_key("out.zarr")
        ('out.zarr', None)
        >>> split_key("precomputed://file:///data/em:8_8_40"), split_key("precomputed://file:///data/em")
        (('precomputed://file:///data/em', '8_8_40'), ('precomputed://file:///data/em', None))
        >>> split_key("precomputed://https://host.org:8080/em"), split_key("precomputed://https://host.org:8080/em:0")
        (('precomputed://https://host.org:8080/em', None), ('precomputed://https://host.org:8080/em', '0'))
    """
    path = os.fspath(path)
    head = ""
    while match := _SCHEME.match(path):  # nested schemes too: precomputed://file:///data/em:0
        head, path = head + match.group(0), path[match.end():]
    authority_end = path.find("/") if head else -1
    if head and path.rfind(":") < (authority_end if authority_end >= 0 else len(path)):
        return head + path, None  # the only colon is a URL's port (host:8080/...)
    if ":" in path and not os.path.exists(path):
        base, key = path.rsplit(":", 1)
        if key:
            return head + base, key
    return head + path, None


def local_path(path: str) -> str | None:
    """The local file system path of a path or ``file://`` URL (behind other schemes too), None
    for a remote URL.

    Example:
        >>> local_path("precomputed://file:///data/em"), local_path("out.zarr"), local_path("gs://b/em")
        ('/data/em', 'out.zarr', None)
    """
    path, remote = os.fspath(path), False
    while match := _SCHEME.match(path):
        scheme, path = match.group(0), path[match.end():]
        if scheme == "file://":
            return path
        remote = True
    return None if remote else path


def _choose_reader(path: str, reader: str | None):
    from ekn_core.hooks import host
    from ekn_core.plugins import registry

    name = reader or host().get_reader(path)
    if name is None:
        raise EknError(
            f"no reader plugin claims {path!r}. Name one with reader=... (installed: "
            f"{', '.join(registry('readers').names())}), or use a known suffix (.h5, .zarr, a "
            "KNOSSOS config, .tif, a 'dir/*.png' glob, precomputed://...)."
        )
    return registry("readers").get(name)


def open_volume(path: str | os.PathLike, key: str | None = None, reader: str | None = None,
                **options: Any) -> Any:
    """Opens an existing volume lazily.

    Args:
        path: File, directory or URL; ``"file.h5:key"`` names a dataset inside a container.
        key: Dataset key (overrides one given in ``path``).
        reader: ``ekn.readers`` name to use instead of auto-detection.
        **options: Passed to the reader (e.g. ``mag=2`` for KNOSSOS).

    Returns:
        A :class:`Volume`.
    """
    base, path_key = split_key(os.fspath(path))
    cls = _choose_reader(base, reader)
    return cls.open(base, key=key or path_key, **options)


def create_volume(path: str | os.PathLike, shape: tuple[int, ...], dtype: Any, key: str | None = None,
                  chunks: tuple[int, ...] | None = None, reader: str | None = None, **options: Any) -> Any:
    """Creates a new writable volume (zarr by default for a ``.zarr`` path, HDF5 for ``.h5``).

    Args:
        path: Where to write; ``"file.h5:key"`` names the dataset.
        shape: Array shape, spatial axes last.
        dtype: numpy dtype.
        key: Dataset key (overrides one given in ``path``).
        chunks: Chunk shape; the reader picks one when None.
        reader: ``ekn.readers`` name to use instead of auto-detection.
        **options: Passed to the reader.

    Returns:
        A writable :class:`Volume`.
    """
    base, path_key = split_key(os.fspath(path))
    cls = _choose_reader(base, reader)
    return cls.create(base, shape=tuple(int(s) for s in shape), dtype=dtype, key=key or path_key,
                      chunks=chunks, **options)
