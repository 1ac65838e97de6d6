"""Resampling a source array on a warped grid: trilinear for images, nearest for labels.

Output point ``idx`` sits at patch coordinate ``p = origin + step * idx``; it is moved by the
per-section shift and the coarse displacement field (:func:`~.transform.displace`), mapped
through a 4×4 homogeneous matrix (see :mod:`ekn_plugins.augmenters.transform`) and read from
``src`` (``(c, z, y, x)``). Coordinates are clamped to the array, but callers check
:func:`~.transform.source_bounds` first so that clamping never changes a value.

Two implementations give the same result: a numba kernel that computes each coordinate on the
fly (≈6× faster than ``scipy.ndimage.map_coordinates`` for a 25×171×171 patch, no coordinate
arrays), used when numba is installed, and a numpy/scipy one (the reference and fallback).
Set ``EKN_NO_NUMBA=1`` to force the fallback. A transform that only reflects and permutes axes
(flips, swaps, a plain crop: an integer grid mapped onto the integer grid, no shifts or
displacement) is a strided slice of ``src`` and is copied as one (:func:`grid_slice`), with the
values interpolation would give.

Example:
    >>> import numpy as np
    >>> src = np.arange(2 * 4 * 5 * 6, dtype=np.float32).reshape(2, 4, 5, 6)
    >>> m = np.eye(4); m[:3, 3] = (1, 1, 2)          # a plain crop starting at (1, 1, 2)
    >>> out = warp(src, m, out_shape=(2, 3, 3), order=1)
    >>> bool(np.array_equal(out, src[:, 1:3, 1:4, 2:5]))
    True
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Sequence

import numpy as np

from ekn_plugins.augmenters.transform import displace

#: numba is an optional accelerator, imported on first use (it costs ~0.3 s to import).
HAVE_NUMBA = (importlib.util.find_spec("numba") is not None
              and os.environ.get("EKN_NO_NUMBA", "").strip() not in {"1", "true", "yes"})


def _warp_python(src, m, origin, step, out_shape, order, disp, spacing, shift, out):  # pragma: no cover
    """Kernel body, compiled by numba (the numpy/scipy path is the readable reference)."""
    nc, zs, ys, xs = src.shape
    nz, ny, nx = out_shape
    has_disp = disp.shape[1] > 0
    has_shift = shift.shape[0] > 0
    projective = m[3, 0] != 0.0 or m[3, 1] != 0.0 or m[3, 2] != 0.0
    gz, gy, gx = disp.shape[1], disp.shape[2], disp.shape[3]
    q = np.empty(3)
    line = np.empty((3, max(gx, 1)))
    for k in range(nz):
        pz = origin[0] + step[0] * k
        for j in range(ny):
            py = origin[1] + step[1] * j
            section = min(max(int(np.floor(pz)), 0), shift.shape[0] - 1)  # clamped, as transform.displace
            dy = shift[section, 0] if has_shift else 0.0
            dx = shift[section, 1] if has_shift else 0.0
            if has_disp:  # the field along this output row: bilinear in (z, y) at every x node
                cz = min(max(pz / spacing[0], 0.0), gz - 1.0)
                cy = min(max(py / spacing[1], 0.0), gy - 1.0)
                iz, iy = max(min(int(cz), gz - 2), 0), max(min(int(cy), gy - 2), 0)
                fz, fy = cz - iz, cy - iy
                iz1, iy1 = min(iz + 1, gz - 1), min(iy + 1, gy - 1)
                for a in range(3):
                    for g in range(gx):
                        c0 = disp[a, iz, iy, g] + (disp[a, iz, iy1, g] - disp[a, iz, iy, g]) * fy
                        c1 = disp[a, iz1, iy, g] + (disp[a, iz1, iy1, g] - disp[a, iz1, iy, g]) * fy
                        line[a, g] = c0 + (c1 - c0) * fz
            for i in range(nx):
                px = origin[2] + step[2] * i
                q[0], q[1], q[2] = pz, py + dy, px + dx
                if has_disp:
                    cx = min(max(px / spacing[2], 0.0), gx - 1.0)
                    ix = max(min(int(cx), gx - 2), 0)
                    fx = cx - ix
                    for a in range(3):
                        q[a] += line[a, ix] + (line[a, min(ix + 1, gx - 1)] - line[a, ix]) * fx
                sz = m[0, 0] * q[0] + m[0, 1] * q[1] + m[0, 2] * q[2] + m[0, 3]
                sy = m[1, 0] * q[0] + m[1, 1] * q[1] + m[1, 2] * q[2] + m[1, 3]
                sx = m[2, 0] * q[0] + m[2, 1] * q[1] + m[2, 2] * q[2] + m[2, 3]
                if projective:
                    w = 1.0 / (m[3, 0] * q[0] + m[3, 1] * q[1] + m[3, 2] * q[2] + m[3, 3])
                    sz, sy, sx = sz * w, sy * w, sx * w
                sz = min(max(sz, 0.0), zs - 1.0)
                sy = min(max(sy, 0.0), ys - 1.0)
                sx = min(max(sx, 0.0), xs - 1.0)
                if order == 0:
                    z0, y0, x0 = int(sz + 0.5), int(sy + 0.5), int(sx + 0.5)
                    for c in range(nc):
                        out[c, k, j, i] = src[c, z0, y0, x0]
                else:
                    z0, y0, x0 = int(sz), int(sy), int(sx)
                    z1, y1, x1 = min(z0 + 1, zs - 1), min(y0 + 1, ys - 1), min(x0 + 1, xs - 1)
                    fz, fy, fx = np.float32(sz - z0), np.float32(sy - y0), np.float32(sx - x0)
                    for c in range(nc):
                        c00 = src[c, z0, y0, x0] + (src[c, z0, y0, x1] - src[c, z0, y0, x0]) * fx
                        c01 = src[c, z0, y1, x0] + (src[c, z0, y1, x1] - src[c, z0, y1, x0]) * fx
                        c10 = src[c, z1, y0, x0] + (src[c, z1, y0, x1] - src[c, z1, y0, x0]) * fx
                        c11 = src[c, z1, y1, x0] + (src[c, z1, y1, x1] - src[c, z1, y1, x0]) * fx
                        c0 = c00 + (c01 - c00) * fy
                        out[c, k, j, i] = c0 + (c10 + (c11 - c10) * fy - c0) * fz


@functools.lru_cache(maxsize=1)
def _warp_numba():
    """The numba-compiled kernel (numba is imported here, on first use)."""
    import numba

    return numba.njit(cache=True, nogil=True)(_warp_python)


def coordinates(matrix: np.ndarray, out_shape: Sequence[int], origin: Sequence[float] = (0, 0, 0),
                step: Sequence[float] = (1, 1, 1), displacement: np.ndarray | None = None,
                spacing: Sequence[float] | None = None, slice_shift: np.ndarray | None = None) -> np.ndarray:
    """Source coordinates ``(3, *out_shape)`` of every output point (numpy reference)."""
    axes = [o + s * np.arange(n, dtype=np.float64) for o, s, n in zip(origin, step, out_shape)]
    q = displace(np.stack(np.meshgrid(*axes, indexing="ij")), displacement, spacing, slice_shift)
    flat = q.reshape(3, -1).T
    h = flat @ matrix[:3, :3].T + matrix[:3, 3]
    w = flat @ matrix[3, :3] + matrix[3, 3]
    return (h / w[:, None]).T.reshape(3, *out_shape)


def _warp_scipy(src, matrix, out_shape, order, origin, step, displacement, spacing, slice_shift, out):
    from scipy.ndimage import map_coordinates

    crd = coordinates(matrix, out_shape, origin, step, displacement, spacing, slice_shift)
    for a in range(3):
        np.clip(crd[a], 0, src.shape[a + 1] - 1, out=crd[a])
    if order == 0:  # round half up like the numba kernel (scipy's order 0 differs at .5)
        idx = tuple(np.floor(crd[a] + 0.5).astype(np.intp) for a in range(3))
        for c in range(src.shape[0]):
            out[c] = src[c][idx]
    else:
        for c in range(src.shape[0]):
            out[c] = map_coordinates(src[c], crd, order=1, prefilter=False)
    return out


def grid_slice(matrix: np.ndarray, out_shape: Sequence[int], src_shape: Sequence[int],
               origin: Sequence[float] = (0, 0, 0), step: Sequence[float] = (1, 1, 1)) -> tuple | None:
    """The ``(axes, slices)`` that read the output grid from a ``src_shape`` array when
    ``matrix`` only reflects, permutes and translates by whole voxels (and the output grid is an
    integer grid inside the array): ``src[(slice(None), *slices)]`` with its spatial axes put in
    the order ``axes`` is the warp's result; else None.

    Example:
        >>> m = np.array([[1., 0, 0, 2], [0, 0, -1, 9], [0, 1, 0, 1], [0, 0, 0, 1]])  # swap y/x, reflect
        >>> grid_slice(m, (2, 3, 4), (5, 10, 10))
        ((0, 2, 1), (slice(2, 4, 1), slice(9, 5, -1), slice(1, 4, 1)))
        >>> grid_slice(m, (2, 3, 4), (5, 10, 10), origin=(0.5, 0, 0)) is None
        True
    """
    lin, shift = matrix[:3, :3], matrix[:3, 3]
    whole = np.concatenate([np.ravel(origin), np.ravel(step), shift])
    if (np.any(matrix[3, :3] != 0) or matrix[3, 3] != 1 or np.any(np.abs(whole - np.round(whole)) > 1e-9)
            or np.any(np.abs(lin - np.round(lin)) > 1e-9) or np.any(np.abs(np.round(lin)).sum(axis=1) != 1)
            or np.any(np.abs(np.round(lin)).sum(axis=0) != 1)):
        return None
    perm = np.abs(np.round(lin)).argmax(axis=1)  # source axis a runs along output axis perm[a]
    sign = np.round(lin[np.arange(3), perm]).astype(np.int64)
    origin, step = np.round(np.asarray(origin, dtype=np.float64)), np.round(np.asarray(step, dtype=np.float64))
    slices = []
    for a in range(3):
        o = perm[a]
        first = int(sign[a] * origin[o] + round(shift[a]))
        stride = int(sign[a] * step[o])
        last = first + stride * (int(out_shape[o]) - 1)
        if stride == 0 or min(first, last) < 0 or max(first, last) >= src_shape[a]:
            return None
        stop = last + (1 if stride > 0 else -1)
        slices.append(slice(first, stop if stop >= 0 else None, stride))
    return tuple(int(np.flatnonzero(perm == o)[0]) for o in range(3)), tuple(slices)


def warp(src: np.ndarray, matrix: np.ndarray, out_shape: Sequence[int], order: int = 1,
         origin: Sequence[float] = (0, 0, 0), step: Sequence[float] = (1, 1, 1),
         displacement: np.ndarray | None = None, spacing: Sequence[float] | None = None,
         slice_shift: np.ndarray | None = None, out: np.ndarray | None = None,
         use_numba: bool | None = None) -> np.ndarray:
    """Samples ``src`` (``(c, z, y, x)``) at the warped output grid.

    Args:
        src: Source array in memory; images float32, labels any integer type.
        matrix: 4×4 homogeneous matrix from (shifted, displaced) patch coordinates to ``src``.
        out_shape: Output spatial shape.
        order: 1 = trilinear (images; result float32), 0 = nearest neighbour (labels; keeps dtype).
        origin, step: Patch coordinate of output index 0 and spacing between output points
            (a strided target grid uses ``origin=offsets, step=strides``).
        displacement, spacing: Coarse displacement field, see :class:`~.transform.Transform`.
        slice_shift: ``(n, 2)`` lateral shift per patch section ``p_z`` (integer ``p_z < n``).
        out: Optional output array ``(c, *out_shape)``.
        use_numba: Force (True) or avoid (False) the numba kernel; default: use it if installed.

    Returns:
        The ``(c, *out_shape)`` samples.
    """
    if src.ndim != 4:
        raise ValueError(f"src must be (c, z, y, x), got shape {src.shape}")
    out_shape = tuple(int(s) for s in out_shape)
    dtype = src.dtype if order == 0 else np.float32
    if out is None:
        out = np.empty((src.shape[0], *out_shape), dtype=dtype)
    plain = displacement is None and (slice_shift is None or not np.any(slice_shift))
    sliced = grid_slice(matrix, out_shape, src.shape[1:], origin, step) if plain else None
    if sliced is not None:
        axes, slices = sliced
        out[...] = src[(slice(None), *slices)].transpose(0, *(1 + a for a in axes))
        return out
    if order == 1 and src.dtype != np.float32:
        src = src.astype(np.float32)
    if displacement is not None and spacing is None:
        raise ValueError("a displacement field needs its grid spacing")
    if not (HAVE_NUMBA if use_numba is None else use_numba):
        return _warp_scipy(src, matrix, out_shape, order, origin, step, displacement, spacing, slice_shift, out)
    if not HAVE_NUMBA:
        raise RuntimeError("numba is not installed (pip install numba)")
    disp = (np.ascontiguousarray(displacement, dtype=np.float64) if displacement is not None
            else np.zeros((3, 0, 0, 0)))
    shift = (np.ascontiguousarray(slice_shift, dtype=np.float64) if slice_shift is not None
             else np.zeros((0, 2)))
    _warp_numba()(np.ascontiguousarray(src), np.ascontiguousarray(matrix, dtype=np.float64),
                np.asarray(origin, dtype=np.float64), np.asarray(step, dtype=np.float64), out_shape,
                int(order), disp, np.asarray(spacing if spacing is not None else (1, 1, 1), dtype=np.float64),
                shift, out)
    return out
