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
from ekn_plugins.augmenters.base import Augmenter, PatchContext, number, value_range


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
        self.contrast, self.brightness, self.gamma = (number("grey", name, value, minimum=0) for name, value in
                                                      (("contrast", contrast), ("brightness", brightness),
                                                       ("gamma", gamma)))

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

    The curve maps [0, 1] onto [0, 1]: its ``n_points`` inner nodes, equally spaced in [0, 1],
    are moved up or down by up to ``strength`` grey values (uniformly; clipped to [0, 1], and a
    node is raised to the one before it where they would cross). It is increasing, so grey-value
    order is kept (up to 1e-6 per node, which keeps it strictly increasing).

    Args:
        strength: Largest change of a curve node, in grey values (0 ≤ strength < 0.5).
        n_points: Number of inner nodes.
        channels: Channels to change (None = all).
        probability: Chance to act on an example.
    """

    def __init__(self, strength: float = 0.1, n_points: int = 4, channels: list[int] | None = None,
                 probability: float = 1.0):
        super().__init__(probability, channels)
        strength = number("histogram", "strength", strength, minimum=0)
        n_points = int(number("histogram", "n_points", n_points, minimum=1, integer=True))
        if strength >= 0.5:
            raise ConfigError(f"histogram: strength must be < 0.5, got {strength}")
        self.strength, self.n_points = strength, n_points

    def curve(self, rng: np.random.Generator) -> np.ndarray:
        """The node values of one random tone curve at ``linspace(0, 1, n_points + 2)``."""
        ys = np.linspace(0.0, 1.0, self.n_points + 2)
        ys[1:-1] += rng.uniform(-self.strength, self.strength, self.n_points)
        ys = np.maximum.accumulate(np.clip(ys, 0.0, 1.0)) + np.arange(len(ys)) * 1e-6
        return ys / ys[-1]

    def __call__(self, image: np.ndarray, rng: np.random.Generator, ctx: PatchContext) -> np.ndarray:
        segments = self.n_points + 1
        for c in self.selected(image):
            ys = self.curve(rng)
            rise = np.diff(ys)  # segment i: y = ys[i] + rise[i] * (s - i), s = x * segments
            slope, intercept = rise.astype(np.float32), (ys[:-1] - rise * np.arange(segments)).astype(np.float32)
            s = np.clip(image[c], 0.0, 1.0)
            s *= np.float32(segments)
            i = s.astype(np.int32)
            np.minimum(i, segments - 1, out=i)
            out = slope[i]
            out *= s
            out += intercept[i]
            image[c] = out
        return image


class Blur(Augmenter):
    """Gaussian blur with a random lateral sigma; the z sigma is divided by the patch's z step in
    lateral voxels (``ctx.output_aniso``: the data's anisotropy, 1 for isotropically sampled
    patches), so the blur is isotropic in physical units.

    Args:
        sigma: ``(low, high)`` range of the lateral sigma in voxels, or one number (a fixed sigma).
        channels: Channels to blur (None = all).
        probability: Chance to act on an example.
    """

    def __init__(self, sigma: tuple[float, float] | float = (0.0, 1.5), channels: list[int] | None = None,
                 probability: float = 1.0):
        super().__init__(probability, channels)
        self.sigma = value_range("blur", "sigma", sigma)

    def __call__(self, image: np.ndarray, rng: np.random.Generator, ctx: PatchContext) -> np.ndarray:
        from scipy.ndimage import gaussian_filter

        s = rng.uniform(*self.sigma)
        if s > 0:
            sigmas = (s / ctx.output_aniso, s, s)
            for c in self.selected(image):
                image[c] = gaussian_filter(image[c], sigmas, mode="reflect")
        return image


def standard_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Independent standard normal float32 samples, by the Box–Muller transform.

    Three to four times as fast as ``rng.standard_normal(shape, dtype=np.float32)`` (numpy's float32
    ziggurat spends most of the ``noise`` augmenter's time). Each pair of samples takes one 64-bit
    draw of ``rng``: 32 bits for the radius, so ``|z| <= 6.77`` (a Gaussian's mass beyond is
    1.3e-11), and 24 for the angle. The same generator state gives the same samples.

    Args:
        rng: Random generator (advanced by ``ceil(size / 2)`` 64-bit draws).
        shape: Shape of the result.

    Returns:
        A new float32 array of ``shape``.

    Example:
        >>> z = standard_normal(np.random.default_rng(0), (1000, 1001))
        >>> z.dtype, round(float(z.mean()), 2), round(float(z.std()), 2)
        (dtype('float32'), 0.0, 1.0)
    """
    n = int(np.prod(shape))
    m = (n + 1) // 2
    words = rng.bit_generator.random_raw(m).view(np.uint32)  # 2m independent random 32-bit words
    out = words.view(np.float32)  # the samples replace their words, element by element
    radius, angle = out[:m], out[m:]
    np.multiply(words[:m], np.float32(2.0 ** -32), out=radius, dtype=np.float32, casting="unsafe")
    radius += np.float32(2.0 ** -33)  # uniform in (0, 1]
    np.log(radius, out=radius)
    radius *= np.float32(-2.0)
    np.sqrt(radius, out=radius)
    np.right_shift(words[m:], 8, out=words[m:])
    np.multiply(words[m:], np.float32(2 * np.pi / 2 ** 24), out=angle, dtype=np.float32,
                casting="unsafe")  # uniform in [0, 2π)
    cos = np.cos(angle)
    np.sin(angle, out=angle)
    angle *= radius
    radius *= cos
    return out[:n].reshape(shape)


class Noise(Augmenter):
    """Additive noise: Gaussian with standard deviation ``std`` or uniform in ±``std``·√3.

    The Gaussian samples come from :func:`standard_normal`, the uniform ones from
    ``rng.random(dtype=np.float32)``, computed in float32 without temporaries.

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
        std = number("noise", "std", std, minimum=0)
        if distribution not in ("gaussian", "uniform"):
            raise ConfigError(f"noise: distribution must be 'gaussian' or 'uniform', got {distribution!r}")
        self.std, self.distribution, self.clip = std, distribution, clip

    def __call__(self, image: np.ndarray, rng: np.random.Generator, ctx: PatchContext) -> np.ndarray:
        for c in self.selected(image):
            shape = image[c].shape
            if self.distribution == "gaussian":
                noise = standard_normal(rng, shape)
                noise *= np.float32(self.std)
            else:
                noise = rng.random(shape, dtype=np.float32)
                noise -= np.float32(0.5)
                noise *= np.float32(2 * self.std * np.sqrt(3.0))  # uniform in ±std·√3
            image[c] += noise
            if self.clip:
                np.clip(image[c], 0.0, 1.0, out=image[c])
        return image
