"""Geometric transforms of training patches: homogeneous matrices, composition, source bounds.

A :class:`Transform` describes how a patch is sampled from its source volume. It maps *output*
(patch) coordinates to *source* coordinates, all in ``(z, y, x)`` voxel order:

1. ``q = p + slice_shift[p_z] + d(p)``: per-section lateral shifts (misalignment) and a smooth
   displacement field ``d`` given on a coarse grid and interpolated trilinearly (elastic
   deformation), both in output voxels;
2. ``u = A_out (q - c_out)``: centred and made isotropic (``A_out = diag(a_out, 1, 1)``, where
   ``a_out`` is the anisotropy factor, or 1 with ``iso_output``);
3. ``v = L u``: the linear/projective part in isotropic space (rotation, shear, stretch,
   reflection, axis swaps, perspective), a 4×4 homogeneous matrix;
4. ``s = A_src^-1 v + c_out + start``: back to anisotropic source voxels at the chosen position.

:func:`voxel_matrix` folds steps 2–4 into one 4×4 matrix; :meth:`Transform.reach` gives the
box of the points ``q`` of step 1 and :func:`source_bounds` the box in the source that such a box
maps to, so that a patch never reads outside its data.

Example:
    >>> import numpy as np
    >>> t = Transform.identity()
    >>> m = voxel_matrix(t, patch_shape=(5, 8, 8), aniso_factor=2.0)
    >>> apply_matrix(m, np.array([[1.0, 2.0, 3.0]]))
    array([[1., 2., 3.]])
    >>> source_bounds(m, lo=(0, 0, 0), hi=(4, 7, 7))
    (array([0., 0., 0.]), array([4., 7., 7.]))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ekn_core.errors import ConfigError, ShapeError


class FoldError(ShapeError):
    """The perspective part of a transform folds the patch (``w <= 0`` at a corner)."""


def scale(z: float, y: float = 1.0, x: float = 1.0) -> np.ndarray:
    """Homogeneous 4×4 scaling matrix (also reflections for negative factors)."""
    return np.diag([float(z), float(y), float(x), 1.0])


def translate(z: float, y: float, x: float) -> np.ndarray:
    """Homogeneous 4×4 translation matrix."""
    m = np.eye(4)
    m[:3, 3] = (z, y, x)
    return m


def rotate(axis: int, angle: float) -> np.ndarray:
    """Rotation by ``angle`` (radians) about spatial axis ``axis`` (0 = z, 1 = y, 2 = x)."""
    i, j = [a for a in range(3) if a != axis]
    m = np.eye(4)
    c, s = np.cos(angle), np.sin(angle)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def random_rotation(rng: np.random.Generator, max_angle: float, lock_z: bool) -> np.ndarray:
    """Random rotation with angles uniform in ``±max_angle`` radians (about z only with ``lock_z``).

    With ``lock_z=False`` the rotation is a composition of random rotations about z, y and x.
    """
    if max_angle <= 0:
        return np.eye(4)
    m = rotate(0, rng.uniform(-max_angle, max_angle))
    if not lock_z:
        m = rotate(2, rng.uniform(-max_angle, max_angle)) @ rotate(1, rng.uniform(-max_angle, max_angle)) @ m
    return m


def random_reflection(rng: np.random.Generator, axes: Sequence[int]) -> np.ndarray:
    """Reflects each axis in ``axes`` with probability 1/2 (about the patch centre)."""
    factors = np.ones(3)
    for a in axes:
        if rng.random() < 0.5:
            factors[a] = -1.0
    return scale(*factors)


def random_swap(rng: np.random.Generator, lock_z: bool) -> np.ndarray:
    """Random permutation of the spatial axes (only y↔x with ``lock_z``)."""
    perm = [0, *rng.permutation([1, 2])] if lock_z else list(rng.permutation(3))
    m = np.eye(4)
    m[:3, :3] = np.eye(3)[perm]
    return m


def random_affine(rng: np.random.Generator, shear: float, stretch: float, lock_z: bool) -> np.ndarray:
    """Identity plus uniform perturbations: ``±stretch`` on the diagonal, ``±shear`` off it.

    With ``lock_z`` the z row and column stay untouched (sections are not mixed).
    """
    m = np.eye(4)
    axes = (1, 2) if lock_z else (0, 1, 2)
    for i in axes:
        for j in axes:
            m[i, j] += rng.uniform(-stretch, stretch) if i == j else rng.uniform(-shear, shear)
    return m


def random_perspective(rng: np.random.Generator, amount: float, lock_z: bool, clip: float | None = None) -> np.ndarray:
    """A projective matrix whose last row is ``(pz, py, px, 1)`` with ``p`` uniform in ``±amount``
    per voxel, then clipped to ``±clip`` (ELEKTRONN2 drew ``±0.005·warp_amount`` clipped to ``±0.003``).

    Example:
        >>> m = random_perspective(np.random.default_rng(0), 0.01, lock_z=True, clip=0.003)
        >>> float(m[3, 0]), bool(np.all(np.abs(m[3, 1:3]) <= 0.003))
        (0.0, True)
    """
    m = np.eye(4)
    axes = (1, 2) if lock_z else (0, 1, 2)
    for a in axes:
        m[3, a] = rng.uniform(-amount, amount)
    if clip is not None:
        np.clip(m[3, :3], -clip, clip, out=m[3, :3])
    return m


def displace(points: np.ndarray, displacement: np.ndarray | None = None, spacing: Sequence[float] | None = None,
             slice_shift: np.ndarray | None = None) -> np.ndarray:
    """Step 1 of the module docstring: ``q = p + slice_shift[p_z] + d(p)`` for ``(3, ...)`` points ``p``.

    The shift of a point is that of its section ``floor(p_z)``, clamped to the sections given
    (points beyond the patch, e.g. targets of nets with negative offsets, take the first or last
    section's shift); ``d`` is interpolated trilinearly on the coarse grid and constant beyond it.
    The sampling kernel computes the same (:mod:`~ekn_plugins.augmenters.sampling`).

    Example:
        >>> shift = np.array([[0.0, 0.0], [2.0, -1.0]])
        >>> displace(np.array([[-1.0, 0.0, 1.0, 5.0], [0, 0, 0, 0], [0, 0, 0, 0]]), slice_shift=shift)[1:].tolist()
        [[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, -1.0, -1.0]]
    """
    from scipy.ndimage import map_coordinates

    p = np.asarray(points, dtype=np.float64)
    q = p.copy()
    if slice_shift is not None and len(slice_shift):
        section = np.clip(np.floor(p[0]), 0, len(slice_shift) - 1).astype(np.intp)
        q[1:] += np.moveaxis(np.asarray(slice_shift, dtype=np.float64)[section], -1, 0)
    if displacement is not None:
        grid = [np.clip(p[a] / spacing[a], 0, displacement.shape[a + 1] - 1) for a in range(3)]
        q += np.stack([map_coordinates(displacement[a].astype(np.float64), grid, order=1) for a in range(3)])
    return q


@dataclass(frozen=True)
class Transform:
    """A sampled geometric transform (see the module docstring for the coordinate chain).

    Attributes:
        linear: 4×4 homogeneous matrix in centred isotropic space.
        iso_output: Sample the output isotropically (z step = lateral step) instead of with the
            source's anisotropy.
        displacement: ``(3, gz, gy, gx)`` displacement in output voxels on a coarse grid whose
            node ``(i, j, k)`` sits at output point ``(i, j, k) * spacing``; or None.
        spacing: Coarse grid spacing ``(sz, sy, sx)`` in output voxels.
        slice_shift: ``(n_z, 2)`` lateral ``(y, x)`` shift of each output section; or None.
    """

    linear: np.ndarray
    iso_output: bool = False
    displacement: np.ndarray | None = None
    spacing: tuple[float, float, float] | None = None
    slice_shift: np.ndarray | None = None

    @classmethod
    def identity(cls, iso_output: bool = False) -> Transform:
        """The transform that cuts a plain crop (sampled isotropically with ``iso_output``)."""
        return cls(np.eye(4), iso_output=iso_output)

    def compose(self, other: Transform) -> Transform:
        """``self`` followed by ``other`` (as augmenters listed in that order)."""
        for name in ("displacement", "slice_shift"):
            if getattr(self, name) is not None and getattr(other, name) is not None:
                raise ConfigError(f"two geometric augmenters both set a {name.replace('_', ' ')}; use only one "
                                  "elastic and one misalignment augmenter per pipeline")
        return Transform(
            linear=self.linear @ other.linear,
            iso_output=self.iso_output or other.iso_output,
            displacement=self.displacement if self.displacement is not None else other.displacement,
            spacing=self.spacing if self.displacement is not None else other.spacing,
            slice_shift=self.slice_shift if self.slice_shift is not None else other.slice_shift,
        )

    def reach(self, origin: Sequence[float], step: Sequence[float],
              shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """The smallest box ``(lo, hi)`` that holds ``q`` (step 1 of the module docstring) of every
        output point ``p = origin + step * idx`` (``0 <= idx < shape``); the grid's own box for a
        transform without shifts and displacement.

        Exact per axis: the shift is constant on a section and ``d`` is multilinear in each cell of
        the coarse grid, so on every section of the grid ``q``'s extremes lie at the corners of the
        cells (cut to the grid's box); those are the points looked at.

        Example:
            >>> shift = np.zeros((4, 2)); shift[2:] = (3.0, -2.0)
            >>> [b.tolist() for b in Transform(np.eye(4), slice_shift=shift).reach((0, 0, 0), (1, 1, 1), (4, 8, 8))]
            [[0.0, 0.0, -2.0], [3.0, 10.0, 7.0]]
        """
        origin, step = np.asarray(origin, dtype=np.float64), np.asarray(step, dtype=np.float64)
        lo, hi = origin, origin + (np.asarray(shape) - 1) * step
        if self.displacement is None and (self.slice_shift is None or not len(self.slice_shift)):
            return lo, hi
        axes = [origin[0] + step[0] * np.arange(shape[0])]
        for a in (1, 2):
            nodes = (np.arange(self.displacement.shape[a + 1]) * self.spacing[a] if self.displacement is not None
                     else np.empty(0))
            axes.append(np.concatenate([[lo[a], hi[a]], nodes[(nodes > lo[a]) & (nodes < hi[a])]]))
        points = np.stack(np.meshgrid(*axes, indexing="ij")).reshape(3, -1)
        q = displace(points, self.displacement, self.spacing, self.slice_shift)
        return q.min(axis=1), q.max(axis=1)


def voxel_matrix(transform: Transform, patch_shape: Sequence[int], aniso_factor: float,
                 start: Sequence[float] = (0, 0, 0)) -> np.ndarray:
    """The 4×4 matrix from output voxel ``q`` (after shifts/displacement) to source voxels.

    Args:
        transform: The sampled transform.
        patch_shape: Spatial shape of the input patch ``(z, y, x)``; rotations are about its centre.
        aniso_factor: z spacing / lateral spacing of the source data.
        start: Source position of the patch's first voxel for the identity transform.

    Returns:
        A float64 ``(4, 4)`` matrix; the identity transform gives a translation by ``start``.
    """
    centre = (np.asarray(patch_shape, dtype=np.float64) - 1) / 2
    a_out = 1.0 if transform.iso_output else float(aniso_factor)
    m = (translate(*(centre + np.asarray(start, dtype=np.float64))) @ scale(1.0 / aniso_factor)
         @ transform.linear @ scale(a_out) @ translate(*-centre))
    return m / m[3, 3] if m[3, 3] != 0 else m


def apply_matrix(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Maps ``(n, 3)`` points through a homogeneous matrix (with the perspective division)."""
    h = points @ matrix[:3, :3].T + matrix[:3, 3]
    w = points @ matrix[3, :3] + matrix[3, 3]
    return h / w[:, None]


def source_bounds(matrix: np.ndarray, lo: Sequence[float], hi: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Smallest box of source coordinates reached from the box ``[lo, hi]`` of points ``q``
    (:meth:`Transform.reach`).

    The image of a box under a projective map with positive ``w`` is the convex hull of the
    images of its corners, so the corners give exact bounds.

    Raises:
        FoldError: The perspective part is so strong that ``w`` changes sign inside the box.
    """
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    corners = np.array([[(lo, hi)[b][a] for a, b in enumerate(bits)]
                        for bits in np.ndindex(2, 2, 2)], dtype=np.float64)
    w = corners @ matrix[3, :3] + matrix[3, 3]
    if np.any(w <= 1e-6):
        raise FoldError("the perspective part of the warp folds the patch (w <= 0 at a corner); "
                        "use a smaller 'perspective' amount")
    mapped = apply_matrix(matrix, corners)
    return mapped.min(axis=0), mapped.max(axis=0)
