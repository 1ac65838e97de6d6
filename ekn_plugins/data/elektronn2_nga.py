"""ELEKTRONN2's non-geometric augmentation arguments of ``getbatch`` as ekn augmenters.

ELEKTRONN2's ``BatchCreatorImage.getbatch`` took, besides ``warp``, ``warp_args`` and
``grey_augment_channels`` (:func:`~ekn_plugins.data.patches.elektronn2_pipeline`), the arguments
in :data:`NGA_ARGS`. :func:`nga_augmenters` turns them into augmenter specs in ELEKTRONN2's order
(after ``grey``): ``nga_blur_noise_probability`` → ``noise`` (uniform in ±0.075, the only part of
it that took effect: ELEKTRONN2 discarded the blurred image), then ``blurry_blobs``, the uniform
and then the noisy ``random_erasing``. The ``*_args`` keys are ELEKTRONN2's
(``num_blob_range`` and ``blob_size_range`` are numpy ``randint`` ranges, high excluded; ekn's
ranges include it).

Differences: the boxes are cubes in physical units (ELEKTRONN2's were cubes in voxels, so as deep
in sections as wide in pixels) and shared by all channels (ELEKTRONN2 drew them for each
channel); a box side is any whole number in ``blob_size_range`` (ELEKTRONN2 rounded it down to an
even one) and a box larger than the patch is cut to it (ELEKTRONN2 stopped adding boxes); the
noise of ``noisy_random_erasing`` is uniform in ``(0, 1)`` unless ``noise_range`` is given
(ELEKTRONN2's default ``(0, 255)`` assumed grey values in 0–255, but its patches hold 0–1); a
random blob sigma (``diffuseness`` None or 0) is uniform in [1, 5] (ELEKTRONN2: a whole number).

Example:
    >>> [type(aug).__name__ for aug in nga_augmenters(nga_blur_noise_probability=0.5, blurry_blobs_probability=0.1,
    ...                                          uniform_random_erasing_probability=0.2,
    ...                                          uniform_random_erasing_args={"value": 0, "blob_size_range": (4, 9)})]
    ['Noise', 'BlurryBlobs', 'RandomErasing']
    >>> nga_augmenters(noisy_random_erasing_probability=1, noisy_random_erasing_args={"num_blobs": 3})
    Traceback (most recent call last):
    ...
    ekn_core.errors.ConfigError: noisy_random_erasing_args ['num_blobs'] are not supported; known: ['blob_size_range', 'noise_range', 'num_blob_range']
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ekn_core.errors import ConfigError
from ekn_plugins.augmenters.base import Augmenter, build_augmenter
from ekn_plugins.augmenters.occlusion import count_range

#: ``getbatch``'s ELEKTRONN2 arguments that :func:`nga_augmenters` translates.
NGA_ARGS = ("nga_blur_noise_probability", "blurry_blobs_probability", "blurry_blobs_args",
            "noisy_random_erasing_probability", "noisy_random_erasing_args", "uniform_random_erasing_probability",
            "uniform_random_erasing_args")

#: Standard deviation of ELEKTRONN2's noise ``0.15 * (U(0, 1) - 0.5)``.
NOISE_STD = 0.15 / np.sqrt(12.0)

#: For each ``*_args``: ELEKTRONN2's key → the ekn augmenter option it sets.
ARG_KEYS = {
    "blurry_blobs": {"diffuseness": "sigma", "num_blob_range": "count", "blob_size_range": "size"},
    "noisy_random_erasing": {"noise_range": "noise_range", "num_blob_range": "count", "blob_size_range": "size"},
    "uniform_random_erasing": {"value": "fill", "num_blob_range": "count", "blob_size_range": "size"},
}

#: ELEKTRONN2's keys holding numpy ``randint`` ranges (high excluded).
HALF_OPEN = ("num_blob_range", "blob_size_range")


def probability(name: str, value: Any) -> float:
    """ELEKTRONN2's probability argument ``name`` (a number in [0, 1], or True / False) as a float.

    Example:
        >>> probability("blurry_blobs_probability", True), probability("blurry_blobs_probability", 0.25)
        (1.0, 0.25)
    """
    ok = isinstance(value, (bool, int, float, np.integer, np.floating)) and 0 <= value <= 1
    if not ok:
        raise ConfigError(f"{name} must be a probability in [0, 1] (or True / False), got {value!r}")
    return float(value)


def options(name: str, args: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ekn options that ELEKTRONN2's ``{name}_args`` set (see :data:`ARG_KEYS`).

    Example:
        >>> options("blurry_blobs", {"diffuseness": 2, "num_blob_range": (5, 15)})
        {'sigma': 2, 'count': (5, 14)}
    """
    where = f"{name}_args"
    if args is None:
        return {}
    if not isinstance(args, Mapping):
        raise ConfigError(f"{where} must be a dict of {sorted(ARG_KEYS[name])}, got {args!r}")
    keys = ARG_KEYS[name]
    unknown = sorted(set(args) - set(keys))
    if unknown:
        raise ConfigError(f"{where} {unknown} are not supported; known: {sorted(keys)}")
    out = {}
    for key, value in args.items():
        if key in HALF_OPEN:
            low, high = count_range(where, key, value, 0)
            if high <= low:
                raise ConfigError(f"{where}: {key} is drawn from [low, high) as in ELEKTRONN2, so high must exceed "
                                  f"low, got {value!r}")
            value = (low, high - 1)
        out[keys[key]] = value
    return out


def _named_specs(nga_blur_noise_probability: bool | float = 0.0, blurry_blobs_probability: bool | float = 0.0,
                 blurry_blobs_args: Mapping[str, Any] | None = None,
                 noisy_random_erasing_probability: bool | float = 0.0,
                 noisy_random_erasing_args: Mapping[str, Any] | None = None,
                 uniform_random_erasing_probability: bool | float = 0.0,
                 uniform_random_erasing_args: Mapping[str, Any] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """``(ELEKTRONN2 name, augmenter spec)`` of each argument with a probability above 0, in its
    order; every ``*_args`` given is checked, also where its probability is 0."""
    blobs = options("blurry_blobs", blurry_blobs_args)
    blobs["sigma"] = blobs.get("sigma") or (1.0, 5.0)  # no diffuseness: a random one for each blob
    uniform = options("uniform_random_erasing", uniform_random_erasing_args)
    noisy = {"fill": "noise", **options("noisy_random_erasing", noisy_random_erasing_args)}
    wanted = [("nga_blur_noise", nga_blur_noise_probability, {"type": "noise", "distribution": "uniform",
                                                              "std": NOISE_STD}),
              ("blurry_blobs", blurry_blobs_probability, {"type": "blurry_blobs", **blobs}),
              ("uniform_random_erasing", uniform_random_erasing_probability, {"type": "random_erasing", **uniform}),
              ("noisy_random_erasing", noisy_random_erasing_probability, {"type": "random_erasing", **noisy})]
    specs = []
    for name, chance, spec in wanted:
        chance = probability(f"{name}_probability", chance)
        if not chance:
            continue
        if name == "uniform_random_erasing" and "fill" not in spec:
            raise ConfigError("uniform_random_erasing_args needs 'value', the grey value of the erased boxes "
                              "(ELEKTRONN2 had no default either)")
        specs.append((name, {**spec, "probability": chance}))
    return specs


def nga_specs(**nga_args: Any) -> list[dict[str, Any]]:
    """The augmenter specs (``{"type": ..., ...}``, as in ``augmenters``) equivalent to ELEKTRONN2's
    non-geometric ``getbatch`` arguments :data:`NGA_ARGS` (see the module), in its order: one for
    each probability above 0 (an ``*_args`` without its probability adds nothing, but is checked).

    Example:
        >>> nga_specs(blurry_blobs_probability=0.3, blurry_blobs_args={"diffuseness": 2},
        ...           uniform_random_erasing_args={"value": 0})
        [{'type': 'blurry_blobs', 'sigma': 2, 'probability': 0.3}]
    """
    return [spec for _, spec in _named_specs(**nga_args)]


def nga_augmenters(**nga_args: Any) -> list[Augmenter]:
    """The augmenters of :func:`nga_specs`, built (an option an augmenter refuses is named with
    the ELEKTRONN2 keys that set the options)."""
    augmenters = []
    for name, spec in _named_specs(**nga_args):
        try:
            augmenters.append(build_augmenter(spec))
        except ConfigError as err:
            keys = ", ".join(f"{key} → {option}" for key, option in ARG_KEYS.get(name, {}).items())
            raise ConfigError(f"{name}_args: {err} (ELEKTRONN2's keys set these options: {keys})") from None
    return augmenters
