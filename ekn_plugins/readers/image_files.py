"""One 2-D section image on disk (TIFF or PNG): its header, its pixels, an atomic write.

A section is a grey-value image ``(y, x)`` or, for multi-channel volumes, a TIFF with a stack of
pages ``(c, y, x)``. Colour images (RGB, RGBA, grey + alpha) are refused with a hint how to
convert them. TIFF goes through tifffile, PNG through imageio; both are imported on use.

Example:
    >>> import numpy as np, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "s0.tif")
    >>> write_section(path, np.arange(12, dtype="uint16").reshape(3, 4))
    >>> section_header(path)
    ((3, 4), dtype('uint16'))
    >>> read_section(path)[2].tolist()
    [8, 9, 10, 11]
    >>> sorted(["s10.png", "s2.png", "s1.png"], key=natural_key)
    ['s1.png', 's2.png', 's10.png']
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from ekn_core.atomic import atomic_write, write_bytes
from ekn_core.errors import EknError

TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = TIFF_SUFFIXES + (".png",)

_CONVERT_HINT = ("ekn reads grey-value sections. Convert the stack to grey values first, e.g. in Fiji "
                 "(Image > Type > 8-bit, then File > Save As > Image Sequence) or in Python with "
                 "skimage.util.img_as_ubyte(skimage.color.rgb2gray(skimage.io.imread(path)))")


def is_image(name: str) -> bool:
    """Whether ``name`` has a section image suffix (``.tif``, ``.tiff``, ``.png``, any case)."""
    return name.lower().endswith(IMAGE_SUFFIXES)


def is_tiff(name: str) -> bool:
    """Whether ``name`` is a TIFF file name."""
    return name.lower().endswith(TIFF_SUFFIXES)


def natural_key(name: str) -> list[Any]:
    """Sort key that orders the numbers inside names by value (``s2`` before ``s10``)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def colour_error(path: str, shape: tuple[int, ...]) -> EknError:
    """The error for a colour image at ``path``."""
    return EknError(f"{path!r} is a colour image (shape {shape}, colour samples per pixel). {_CONVERT_HINT}")


def section_header(path: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape ``(y, x)`` or ``(c, y, x)`` and dtype of a section, read from the file's header.

    Raises:
        EknError: A colour image, or a TIFF with more than one axis besides y and x.
    """
    if is_tiff(path):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, dtype, axes = tuple(series.shape), np.dtype(series.dtype), series.axes
        if "S" in axes:
            raise colour_error(path, shape)
        if len(shape) > 3:
            raise EknError(f"section {path!r} has axes {axes!r} (shape {shape}); a section holds one image "
                           "(y, x) or one page per channel (c, y, x)")
        return shape, dtype
    import imageio.v3 as iio

    props = iio.improps(path)
    if len(props.shape) != 2:
        raise colour_error(path, tuple(props.shape))
    return tuple(props.shape), np.dtype(props.dtype)


def read_section(path: str) -> np.ndarray:
    """The pixels of a section, ``(y, x)`` or ``(c, y, x)``."""
    if is_tiff(path):
        import tifffile

        return tifffile.imread(path)
    import imageio.v3 as iio

    return iio.imread(path)


def encode_section(array: np.ndarray, compression: str | None = None) -> bytes:
    """A TIFF file's bytes for a section (``(c, y, x)`` arrays as one page per channel).

    Args:
        array: ``(y, x)`` or ``(c, y, x)``.
        compression: tifffile compression (``"zlib"`` needs no extra package), None: none.
    """
    import io

    import tifffile

    buffer = io.BytesIO()
    metadata = {"axes": "CYX" if array.ndim == 3 else "YX"}
    tifffile.imwrite(buffer, array, photometric="minisblack", compression=compression, metadata=metadata)
    return buffer.getvalue()


def write_section(path: str, array: np.ndarray, compression: str | None = None) -> None:
    """Writes a section atomically, as TIFF or PNG by the suffix of ``path``.

    Args:
        path: Destination; a crash leaves the old file or the new one, never a torn one.
        array: ``(y, x)``, or ``(c, y, x)`` for TIFF.
        compression: TIFF compression (see :func:`encode_section`).
    """
    path = os.fspath(path)
    if is_tiff(path):
        write_bytes(path, encode_section(array, compression))
        return
    if array.ndim != 2 or array.dtype not in (np.uint8, np.uint16):
        raise EknError(f"cannot write {array.dtype} {array.shape} into PNG section {path!r}: PNG holds "
                       "uint8 or uint16 grey images (write TIFF sections instead)")
    import imageio.v3 as iio

    atomic_write(path, lambda tmp: iio.imwrite(tmp, array, extension=".png"))
