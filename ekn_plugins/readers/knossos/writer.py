"""Writing KNOSSOS data sets: new data sets, cube-wise writes of arbitrary boxes, mag pyramids.

A writable :class:`~ekn_plugins.readers.knossos.dataset.KnossosArray` accepts
``arr[z0:z1, y0:y1, x0:x1] = block`` for any box. Cubes the box covers completely are encoded
and written at once; partly covered cubes are kept in memory (merged with what is already on
disk) until later writes complete them or :meth:`CubeWriter.flush`/``close()`` writes them. Every
cube file is written atomically (temporary file, fsync, rename); cubes that are all zero are not
written (an existing file is removed), so they read as missing. ``close()`` also builds the
downsampled mags the config lists when the data set was created with ``num_mags > 1``.

Several writers of one layer (processes, or handles in one process) are safe: each cube is
written under the layer's write lock (:func:`write_lock`, a hidden ``.<layer>.ekn-write.lock`` file
in the data set folder), and a partly written cube takes the voxels this writer did not write from the
file as it is then, so neighbouring boxes of different writers in one cube are all kept.

Example:
    >>> import numpy as np, os, tempfile
    >>> root = tempfile.mkdtemp()
    >>> arr = create_dataset(root, shape=(6, 8, 8), dtype="uint8", name="pred", cube_shape=(4, 4, 4),
    ...                      num_mags=2, voxel_size=(10, 10, 10))
    >>> arr[1:5, 3:8, 0:7] = 9          # not cube aligned
    >>> arr.close()                      # writes the partial cubes and mag 2
    >>> sorted(f for f in os.listdir(root) if "." in f)  # the configs and the writers' lock file
    ['.pred.ekn-write.lock', 'pred.k.toml', 'pred.pyk.conf']
    >>> from ekn_plugins.readers.knossos.dataset import open_array
    >>> int(open_array(root)[:].sum()) == 9 * 4 * 5 * 7, open_array(root, mag=2).shape
    (True, (3, 4, 4))
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import threading
from typing import Any, Sequence

import numpy as np

from ekn_core.atomic import exclusive_lock
from ekn_core.errors import ConfigError, EknError
from ekn_plugins.readers.knossos.cache import CubeCache
from ekn_plugins.readers.knossos.config import (
    LayerConfig, pyramid_voxel_sizes, write_legacy, write_pyk, write_toml)
from ekn_plugins.readers.knossos.cubes import read_cube, write_cube
from ekn_plugins.readers.knossos.dataset import DEFAULT_CACHE_MB, KnossosArray, StackedArray

#: Cube extension chosen for each stored dtype when none is given.
_DEFAULT_EXT = {"uint8": ".raw", "uint16": ".raw", "uint64": ".seg.sz.zip"}


def _cast(block: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Casts ``block`` to the stored dtype, refusing values that would change."""
    block = np.asarray(block)
    if block.dtype == dtype:
        return block
    if block.dtype.kind == "f":
        raise EknError(f"KNOSSOS stores {dtype} voxels, not floating point ({block.dtype}); convert first, e.g. "
                       "(probabilities * 255).round().astype('uint8')")
    if block.dtype.kind in "iu" and block.size:
        lo, hi = block.min(), block.max()
        if lo < 0 or hi > np.iinfo(dtype).max:
            raise EknError(f"values {lo}..{hi} do not fit the KNOSSOS voxel type {dtype}")
    return block.astype(dtype)


def write_lock(layer: LayerConfig) -> str:
    """The path whose :func:`~ekn_core.atomic.exclusive_lock` (the file ``<path>.lock``) every
    writer of ``layer`` holds while it writes a cube or builds the coarser mags.

    Example:
        >>> layer = LayerConfig(name="pred", root="/data/ds", extent=(8, 8, 8), cube_shape=(8, 8, 8),
        ...                     voxel_sizes=[(1.0, 1.0, 1.0)])
        >>> write_lock(layer)
        '/data/ds/.pred.ekn-write'
    """
    return os.path.join(layer.root, f".{layer.name}.ekn-write")


class _Pending:
    """A partly written cube: its voxels and which in-extent voxels are still unwritten."""

    def __init__(self, data: np.ndarray, valid: Sequence[int]):
        self.data = data
        self.todo = np.zeros(data.shape, dtype=bool)
        self.todo[tuple(slice(0, v) for v in valid)] = True

    def fill(self, local: tuple, values: np.ndarray) -> bool:
        self.data[local] = values
        self.todo[local] = False
        return not self.todo.any()


class CubeWriter:
    """Cube-wise writer behind a writable :class:`KnossosArray`.

    Args:
        array: The array to write (its layer, mag and cache).
        write_empty: Also write all-zero cubes (the default skips them, as KNOSSOS tools do).
        jpeg_quality: Quality of ``.jpg`` cubes.
        pyramid: Build the coarser mags of the layer from this one on :meth:`close`.
        downsample: ``auto`` (striding for segmentation, mean otherwise), ``stride`` or ``mean``.
        lock: Take the layer's :func:`write_lock` around each cube write (False: the caller holds it).
    """

    def __init__(self, array: KnossosArray, write_empty: bool = False, jpeg_quality: int = 75,
                 pyramid: bool = False, downsample: str = "auto", lock: bool = True):
        self.array, self.write_empty, self.jpeg_quality = array, write_empty, jpeg_quality
        self.pyramid, self.downsample, self.lock = pyramid, downsample, lock
        self._pending: dict[tuple[int, int, int], _Pending] = {}
        self._lock = threading.RLock()
        self._closed = False
        array.writer, array.prefetch = self, 0

    def pending_cube(self, index: tuple[int, int, int]) -> np.ndarray | None:
        """The in-memory state of a partly written cube, or None."""
        with self._lock:
            pending = self._pending.get(index)
            return None if pending is None else pending.data.copy()

    def write(self, starts: Sequence[int], block: np.ndarray) -> None:
        """Writes ``block`` with its first voxel at (z, y, x) ``starts``."""
        if self._closed:
            raise EknError(f"KNOSSOS layer {self.array.layer.name!r} is closed; reopen it with mode='r+'")
        arr = self.array
        block = _cast(block, arr.dtype)
        stops = [s + n for s, n in zip(starts, block.shape)]
        if any(s < 0 for s in starts) or any(e > n for e, n in zip(stops, arr.shape)):
            raise IndexError(f"box {list(starts)}..{stops} lies outside the KNOSSOS array of shape {arr.shape}")
        with self._lock:
            for index in itertools.product(*arr._cube_range(starts, stops)):
                lo = [i * c for i, c in zip(index, arr.cube_shape)]
                valid = [min(c, n - l) for c, n, l in zip(arr.cube_shape, arr.shape, lo)]
                a = [max(s, l) for s, l in zip(starts, lo)]
                b = [min(e, l + v) for e, l, v in zip(stops, lo, valid)]
                values = block[tuple(slice(x - s, y - s) for x, y, s in zip(a, b, starts))]
                local = tuple(slice(x - l, y - l) for x, y, l in zip(a, b, lo))
                pending = self._pending.get(index)
                if pending is None and all(x == l and y == l + v for x, y, l, v in zip(a, b, lo, valid)):
                    cube = np.zeros(arr.cube_shape, arr.dtype)
                    cube[local] = values
                    self._store(index, cube)
                    continue
                if pending is None:
                    existing = arr.cube(index)
                    data = np.zeros(arr.cube_shape, arr.dtype) if existing is None else existing.copy()
                    pending = self._pending[index] = _Pending(data, valid)
                if pending.fill(local, values):
                    self._store(index, self._pending.pop(index).data)

    def _store(self, index: tuple[int, int, int], cube: np.ndarray, unwritten: np.ndarray | None = None) -> None:
        """Writes one cube under the layer's write lock; its ``unwritten`` voxels (those this writer
        has not written) take the values on disk now, which another writer may have changed."""
        arr, path = self.array, self.array.cube_file(index)
        with exclusive_lock(write_lock(arr.layer)) if self.lock else contextlib.nullcontext():
            if unwritten is not None and unwritten.any():
                on_disk = read_cube(path, arr.layer.cube_shape, arr.dtype, arr.ext)
                cube = np.where(unwritten, 0 if on_disk is None else on_disk, cube).astype(arr.dtype)
            if self.write_empty or cube.any():
                write_cube(path, cube, arr.ext, jpeg_quality=self.jpeg_quality)
            elif os.path.exists(path):
                os.remove(path)
            arr.cache.discard(path)

    def flush(self) -> None:
        """Writes every partly written cube as it is now (merged with the file as it is then)."""
        with self._lock:
            while self._pending:
                index, pending = self._pending.popitem()
                self._store(index, pending.data, pending.todo)

    def close(self) -> None:
        """Flushes, then builds the coarser mags when asked to; later writes raise."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        if self.pyramid:
            build_pyramid(self.array.layer, start_mag=self.array.mag, method=self.downsample,
                          jpeg_quality=self.jpeg_quality)


def downsample_block(data: np.ndarray, factor: Sequence[int], method: str) -> np.ndarray:
    """Downsamples a (z, y, x) block by integer ``factor`` (z, y, x): ``stride`` or ``mean``.

    The result has ``ceil(shape / factor)`` voxels per axis; ``mean`` repeats edge voxels to fill
    the last, partial block.

    Example:
        >>> a = np.arange(8, dtype=np.uint8).reshape(2, 2, 2)
        >>> downsample_block(a, (2, 2, 2), "stride").tolist(), downsample_block(a, (1, 2, 2), "mean").tolist()
        ([[[0]]], [[[2]], [[6]]])
    """
    if method == "stride":
        return data[tuple(slice(None, None, f) for f in factor)]
    if method != "mean":
        raise ConfigError(f"downsampling method must be 'stride', 'mean' or 'auto', not {method!r}")
    pad = [(0, -(-n // f) * f - n) for n, f in zip(data.shape, factor)]
    padded = np.pad(data, pad, mode="edge")
    shape = []
    for n, f in zip(padded.shape, factor):
        shape += [n // f, f]
    mean = padded.reshape(shape).mean(axis=(1, 3, 5))
    if np.issubdtype(data.dtype, np.integer):
        mean = np.round(mean)
    return mean.astype(data.dtype)


def build_pyramid(layer: LayerConfig, start_mag: int = 1, method: str = "auto", jpeg_quality: int = 75,
                  cache_mb: float = 256) -> None:
    """Writes every mag of ``layer`` coarser than ``start_mag`` from the next finer one, cube by cube.

    It holds the layer's :func:`write_lock` throughout: other writers of the layer wait, and the
    mags match the finer one as it is then.

    Args:
        layer: Layer whose config lists the mags (voxel sizes) to build.
        start_mag: Mag that already holds the data.
        method: ``auto`` (``stride`` for segmentation, ``mean`` otherwise), ``stride`` or ``mean``.
            Class labels in a uint8/uint16 layer need ``stride``: a mean of class ids is no class.
        jpeg_quality: Quality of ``.jpg`` cubes.
        cache_mb: Cube cache size used while reading the finer mag.
    """
    if method == "auto":
        method = "stride" if layer.is_segmentation else "mean"
    mags = layer.mags
    cache = CubeCache(int(cache_mb * 2**20), threads=0)
    try:
        with exclusive_lock(write_lock(layer)):
            _build_mags(layer, mags[layer.level(start_mag):], method, jpeg_quality, cache)
    finally:
        cache.close()


def _build_mags(layer: LayerConfig, mags: Sequence[int], method: str, jpeg_quality: int, cache: CubeCache) -> None:
    """Builds each mag of ``mags`` after the first from the one before (the caller holds the lock)."""
    for finer, coarser in zip(mags, mags[1:]):
        src = KnossosArray(layer, finer, cache=cache, prefetch=0)
        dst = KnossosArray(layer, coarser, cache=cache, prefetch=0)
        writer = CubeWriter(dst, jpeg_quality=jpeg_quality, lock=False)
        ratio = [round(c / f) for c, f in zip(layer.voxel_sizes[layer.level(coarser)][::-1],
                                             layer.voxel_sizes[layer.level(finer)][::-1])]
        if min(ratio) < 1:
            raise ConfigError(f"KNOSSOS layer {layer.name!r}: mag {coarser} is not coarser than mag {finer}")
        for index in itertools.product(*[range(g) for g in dst.grid]):
            lo = [i * c for i, c in zip(index, dst.cube_shape)]
            hi = [min(l + c, n) for l, c, n in zip(lo, dst.cube_shape, dst.shape)]
            block = src.read_box([l * r for l, r in zip(lo, ratio)],
                                 [min(h * r, n) for h, r, n in zip(hi, ratio, src.shape)])
            writer.write(lo, downsample_block(block, ratio, method))
        writer.close()


_CUBE_FILE = r"^{name}_[^/]*?mag\d+_x\d{{4,}}_y\d{{4,}}_z\d{{4,}}\."


def _remove_cubes(root: str, name: str) -> None:
    pattern = re.compile(_CUBE_FILE.format(name=re.escape(name)))
    for folder, _, files in os.walk(root):
        for file in files:
            if pattern.match(file):
                os.remove(os.path.join(folder, file))


def create_dataset(path: str, shape: Sequence[int], dtype: Any, name: str | None = None,
                   voxel_size: Sequence[float] = (1.0, 1.0, 1.0), cube_shape: Sequence[int] | None = None,
                   chunks: Sequence[int] | None = None, extension: str | None = None,
                   num_mags: int | str = 1, mag_convention: str = "ordinal",
                   configs: Sequence[str] = ("toml", "pyk"), description: str = "", overwrite: bool = False,
                   downsample: str = "auto", jpeg_quality: int = 75, write_empty: bool = False,
                   cache_mb: float = DEFAULT_CACHE_MB) -> KnossosArray | StackedArray:
    """Creates a KNOSSOS data set and returns it as a writable array at mag 1.

    Args:
        path: Data set root folder, or the ``<name>.k.toml`` to write (its folder is the root).
        shape: ``(z, y, x)``, or ``(c, z, y, x)`` for one layer per channel (``<name>_c<i>``).
        dtype: ``uint8``/``uint16`` (image data) or ``uint64``/``uint32``/``int64`` (ids, stored as uint64).
        name: Experiment name (default: the toml's stem or the folder name).
        voxel_size: Mag-1 voxel size (x, y, z) in nm.
        cube_shape: Cube shape (x, y, z); default ``chunks`` reversed, else 128³.
        chunks: ekn chunk shape ``(z, y, x)``, used as the cube shape when ``cube_shape`` is None.
        extension: ``.raw``, ``.png``, ``.jpg``, ``.seg.sz.zip`` or ``.seg`` (default by dtype).
        num_mags: Mags to list and build on ``close()`` (``"auto"``: knossos_utils' rule).
        mag_convention: ``ordinal`` (read alike by KNOSSOS and knossos_utils) or ``power_of_two``.
        configs: Which configs to write: ``toml``, ``pyk`` and/or ``legacy`` (``mag1/knossos.conf``;
            needs cubic cubes and an isotropic power-of-two pyramid).
        description: Written into the configs.
        overwrite: Replace an existing data set of the same name (its cube files are deleted).
        downsample: How the coarser mags are computed (see :func:`build_pyramid`).
        jpeg_quality: Quality of ``.jpg`` cubes.
        write_empty: Also write all-zero cubes.
        cache_mb: Cube cache size.

    Raises:
        ConfigError: Unsupported dtype/extension, or an existing data set without ``overwrite``.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (3, 4) or min(shape) < 1:
        raise ConfigError(f"a KNOSSOS data set has shape (z, y, x) or (c, z, y, x) with positive sizes, not {shape}")
    path = os.path.abspath(os.fspath(path))
    if path.endswith(".k.toml"):
        root, stem = os.path.dirname(path), os.path.basename(path)[:-len(".k.toml")]
    else:
        root, stem = path, os.path.basename(path.rstrip(os.sep))
    name = name or stem
    if not re.match(r"^[A-Za-z0-9._-]+$", name):
        raise ConfigError(f"KNOSSOS experiment name {name!r} may only hold letters, digits, '.', '_' and '-'")
    stored = np.dtype(dtype)
    if stored.kind in "iu" and stored.itemsize >= 4:
        stored = np.dtype("uint64")
    elif stored == np.bool_:
        stored = np.dtype("uint8")
    if stored.name not in _DEFAULT_EXT:
        raise ConfigError(f"KNOSSOS cannot store {np.dtype(dtype)} voxels: use uint8/uint16 image data or "
                          "uint64 segmentation ids (convert probabilities with (p * 255).astype('uint8'))")
    ext = extension or _DEFAULT_EXT[stored.name]
    allowed = {"uint8": (".raw", ".png", ".jpg"), "uint16": (".raw", ".png"), "uint64": (".seg.sz.zip", ".seg")}
    if ext not in allowed[stored.name]:
        raise ConfigError(f"{ext} cubes cannot hold {stored} voxels; use one of {allowed[stored.name]}")
    if cube_shape is None:
        cube_shape = tuple(chunks[-3:][::-1]) if chunks else (128, 128, 128)
    extent = shape[-3:][::-1]
    levels = None if num_mags == "auto" else int(num_mags)
    sizes = pyramid_voxel_sizes(voxel_size, extent, cube_shape, levels=levels)
    names = [name] if len(shape) == 3 else [f"{name}_c{i}" for i in range(shape[0])]
    layers = [LayerConfig(name=n, root=root, extent=extent, cube_shape=cube_shape, voxel_sizes=sizes,
                          extensions=[ext], dtype=stored.name, mag_convention=mag_convention,
                          description=description) for n in names]
    unknown = set(configs) - {"toml", "pyk", "legacy"}
    if unknown or not configs:
        raise ConfigError(f"configs must name some of 'toml', 'pyk', 'legacy'; got {list(configs)}")
    targets = {"toml": os.path.join(root, f"{name}.k.toml"), "pyk": os.path.join(root, f"{name}.pyk.conf"),
               "legacy": os.path.join(root, "mag1", "knossos.conf")}
    existing = [targets[c] for c in configs if os.path.exists(targets[c])]
    if existing and not overwrite:
        raise ConfigError(f"{existing[0]} already exists; pass overwrite=True to replace that KNOSSOS data set")
    os.makedirs(root, exist_ok=True)
    if overwrite:
        for layer_name in names:
            _remove_cubes(root, layer_name)
    if "legacy" in configs:
        if len(layers) != 1:
            raise ConfigError("a legacy knossos.conf describes one layer; write a .k.toml for several channels")
        write_legacy(layers[0], targets["legacy"])
    if "toml" in configs:
        write_toml(layers, targets["toml"])
    if "pyk" in configs:
        write_pyk(layers, targets["pyk"])
    cache = CubeCache(int(cache_mb * 2**20), threads=0)
    arrays = []
    for layer in layers:
        array = KnossosArray(layer, 1, cache=cache, prefetch=0)
        CubeWriter(array, write_empty=write_empty, jpeg_quality=jpeg_quality, pyramid=len(sizes) > 1,
                   downsample=downsample)
        arrays.append(array)
    arrays[0]._own_cache = True
    return arrays[0] if len(arrays) == 1 else StackedArray(arrays)


def open_writable(layer: LayerConfig, mag: int = 1, cache_mb: float = DEFAULT_CACHE_MB, **writer_options: Any) -> KnossosArray:
    """An existing layer at ``mag`` as a writable array (``mode='r+'``)."""
    array = KnossosArray(layer, mag, cache_mb=cache_mb, prefetch=0, threads=0)
    CubeWriter(array, **writer_options)
    return array
