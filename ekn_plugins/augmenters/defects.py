"""EM section defects on the image: ``missing_section`` and ``low_contrast``.

(Misalignment moves tissue, so it is geometric and lives in
:mod:`ekn_plugins.augmenters.geometric`.) Labels are unchanged: the network should learn to
predict through a defect. A section is a section of the data: in isotropically sampled patches
(``ctx.iso_output``) ``ctx.section_thickness`` consecutive output sections.

With ``partial`` (a chance, 0 by default), a defect covers only the part of its section on one side
of a random straight line through it (hard edge), as a fold, a crack or a lost strip would: the
line passes through a point drawn uniformly in the section's ``(y, x)`` extent at an angle drawn
uniformly in [0°, 360°) (which also picks the side), the same for all output sections of one data
section. With ``partial=0`` nothing more is drawn: the same seed gives the same images as before.

Example:
    >>> import numpy as np
    >>> from ekn_plugins.augmenters.base import PatchContext
    >>> img = np.ones((1, 6, 4, 4), np.float32)
    >>> out = MissingSection(max_sections=2, fill=0.0)(img, np.random.default_rng(1), PatchContext((6, 4, 4)))
    >>> int((out.reshape(6, -1).max(axis=1) == 0).sum()) in (1, 2)
    True
"""

from __future__ import annotations

import numpy as np

from ekn_core.errors import ConfigError
from ekn_plugins.augmenters.base import Augmenter, PatchContext, number, value_range


def _pick_sections(rng: np.random.Generator, n_z: int, max_sections: int, thickness: float) -> list[slice]:
    """1..``max_sections`` distinct random sections, each as the slice of output sections it covers
    (``thickness`` of them, rounded; the last one may be cut off at the patch's end)."""
    width = max(1, int(round(thickness)))
    n_sections = -(-n_z // width)
    count = int(rng.integers(1, min(max_sections, n_sections) + 1))
    picked = rng.choice(n_sections, size=count, replace=False).tolist()
    return [slice(k * width, min((k + 1) * width, n_z)) for k in picked]


def side_of_line(shape: tuple[int, int], point: tuple[float, float], angle: float) -> np.ndarray:
    """The ``(y, x)`` voxels of a section of ``shape`` on one side of the straight line through
    ``point`` at ``angle`` (radians): those with ``(y - py)·cos(angle) + (x - px)·sin(angle) > 0``.

    Example:
        >>> side_of_line((2, 3), (0.5, 1.0), 0.0).astype(int)  # the line y = 0.5, the side y > 0.5
        array([[0, 0, 0],
               [1, 1, 1]])
    """
    y, x = np.ogrid[:shape[0], :shape[1]]
    return (y - point[0]) * np.cos(angle) + (x - point[1]) * np.sin(angle) > 0


def defect_regions(rng: np.random.Generator, shape: tuple[int, int, int], max_sections: int, thickness: float,
                   partial: float) -> list[tuple[slice, np.ndarray | None]]:
    """The regions of 1..``max_sections`` random section defects in a patch of spatial ``shape``:
    each the slice of output sections of one data section (``thickness`` of them) and the ``(y, x)``
    mask of its part that the defect covers (:func:`side_of_line`; drawn with chance ``partial``),
    or None for the whole section.

    Example:
        >>> regions = defect_regions(np.random.default_rng(1), (6, 8, 8), 2, 2.0, partial=1.0)
        >>> [(z, mask.shape) for z, mask in regions]
        [(slice(2, 4, None), (8, 8))]
    """
    regions = []
    for z in _pick_sections(rng, shape[0], max_sections, thickness):
        mask = None
        if partial and rng.random() < partial:
            point = rng.uniform((0, 0), (shape[1] - 1, shape[2] - 1))
            mask = side_of_line(shape[1:], point, rng.uniform(0, 2 * np.pi))
        regions.append((z, mask))
    return regions


def _chance(owner: str, name: str, value: float) -> float:
    """An option that is a chance in [0, 1], or a :class:`ConfigError` naming it."""
    value = number(owner, name, value, minimum=0)
    if value > 1:
        raise ConfigError(f"{owner}: {name} must be in [0, 1], got {value:g}")
    return value


class MissingSection(Augmenter):
    """Replaces 1..``max_sections`` random z sections (or parts, ``partial``) by a constant (a
    lost/blank section). Refused for patches one section thick (2-D nets), see :meth:`check`.

    Args:
        max_sections: Most sections blanked per example.
        fill: Grey value of a missing section, or ``"mean"`` for the patch mean.
        partial: Chance that a section is missing only on one side of a random line (module docs).
        channels: Channels to change (None = all).
        probability: Chance to act on an example.
    """

    def __init__(self, max_sections: int = 1, fill: float | str = 0.0, partial: float = 0.0,
                 channels: list[int] | None = None, probability: float = 0.1):
        super().__init__(probability, channels)
        max_sections = int(number("missing_section", "max_sections", max_sections, minimum=1, integer=True))
        if fill != "mean":
            fill = number("missing_section", "fill", fill)
        self.max_sections, self.fill = max_sections, fill
        self.partial = _chance("missing_section", "partial", partial)

    def check(self, ctx: PatchContext) -> None:
        """Refuses 2-D patches (one section): blanking it would leave a blank image with labels."""
        if ctx.patch_shape[0] == 1:
            raise ConfigError("missing_section: the patches are one section thick (a 2-D net), so a missing section "
                              "would blank the whole image while its labels stay; remove missing_section from the "
                              "augmenters (noise, blur or low_contrast change 2-D images)")

    def __call__(self, image: np.ndarray, rng: np.random.Generator, ctx: PatchContext) -> np.ndarray:
        regions = defect_regions(rng, image.shape[1:], self.max_sections, ctx.section_thickness, self.partial)
        for c in self.selected(image):
            value = image[c].mean() if self.fill == "mean" else self.fill
            for z, mask in regions:
                image[(c, z) if mask is None else (c, z, mask)] = value
        return image


class LowContrast(Augmenter):
    """Scales the contrast of 1..``max_sections`` random sections (or parts, ``partial``) about their mean.

    Args:
        factor: ``(low, high)`` range of the contrast factor (< 1 lowers contrast), or one number.
        max_sections: Most sections changed per example.
        partial: Chance that a section's contrast changes only on one side of a random line, about
            the mean of that side (module docs).
        channels: Channels to change (None = all).
        probability: Chance to act on an example.
    """

    def __init__(self, factor: tuple[float, float] | float = (0.2, 0.6), max_sections: int = 1,
                 partial: float = 0.0, channels: list[int] | None = None, probability: float = 0.1):
        super().__init__(probability, channels)
        self.factor = value_range("low_contrast", "factor", factor)
        self.max_sections = int(number("low_contrast", "max_sections", max_sections, minimum=1, integer=True))
        self.partial = _chance("low_contrast", "partial", partial)

    def __call__(self, image: np.ndarray, rng: np.random.Generator, ctx: PatchContext) -> np.ndarray:
        for z, mask in defect_regions(rng, image.shape[1:], self.max_sections, ctx.section_thickness, self.partial):
            f = np.float32(rng.uniform(*self.factor))
            for c in self.selected(image):
                region = (c, z) if mask is None else (c, z, mask)
                mean = image[region].mean()
                image[region] = (image[region] - mean) * f + mean
        return image
