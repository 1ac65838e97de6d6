"""Neighbourhood patterns of affinity graphs (ELEKTRONN2 / Turaga ``mknhood*``).

A neighbourhood is an int32 array ``(n_edges, ndim)``; row ``e`` is the offset from a voxel to the
voxel that its edge ``e`` connects to. The dense patterns keep one of each pair ``±d`` (the
negative ones), as ELEKTRONN2 does.

Example:
    >>> mknhood3d(1)
    array([[-1,  0,  0],
           [ 0, -1,  0],
           [ 0,  0, -1]], dtype=int32)
    >>> mknhood2d(1)
    array([[-1,  0],
           [ 0, -1]], dtype=int32)
    >>> mknhood2d(1.8)
    array([[-1,  0],
           [ 1, -1],
           [ 0, -1],
           [-1, -1]], dtype=int32)
    >>> mknhood3d_aniso(1, 1.8).shape
    (11, 3)
"""

from __future__ import annotations

import numpy as np


def _half_ball(radius: float, ndim: int) -> np.ndarray:
    """Offsets ``d`` with ``|d| <= radius``, one of each ``±d``, in ELEKTRONN2's order.

    ELEKTRONN2 enumerates the ball with the *last* coordinate slowest, keeps the points before
    the centre and lists them backwards (``flipud``). Its Python-3 version kept
    ``ceil(len / 2)`` points, which adds the zero offset (a self-edge without information);
    ekn keeps ``len // 2`` as the original Python-2 code did.
    """
    r = int(np.ceil(radius))
    axes = np.meshgrid(*[np.arange(-r, r + 1)] * ndim, indexing="ij")
    points = np.stack([a.ravel() for a in axes], axis=1)
    points = points[(points ** 2).sum(1) <= radius ** 2]
    half = points[: len(points) // 2, ::-1]  # the offsets before the centre, coordinates reversed
    return np.ascontiguousarray(half[::-1], dtype=np.int32)


def mknhood2d(radius: float = 1) -> np.ndarray:
    """2-D neighbourhood of all offsets within ``radius`` (one of each ``±d``).

    Args:
        radius: Euclidean radius in voxels (1: the 2 axis edges; 1.5: 4 edges with diagonals).

    Returns:
        int32 array ``(n_edges, 2)``.
    """
    return _half_ball(radius, 2)


def mknhood3d(radius: float = 1) -> np.ndarray:
    """3-D neighbourhood of all offsets within ``radius`` (radius 1: ``-z``, ``-y``, ``-x``).

    Args:
        radius: Euclidean radius in voxels.

    Returns:
        int32 array ``(n_edges, 3)``.
    """
    return _half_ball(radius, 3)


def mknhood3d_aniso(radiusxy: float = 1, radiusxy_zminus1: float = 1.8) -> np.ndarray:
    """Anisotropic 3-D neighbourhood: ``mknhood3d(radiusxy)`` plus edges to the previous slice
    (``dz = -1``) at every in-plane offset ``±d`` of ``mknhood2d(radiusxy_zminus1)``.

    Args:
        radiusxy: Radius of the isotropic part.
        radiusxy_zminus1: In-plane radius of the edges to slice ``z - 1``.

    Returns:
        int32 array ``(n_edges, 3)``: the ``mknhood3d`` rows, then ``(-1, d)`` for every in-plane
        ``d``, then ``(-1, -d)``.
    """
    iso = mknhood3d(radiusxy)
    plane = mknhood2d(radiusxy_zminus1)
    nhood = np.zeros((len(iso) + 2 * len(plane), 3), np.int32)
    nhood[: len(iso)] = iso
    nhood[len(iso):, 0] = -1
    nhood[len(iso):, 1:] = np.vstack([plane, -plane])
    return np.ascontiguousarray(nhood)
