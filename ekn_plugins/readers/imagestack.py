"""Image stacks (``ekn.readers`` name ``imagestack``): one multi-page TIFF, or one image per section.

Paths:

- ``vol.tif`` / ``vol.tiff``: a multi-page TIFF, pages = z-sections (an ImageJ hyperstack with
  channels gives ``(c, z, y, x)``). Uncompressed files are memory-mapped, others read page by page.
  Read-only.
- ``sections/`` (a directory) or ``sections/*.png`` (a glob): one 2-D TIFF or PNG per section,
  in natural order of the file names (``s2.png`` before ``s10.png``). Reading a z-range opens
  only the files of those sections. Writable with ``mode='r+'``.

:meth:`ImageStackReader.create` writes a directory of per-section TIFFs (``out/*.tif`` →
``out/0000.tif``, ``out/0001.tif``, ...; a plain directory path gets ``section_0000.tif``, ...) that
Fiji and TrakEM2 open as an image sequence. A volume with channels ``(c, z, y, x)`` stores each
section as a TIFF with one page per channel. Writes that cover part of a section read, modify
and atomically replace the whole section file, so write from one process.

Example:
    >>> import numpy as np, os, tempfile
    >>> pattern = os.path.join(tempfile.mkdtemp(), "s*.tif")
    >>> with ImageStackReader.create(pattern, shape=(3, 4, 5), dtype="uint8") as vol:
    ...     vol[1:, :2, :2] = 9
    >>> sorted(os.listdir(os.path.dirname(pattern)))
    ['s0000.tif', 's0001.tif', 's0002.tif']
    >>> vol = ImageStackReader.open(os.path.dirname(pattern))
    >>> vol.shape, vol.axes, vol[:, 1, :3].tolist()
    ((3, 4, 5), 'zyx', [[0, 0, 0], [9, 9, 0], [9, 9, 0]])
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
from typing import Any

import numpy as np

from ekn_core.atomic import write_bytes
from ekn_core.errors import EknError
from ekn_plugins.readers import image_files as images
from ekn_plugins.readers.sections import SectionVolume

#: File name stem of sections created in a plain directory (``section_0000.tif``).
DEFAULT_PREFIX = "section_"


def has_glob(path: str) -> bool:
    """Whether ``path`` is a glob pattern (``*``, ``?`` or ``[``)."""
    return glob.has_magic(path)


def find_sections(path: str) -> list[str]:
    """The section files of a directory or glob, in natural order.

    Raises:
        EknError: Nothing matches, or the directory holds no TIFF/PNG images.
    """
    if has_glob(path):
        files = [f for f in glob.glob(path) if os.path.isfile(f) and images.is_image(f)]
        where = f"the pattern {path!r}"
    elif os.path.isdir(path):
        files = [os.path.join(path, n) for n in os.listdir(path)
                 if not n.startswith(".") and images.is_image(n) and os.path.isfile(os.path.join(path, n))]
        where = f"the directory {path!r}"
    else:
        raise EknError(f"image stack {path!r} does not exist: give a multi-page TIFF file, a directory of "
                       "section images or a glob such as 'sections/*.png'")
    if not files:
        raise EknError(f"{where} matches no .tif, .tiff or .png section images")
    return sorted(files, key=images.natural_key)


class SectionFiles(SectionVolume):
    """One image file per z-section (TIFF or PNG); see the module docs."""

    def __init__(self, files: list[str], writable: bool = False, compression: str | None = None):
        # opening reads the headers of the first and the last section only (stacks of 10^4 sections on
        # network storage open fast, in every Dask worker); every section is checked when it is read
        first_shape, first_dtype = images.section_header(files[0])
        for path in files[-1:] if len(files) > 1 else []:
            shape, dtype = images.section_header(path)
            if (shape, dtype) != (first_shape, first_dtype):
                raise EknError(f"sections differ: {files[0]!r} is {first_dtype} {first_shape}, {path!r} is "
                               f"{dtype} {shape}. All sections of a stack need the same shape and dtype; select "
                               "them with a glob such as 'sections/s*.tif'")
        super().__init__(len(files), first_shape, first_dtype, writable, name=f"image stack {files[0]!r}...")
        self.files, self.compression = files, compression

    def read_section(self, z: int) -> np.ndarray:
        return images.read_section(self.files[z])

    def write_section(self, z: int, section: np.ndarray) -> None:
        images.write_section(self.files[z], section, self.compression)


class TiffPages(SectionVolume):
    """A multi-page TIFF file as a read-only stack; see the module docs."""

    def __init__(self, path: str):
        import tifffile

        self._tif = tifffile.TiffFile(path)
        series = self._tif.series[0]
        shape, axes = tuple(series.shape), series.axes
        if "S" in axes:
            self._tif.close()
            raise images.colour_error(path, shape)
        lead, lead_axes = shape[:-2], axes[:-2]
        if len(lead) > 2 or (len(lead) == 2 and "C" not in lead_axes):
            self._tif.close()
            raise EknError(f"TIFF {path!r} has axes {axes!r} (shape {shape}); ekn reads z-sections (ZYX) or "
                           "z-sections with channels (ZCYX or CZYX). Save one stack per time point")
        self._lead = lead or (1,)
        self._channel_axis = lead_axes.index("C") if len(lead) == 2 else None
        n_channels = lead[self._channel_axis] if self._channel_axis is not None else None
        z_axis = None if self._channel_axis is None else 1 - self._channel_axis
        n_sections = lead[z_axis] if z_axis is not None else self._lead[0]
        section = shape[-2:] if n_channels is None else (n_channels, *shape[-2:])
        super().__init__(n_sections, section, series.dtype, writable=False, name=f"TIFF {path!r}")
        try:
            self._pages = tifffile.memmap(path, mode="r").reshape(*self._lead, *shape[-2:])
        except ValueError:  # compressed or scattered pages: read page by page
            self._pages = None

    def _page(self, *lead_index: int) -> np.ndarray:
        if self._pages is not None:
            return self._pages[lead_index]
        page = int(np.ravel_multi_index(lead_index, self._lead))
        return self._tif.asarray(key=page, series=0)

    def read_section(self, z: int) -> np.ndarray:
        if self._channel_axis is None:
            return np.asarray(self._page(z))
        order = (lambda c: (c, z)) if self._channel_axis == 0 else (lambda c: (z, c))
        return np.stack([self._page(*order(c)) for c in range(self.section_shape[0])])

    def close(self) -> None:
        self._pages = None
        self._tif.close()


def _creation_pattern(path: str) -> tuple[str, str, str]:
    """``out/pre_*.tif`` → ``("out", "pre_", ".tif")``; a plain directory → ``(dir, "section_", ".tif")``."""
    if not has_glob(path):
        return path, DEFAULT_PREFIX, ".tif"
    directory, name = os.path.split(path)
    prefix, star, suffix = name.partition("*")
    if not star or has_glob(directory) or has_glob(prefix + suffix) or not images.is_tiff(suffix):
        raise EknError(f"cannot create an image stack at {path!r}: write a directory, or one '*' in the file "
                       "name followed by .tif or .tiff, e.g. 'out/section_*.tif' (ekn writes TIFF sections)")
    return directory or ".", prefix, suffix


class ImageStackReader:
    """Reads multi-page TIFFs and TIFF/PNG section stacks; creates TIFF section stacks."""

    @classmethod
    def open(cls, path: str, key: str | None = None, mode: str = "r",
             compression: str | None = None) -> SectionVolume:
        """Opens a multi-page TIFF (read-only) or a stack of section images (``mode='r+'`` to write).

        Args:
            path: ``vol.tif``, a directory of sections or a glob such as ``sections/*.png``.
            key: Not used by image stacks (an error when given).
            mode: ``"r"`` or ``"r+"``.
            compression: TIFF compression of rewritten sections (e.g. ``"zlib"``; default none).
        """
        if key is not None:
            raise EknError(f"image stacks have no datasets inside; open {path!r} without ':{key}'")
        if mode not in ("r", "r+"):
            raise EknError(f"image stacks open with mode 'r' or 'r+', not {mode!r}")
        if os.path.isfile(path):
            if mode != "r":
                raise EknError(f"{path!r} is a single TIFF file, which ekn only reads; write a directory of "
                               "sections instead, e.g. 'out/*.tif'")
            return TiffPages(path)
        return SectionFiles(find_sections(path), writable=mode == "r+", compression=compression)

    @classmethod
    def create(cls, path: str, shape: tuple[int, ...], dtype: Any, key: str | None = None,
               chunks: tuple[int, ...] | None = None, compression: str | None = None) -> SectionFiles:
        """Creates a directory of zero-filled TIFF sections (``chunks`` is ignored: one file per section).

        Args:
            path: A directory, or ``dir/prefix*.tif`` to choose the file names.
            shape: ``(z, y, x)`` or ``(c, z, y, x)``.
            dtype: Voxel type.
            key: Not used (an error when given).
            compression: TIFF compression of written sections (default none, which every viewer reads).

        Raises:
            EknError: A single ``.tif`` file as the path, a bad pattern, or other images already matching it.
        """
        if key is not None:
            raise EknError(f"image stacks have no datasets inside; create {path!r} without ':{key}'")
        if images.is_tiff(path) and not has_glob(path):
            raise EknError(f"cannot write {path!r} as one TIFF file block by block; write a directory of "
                           f"sections instead, e.g. '{os.path.splitext(path)[0]}/*.tif'")
        shape = tuple(int(s) for s in shape)
        if len(shape) not in (3, 4):
            raise EknError(f"image stacks are (z, y, x) or (c, z, y, x), not shape {shape}")
        directory, prefix, suffix = _creation_pattern(path)
        os.makedirs(directory, exist_ok=True)
        ours = re.compile(re.escape(prefix) + r"\d+" + re.escape(suffix) + "$")
        existing = [n for n in os.listdir(directory) if fnmatch.fnmatch(n, f"{prefix}*{suffix}")]
        others = [n for n in existing if not ours.match(n)]
        if others:
            raise EknError(f"{directory!r} already holds other files matching '{prefix}*{suffix}' "
                           f"({sorted(others)[:3]}); choose an empty directory or another pattern")
        for name in existing:
            os.remove(os.path.join(directory, name))
        n_sections = shape[-3]
        width = max(4, len(str(n_sections - 1)))
        files = [os.path.join(directory, f"{prefix}{z:0{width}d}{suffix}") for z in range(n_sections)]
        section = (shape[0], *shape[2:]) if len(shape) == 4 else shape[1:]
        zeros = images.encode_section(np.zeros(section, dtype), compression=compression)
        for file in files:
            write_bytes(file, zeros)
        return SectionFiles(files, writable=True, compression=compression)
