"""Label and image utilities: ID images to boundary (barrier) images, neighbourhood targets, centring of cubes.

Example:
    >>> import numpy as np
    >>> ids = np.array([[[1, 1, 2, 2]]])
    >>> ids2barriers(ids, dilute=False).tolist()
    [[[0, 1, 1, 0]]]
    >>> ids2barriers(ids).tolist()   # widened by one voxel on each side
    [[[1, 1, 1, 1]]]
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ekn_core.errors import ShapeError


def _axis_flags(value: bool | Sequence[bool], ndim: int, name: str) -> list[bool]:
    flags = [bool(value)] * ndim if isinstance(value, (bool, np.bool_)) else [bool(v) for v in value]
    if len(flags) != ndim:
        raise ShapeError(f"{name} needs one flag per axis ({ndim}), got {value}")
    return flags


def _shifted(ndim: int, axis: int, start: int | None, stop: int | None) -> tuple[slice, ...]:
    index = [slice(None)] * ndim
    index[axis] = slice(start, stop)
    return tuple(index)


def ids2barriers(ids: np.ndarray, dilute: bool | Sequence[bool] = True,
                 connectivity: bool | Sequence[bool] = True, ecs_as_barr: bool | str = True,
                 smoothen: bool = False) -> np.ndarray:
    """Boundary image from an ID (segmentation) image, as ELEKTRONN2's ``ids2barriers``.

    Both voxels of every neighbouring pair with different IDs along an enabled axis become
    barrier (1), so boundaries are two voxels wide; ``dilute`` widens them by one voxel on each
    side along the flagged axes (four voxels).

    Args:
        ids: Integer ID image, any number of dimensions; ID 0 is extracellular space (ECS).
        dilute: Widen the barrier along all axes (bool) or per axis (list of bools).
        connectivity: Axes along which ID changes are boundaries (bool or per axis).
        ecs_as_barr: True: ECS counts as barrier; ``"new_class"``: ECS becomes class 2;
            False: ECS is treated like any other ID.
        smoothen: Smooth the barrier with a 3-voxel box filter and threshold it at 1/2.

    Returns:
        int16 array of the same shape: 0 = inside a cell, 1 = barrier, 2 = ECS (``"new_class"``).
    """
    ids = np.asarray(ids)
    if ecs_as_barr not in (True, False, "new_class"):
        raise ValueError(f"ecs_as_barr must be True, False or 'new_class', got {ecs_as_barr!r}")
    conn = _axis_flags(connectivity, ids.ndim, "connectivity")
    dil = _axis_flags(dilute, ids.ndim, "dilute")
    barrier = np.zeros(ids.shape, dtype=bool)
    for axis in range(ids.ndim):
        if not conn[axis] or ids.shape[axis] < 2:
            continue
        lo, hi = _shifted(ids.ndim, axis, None, -1), _shifted(ids.ndim, axis, 1, None)
        edge = ids[lo] != ids[hi]
        barrier[lo] |= edge
        barrier[hi] |= edge
    for axis in range(ids.ndim):
        if dil[axis] and ids.shape[axis] > 1:
            lo, hi = _shifted(ids.ndim, axis, None, -1), _shifted(ids.ndim, axis, 1, None)
            grown = barrier.copy()
            grown[lo] |= barrier[hi]
            grown[hi] |= barrier[lo]
            barrier = grown
    if smoothen:
        from scipy.ndimage import uniform_filter

        barrier = uniform_filter(barrier.astype(np.float32), size=3, mode="nearest") > 0.5
    out = barrier.astype(np.int16)
    if ecs_as_barr is True:
        out[ids == 0] = 1
    elif ecs_as_barr == "new_class":
        out[ids == 0] = 2
    return out


#: ELEKTRONN2's default ``nhood_targets`` offsets ``(z, y, x)``: the voxel itself and its 6 face neighbours.
NHOOD_TARGETS_3D = np.array([[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])
#: The same in a section ``(y, x)`` for 2-D nets (ELEKTRONN2 had none).
NHOOD_TARGETS_2D = np.array([[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1]])


def make_nhood_targets(target: np.ndarray, nhood: np.ndarray, fill: float = -1) -> np.ndarray:
    """Neighbourhood targets, as ELEKTRONN2's ``make_nhood_targets``: channel ``i`` holds at voxel
    ``p`` the label of voxel ``p - nhood[i]``, and ``fill`` where that voxel lies outside the patch
    (a channel whose offset is as large as the patch holds ``fill`` only). Labels are copied as
    they are (ids <= 0 too).

    Args:
        target: Labels ``(b, 1, *spatial)``.
        nhood: Integer offsets ``(n, len(spatial))``.
        fill: Value where the neighbour lies outside the patch (ELEKTRONN2: -1).

    Returns:
        ``(b, n, *spatial)`` in the dtype of ``target``.

    Example:
        >>> make_nhood_targets(np.array([[[5, 0, 7]]]), np.array([[0], [1], [-1]]))[0].tolist()
        [[5, 0, 7], [-1, 5, 0], [0, 7, -1]]
    """
    target, nhood = np.asarray(target), np.asarray(nhood)
    if target.ndim < 3 or target.shape[1] != 1 or nhood.ndim != 2 or nhood.shape[1] != target.ndim - 2:
        raise ShapeError(f"nhood targets need labels (b, 1, *spatial) and offsets (n, n_spatial), got {target.shape} "
                         f"and {nhood.shape}")
    spatial = target.shape[2:]
    out = np.full((target.shape[0], len(nhood), *spatial), fill, dtype=target.dtype)
    for i, offset in enumerate(nhood.tolist()):
        if all(abs(o) < n for o, n in zip(offset, spatial)):
            read = tuple(slice(max(0, -o), n - max(0, o)) for o, n in zip(offset, spatial))
            write = tuple(slice(max(0, o), n - max(0, -o)) for o, n in zip(offset, spatial))
            out[(slice(None), i, *write)] = target[(slice(None), 0, *read)]
    return out


def center_offset(big: Sequence[int], small: Sequence[int]) -> tuple[int, ...]:
    """Offset of a ``small`` cube centred in a ``big`` one (differences must be even and >= 0).

    Example:
        >>> center_offset((250, 350, 350), (150, 150, 150))
        (50, 100, 100)
    """
    diff = [int(b) - int(s) for b, s in zip(big, small)]
    if len(big) != len(small) or any(d < 0 or d % 2 for d in diff):
        raise ShapeError(f"a cube of shape {tuple(small)} cannot be centred in one of shape {tuple(big)}: "
                         "each size difference must be even and >= 0 (crop or pad the labels so it is)")
    return tuple(d // 2 for d in diff)


def center_cubes(cube1: np.ndarray, cube2: np.ndarray, crop: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Makes two cubes the same shape, centred on each other: crops the larger (or pads the smaller).

    Example:
        >>> a, b = center_cubes(np.zeros((6, 6)), np.ones((2, 4)))
        >>> a.shape, b.shape
        ((2, 4), (2, 4))
    """
    if cube1.ndim != cube2.ndim:
        raise ShapeError(f"cubes have different numbers of axes: {cube1.shape} and {cube2.shape}")
    out1, out2 = cube1, cube2
    for axis, (s1, s2) in enumerate(zip(cube1.shape, cube2.shape)):
        if s1 == s2:
            continue
        big_is_1 = s1 > s2
        lo = abs(s1 - s2) // 2
        if crop:
            index = _shifted(cube1.ndim, axis, lo, lo + min(s1, s2))
            out1, out2 = (out1[index], out2) if big_is_1 else (out1, out2[index])
        else:
            pad = [(0, 0)] * cube1.ndim
            pad[axis] = (lo, abs(s1 - s2) - lo)
            out1, out2 = (out1, np.pad(out2, pad)) if big_is_1 else (np.pad(out1, pad), out2)
    return out1, out2
