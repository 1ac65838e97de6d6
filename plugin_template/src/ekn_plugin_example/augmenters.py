"""Augmenter ``example.invert``: inverts grey values (``x → 1 - x``) of selected channels.

Example:
    >>> import numpy as np
    >>> from ekn_plugins.augmenters.base import PatchContext
    >>> img = np.array([[[[0.25, 1.0]]]], np.float32)
    >>> Invert()(img, np.random.default_rng(0), PatchContext((1, 1, 2))).ravel().tolist()
    [0.75, 0.0]
"""

from __future__ import annotations

import numpy as np

from ekn_plugins.augmenters.base import Augmenter, PatchContext


class Invert(Augmenter):
    """Inverts grey values in [0, 1] (EM data from another contrast protocol).

    Args:
        channels: Channels to invert (None = all).
        probability: Chance to act on an example.
    """

    def __init__(self, channels: list[int] | None = None, probability: float = 1.0):
        super().__init__(probability, channels)

    def __call__(self, image: np.ndarray, rng: np.random.Generator, ctx: PatchContext) -> np.ndarray:
        for c in self.selected(image):
            np.subtract(np.float32(1.0), image[c], out=image[c])
        return image
