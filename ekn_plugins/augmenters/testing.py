"""Conformance checks for augmenter plugins: ``check_augmenter`` (the augmenters' part of
:mod:`ekn_core.testing`, here because the augmenter protocol lives in ``ekn_plugins``).

``check_augmenter(name, **options)`` builds the ``ekn.augmenters`` entry ``name`` from a config
entry ``{"type": name, **options}`` as a patch source does, and checks:

1. it provides what an augmenter must (:func:`~ekn_plugins.augmenters.base.augmenter_problem`)
   and takes ``options`` and ``probability``, and its :meth:`~.base.Augmenter.check` accepts the
   patches;
2. an intensity augmenter returns a finite float32 image of the same shape; a geometric one a
   :class:`~.transform.Transform` with a finite matrix;
3. the same seed gives the same result (all randomness from the ``rng`` passed in);
4. with ``probability=0`` the pipeline leaves the image as it is (the identity transform);
5. an intensity augmenter that takes ``channels`` changes only those.

It raises ``AssertionError`` naming the failed check, else returns a small report.

Example:
    >>> check_augmenter("noise", std=0.1)
    {'geometric': False, 'changes': True}
    >>> check_augmenter("flip")["geometric"]
    True
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from ekn_plugins.augmenters.base import Pipeline, augmenter_problem
from ekn_plugins.augmenters.transform import Transform


def check_augmenter(name: str, image_shape: tuple[int, int, int, int] = (2, 5, 16, 16), aniso_factor: float = 1.0,
                    seed: int = 0, **options: Any) -> dict[str, Any]:
    """Runs the conformance battery on the augmenter ``name`` (see module docs).

    Args:
        name: Its ``ekn.augmenters`` entry name.
        image_shape: ``(c, z, y, x)`` of the image patches (two channels or more for check 5).
        aniso_factor: z spacing / lateral spacing of the data the patches come from.
        seed: Seed of the image and the augmenter's ``rng``.
        **options: Its config options (besides ``type``).

    Returns:
        ``{"geometric", "changes"}``: whether it is geometric, and whether it changed the image
        (a transform other than the identity) with ``probability=1``.
    """
    from ekn_core.plugins import registry

    cls = registry("augmenters").get(name)
    problem = augmenter_problem(cls, name)
    assert problem is None, f"augmenter {name!r}: {problem}"
    takes = inspect.signature(cls.__init__).parameters
    assert "probability" in takes or any(p.kind is p.VAR_KEYWORD for p in takes.values()), \
        f"augmenter {name!r} takes no probability (pass it on to Augmenter.__init__)"
    pipeline = Pipeline.from_config([{"type": name, **options, "probability": 1.0}])
    augmenter = pipeline.augmenters[0]
    ctx = pipeline.context(image_shape[1:], aniso_factor)
    pipeline.check(ctx)
    off = Pipeline.from_config([{"type": name, **options, "probability": 0.0}])
    if augmenter.geometric:
        first, again = (augmenter.transform(np.random.default_rng(seed), ctx) for _ in range(2))
        assert isinstance(first, Transform), f"{name}.transform returned {type(first).__name__}, not a Transform"
        assert np.isfinite(first.linear).all(), f"{name}.transform gave a matrix that is not finite: {first.linear}"
        parts = ("linear", "displacement", "slice_shift")
        assert all((getattr(first, a) is None and getattr(again, a) is None) or
                   np.array_equal(getattr(first, a), getattr(again, a)) for a in parts), \
            f"{name}.transform gave another transform for the same seed: use only the rng it is given"
        identity = off.sample_transform(np.random.default_rng(seed), off.context(image_shape[1:], aniso_factor))
        assert np.array_equal(identity.linear, np.eye(4)), f"{name} with probability=0 still transforms"
        return {"geometric": True, "changes": not np.array_equal(first.linear, np.eye(4)) or
                first.displacement is not None or first.slice_shift is not None}
    image = np.random.default_rng(seed).random(image_shape, dtype=np.float32)
    first, again = (augmenter(image.copy(), np.random.default_rng(seed + 1), ctx) for _ in range(2))
    assert isinstance(first, np.ndarray) and first.shape == image.shape and first.dtype == np.float32, (
        f"{name} returned {type(first).__name__} {getattr(first, 'shape', '')} {getattr(first, 'dtype', '')}, "
        f"not a float32 image of shape {image.shape}")
    assert np.isfinite(first).all(), f"{name} returned values that are not finite"
    assert np.array_equal(first, again), f"{name} gave another image for the same seed: use only the rng it is given"
    unchanged = off.augment_image(image.copy(), np.random.default_rng(seed + 1), ctx)
    assert np.array_equal(unchanged, image), f"{name} with probability=0 still changes the image"
    if "channels" in takes and image_shape[0] > 1:
        one = Pipeline.from_config([{"type": name, **options, "probability": 1.0, "channels": [0]}]).augmenters[0]
        out = one(image.copy(), np.random.default_rng(seed + 1), ctx)
        assert np.array_equal(out[1:], image[1:]), f"{name} with channels=[0] changes other channels too"
    return {"geometric": False, "changes": not np.array_equal(first, image)}

