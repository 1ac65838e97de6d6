"""The augmenter protocol and the pipeline that composes augmenters from a config list.

An augmenter is a class registered under ``ekn.augmenters``, constructed from config keyword
arguments. There are two kinds:

- *geometric* augmenters (``geometric = True``) implement ``transform(rng, ctx) -> Transform``.
  The pipeline composes all of them into one :class:`~.transform.Transform` that the patch
  source applies while cutting, so image and labels are resampled once, consistently
  (trilinear / nearest neighbour), and never outside the data;
- *intensity* augmenters implement ``__call__(image, rng, ctx) -> image`` on a float32
  ``(c, z, y, x)`` image patch (labels are left alone).

Every augmenter takes ``probability`` (chance to act on an example, default 1). Which geometric
augmenters act is drawn once per example (:meth:`Pipeline.active_geometric`); a data source that
refuses a transform draws only their parameters again (:meth:`Pipeline.compose`), so each acts
with its probability. Options are checked when an augmenter is built: a wrong type or value is a
:class:`~ekn_core.errors.ConfigError` naming augmenter and option (:func:`number`,
:func:`value_range`, :func:`indices`; a range may be given as one number). All randomness comes
from the ``numpy.random.Generator`` passed in, so a pipeline is deterministic for a seed.

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
import time
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
        iso_output: The patch is sampled isotropically (a ``warp`` with ``sample_aniso=False`` in
            the pipeline): its z step equals the lateral step, so one data section is
            ``aniso_factor`` output sections thick.
        target_box: ``((z0, y0, x0), (z1, y1, x1))``: the box of patch coordinates the patch and
            its target grid cover (beyond the patch where a net's offsets are negative); None:
            the patch.

    Example:
        >>> ctx = PatchContext((9, 33, 33), aniso_factor=2.0, iso_output=True)
        >>> ctx.output_aniso, ctx.section_thickness
        (1.0, 2.0)
        >>> PatchContext((5, 21, 21), target_box=((0, -8, -8), (4, 28, 28))).box
        ((0.0, -8.0, -8.0), (4.0, 28.0, 28.0))
    """

    patch_shape: tuple[int, int, int]
    aniso_factor: float = 1.0
    iso_output: bool = False
    target_box: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None

    @property
    def output_aniso(self) -> float:
        """z step / lateral step of the output patch: ``aniso_factor``, or 1 with ``iso_output``."""
        return 1.0 if self.iso_output else float(self.aniso_factor)

    @property
    def section_thickness(self) -> float:
        """Output sections per data section: 1, or ``aniso_factor`` with ``iso_output``."""
        return float(self.aniso_factor) / self.output_aniso

    @property
    def box(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The box of patch coordinates that the patch and its targets cover (see ``target_box``)."""
        lo, hi = np.zeros(3), np.asarray(self.patch_shape, dtype=np.float64) - 1
        if self.target_box is not None:
            lo, hi = np.minimum(lo, self.target_box[0]), np.maximum(hi, self.target_box[1])
        return tuple(lo.tolist()), tuple(hi.tolist())


def number(owner: str, name: str, value: Any, minimum: float | None = None, integer: bool = False) -> float:
    """An augmenter option that is one number (``minimum`` or more), or a :class:`ConfigError`
    naming the augmenter ``owner`` and the option.

    Example:
        >>> number("warp", "rotation", 30)
        30.0
        >>> number("warp", "rotation", "30")
        Traceback (most recent call last):
        ...
        ekn_core.errors.ConfigError: warp: rotation must be a number, got '30'
    """
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    kind = "a whole number" if integer else "a number"
    if not ok or not np.isfinite(value) or (integer and value != int(value)):
        raise ConfigError(f"{owner}: {name} must be {kind}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{owner}: {name} must be {kind} >= {minimum:g}, got {value!r}")
    return float(value)


def value_range(owner: str, name: str, value: Any) -> tuple[float, float]:
    """An augmenter option that is a ``(low, high)`` range with ``0 <= low <= high``; one number
    ``v`` means ``(v, v)``. Anything else is a :class:`ConfigError` naming augmenter and option.

    Example:
        >>> value_range("blur", "sigma", 1.0), value_range("blur", "sigma", [0, 2])
        ((1.0, 1.0), (0.0, 2.0))
        >>> value_range("blur", "sigma", (2, 1))
        Traceback (most recent call last):
        ...
        ekn_core.errors.ConfigError: blur: sigma must be a number or a (low, high) range ... got (2, 1)
    """
    values = [value] * 2 if not isinstance(value, (list, tuple, np.ndarray)) else list(value)
    expected = f"{owner}: {name} must be a number or a (low, high) range with 0 <= low <= high, got {value!r}"
    try:
        low, high = (number(owner, name, v, minimum=0) for v in values)
    except (ConfigError, ValueError):
        raise ConfigError(expected) from None
    if low > high:
        raise ConfigError(expected)
    return low, high


def indices(owner: str, name: str, value: Any) -> tuple[int, ...]:
    """An augmenter option that lists indices (axes, channels); one index ``i`` means ``(i,)``.

    Example:
        >>> indices("flip", "axes", 2), indices("flip", "axes", [1, 2])
        ((2,), (1, 2))
        >>> indices("flip", "axes", "yx")
        Traceback (most recent call last):
        ...
        ekn_core.errors.ConfigError: flip: axes must be an index or a list of indices (whole numbers >= 0), got 'yx'
    """
    values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
    try:
        return tuple(int(number(owner, name, v, minimum=0, integer=True)) for v in values)
    except ConfigError:
        raise ConfigError(f"{owner}: {name} must be an index or a list of indices (whole numbers >= 0), "
                          f"got {value!r}") from None


class Augmenter:
    """Base class of every augmenter.

    Args:
        probability: Chance (0–1) that the augmenter acts on an example.
        channels: Image channels an intensity augmenter changes (None = all).
    """

    geometric: bool = False

    #: Geometric augmenters: every patch of a pipeline with this augmenter is sampled
    #: isotropically (:attr:`PatchContext.iso_output`), whether or not it acts on the patch.
    iso_output: bool = False

    def __init__(self, probability: float = 1.0, channels: Sequence[int] | int | None = None):
        name = type(self).__name__
        self.probability = number(name, "probability", probability, minimum=0)
        if self.probability > 1:
            raise ConfigError(f"{name}: probability must be in [0, 1], got {probability}")
        self.channels = None if channels is None else list(indices(name, "channels", channels))

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


def augmenter_problem(obj: Any, name: str) -> str | None:
    """What the ``ekn.augmenters`` entry ``obj`` lacks (None: nothing): an :class:`Augmenter`
    subclass with ``transform`` (``geometric = True``) or ``__call__`` (intensity). The check of
    :func:`ekn_core.plugin_checks.checked` for this kind.

    Example:
        >>> class Darken(Augmenter):
        ...     def __cal__(self, image, rng, ctx):
        ...         return image * 0.5
        >>> print(augmenter_problem(Darken, "darken"))
        Darken defines no __call__(self, image, rng, ctx) (an intensity augmenter; a geometric one says
        geometric = True and defines transform(self, rng, ctx))
    """
    from ekn_core.plugin_checks import describe

    if not (isinstance(obj, type) and issubclass(obj, Augmenter)):
        return f"{describe(obj)} is not a subclass of ekn_plugins.augmenters.base.Augmenter"
    if obj.geometric and obj.transform is Augmenter.transform:
        return f"{obj.__name__} says geometric = True but defines no transform(self, rng, ctx)"
    if not obj.geometric and obj.__call__ is Augmenter.__call__:
        return (f"{obj.__name__} defines no __call__(self, image, rng, ctx) (an intensity augmenter; a geometric one "
                "says geometric = True and defines transform(self, rng, ctx))")
    return None


def build_augmenter(spec: dict[str, Any] | Augmenter) -> Augmenter:
    """One augmenter from ``{"type": name, **kwargs}`` (names from the ``ekn.augmenters`` registry,
    refused with a :class:`~ekn_core.errors.BrokenPluginError` when :func:`augmenter_problem` finds
    something missing)."""
    if isinstance(spec, Augmenter):
        return spec
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(f"an augmenter is written as {{'type': NAME, ...}}, got {spec!r}")
    from ekn_core.plugin_checks import checked

    kwargs = {k: v for k, v in spec.items() if k != "type"}
    cls = checked("augmenters", spec["type"], augmenter_problem)
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params) - {"self"})
        if unknown:
            allowed = sorted(set(params) - {"self"})
            raise ConfigError(f"augmenter {spec['type']!r} has no option(s) {unknown}; it accepts {allowed}")
    return cls(**kwargs)


class Pipeline:
    """An ordered list of augmenters, built from config.

    The pipeline times each augmenter (:meth:`timings`): geometric ones in ``transform`` (drawing
    their parameters; the resampling is the data source's and not included), intensity ones in
    ``__call__`` when they act.

    Args:
        augmenters: Augmenter instances or ``{"type": ..., ...}`` dicts.
    """

    def __init__(self, augmenters: Sequence[dict[str, Any] | Augmenter] = ()):
        augmenters = list(augmenters)
        self.augmenters = [build_augmenter(a) for a in augmenters]
        names = [a["type"] if isinstance(a, dict) else type(a).__name__ for a in augmenters]
        self._labels = [name if names[:i].count(name) == 0 else f"{name}#{names[:i].count(name) + 1}"
                        for i, name in enumerate(names)]
        self._calls = [0] * len(self.augmenters)
        self._seconds = [0.0] * len(self.augmenters)

    def _timed(self, index: int | None, method: Any, *args: Any) -> Any:
        """``method(*args)`` (a method of the augmenter at ``index``), its call and seconds added to
        :meth:`timings` (None: an augmenter that is not this pipeline's, untimed)."""
        if index is None:
            return method(*args)
        start = time.perf_counter()
        result = method(*args)
        self._seconds[index] += time.perf_counter() - start
        self._calls[index] += 1
        return result

    def _position(self, aug: Augmenter) -> int | None:
        """Where ``aug`` (this very object) is in the pipeline; None if it is not there."""
        return next((i for i, own in enumerate(self.augmenters) if own is aug), None)

    def timings(self) -> dict[str, dict[str, float]]:
        """Calls and seconds (``time.perf_counter``) of each augmenter since the pipeline was
        built, in pipeline order, by config ``type`` (class name for an instance; ``#2``, ``#3``
        for repeats): ``transform`` calls of a geometric augmenter (including the draws a data
        source refused, and those of its set-up check), ``__call__`` calls of an intensity one
        (when it acts).

        Example:
            >>> import numpy as np
            >>> pipe = Pipeline([{"type": "noise"}, {"type": "noise", "probability": 0}])
            >>> for _ in range(3):
            ...     _ = pipe.augment_image(np.zeros((1, 2, 4, 4), np.float32), np.random.default_rng(0),
            ...                            PatchContext((2, 4, 4)))
            >>> {name: t["calls"] for name, t in pipe.timings().items()}
            {'noise': 3, 'noise#2': 0}
        """
        return {name: {"calls": calls, "seconds": seconds}
                for name, calls, seconds in zip(self._labels, self._calls, self._seconds)}

    def describe_timings(self, examples: int) -> str:
        """:meth:`timings` as milliseconds per example over ``examples`` examples, one line.

        Example:
            >>> Pipeline([{"type": "flip"}, {"type": "grey"}]).describe_timings(10)
            'flip 0.000, grey 0.000 ms per example'
        """
        parts = [f"{name} {1000 * t['seconds'] / max(examples, 1):.3f}" for name, t in self.timings().items()]
        return ", ".join(parts) + " ms per example"

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

    def context(self, patch_shape: Sequence[int], aniso_factor: float = 1.0,
                target_box: tuple[Sequence[float], Sequence[float]] | None = None) -> PatchContext:
        """The :class:`PatchContext` of patches this pipeline makes (isotropic when it asks for it).

        Example:
            >>> pipe = Pipeline([{"type": "warp", "probability": 0.5, "sample_aniso": False}])
            >>> pipe.context((9, 33, 33), 2.0).iso_output
            True
        """
        box = None if target_box is None else tuple(tuple(float(v) for v in corner) for corner in target_box)
        return PatchContext(tuple(int(n) for n in patch_shape), float(aniso_factor), self.iso_output, box)

    def check(self, ctx: PatchContext) -> Pipeline:
        """Checks every augmenter's options against the patches of ``ctx``; returns the pipeline."""
        for aug in self.augmenters:
            aug.check(ctx)
        return self

    @property
    def iso_output(self) -> bool:
        """Whether the patches are sampled isotropically (a geometric augmenter asks for it)."""
        return any(a.iso_output for a in self.geometric)

    def active_geometric(self, rng: np.random.Generator) -> list[Augmenter]:
        """Draws which geometric augmenters act on an example (one draw per augmenter)."""
        return [aug for aug in self.geometric if aug.active(rng)]

    def compose(self, augmenters: Sequence[Augmenter], rng: np.random.Generator, ctx: PatchContext) -> Transform:
        """Draws the parameters of ``augmenters`` (those that act, :meth:`active_geometric`) and
        composes their transforms, in pipeline order, on the identity of ``ctx``'s output sampling.

        A data source that refuses a transform (it does not fit the data) draws it again with the
        same ``augmenters``, so each augmenter still acts with its ``probability``.
        """
        total = Transform.identity(iso_output=ctx.iso_output)
        for aug in augmenters:
            total = total.compose(self._timed(self._position(aug), aug.transform, rng, ctx))
        return total

    def sample_transform(self, rng: np.random.Generator, ctx: PatchContext) -> Transform:
        """One random transform: which geometric augmenters act, then their parameters (the
        identity of ``ctx``'s output sampling if none act)."""
        return self.compose(self.active_geometric(rng), rng, ctx)

    def augment_image(self, image: np.ndarray, rng: np.random.Generator, ctx: PatchContext) -> np.ndarray:
        """Applies the intensity augmenters in order to a ``(c, z, y, x)`` float32 image."""
        for index, aug in enumerate(self.augmenters):
            if not aug.geometric and aug.active(rng):
                image = self._timed(index, aug, image, rng, ctx)
        return image

    def __len__(self) -> int:
        return len(self.augmenters)

    def __repr__(self) -> str:
        return f"Pipeline({self.augmenters!r})"
