"""The augmenter protocol and the pipeline that composes augmenters from a config list.

An augmenter is a class registered under ``ekn.augmenters``, constructed from config keyword
arguments. There are two kinds:

- *geometric* augmenters (``geometric = True``) implement ``transform(rng, ctx) -> Transform``.
  The pipeline composes all of them into one :class:`~.transform.Transform` that the patch
  source applies while cutting, so image and labels are resampled once, consistently
  (trilinear / nearest neighbour), and never outside the data;
- *intensity* augmenters implement ``__call__(image, rng, ctx) -> image`` on a float32
  ``(c, z, y, x)`` image patch (labels are left alone).

Every augmenter takes ``probability`` (chance to act on an example, default 1). All randomness
comes from the ``numpy.random.Generator`` passed in, so a pipeline is deterministic for a seed.

Example:
    >>> import numpy as np
    >>> pipe = Pipeline.from_config([{"type": "flip"}, {"type": "noise", "std": 0.1}])
    >>> [type(a).__name__ for a in pipe.augmenters]
    ['Flip', 'Noise']
    >>> ctx = PatchContext(patch_shape=(4, 8, 8), aniso_factor=2.0)
    >>> t = pipe.sample_transform(np.random.default_rng(0), ctx)
    >>> np.abs(np.diag(t.linear)).tolist()
    [1.0, 1.0, 1.0, 1.0]
    >>> img = pipe.augment_image(np.zeros((1, 4, 8, 8), np.float32), np.random.default_rng(0), ctx)
    >>> bool(img.std() > 0)
    True
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ekn_core.errors import ConfigError
from ekn_plugins.augmenters.transform import Transform


@dataclass(frozen=True)
class PatchContext:
    """What augmenters may know about the patch they act on.

    Attributes:
        patch_shape: Spatial ``(z, y, x)`` shape of the input patch.
        aniso_factor: z spacing / lateral spacing of the data.
    """

    patch_shape: tuple[int, int, int]
    aniso_factor: float = 1.0


class Augmenter:
    """Base class of every augmenter.

    Args:
        probability: Chance (0–1) that the augmenter acts on an example.
        channels: Image channels an intensity augmenter changes (None = all).
    """

    geometric: bool = False

    def __init__(self, probability: float = 1.0, channels: Sequence[int] | None = None):
        if not 0.0 <= float(probability) <= 1.0:
            raise ConfigError(f"{type(self).__name__}: probability must be in [0, 1], got {probability}")
        self.probability = float(probability)
        self.channels = None if channels is None else [int(c) for c in channels]

    def active(self, rng: np.random.Generator) -> bool:
        """Draws whether to act on this example (always draws, to keep streams aligned)."""
        return bool(rng.random() < self.probability)

    def selected(self, image: np.ndarray) -> list[int]:
        """Channel indices of ``image`` this augmenter changes."""
        if self.channels is None:
            return list(range(image.shape[0]))
        bad = [c for c in self.channels if not 0 <= c < image.shape[0]]
        if bad:
            raise ConfigError(f"{type(self).__name__}: channels {bad} do not exist; the image has "
                              f"{image.shape[0]} channel(s)")
        return self.channels

    def check(self, ctx: PatchContext) -> None:
        """Raises :class:`~ekn_core.errors.ConfigError` when the options cannot work for patches
        described by ``ctx`` (called once by the data source; nothing to check by default)."""

    def transform(self, rng: np.random.Generator, ctx: PatchContext) -> Transform:
        """Geometric augmenters: the transform for one example."""
        raise NotImplementedError(f"{type(self).__name__} is not a geometric augmenter")

    def __call__(self, image: np.ndarray, rng: np.random.Generator, ctx: PatchContext) -> np.ndarray:
        """Intensity augmenters: the augmented image (may modify ``image`` in place)."""
        raise NotImplementedError(f"{type(self).__name__} is not an intensity augmenter")

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


def build_augmenter(spec: dict[str, Any] | Augmenter) -> Augmenter:
    """One augmenter from ``{"type": name, **kwargs}`` (names from the ``ekn.augmenters`` registry)."""
    if isinstance(spec, Augmenter):
        return spec
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(f"an augmenter is written as {{'type': NAME, ...}}, got {spec!r}")
    from ekn_core.plugins import registry

    kwargs = {k: v for k, v in spec.items() if k != "type"}
    cls = registry("augmenters").get(spec["type"])
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params) - {"self"})
        if unknown:
            allowed = sorted(set(params) - {"self"})
            raise ConfigError(f"augmenter {spec['type']!r} has no option(s) {unknown}; it accepts {allowed}")
    return cls(**kwargs)


class Pipeline:
    """An ordered list of augmenters, built from config.

    Args:
        augmenters: Augmenter instances or ``{"type": ..., ...}`` dicts.
    """

    def __init__(self, augmenters: Sequence[dict[str, Any] | Augmenter] = ()):
        self.augmenters = [build_augmenter(a) for a in augmenters]

    @classmethod
    def from_config(cls, config: Sequence[dict[str, Any]] | None) -> Pipeline:
        """A pipeline from a config list (None or empty = no augmentation)."""
        if config is not None and not isinstance(config, (list, tuple)):
            raise ConfigError(f"augmenters must be a list of {{'type': ...}} dicts, got {config!r}")
        return cls(config or ())

    @property
    def geometric(self) -> list[Augmenter]:
        return [a for a in self.augmenters if a.geometric]

    @property
    def intensity(self) -> list[Augmenter]:
        return [a for a in self.augmenters if not a.geometric]

    def check(self, ctx: PatchContext) -> Pipeline:
        """Checks every augmenter's options against the patches of ``ctx``; returns the pipeline."""
        for aug in self.augmenters:
            aug.check(ctx)
        return self

    def sample_transform(self, rng: np.random.Generator, ctx: PatchContext) -> Transform:
        """Composes one random transform from the geometric augmenters (identity if none act)."""
        total = Transform.identity()
        for aug in self.geometric:
            if aug.active(rng):
                total = total.compose(aug.transform(rng, ctx))
        return total

    def augment_image(self, image: np.ndarray, rng: np.random.Generator, ctx: PatchContext) -> np.ndarray:
        """Applies the intensity augmenters in order to a ``(c, z, y, x)`` float32 image."""
        for aug in self.intensity:
            if aug.active(rng):
                image = aug(image, rng, ctx)
        return image

    def __len__(self) -> int:
        return len(self.augmenters)

    def __repr__(self) -> str:
        return f"Pipeline({self.augmenters!r})"
