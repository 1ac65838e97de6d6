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

:func:`voxel_matrix` folds steps 2–4 into one 4×4 matrix; :func:`source_bounds` gives the box
in the source that a set of output points can reach, so that a patch never reads outside its data.

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


def random_perspective(rng: np.random.Generator, amount: float, lock_z: bool) -> np.ndarray:
    """A projective matrix whose last row is ``(pz, py, px, 1)`` with ``|p| <= amount`` per voxel."""
    m = np.eye(4)
    axes = (1, 2) if lock_z else (0, 1, 2)
    for a in axes:
        m[3, a] = rng.uniform(-amount, amount)
    return m


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
    def identity(cls) -> Transform:
        """The transform that cuts a plain crop."""
        return cls(np.eye(4))

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

    def margin(self) -> np.ndarray:
        """Largest ``|shift + displacement|`` per axis, in output voxels (for bounds checks)."""
        m = np.zeros(3)
        if self.displacement is not None:
            m += np.abs(self.displacement).reshape(3, -1).max(axis=1)
        if self.slice_shift is not None and len(self.slice_shift):
            m[1:] += np.abs(self.slice_shift).max(axis=0)
        return m


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


def source_bounds(matrix: np.ndarray, lo: Sequence[float], hi: Sequence[float],
                  margin: Sequence[float] = (0, 0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """Smallest box of source coordinates reached from the output box ``[lo, hi]``.

    The image of a box under a projective map with positive ``w`` is the convex hull of the
    images of its corners, so the corners give exact bounds. ``margin`` widens the output box
    (for displacements and shifts).

    Raises:
        FoldError: The perspective part is so strong that ``w`` changes sign inside the box.
    """
    lo = np.asarray(lo, dtype=np.float64) - np.asarray(margin, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64) + np.asarray(margin, dtype=np.float64)
    corners = np.array([[(lo, hi)[b][a] for a, b in enumerate(bits)]
                        for bits in np.ndindex(2, 2, 2)], dtype=np.float64)
    w = corners @ matrix[3, :3] + matrix[3, 3]
    if np.any(w <= 1e-6):
        raise FoldError("the perspective part of the warp folds the patch (w <= 0 at a corner); "
                        "use a smaller 'perspective' amount")
    mapped = apply_matrix(matrix, corners)
    return mapped.min(axis=0), mapped.max(axis=0)
