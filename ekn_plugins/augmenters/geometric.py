"""Geometric augmenters: ``warp``, ``flip``, ``elastic`` and ``misalignment``.

They only *describe* a transform (:class:`~.transform.Transform`); the patch source applies the
composed transform once while cutting image and labels (labels with nearest neighbour).

Example:
    >>> import numpy as np
    >>> from ekn_plugins.augmenters.base import PatchContext
    >>> ctx = PatchContext((8, 32, 32), aniso_factor=2.0)
    >>> t = Warp(rotation=0, shear=0, stretch=0, flip=False, swap=False).transform(np.random.default_rng(0), ctx)
    >>> bool(np.allclose(t.linear, np.eye(4)))
    True
    >>> Elastic(alpha=2, spacing=16).transform(np.random.default_rng(0), ctx).displacement.shape
    (3, 2, 3, 3)
"""

from __future__ import annotations

import numpy as np

from ekn_core.errors import ConfigError
from ekn_plugins.augmenters import transform as T
from ekn_plugins.augmenters.base import Augmenter, PatchContext


class Warp(Augmenter):
    """Random affine/projective warp: rotation, shear, stretch, reflection, axis swap, perspective.

    The parts are drawn in isotropic space (z scaled by the data's anisotropy) and composed as
    ``perspective · rotation · shear/stretch · reflection · swap`` (ELEKTRONN2's order).

    Args:
        rotation: Largest rotation angle in degrees (uniform in ±rotation).
        shear: Largest off-diagonal perturbation of the linear part.
        stretch: Largest relative change of the scale along each axis.
        perspective: Largest perspective coefficient per voxel (0 = affine only; ~0.002 is strong;
            values that fold the patch are refused, see :meth:`check`).
        flip: Reflect each axis with probability 1/2.
        swap: Permute axes at random (only y↔x with ``lock_z``).
        lock_z: Keep sections in their planes: rotate about z only, never mix z with y/x.
        sample_aniso: Keep the data's anisotropy in the output (False: sample isotropically,
            i.e. interpolate extra sections).
        amount: Scales rotation, shear, stretch and perspective together (ELEKTRONN2's warp_amount).
        probability: Chance to warp an example.
    """

    geometric = True

    def __init__(self, rotation: float = 180.0, shear: float = 0.1, stretch: float = 0.1, perspective: float = 0.0,
                 flip: bool = True, swap: bool = True, lock_z: bool = True, sample_aniso: bool = True,
                 amount: float = 1.0, probability: float = 1.0):
        super().__init__(probability)
        for name, value in (("rotation", rotation), ("shear", shear), ("stretch", stretch),
                            ("perspective", perspective), ("amount", amount)):
            if value < 0:
                raise ConfigError(f"warp: {name} must be >= 0, got {value}")
        if stretch * amount >= 1:
            raise ConfigError(f"warp: stretch*amount must be < 1 (it would collapse an axis), got {stretch * amount}")
        self.rotation, self.shear, self.stretch, self.perspective = rotation, shear, stretch, perspective
        self.flip, self.swap, self.lock_z, self.sample_aniso, self.amount = flip, swap, lock_z, sample_aniso, amount

    def check(self, ctx: PatchContext) -> None:
        """Rejects a perspective so strong that it folds patches of ``ctx.patch_shape``: the
        perspective row ``p`` (``|p_i| <= perspective * amount``) gives ``w = 1 + p · u`` at a
        corner ``u`` of the centred isotropic patch, which reaches 0 once ``perspective * amount``
        is ``1 / Σ|u_i|`` (the axes with a perspective part: y and x with ``lock_z``)."""
        coefficient = self.perspective * self.amount
        half = (np.asarray(ctx.patch_shape, dtype=np.float64) - 1) / 2
        half[0] *= float(ctx.aniso_factor) if self.sample_aniso else 1.0
        reach = float(half[1:].sum() if self.lock_z else half.sum())
        if coefficient * reach >= 1:
            raise ConfigError(f"warp: perspective*amount = {coefficient:g} folds patches of shape {ctx.patch_shape} "
                              f"(w <= 0 at their corners) from 1/{reach:g} = {1 / reach:.3g} on; use at most about "
                              f"{0.5 / reach:.2g}")

    def transform(self, rng: np.random.Generator, ctx: PatchContext) -> T.Transform:
        a = self.amount
        m = T.random_rotation(rng, np.deg2rad(self.rotation) * a, self.lock_z)
        m = m @ T.random_affine(rng, self.shear * a, self.stretch * a, self.lock_z)
        if self.flip:
            m = m @ T.random_reflection(rng, (0, 1, 2))
        if self.swap:
            m = m @ T.random_swap(rng, self.lock_z)
        if self.perspective > 0:
            m = T.random_perspective(rng, self.perspective * a, self.lock_z) @ m
        return T.Transform(m, iso_output=not self.sample_aniso)


class Flip(Augmenter):
    """Random reflections of the chosen axes and, optionally, a random y↔x swap (no interpolation).

    Args:
        axes: Axes that may be reflected (0 = z, 1 = y, 2 = x).
        swap: Also swap y and x with probability 1/2.
        probability: Chance to act on an example.
    """

    geometric = True

    def __init__(self, axes: tuple[int, ...] = (0, 1, 2), swap: bool = True, probability: float = 1.0):
        super().__init__(probability)
        if any(a not in (0, 1, 2) for a in axes):
            raise ConfigError(f"flip: axes must be among 0 (z), 1 (y), 2 (x), got {axes}")
        self.axes, self.swap = tuple(axes), swap

    def transform(self, rng: np.random.Generator, ctx: PatchContext) -> T.Transform:
        m = T.random_reflection(rng, self.axes)
        if self.swap:
            m = m @ T.random_swap(rng, lock_z=True)
        return T.Transform(m)


class Elastic(Augmenter):
    """Smooth elastic deformation: random displacements on a coarse grid, interpolated trilinearly.

    Args:
        alpha: Standard deviation of the lateral displacement at the grid nodes, in voxels
            (z displacements are scaled by 1/aniso_factor so they are equal in physical units).
        spacing: Lateral distance between grid nodes in voxels (z: spacing/aniso_factor).
        lock_z: No displacement along z (always so for 2-D patches, one section thick).
        probability: Chance to deform an example.
    """

    geometric = True

    def __init__(self, alpha: float = 2.0, spacing: float = 16.0, lock_z: bool = False, probability: float = 1.0):
        super().__init__(probability)
        if alpha < 0 or spacing <= 0:
            raise ConfigError(f"elastic: need alpha >= 0 and spacing > 0, got alpha={alpha}, spacing={spacing}")
        self.alpha, self.spacing, self.lock_z = float(alpha), float(spacing), lock_z

    def transform(self, rng: np.random.Generator, ctx: PatchContext) -> T.Transform:
        aniso = float(ctx.aniso_factor)
        spacing = (max(self.spacing / aniso, 1.0), self.spacing, self.spacing)
        shape = tuple(max(2, int(np.ceil((n - 1) / s)) + 1) for n, s in zip(ctx.patch_shape, spacing))
        disp = rng.normal(0.0, self.alpha, size=(3, *shape))
        disp[0] = 0.0 if self.lock_z or ctx.patch_shape[0] == 1 else disp[0] / aniso
        return T.Transform(np.eye(4), displacement=disp, spacing=spacing)


class Misalignment(Augmenter):
    """EM section misalignment: lateral shifts of sections, labels shifted along with the tissue.

    Args:
        max_shift: Largest shift in y and x, in voxels (uniform in ±max_shift).
        mode: ``"slip"`` shifts one random section; ``"shift"`` shifts every section from a
            random one on (a misaligned stack).
        probability: Chance to misalign an example.
    """

    geometric = True

    def __init__(self, max_shift: float = 5.0, mode: str = "shift", probability: float = 0.1):
        super().__init__(probability)
        if mode not in ("slip", "shift"):
            raise ConfigError(f"misalignment: mode must be 'slip' or 'shift', got {mode!r}")
        self.max_shift, self.mode = float(max_shift), mode

    def transform(self, rng: np.random.Generator, ctx: PatchContext) -> T.Transform:
        nz = ctx.patch_shape[0]
        shift = np.zeros((nz, 2))
        where = int(rng.integers(0, nz))
        offset = rng.uniform(-self.max_shift, self.max_shift, size=2)
        if self.mode == "slip":
            shift[where] = offset
        else:
            shift[where:] = offset
        return T.Transform(np.eye(4), slice_shift=shift)
