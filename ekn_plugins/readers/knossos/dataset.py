"""Lazy numpy-like arrays over KNOSSOS data sets.

:class:`KnossosArray` is one layer at one mag. Its axis order is ekn's **(z, y, x)**, C order —
the transpose of KNOSSOS' (x, y, z) coordinates: ``arr[z, y, x]`` is the voxel KNOSSOS shows at
``(x, y, z)`` (0-based, in that mag's own voxel grid). ``shape`` is the mag's extent, clipped to the
data set boundary; cubes that do not exist on disk read as ``fill_value``.

Decoded cubes live in a :class:`~ekn_plugins.readers.knossos.cache.CubeCache` (LRU, byte limit).
After each read the neighbouring cubes (``prefetch`` cubes around the box) are loaded by background
threads, and the cubes a read needs are decoded in parallel by the same threads.

:class:`StackedArray` stacks several arrays of the same spatial shape as a leading channel axis,
``(c, z, y, x)``.

Example:
    >>> import numpy as np, os, tempfile
    >>> from ekn_plugins.readers.knossos.writer import create_dataset
    >>> root = tempfile.mkdtemp()
    >>> with create_dataset(root, shape=(5, 6, 7), dtype="uint8", name="demo", cube_shape=(4, 4, 4)) as arr:
    ...     arr[:] = np.arange(5 * 6 * 7).reshape(5, 6, 7) % 200
    >>> arr = open_array(root)
    >>> arr.shape, arr.axes, int(arr[4, 5, 6]), arr[1:3, 0, ::3].tolist()
    ((5, 6, 7), 'zyx', 9, [[42, 45, 48], [84, 87, 90]])
"""

from __future__ import annotations

import itertools
from typing import Any, Sequence

import numpy as np

from ekn_core.errors import ConfigError, EknError
from ekn_core.volumes import VolumeBase
from ekn_plugins.readers.indexing import bounding_box, local_index, normalize_index
from ekn_plugins.readers.knossos.cache import CubeCache
from ekn_plugins.readers.knossos.config import LayerConfig, read_config
from ekn_plugins.readers.knossos.cubes import cube_path, read_cube

#: Default cache size in MiB.
DEFAULT_CACHE_MB = 512


class KnossosArray(VolumeBase):
    """One KNOSSOS layer at one mag as a lazy ``(z, y, x)`` array.

    Args:
        layer: The layer's config.
        mag: Mag folder number (see :attr:`LayerConfig.mags`).
        fill_value: Value of voxels in cubes that do not exist on disk.
        cache: Shared cube cache; a new one of ``cache_mb`` MiB when None.
        cache_mb: Size of a new cache.
        prefetch: Cubes around each read box to load in the background (0: none).
        threads: Background loader threads of a new cache.
        writer: A :class:`~ekn_plugins.readers.knossos.writer.CubeWriter` makes the array writable.
    """

    axes = declared_axes = "zyx"  # the format fixes the order

    def __init__(self, layer: LayerConfig, mag: int = 1, fill_value: Any = 0, cache: CubeCache | None = None,
                 cache_mb: float = DEFAULT_CACHE_MB, prefetch: int = 1, threads: int = 2, writer: Any = None):
        if layer.num_channels != 1:
            raise ConfigError(f"KNOSSOS layer {layer.name!r} has {layer.num_channels} channels per voxel; only "
                              "single-channel layers are supported")
        self.layer, self.mag = layer, int(mag)
        self.level = layer.level(self.mag)
        self.factor = layer.scale_factor(self.mag)
        self.dtype = np.dtype(layer.dtype)
        self.fill_value = self.dtype.type(fill_value)
        self.shape = tuple(layer.extent_at(self.mag)[::-1])
        self.cube_shape = tuple(layer.cube_shape[::-1])
        self.chunks = self.cube_shape
        self.grid = tuple(-(-s // c) for s, c in zip(self.shape, self.cube_shape))
        self.ext = layer.extension
        self._own_cache = cache is None
        self.cache = cache if cache is not None else CubeCache(int(cache_mb * 2**20), threads=threads)
        self.prefetch = int(prefetch) if writer is None else 0
        self.writer = writer

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        """Voxel size (z, y, x) in nm at this mag."""
        return tuple(self.layer.voxel_sizes[self.level][::-1])  # type: ignore[return-value]

    def cube_file(self, index_zyx: Sequence[int]) -> str:
        """Path of the cube with (z, y, x) cube index ``index_zyx``."""
        return cube_path(self.layer.root, self.layer.name, self.layer.mag_prefix, self.mag, index_zyx[::-1], self.ext)

    def _loader(self, index_zyx: tuple[int, int, int]):
        path = self.cube_file(index_zyx)
        return path, lambda: read_cube(path, self.layer.cube_shape, self.dtype, self.ext)

    def cube(self, index_zyx: tuple[int, int, int]) -> np.ndarray | None:
        """The decoded cube at (z, y, x) cube index, or None when its file does not exist."""
        if self.writer is not None:
            pending = self.writer.pending_cube(index_zyx)
            if pending is not None:
                return pending
        path, loader = self._loader(index_zyx)
        return self.cache.get(path, loader)

    def _cube_range(self, starts, stops) -> list[range]:
        return [range(a // c, (b - 1) // c + 1) if b > a else range(0)
                for a, b, c in zip(starts, stops, self.cube_shape)]

    def read_box(self, starts: Sequence[int], stops: Sequence[int]) -> np.ndarray:
        """Reads the box ``[starts, stops)`` (z, y, x), which must lie inside :attr:`shape`."""
        out = np.full([b - a for a, b in zip(starts, stops)], self.fill_value, dtype=self.dtype)
        if out.size == 0:
            return out
        cube_ranges = self._cube_range(starts, stops)
        indices = list(itertools.product(*cube_ranges))
        if len(indices) > 1 and self.writer is None:
            self.cache.prefetch(self._loader(i) for i in indices)
        for index in indices:
            cube = self.cube(index)
            if cube is None:
                continue
            lo = [i * c for i, c in zip(index, self.cube_shape)]
            a = [max(s, l) for s, l in zip(starts, lo)]
            b = [min(e, l + c) for e, l, c in zip(stops, lo, self.cube_shape)]
            out[tuple(slice(x - s, y - s) for x, y, s in zip(a, b, starts))] = \
                cube[tuple(slice(x - l, y - l) for x, y, l in zip(a, b, lo))]
        if self.prefetch > 0:
            self._prefetch_around(cube_ranges)
        return out

    def _prefetch_around(self, cube_ranges: list[range]) -> None:
        p = self.prefetch
        around = [range(max(r.start - p, 0), min(r.stop + p, g)) for r, g in zip(cube_ranges, self.grid)]
        centre = [(r.start + r.stop - 1) / 2 for r in cube_ranges]
        inner = set(itertools.product(*cube_ranges))
        outer = [i for i in itertools.product(*around) if i not in inner]
        outer.sort(key=lambda i: sum((a - c) ** 2 for a, c in zip(i, centre)))
        self.cache.prefetch(self._loader(i) for i in outer)

    def __getitem__(self, index: Any) -> np.ndarray:
        ranges, dropped = normalize_index(index, self.shape)
        starts, stops = bounding_box(ranges)
        data = self.read_box(starts, stops)[local_index(ranges, starts)]
        return data[tuple(0 if d else slice(None) for d in dropped)]

    def __setitem__(self, index: Any, value: Any) -> None:
        if self.writer is None:
            raise EknError(f"KNOSSOS layer {self.layer.name!r} was opened read-only; open it with mode='r+' "
                           "or create it with create_volume(...) to write")
        ranges, _ = normalize_index(index, self.shape)
        if any(r.step != 1 for r in ranges if len(r) > 1):
            raise IndexError("writes into a KNOSSOS array take contiguous boxes (step 1)")
        starts, stops = bounding_box(ranges)
        box = tuple(b - a for a, b in zip(starts, stops))
        try:
            block = np.broadcast_to(np.asarray(value), box)
        except ValueError:
            raise ValueError(f"cannot write an array of shape {np.shape(value)} into a box of shape {box}") from None
        self.writer.write(starts, block)

    def flush(self) -> None:
        """Writes pending partial cubes (writable arrays only)."""
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        """Flushes pending writes (and builds the pyramid if asked) and stops the loader threads."""
        if self.writer is not None:
            self.writer.close()
        if self._own_cache:
            self.cache.close()


class StackedArray(VolumeBase):
    """Several arrays with the same spatial shape stacked as channels, ``(c, z, y, x)``.

    Args:
        arrays: The channel arrays, in order.
    """

    axes = declared_axes = "czyx"  # the format fixes the order

    def __init__(self, arrays: Sequence[KnossosArray]):
        if not arrays:
            raise ConfigError("stacking KNOSSOS data sets needs at least one")
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ConfigError("KNOSSOS data sets stacked as channels must have the same shape at the chosen mag; "
                              f"got {[(a.layer.name, a.shape) for a in arrays]}")
        self.arrays = list(arrays)
        self.shape = (len(arrays),) + arrays[0].shape
        self.dtype = np.result_type(*[a.dtype for a in arrays])
        self.chunks = (1,) + arrays[0].chunks

    def __getitem__(self, index: Any) -> np.ndarray:
        if not isinstance(index, tuple):
            index = (index,)
        if index and index[0] is Ellipsis:
            index = (slice(None),) + index
        first, rest = (index[0], index[1:]) if index else (slice(None), ())
        ranges, dropped = normalize_index(first, self.shape[:1])
        parts = [np.asarray(self.arrays[c][rest], dtype=self.dtype) for c in ranges[0]]
        data = np.stack(parts) if parts else np.empty((0,) + self.arrays[0][rest].shape, self.dtype)
        return data[0] if dropped[0] else data

    def __setitem__(self, index: Any, value: Any) -> None:
        if not isinstance(index, tuple):
            index = (index,)
        first, rest = (index[0], index[1:]) if index else (slice(None), ())
        ranges, dropped = normalize_index(first, self.shape[:1])
        value = np.asarray(value)
        if dropped[0]:
            self.arrays[ranges[0][0]][rest] = value
            return
        value = np.broadcast_to(value, (len(ranges[0]),) + value.shape[1:] if value.ndim == self.ndim else
                                (len(ranges[0]),) + value.shape)
        for c, part in zip(ranges[0], value):
            self.arrays[c][rest] = part

    def flush(self) -> None:
        for array in self.arrays:
            array.flush()

    def close(self) -> None:
        for array in self.arrays:
            array.close()


def select_layers(layers: list[LayerConfig], key: str | None, path: str) -> list[LayerConfig]:
    """Picks layers by ``key``: a name, an index, or several joined by commas (``"raw,membranes"``).

    Without a key a single layer is taken; several layers only when they share dtype and extent (they
    are then stacked as channels).
    """
    if key is None:
        if len(layers) > 1 and len({(l.dtype, l.extent) for l in layers}) > 1:
            raise ConfigError(f"KNOSSOS config {path!r} has layers {[l.name for l in layers]} of different types "
                              f"or extents; name one as '{path}:NAME' (or several: 'NAME1,NAME2')")
        return layers
    chosen = []
    for part in (p.strip() for p in key.split(",")):
        match = [l for l in layers if l.name == part]
        if not match and part.isdigit() and int(part) < len(layers):
            match = [layers[int(part)]]
        if not match:
            raise ConfigError(f"KNOSSOS config {path!r} has no layer {part!r}; it has {[l.name for l in layers]}")
        chosen.append(match[0])
    return chosen


def open_array(path: str, key: str | None = None, mag: int = 1, fill_value: Any = 0,
               cache_mb: float = DEFAULT_CACHE_MB, prefetch: int = 1, threads: int = 2,
               channels: Sequence[str] | None = None, mag_convention: str = "auto",
               cube_shape: Sequence[int] | None = None) -> KnossosArray | StackedArray:
    """Opens a KNOSSOS data set read-only.

    Args:
        path: Config file (any dialect) or data set root folder.
        key: Layer name(s) in a multi-layer ``.k.toml`` (comma-separated to stack them).
        mag: Mag folder number.
        fill_value: Value of missing cubes.
        cache_mb: Cube cache size in MiB (shared by all stacked layers).
        prefetch: Cubes around each read to load in the background.
        threads: Background loader threads.
        channels: More data sets (``"path"`` or ``"path:layer"``) stacked after this one as channels.
        mag_convention: ``auto``, ``ordinal`` or ``power_of_two``.
        cube_shape: (x, y, z) cube shape override.

    Returns:
        A :class:`KnossosArray`, or a :class:`StackedArray` when several layers are chosen.
    """
    from ekn_core.volumes import split_key

    cache = CubeCache(int(cache_mb * 2**20), threads=threads)
    layers = select_layers(read_config(path, mag_convention, cube_shape), key, path)
    for extra in channels or ():
        extra_path, extra_key = split_key(extra)
        layers += select_layers(read_config(extra_path, mag_convention, cube_shape), extra_key, extra_path)
    arrays = [KnossosArray(l, mag, fill_value, cache=cache, prefetch=prefetch) for l in layers]
    if len(arrays) == 1:
        arrays[0]._own_cache = True
        return arrays[0]
    stacked = StackedArray(arrays)
    arrays[0]._own_cache = True
    return stacked
