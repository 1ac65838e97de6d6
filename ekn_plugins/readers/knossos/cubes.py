"""KNOSSOS cube files: names, decoding and encoding of ``.raw``, ``.png``, ``.jpg``, ``.seg.sz.zip`` and ``.seg``.

Every decoded cube is a C-order ``(z, y, x)`` numpy array of the layer's cube shape; on disk x
varies fastest, so the bytes are the same. Cube shapes and indices are given in KNOSSOS
``(x, y, z)`` order.

Example:
    >>> import numpy as np, os, tempfile
    >>> cube = np.arange(2 * 3 * 4, dtype=np.uint64).reshape(2, 3, 4) * 2**60
    >>> path = os.path.join(tempfile.mkdtemp(), cube_name("exp", "mag", 1, (0, 1, 2), ".seg.sz.zip"))
    >>> write_cube(path, cube, ".seg.sz.zip")
    >>> np.array_equal(read_cube(path, (4, 3, 2), "uint64"), cube)
    True
    >>> os.path.basename(path)
    'exp_mag1_x0000_y0001_z0002.seg.sz.zip'
"""

from __future__ import annotations

import io
import os
import zipfile
from typing import Sequence

import numpy as np

from ekn_core.atomic import write_bytes as atomic_write
from ekn_core.errors import EknError

#: Extensions whose cubes are segmentation ids (uint64 on disk).
SEG_EXTENSIONS = (".seg.sz.zip", ".seg")


class CubeError(EknError):
    """A cube file exists but cannot be decoded; the message names the file."""


def cube_name(experiment: str, mag_prefix: str, mag: int, index: Sequence[int], ext: str) -> str:
    """File name ``<experiment>_<prefix><mag>_x%04d_y%04d_z%04d<ext>`` of the cube at ``index`` (x, y, z)."""
    x, y, z = index
    return f"{experiment}_{mag_prefix}{mag}_x{x:04d}_y{y:04d}_z{z:04d}{ext}"


def cube_path(root: str, experiment: str, mag_prefix: str, mag: int, index: Sequence[int], ext: str) -> str:
    """Full path ``<root>/<prefix><mag>/x%04d/y%04d/z%04d/<cube_name>`` of a cube."""
    x, y, z = index
    return os.path.join(root, f"{mag_prefix}{mag}", f"x{x:04d}", f"y{y:04d}", f"z{z:04d}",
                        cube_name(experiment, mag_prefix, mag, index, ext))


def _shape_zyx(cube_shape: Sequence[int]) -> tuple[int, int, int]:
    cx, cy, cz = (int(v) for v in cube_shape)
    return cz, cy, cx


def decode_cube(data: bytes, ext: str, cube_shape: Sequence[int], dtype, name: str = "<bytes>") -> np.ndarray:
    """Decodes the bytes of one cube file into a ``(z, y, x)`` array.

    Args:
        data: File contents.
        ext: Cube extension (``.raw``, ``.png``, ``.jpg``, ``.seg.sz.zip``, ``.seg``).
        cube_shape: Cube shape (x, y, z).
        dtype: Voxel type of the layer.
        name: File name for error messages.

    Raises:
        CubeError: Truncated, corrupt or wrongly sized cube (names the file).
    """
    shape = _shape_zyx(cube_shape)
    count = shape[0] * shape[1] * shape[2]
    dtype = np.dtype(dtype)
    try:
        if ext == ".raw":
            flat = np.frombuffer(data, dtype=dtype.newbyteorder("<"))
            if len(data) != count * dtype.itemsize:
                raise CubeError(f"KNOSSOS cube {name} has {len(data)} bytes, expected {count * dtype.itemsize} "
                                f"({shape[::-1]} x,y,z voxels of {dtype}); the file is truncated or the cube "
                                "shape in the config is wrong")
        elif ext in (".png", ".jpg"):
            flat = _decode_image(data, count, dtype, name)
        elif ext == ".seg.sz.zip":
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                members = archive.namelist()
                if not members:
                    raise CubeError(f"KNOSSOS cube {name} is an empty zip archive")
                flat = _decode_snappy(archive.read(members[0]), count, name)
        elif ext == ".seg.sz":
            flat = _decode_snappy(data, count, name)
        elif ext == ".seg":
            if len(data) != count * 8:
                raise CubeError(f"KNOSSOS cube {name} has {len(data)} bytes, expected {count * 8}")
            flat = np.frombuffer(data, dtype="<u8")
        else:
            raise CubeError(f"KNOSSOS cube {name}: unsupported extension {ext!r} (use .raw, .png, .jpg, "
                            ".seg.sz.zip or .seg)")
    except CubeError:
        raise
    except Exception as err:  # zipfile, snappy and Pillow raise many kinds of errors on corrupt input
        raise CubeError(f"KNOSSOS cube {name} is corrupt: {type(err).__name__}: {err}") from err
    return flat.astype(dtype, copy=False).reshape(shape)


def _decode_image(data: bytes, count: int, dtype: np.dtype, name: str) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.mode not in ("L", "I;16", "I;16B", "I;16L", "I", "P", "1"):
            raise CubeError(f"KNOSSOS cube {name} is a {image.mode} image; cubes must be grayscale")
        pixels = np.asarray(image)
    if pixels.size != count:
        raise CubeError(f"KNOSSOS cube {name} decodes to {pixels.shape[::-1]} pixels (w, h) = {pixels.size} "
                        f"voxels, expected {count}; the cube shape in the config does not match")
    return pixels.reshape(-1)


def _decode_snappy(payload: bytes, count: int, name: str) -> np.ndarray:
    import snappy

    raw = snappy.decompress(payload)
    if len(raw) != count * 8:
        raise CubeError(f"KNOSSOS cube {name} holds {len(raw)} bytes of ids, expected {count * 8} "
                        f"({count} uint64 voxels)")
    return np.frombuffer(raw, dtype="<u8")


def encode_cube(cube: np.ndarray, ext: str, member: str = "cube.seg.sz", jpeg_quality: int = 75) -> bytes:
    """Encodes a ``(z, y, x)`` cube into the bytes of a cube file.

    Args:
        cube: The cube's voxels (already padded to the full cube shape).
        ext: Target extension.
        member: Member name inside a ``.seg.sz.zip`` (the file name minus ``.zip``).
        jpeg_quality: Quality of ``.jpg`` cubes (Pillow's and knossos_utils' default is 75).
    """
    cube = np.ascontiguousarray(cube)
    if ext == ".raw":
        return cube.astype(cube.dtype.newbyteorder("<"), copy=False).tobytes()
    if ext in (".png", ".jpg"):
        from PIL import Image

        if cube.dtype != np.uint8 and not (ext == ".png" and cube.dtype == np.uint16):
            raise EknError(f"{ext} cubes hold uint8 (or uint16 for .png) voxels, not {cube.dtype}")
        image = Image.fromarray(cube.reshape(-1, cube.shape[2]))
        out = io.BytesIO()
        if ext == ".png":
            image.save(out, format="PNG")
        else:
            image.save(out, format="JPEG", quality=int(jpeg_quality))
        return out.getvalue()
    ids = cube.astype("<u8", copy=False).tobytes()
    if ext == ".seg":
        return ids
    import snappy

    payload = snappy.compress(ids)
    if ext == ".seg.sz":
        return payload
    if ext == ".seg.sz.zip":
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(member, payload)
        return out.getvalue()
    raise EknError(f"cannot write KNOSSOS cubes with extension {ext!r} (use .raw, .png, .jpg, .seg.sz.zip or .seg)")


def read_cube(path: str, cube_shape: Sequence[int], dtype, ext: str | None = None) -> np.ndarray | None:
    """Reads one cube file; returns None if it does not exist.

    Raises:
        CubeError: The file exists but is truncated or corrupt.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    return decode_cube(data, ext or extension_of(path), cube_shape, dtype, name=path)


def write_cube(path: str, cube: np.ndarray, ext: str | None = None, jpeg_quality: int = 75) -> None:
    """Encodes and writes one cube atomically."""
    ext = ext or extension_of(path)
    member = os.path.basename(path)[:-len(".zip")] if ext == ".seg.sz.zip" else "cube.seg.sz"
    atomic_write(path, encode_cube(cube, ext, member=member, jpeg_quality=jpeg_quality))


def extension_of(path: str) -> str:
    """The KNOSSOS extension of a cube path (``.seg.sz.zip`` counts as one)."""
    for ext in (".seg.sz.zip", ".seg.sz", ".seg", ".raw", ".png", ".jpg"):
        if path.endswith(ext):
            return ext
    return os.path.splitext(path)[1]
