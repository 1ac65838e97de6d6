"""KNOSSOS data sets (``ekn.readers`` name ``knossos``): cubes, configs, annotations.

Modules: :mod:`.config` (the three config dialects), :mod:`.cubes` (cube files),
:mod:`.cache` (LRU cube cache with background loading), :mod:`.dataset` (lazy ``(z, y, x)``
arrays), :mod:`.writer` (writing and mag pyramids), :mod:`.nml` (skeletons) and :mod:`.kzip`
(``.k.zip`` annotations).

Example:
    >>> import numpy as np, tempfile
    >>> from ekn_core.volumes import create_volume, open_volume
    >>> root = tempfile.mkdtemp() + "/ds.k.toml"
    >>> with create_volume(root, shape=(3, 40, 50), dtype="uint8", cube_shape=(16, 16, 2)) as vol:
    ...     vol[:, 5:30, 7:45] = 200
    >>> with open_volume(root) as vol:
    ...     print(vol.shape, vol.axes, vol[2, 5:30, 7:45].min(), vol[:, :5].max())
    (3, 40, 50) zyx 200 0
"""

from __future__ import annotations

from typing import Any, Sequence

from ekn_core.errors import ConfigError
from ekn_core.volumes import PASSED_ARGS, check_options
from ekn_plugins.readers.knossos.dataset import DEFAULT_CACHE_MB, KnossosArray, StackedArray, open_array, select_layers
from ekn_plugins.readers.knossos.config import read_config
from ekn_plugins.readers.knossos.writer import create_dataset, open_writable

__all__ = ["KnossosReader", "KnossosArray", "StackedArray", "open_array", "create_dataset"]


class KnossosReader:
    """Opens and creates KNOSSOS data sets through :func:`ekn_core.volumes.open_volume`/``create_volume``."""

    @classmethod
    def open(cls, path: str, key: str | None = None, mode: str = "r", mag: int = 1, fill_value: Any = 0,
             cache_mb: float = DEFAULT_CACHE_MB, prefetch: int = 1, threads: int = 2,
             channels: Sequence[str] | None = None, mag_convention: str = "auto",
             cube_shape: Sequence[int] | None = None) -> KnossosArray | StackedArray:
        """Opens a data set (config file or root folder) lazily; see :func:`.dataset.open_array`.

        ``mode='r+'`` returns a writable layer, or several layers stacked as channels (see
        :mod:`.writer`), e.g. to resume an ``ekn predict`` that writes one layer per class.
        """
        if mode == "r":
            return open_array(path, key=key, mag=mag, fill_value=fill_value, cache_mb=cache_mb, prefetch=prefetch,
                              threads=threads, channels=channels, mag_convention=mag_convention,
                              cube_shape=cube_shape)
        if mode not in ("r+", "a"):
            raise ConfigError(f"KNOSSOS data sets open with mode 'r' or 'r+', not {mode!r}")
        layers = select_layers(read_config(path, mag_convention, cube_shape), key, path)
        if channels:
            raise ConfigError(f"mode='r+' writes the layers of {path!r} in their stored order; select them with "
                              f"the key ('{path}:a,b'), not with channels=")
        arrays = [open_writable(layer, mag, cache_mb=cache_mb / len(layers)) for layer in layers]
        return arrays[0] if len(arrays) == 1 else StackedArray(arrays)

    @classmethod
    def create(cls, path: str, shape: tuple[int, ...], dtype: Any, key: str | None = None,
               chunks: tuple[int, ...] | None = None, overwrite: bool = False,
               **options: Any) -> KnossosArray | StackedArray:
        """Creates a data set; ``key`` is the experiment name. Options: those of
        :func:`.writer.create_dataset` (others are refused); ``overwrite`` is named in the signature,
        where jobs look for the readers that take it."""
        check_options("knossos", create_dataset, options, path, PASSED_ARGS["create"])
        return create_dataset(path, shape, dtype, name=key or options.pop("name", None), chunks=chunks,
                              overwrite=overwrite, **options)
