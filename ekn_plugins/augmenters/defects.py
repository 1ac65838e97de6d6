"""EM section defects on the image: ``missing_section`` and ``low_contrast``.

(Misalignment moves tissue, so it is geometric and lives in
:mod:`ekn_plugins.augmenters.geometric`.) Labels are unchanged: the network should learn to
predict through a defect. A section is a section of the data: in isotropically sampled patches
(``ctx.iso_output``) ``ctx.section_thickness`` consecutive output sections.

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


def _pick_sections(rng: np.random.Generator, n_z: int, max_sections: int, thickness: float) -> list[np.ndarray]:
    """1..``max_sections`` distinct random sections, each as the output sections it covers
    (``thickness`` of them, rounded; the last one may be cut off at the patch's end)."""
    width = max(1, int(round(thickness)))
    n_sections = -(-n_z // width)
    count = int(rng.integers(1, min(max_sections, n_sections) + 1))
    return [np.arange(k * width, min((k + 1) * width, n_z)) for k in rng.choice(n_sections, size=count, replace=False)]


class MissingSection(Augmenter):
    """Replaces 1..``max_sections`` random z sections by a constant (a lost/blank section).
    Refused for patches one section thick (2-D nets), see :meth:`check`.

    Args:
        max_sections: Most sections blanked per example.
        fill: Grey value of a missing section, or ``"mean"`` for the patch mean.
        channels: Channels to change (None = all).
        probability: Chance to act on an example.
    """

    def __init__(self, max_sections: int = 1, fill: float | str = 0.0, channels: list[int] | None = None,
                 probability: float = 0.1):
        super().__init__(probability, channels)
        max_sections = int(number("missing_section", "max_sections", max_sections, minimum=1, integer=True))
        if fill != "mean":
            fill = number("missing_section", "fill", fill)
        self.max_sections, self.fill = max_sections, fill

    def check(self, ctx: PatchContext) -> None:
        """Refuses 2-D patches (one section): blanking it would leave a blank image with labels."""
        if ctx.patch_shape[0] == 1:
            raise ConfigError("missing_section: the patches are one section thick (a 2-D net), so a missing section "
                              "would blank the whole image while its labels stay; remove missing_section from the "
                              "augmenters (noise, blur or low_contrast change 2-D images)")

    def __call__(self, image: np.ndarray, rng: np.random.Generator, ctx: PatchContext) -> np.ndarray:
        sections = np.concatenate(_pick_sections(rng, image.shape[1], self.max_sections, ctx.section_thickness))
        for c in self.selected(image):
            value = image[c].mean() if self.fill == "mean" else self.fill
            image[c, sections] = value
        return image


class LowContrast(Augmenter):
    """Scales the contrast of 1..``max_sections`` random sections about their mean.

    Args:
        factor: ``(low, high)`` range of the contrast factor (< 1 lowers contrast), or one number.
        max_sections: Most sections changed per example.
        channels: Channels to change (None = all).
        probability: Chance to act on an example.
    """

    def __init__(self, factor: tuple[float, float] | float = (0.2, 0.6), max_sections: int = 1,
                 channels: list[int] | None = None, probability: float = 0.1):
        super().__init__(probability, channels)
        self.factor = value_range("low_contrast", "factor", factor)
        self.max_sections = int(number("low_contrast", "max_sections", max_sections, minimum=1, integer=True))

    def __call__(self, image: np.ndarray, rng: np.random.Generator, ctx: PatchContext) -> np.ndarray:
        for z in _pick_sections(rng, image.shape[1], self.max_sections, ctx.section_thickness):
            f = np.float32(rng.uniform(*self.factor))
            for c in self.selected(image):
                mean = image[c, z].mean()
                image[c, z] = (image[c, z] - mean) * f + mean
        return image
