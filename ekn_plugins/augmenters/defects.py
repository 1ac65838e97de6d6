"""EM section defects on the image: ``missing_section`` and ``low_contrast``.

(Misalignment moves tissue, so it is geometric and lives in
:mod:`ekn_plugins.augmenters.geometric`.) Labels are unchanged: the network should learn to
predict through a defect.

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
from ekn_plugins.augmenters.base import Augmenter, PatchContext


def _pick_sections(rng: np.random.Generator, n_z: int, max_sections: int) -> np.ndarray:
    count = int(rng.integers(1, min(max_sections, n_z) + 1))
    return rng.choice(n_z, size=count, replace=False)


class MissingSection(Augmenter):
    """Replaces 1..``max_sections`` random z sections by a constant (a lost/blank section).

    Args:
        max_sections: Most sections blanked per example.
        fill: Grey value of a missing section, or ``"mean"`` for the patch mean.
        channels: Channels to change (None = all).
        probability: Chance to act on an example.
    """

    def __init__(self, max_sections: int = 1, fill: float | str = 0.0, channels: list[int] | None = None,
                 probability: float = 0.1):
        super().__init__(probability, channels)
        if max_sections < 1 or not (fill == "mean" or isinstance(fill, (int, float))):
            raise ConfigError(f"missing_section: need max_sections >= 1 and fill a number or 'mean', got "
                              f"{max_sections}, {fill!r}")
        self.max_sections, self.fill = int(max_sections), fill

    def __call__(self, image: np.ndarray, rng: np.random.Generator, ctx: PatchContext) -> np.ndarray:
        sections = _pick_sections(rng, image.shape[1], self.max_sections)
        for c in self.selected(image):
            value = image[c].mean() if self.fill == "mean" else self.fill
            image[c, sections] = value
        return image


class LowContrast(Augmenter):
    """Scales the contrast of 1..``max_sections`` random sections about their mean.

    Args:
        factor: ``(low, high)`` range of the contrast factor (< 1 lowers contrast).
        max_sections: Most sections changed per example.
        channels: Channels to change (None = all).
        probability: Chance to act on an example.
    """

    def __init__(self, factor: tuple[float, float] = (0.2, 0.6), max_sections: int = 1,
                 channels: list[int] | None = None, probability: float = 0.1):
        super().__init__(probability, channels)
        lo, hi = (float(f) for f in factor)
        if not 0 <= lo <= hi or max_sections < 1:
            raise ConfigError(f"low_contrast: need a factor range 0 <= low <= high and max_sections >= 1, got "
                              f"{factor}, {max_sections}")
        self.factor, self.max_sections = (lo, hi), int(max_sections)

    def __call__(self, image: np.ndarray, rng: np.random.Generator, ctx: PatchContext) -> np.ndarray:
        sections = _pick_sections(rng, image.shape[1], self.max_sections)
        for z in sections:
            f = np.float32(rng.uniform(*self.factor))
            for c in self.selected(image):
                mean = image[c, z].mean()
                image[c, z] = (image[c, z] - mean) * f + mean
        return image
