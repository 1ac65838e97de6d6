"""Occlusion augmenters: ``random_erasing`` and ``blurry_blobs`` (ELEKTRONN2's random erasing and
blurry blobs).

Both change random boxes of the image patch (dirt, occlusions, staining blobs) and leave labels
alone: the network should learn to predict through them. A box is ``size`` lateral voxels wide in
y and x and ``size / ctx.output_aniso`` sections deep in z (at least one), so it is a cube in
physical units; it lies wholly inside the patch (cut to the patch where it is larger). All
selected channels get the same boxes.

Example:
    >>> import numpy as np
    >>> from ekn_plugins.augmenters.base import PatchContext
    >>> img = np.full((1, 8, 32, 32), 0.5, np.float32)
    >>> out = RandomErasing(fill=1.0, count=1, size=12)(img, np.random.default_rng(0), PatchContext((8, 32, 32), 2.0))
    >>> len(np.unique(np.nonzero(out[0] == 1.0)[0]))  # sections erased: 12 / 2
    6
"""

from __future__ import annotations

import numpy as np

from ekn_core.errors import ConfigError
from ekn_plugins.augmenters.base import Augmenter, PatchContext, number, value_range

Box = tuple[slice, slice, slice]


def count_range(owner: str, name: str, value: object, minimum: int) -> tuple[int, int]:
    """An option that is a whole number (``minimum`` or more) or a ``(low, high)`` range of them
    (both included), or a :class:`ConfigError` naming augmenter and option.

    Example:
        >>> count_range("random_erasing", "count", (5, 14), 0), count_range("random_erasing", "size", 12, 1)
        ((5, 14), (12, 12))
        >>> count_range("random_erasing", "size", (0.5, 3), 1)
        Traceback (most recent call last):
        ...
        ekn_core.errors.ConfigError: random_erasing: size must be a whole number >= 1 or a (low, high) range of them, got (0.5, 3)
    """
    expected = f"{owner}: {name} must be a whole number >= {minimum} or a (low, high) range of them, got {value!r}"
    try:
        low, high = value_range(owner, name, value)
    except ConfigError:
        raise ConfigError(expected) from None
    if low != int(low) or high != int(high) or low < minimum:
        raise ConfigError(expected)
    return int(low), int(high)


def draw_boxes(rng: np.random.Generator, count: tuple[int, int], size: tuple[int, int],
               shape: tuple[int, ...], z_step: float) -> list[Box]:
    """Random boxes inside a patch of spatial ``shape`` ``(z, y, x)``.

    Draws the number of boxes in ``count``, then for each box its side ``s`` in ``size`` (lateral
    voxels; ``round(s / z_step)`` sections, at least one, in z; cut to the patch) and its corner,
    uniformly among the positions where it fits.

    Example:
        >>> draw_boxes(np.random.default_rng(0), (1, 1), (8, 8), (1, 10, 10), 2.0)
        [(slice(0, 1, None), slice(2, 10, None), slice(1, 9, None))]
    """
    shape_ = np.asarray(shape)
    boxes = []
    for _ in range(int(rng.integers(count[0], count[1] + 1))):
        side = int(rng.integers(size[0], size[1] + 1))
        extent = np.minimum((max(1, int(round(side / z_step))), side, side), shape_)
        corner = rng.integers(0, shape_ - extent + 1)
        boxes.append(tuple(slice(int(c), int(c + e)) for c, e in zip(corner, extent)))
    return boxes


class RandomErasing(Augmenter):
    """Random erasing: ``count`` random boxes of the image set to a grey value, to the channel's
    mean, or to uniform noise (ELEKTRONN2's ``uniform_random_erasing`` and ``noisy_random_erasing``).

    Args:
        fill: Grey value of the erased boxes, ``"mean"`` (each channel's mean before erasing) or
            ``"noise"`` (every voxel uniform in ``noise_range``, drawn for each channel).
        noise_range: ``(low, high)`` of the noise with ``fill="noise"`` (default ``(0, 1)``).
        count: Boxes per example: a ``(low, high)`` range (both included) or one number.
        size: Side of a box in lateral voxels: a ``(low, high)`` range (both included) or one
            number; in z it is divided by the patch's anisotropy (``ctx.output_aniso``).
        channels: Channels to erase (None = all).
        probability: Chance to act on an example.
    """

    def __init__(self, fill: float | str = 0.0, noise_range: tuple[float, float] | None = None,
                 count: tuple[int, int] | int = (5, 14), size: tuple[int, int] | int = (10, 31),
                 channels: list[int] | None = None, probability: float = 0.5):
        super().__init__(probability, channels)
        if isinstance(fill, str) and fill not in ("mean", "noise"):
            raise ConfigError(f"random_erasing: fill must be a number, 'mean' or 'noise', got {fill!r}")
        if not isinstance(fill, str):
            fill = number("random_erasing", "fill", fill)
        if noise_range is not None and fill != "noise":
            raise ConfigError(f"random_erasing: noise_range is used only with fill='noise' (fill is {fill!r}); "
                              "remove it or set fill='noise'")
        self.fill = fill
        self.noise_range = value_range("random_erasing", "noise_range", (0.0, 1.0) if noise_range is None else noise_range)
        self.count = count_range("random_erasing", "count", count, 0)
        self.size = count_range("random_erasing", "size", size, 1)

    def __call__(self, image: np.ndarray, rng: np.random.Generator, ctx: PatchContext) -> np.ndarray:
        channels = self.selected(image)
        means = {c: image[c].mean() for c in channels} if self.fill == "mean" else {}
        for box in draw_boxes(rng, self.count, self.size, image.shape[1:], ctx.output_aniso):
            for c in channels:
                where = (c, *box)
                if self.fill == "noise":
                    image[where] = rng.uniform(*self.noise_range, size=image[where].shape)
                else:
                    image[where] = means.get(c, self.fill)
        return image


class BlurryBlobs(Augmenter):
    """Blurry blobs: ``count`` random boxes of the image each blurred on its own (a Gaussian
    filter of the box's contents, reflected at the box's faces), so they look like diffuse stains
    (ELEKTRONN2's ``blurry_blobs``).

    Args:
        sigma: ``(low, high)`` range of a blob's lateral sigma in voxels (drawn for each blob), or
            one number; in z divided by the patch's anisotropy (``ctx.output_aniso``).
        count: Blobs per example: a ``(low, high)`` range (both included) or one number.
        size: Side of a blob in lateral voxels: a ``(low, high)`` range (both included) or one
            number; in z divided by ``ctx.output_aniso``.
        channels: Channels to blur (None = all).
        probability: Chance to act on an example.
    """

    def __init__(self, sigma: tuple[float, float] | float = (1.0, 5.0), count: tuple[int, int] | int = (5, 14),
                 size: tuple[int, int] | int = (10, 31), channels: list[int] | None = None,
                 probability: float = 0.5):
        super().__init__(probability, channels)
        self.sigma = value_range("blurry_blobs", "sigma", sigma)
        self.count = count_range("blurry_blobs", "count", count, 0)
        self.size = count_range("blurry_blobs", "size", size, 1)

    def __call__(self, image: np.ndarray, rng: np.random.Generator, ctx: PatchContext) -> np.ndarray:
        from scipy.ndimage import gaussian_filter

        channels = self.selected(image)
        for box in draw_boxes(rng, self.count, self.size, image.shape[1:], ctx.output_aniso):
            s = rng.uniform(*self.sigma)
            for c in channels:
                where = (c, *box)
                image[where] = gaussian_filter(image[where], (s / ctx.output_aniso, s, s), mode="reflect")
        return image
