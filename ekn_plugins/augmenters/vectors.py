"""Vector-field targets under a geometric transform (ELEKTRONN2's ``target_vec_ix``).

A vector target is a triple of target channels holding the components of a vector (a direction,
a displacement, a gradient) along the volume's axes in storage order: channel ``i`` the z
component, ``j`` the y and ``k`` the x component of a triple ``(i, j, k)`` (for ELEKTRONN2's
``zxy`` files: z, x, y). The components are lengths in **one unit on all three axes** (nm, or
lateral voxel lengths; a z component is *not* counted in sections), so a vector is a physical
arrow and keeps that unit through every transform.

Resampling moves the vectors' base points like any target channel (trilinearly); the vectors must
also turn with the tissue. Output point ``p`` reads the source at ``s(p)``
(:mod:`~ekn_plugins.augmenters.transform`), and the vector there is carried into the patch by the
inverse of the local Jacobian ``J(p) = ∂s/∂p`` (the push-forward of a vector field)::

    v_out(p) = A_out · J(p)^-1 · A_src^-1 · v_src(s(p))

where ``A = diag(z step / lateral step, 1, 1)`` turns voxel vectors into lengths: the data's
``aniso_factor`` for the source, and for the patch the same or 1 when the pipeline samples
isotropically. For an affine transform without a displacement field this is one matrix, ``L^-1``
of the transform's linear part ``L`` in centred isotropic space: a rotation ``R`` gives ``Rᵀ``,
reflections and axis swaps negate and swap components (the sliced fast path of
:func:`~.sampling.grid_slice` included), and the identity leaves the targets untouched. A
perspective part or an elastic displacement field gives every output point its own matrix: the
local Jacobian, with the field's derivative taken exactly from its trilinear interpolation
(:func:`displacement_gradient`); misalignment shifts are constant on each section and turn
nothing. (ELEKTRONN2 rotated by the voxel matrix's linear part, i.e. components in voxels of the
data, and had no perspective or elastic targets; for rotations about z, flips and y↔x swaps the
two conventions agree.)

Example:
    >>> import numpy as np
    >>> from ekn_plugins.augmenters.transform import Transform, rotate
    >>> t = Transform(rotate(0, np.pi / 2))              # output y reads the source along x
    >>> k = vector_matrices(t, np.eye(4), 2.0, (1, 1, 1))
    >>> np.round(k @ [0.0, 1.0, 0.0], 6).tolist()        # a y vector becomes a -x vector
    [0.0, 0.0, -1.0]
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ekn_core.errors import ConfigError
from ekn_plugins.augmenters.transform import Transform, displace


def vector_triples(value: Any, n_channels: int, discrete: Sequence[int] | None = None) -> list[tuple[int, int, int]]:
    """The checked channel triples of ``target_vec_ix`` (``None``: none).

    Example:
        >>> vector_triples([(0, 1, 2), [4, 5, 6]], n_channels=7)
        [(0, 1, 2), (4, 5, 6)]
        >>> vector_triples([(0, 1)], n_channels=3)
        Traceback (most recent call last):
        ...
        ekn_core.errors.ConfigError: target_vec_ix is a list of channel triples (z, y, x components), ...
    """
    if value is None:
        return []
    try:
        triples = [tuple(int(c) for c in triple) for triple in value]
        whole = all(float(c) == int(c) for triple in value for c in triple)
    except (TypeError, ValueError):
        triples, whole = [()], False
    if not whole or any(len(t) != 3 for t in triples):
        raise ConfigError(f"target_vec_ix is a list of channel triples (z, y, x components), e.g. [(0, 1, 2)], "
                          f"got {value!r}")
    channels = [c for t in triples for c in t]
    if any(not 0 <= c < n_channels for c in channels):
        raise ConfigError(f"target_vec_ix {value!r} names channels beyond the {n_channels} target channel(s) "
                          f"(0..{n_channels - 1})")
    if len(set(channels)) != len(channels):
        raise ConfigError(f"target_vec_ix {value!r} names a channel twice; each channel is in one vector")
    shared = sorted(set(channels) & set(discrete or ()))
    if shared:
        raise ConfigError(f"channels {shared} are in target_vec_ix and in target_discrete_ix: vector components "
                          "are resampled trilinearly; leave them out of target_discrete_ix")
    return triples


def displacement_gradient(points: np.ndarray, displacement: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """``∂d_a/∂p_b`` (``(3, 3, ...)``) of the displacement ``d`` that
    :func:`~.transform.displace` interpolates trilinearly on its coarse grid, at ``(3, ...)``
    points ``p``: exact inside each grid cell (where ``d`` is multilinear), that of the cell above
    on a node plane, 0 beyond the grid (``d`` is constant there).

    Example:
        >>> disp = np.zeros((3, 2, 2, 2)); disp[1, :, 1, :] = 4.0   # d_y grows by 4 over one cell in y
        >>> displacement_gradient(np.array([[1.0], [3.0], [5.0]]), disp, (8, 8, 8))[1, :, 0].tolist()
        [0.0, 0.5, 0.0]
    """
    from scipy.ndimage import map_coordinates

    p = np.asarray(points, dtype=np.float64)
    field = np.asarray(displacement, dtype=np.float64)
    nodes = field.shape[1:]
    grid = [p[b] / spacing[b] for b in range(3)]
    clamped = [np.clip(grid[b], 0, nodes[b] - 1) for b in range(3)]
    out = np.zeros((3, 3, *p.shape[1:]))
    for b in range(3):
        if nodes[b] < 2:
            continue
        steps = np.diff(field, axis=b + 1)  # d at node i+1 minus d at node i along axis b
        cell = np.minimum(np.floor(clamped[b]), nodes[b] - 2)
        at = [cell if a == b else clamped[a] for a in range(3)]
        inside = (grid[b] >= 0) & (grid[b] <= nodes[b] - 1)
        for a in range(3):
            out[a, b] = np.where(inside, map_coordinates(steps[a], at, order=1, mode="nearest") / spacing[b], 0.0)
    return out


def vector_matrices(transform: Transform, matrix: np.ndarray, aniso_factor: float, out_shape: Sequence[int],
                    origin: Sequence[float] = (0, 0, 0), step: Sequence[float] = (1, 1, 1)) -> np.ndarray:
    """The matrices that carry source vectors into the output grid of a cut (module docstring).

    Args:
        transform: The transform of the cut.
        matrix: Its voxel matrix into the array the vectors are read from
            (:func:`~.transform.voxel_matrix`, placed).
        aniso_factor: z spacing / lateral spacing of the data.
        out_shape, origin, step: The output grid (as :func:`~.sampling.warp` takes it).

    Returns:
        One ``(3, 3)`` matrix for an affine transform without a displacement field, else one per
        output point, ``(*out_shape, 3, 3)``.
    """
    if transform.displacement is None and not np.any(transform.linear[3, :3]):
        return np.linalg.inv(transform.linear[:3, :3])
    axes = [o + s * np.arange(n, dtype=np.float64) for o, s, n in zip(origin, step, out_shape)]
    p = np.stack(np.meshgrid(*axes, indexing="ij"))
    q = displace(p, transform.displacement, transform.spacing, transform.slice_shift).reshape(3, -1).T
    w = q @ matrix[3, :3] + matrix[3, 3]
    s = (q @ matrix[:3, :3].T + matrix[:3, 3]) / w[:, None]
    jacobian = (matrix[:3, :3] - s[:, :, None] * matrix[3, :3]) / w[:, None, None]  # ∂s/∂q of the projective map
    if transform.displacement is not None:  # ∂q/∂p = I + ∂d/∂p (shifts are constant on a section)
        grad = displacement_gradient(p, transform.displacement, transform.spacing).reshape(3, 3, -1)
        jacobian = jacobian @ (np.eye(3) + np.moveaxis(grad, -1, 0))
    a_out = np.diag([1.0 if transform.iso_output else float(aniso_factor), 1.0, 1.0])
    a_src_inv = np.diag([1.0 / float(aniso_factor), 1.0, 1.0])
    return (a_out @ np.linalg.inv(jacobian) @ a_src_inv).reshape(*out_shape, 3, 3)


def turn_vectors(target: np.ndarray, triples: Sequence[Sequence[int]], matrices: np.ndarray,
                 ignore: float | None = None) -> None:
    """Applies :func:`vector_matrices`' ``matrices`` to the vector ``triples`` of ``target``
    (``(t, z, y, x)``, float) in place. With ``ignore``, a vector with an unlabelled component
    (``ignore`` or NaN) is unlabelled in all three (turning would mix the value into the others).

    Example:
        >>> target = np.array([1.0, 2.0, -666.0, 0.0, 5.0, 7.0]).reshape(6, 1, 1, 1)
        >>> turn_vectors(target, [(0, 1, 2), (3, 4, 5)], np.diag([1.0, -1.0, -1.0]), ignore=-666.0)
        >>> target.ravel().tolist()
        [-666.0, -666.0, -666.0, 0.0, -5.0, -7.0]
    """
    if matrices.ndim == 2 and np.array_equal(matrices, np.eye(3)):
        return
    for triple in triples:
        channels = list(triple)
        vectors = target[channels].astype(np.float64)
        if matrices.ndim == 2:
            turned = np.einsum("ij,j...->i...", matrices, vectors)
        else:
            turned = np.einsum("...ij,j...->i...", matrices, vectors)
        if ignore is not None:
            turned[:, np.any((vectors == ignore) | np.isnan(vectors), axis=0)] = ignore
        target[channels] = turned
