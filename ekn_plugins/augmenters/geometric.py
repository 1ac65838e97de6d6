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
from ekn_plugins.augmenters.base import Augmenter, PatchContext, indices, number


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
        max_perspective: Clip each perspective coefficient (after ``amount``) to ±this (None: no
            clipping; ELEKTRONN2 drew ±0.005·warp_amount clipped to ±0.003).
        flip: Reflect each axis with probability 1/2.
        swap: Permute axes at random (only y↔x with ``lock_z``).
        lock_z: Keep sections in their planes: rotate about z only, never mix z with y/x.
        sample_aniso: Keep the data's anisotropy in the output (False: sample every patch of the
            pipeline isotropically, warped or not, i.e. interpolate extra sections; a net trained
            so must predict on isotropically resampled data).
        amount: Scales rotation, shear, stretch and perspective together (ELEKTRONN2's warp_amount).
        probability: Chance to warp an example.
    """

    geometric = True

    def __init__(self, rotation: float = 180.0, shear: float = 0.1, stretch: float = 0.1, perspective: float = 0.0,
                 max_perspective: float | None = None, flip: bool = True, swap: bool = True, lock_z: bool = True,
                 sample_aniso: bool = True, amount: float = 1.0, probability: float = 1.0):
        super().__init__(probability)
        rotation, shear, stretch, perspective, amount = (
            number("warp", name, value, minimum=0) for name, value in
            (("rotation", rotation), ("shear", shear), ("stretch", stretch), ("perspective", perspective),
             ("amount", amount)))
        if max_perspective is not None:
            max_perspective = number("warp", "max_perspective", max_perspective, minimum=0)
        if stretch * amount >= 1:
            raise ConfigError(f"warp: stretch*amount must be < 1 (it would collapse an axis), got {stretch * amount}")
        self.rotation, self.shear, self.stretch, self.perspective = rotation, shear, stretch, perspective
        self.max_perspective = max_perspective
        self.flip, self.swap, self.lock_z, self.sample_aniso, self.amount = flip, swap, lock_z, sample_aniso, amount
        self.iso_output = not sample_aniso

    def check(self, ctx: PatchContext) -> None:
        """Rejects a perspective so strong that it folds patches of ``ctx``: the perspective row
        ``p`` (``|p_i| <= perspective * amount``, or ``max_perspective``) gives ``w = 1 + p · u``
        at a corner ``u`` of the centred isotropic box that the patch and its targets cover
        (``ctx.box``), which reaches 0 once the coefficient is ``1 / Σ|u_i|`` (over the axes with
        a perspective part: y and x with ``lock_z``)."""
        coefficient = self.perspective * self.amount
        if self.max_perspective is not None:
            coefficient = min(coefficient, self.max_perspective)
        lo, hi = (np.asarray(b, dtype=np.float64) for b in ctx.box)
        centre = (np.asarray(ctx.patch_shape, dtype=np.float64) - 1) / 2
        half = np.maximum(centre - lo, hi - centre)
        half[0] *= float(ctx.aniso_factor) if self.sample_aniso else 1.0
        reach = float(half[1:].sum() if self.lock_z else half.sum())
        beyond = np.any(lo < 0) or np.any(hi > np.asarray(ctx.patch_shape) - 1)
        what = f"patches of shape {ctx.patch_shape}" + (" with their targets beyond them" if beyond else "")
        if coefficient * reach >= 1:
            raise ConfigError(f"warp: perspective*amount = {coefficient:g} folds {what} (w <= 0 at their corners) "
                              f"from 1/{reach:g} = {1 / reach:.3g} on; use at most about {0.5 / reach:.2g}")

    def transform(self, rng: np.random.Generator, ctx: PatchContext) -> T.Transform:
        a = self.amount
        m = T.random_rotation(rng, np.deg2rad(self.rotation) * a, self.lock_z)
        m = m @ T.random_affine(rng, self.shear * a, self.stretch * a, self.lock_z)
        if self.flip:
            m = m @ T.random_reflection(rng, (0, 1, 2))
        if self.swap:
            m = m @ T.random_swap(rng, self.lock_z)
        if self.perspective > 0:
            m = T.random_perspective(rng, self.perspective * a, self.lock_z, self.max_perspective) @ m
        return T.Transform(m, iso_output=not self.sample_aniso)


class Flip(Augmenter):
    """Random reflections of the chosen axes and, optionally, a random axis swap (copied as a
    slice, no interpolation, unless z is swapped with anisotropic data).

    Args:
        axes: Axes that may be reflected (0 = z, 1 = y, 2 = x); one axis may be given as a number.
        swap: Also permute axes at random: y↔x with probability 1/2, or with ``lock_z=False`` one of
            the 6 orders of z, y, x (ELEKTRONN2's swaps; anisotropic data are then resampled).
        lock_z: Keep z in place when swapping.
        probability: Chance to act on an example.
    """

    geometric = True

    def __init__(self, axes: tuple[int, ...] | int = (0, 1, 2), swap: bool = True, lock_z: bool = True,
                 probability: float = 1.0):
        super().__init__(probability)
        axes = indices("flip", "axes", axes)
        if any(a not in (0, 1, 2) for a in axes):
            raise ConfigError(f"flip: axes must be among 0 (z), 1 (y), 2 (x), got {axes}")
        self.axes, self.swap, self.lock_z = axes, swap, lock_z

    def transform(self, rng: np.random.Generator, ctx: PatchContext) -> T.Transform:
        m = T.random_reflection(rng, self.axes)
        if self.swap:
            m = m @ T.random_swap(rng, lock_z=self.lock_z)
        return T.Transform(m)


class Elastic(Augmenter):
    """Smooth elastic deformation: random displacements on a coarse grid, interpolated trilinearly.

    The field lives in output voxels, whose z step is ``ctx.output_aniso`` lateral steps (the
    data's anisotropy, or 1 for isotropically sampled patches), so it is isotropic in physical units.

    Args:
        alpha: Standard deviation of the lateral displacement at the grid nodes, in voxels
            (z displacements are divided by the output's anisotropy so they are equal in physical
            units).
        spacing: Lateral distance between grid nodes in voxels (z: spacing / the output's anisotropy).
        lock_z: No displacement along z (always so for 2-D patches, one section thick).
        probability: Chance to deform an example.
    """

    geometric = True

    def __init__(self, alpha: float = 2.0, spacing: float = 16.0, lock_z: bool = False, probability: float = 1.0):
        super().__init__(probability)
        alpha, spacing = number("elastic", "alpha", alpha, minimum=0), number("elastic", "spacing", spacing)
        if spacing <= 0:
            raise ConfigError(f"elastic: spacing must be > 0, got {spacing}")
        self.alpha, self.spacing, self.lock_z = alpha, spacing, lock_z

    def transform(self, rng: np.random.Generator, ctx: PatchContext) -> T.Transform:
        aniso = ctx.output_aniso
        spacing = (max(self.spacing / aniso, 1.0), self.spacing, self.spacing)
        shape = tuple(max(2, int(np.ceil((n - 1) / s)) + 1) for n, s in zip(ctx.patch_shape, spacing))
        disp = rng.normal(0.0, self.alpha, size=(3, *shape))
        disp[0] = 0.0 if self.lock_z or ctx.patch_shape[0] == 1 else disp[0] / aniso
        return T.Transform(np.eye(4), displacement=disp, spacing=spacing)


class Misalignment(Augmenter):
    """EM section misalignment: lateral shifts of sections, labels shifted along with the tissue.

    Shifts are given per output section; sections of the target grid beyond the patch (nets with
    negative z offsets) move with the nearest patch section. In isotropically sampled patches
    (``ctx.iso_output``) a data section is ``ctx.section_thickness`` output sections thick, and
    ``"slip"`` shifts that many consecutive output sections.

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
        self.max_shift, self.mode = number("misalignment", "max_shift", max_shift, minimum=0), mode

    def transform(self, rng: np.random.Generator, ctx: PatchContext) -> T.Transform:
        nz = ctx.patch_shape[0]
        shift = np.zeros((nz, 2))
        where = int(rng.integers(0, nz))
        offset = rng.uniform(-self.max_shift, self.max_shift, size=2)
        if self.mode == "slip":
            shift[where:where + max(1, int(round(ctx.section_thickness)))] = offset
        else:
            shift[where:] = offset
        return T.Transform(np.eye(4), slice_shift=shift)
