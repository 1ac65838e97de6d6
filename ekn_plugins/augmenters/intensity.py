"""Intensity augmenters: ``grey``, ``histogram``, ``blur`` and ``noise``.

They act on float32 ``(c, z, y, x)`` image patches (grey values nominally in [0, 1]) and leave
labels alone.

Example:
    >>> import numpy as np
    >>> from ekn_plugins.augmenters.base import PatchContext
    >>> img = np.linspace(0, 1, 64, dtype=np.float32).reshape(1, 1, 8, 8)
    >>> out = Grey()(img.copy(), np.random.default_rng(0), PatchContext((1, 8, 8)))
    >>> bool(out.min() >= 0 and out.max() <= 1)
    True
"""

from __future__ import annotations

import numpy as np

from ekn_core.errors import ConfigError
from ekn_plugins.augmenters.base import Augmenter, PatchContext


class Grey(Augmenter):
    """ELEKTRONN2's grey-value augmentation, per channel: contrast, brightness, clip, gamma.

    ``x ← clip((1 + a)·x + b, 0, 1) ** 2**g`` with ``a ~ U(±contrast)``, ``b ~ U(±brightness)``,
    ``g ~ U(±gamma)``, drawn independently for each selected channel.

    Args:
        contrast: Largest relative contrast change.
        brightness: Largest brightness offset.
        gamma: Largest |log2| of the gamma exponent.
        channels: Channels to change (None = all).
        probability: Chance to act on an example.
    """

    def __init__(self, contrast: float = 0.15, brightness: float = 0.15, gamma: float = 1.0,
                 channels: list[int] | None = None, probability: float = 1.0):
        super().__init__(probability, channels)
        self.contrast, self.brightness, self.gamma = contrast, brightness, gamma

    def __call__(self, image: np.ndarray, rng: np.random.Generator, ctx: PatchContext) -> np.ndarray:
        for c in self.selected(image):
            a = 1.0 + rng.uniform(-self.contrast, self.contrast)
            b = rng.uniform(-self.brightness, self.brightness)
            g = 2.0 ** rng.uniform(-self.gamma, self.gamma)
            channel = image[c]
            np.multiply(channel, np.float32(a), out=channel)
            np.add(channel, np.float32(b), out=channel)
            np.clip(channel, 0.0, 1.0, out=channel)
            np.power(channel, np.float32(g), out=channel)
        return image


class Histogram(Augmenter):
    """Random monotone distortion of the grey-value histogram (piecewise-linear tone curve).

    The curve maps [0, 1] onto [0, 1] through ``n_points`` inner nodes moved by up to
    ``strength``; it is strictly increasing, so grey-value order is kept.

    Args:
        strength: Largest displacement of a curve node (0–0.5).
        n_points: Number of inner nodes.
        channels: Channels to change (None = all).
        probability: Chance to act on an example.
    """

    def __init__(self, strength: float = 0.1, n_points: int = 4, channels: list[int] | None = None,
                 probability: float = 1.0):
        super().__init__(probability, channels)
        if not 0 <= strength < 0.5 or n_points < 1:
            raise ConfigError(f"histogram: need 0 <= strength < 0.5 and n_points >= 1, got {strength}, {n_points}")
        self.strength, self.n_points = float(strength), int(n_points)

    def __call__(self, image: np.ndarray, rng: np.random.Generator, ctx: PatchContext) -> np.ndarray:
        xs = np.linspace(0.0, 1.0, self.n_points + 2)
        step = xs[1]
        for c in self.selected(image):
            ys = xs.copy()
            ys[1:-1] += rng.uniform(-self.strength, self.strength, self.n_points) * step / 0.5
            ys = np.maximum.accumulate(np.clip(ys, 0.0, 1.0)) + np.arange(len(ys)) * 1e-6
            ys /= ys[-1]
            image[c] = np.interp(np.clip(image[c], 0.0, 1.0), xs, ys).astype(np.float32)
        return image


class Blur(Augmenter):
    """Gaussian blur with a random lateral sigma; the z sigma is divided by the anisotropy.

    Args:
        sigma: ``(low, high)`` range of the lateral sigma in voxels.
        channels: Channels to blur (None = all).
        probability: Chance to act on an example.
    """

    def __init__(self, sigma: tuple[float, float] = (0.0, 1.5), channels: list[int] | None = None,
                 probability: float = 1.0):
        super().__init__(probability, channels)
        lo, hi = (float(s) for s in sigma)
        if not 0 <= lo <= hi:
            raise ConfigError(f"blur: sigma must be a (low, high) range with 0 <= low <= high, got {sigma}")
        self.sigma = (lo, hi)

    def __call__(self, image: np.ndarray, rng: np.random.Generator, ctx: PatchContext) -> np.ndarray:
        from scipy.ndimage import gaussian_filter

        s = rng.uniform(*self.sigma)
        if s > 0:
            sigmas = (s / ctx.aniso_factor, s, s)
            for c in self.selected(image):
                image[c] = gaussian_filter(image[c], sigmas, mode="reflect")
        return image


class Noise(Augmenter):
    """Additive noise: Gaussian with standard deviation ``std`` or uniform in ±``std``·√3.

    Args:
        std: Noise standard deviation (grey values).
        distribution: ``"gaussian"`` or ``"uniform"``.
        clip: Clip the result to [0, 1].
        channels: Channels to change (None = all).
        probability: Chance to act on an example.
    """

    def __init__(self, std: float = 0.05, distribution: str = "gaussian", clip: bool = False,
                 channels: list[int] | None = None, probability: float = 1.0):
        super().__init__(probability, channels)
        if distribution not in ("gaussian", "uniform") or std < 0:
            raise ConfigError(f"noise: distribution must be 'gaussian' or 'uniform' and std >= 0, got "
                              f"{distribution!r}, {std}")
        self.std, self.distribution, self.clip = float(std), distribution, clip

    def __call__(self, image: np.ndarray, rng: np.random.Generator, ctx: PatchContext) -> np.ndarray:
        for c in self.selected(image):
            shape = image[c].shape
            if self.distribution == "gaussian":
                noise = rng.standard_normal(shape, dtype=np.float32) * np.float32(self.std)
            else:
                half = np.float32(self.std * np.sqrt(3.0))
                noise = rng.uniform(-half, half, size=shape).astype(np.float32)
            image[c] += noise
            if self.clip:
                np.clip(image[c], 0.0, 1.0, out=image[c])
        return image
