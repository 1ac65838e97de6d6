"""ELEKTRONN2's schedule modes: ``dec``, ``updates``, ``lindec`` and ``permut``."""

from __future__ import annotations

from typing import Any

import numpy as np

from ekn_core.errors import ConfigError
from ekn_core.schedules import Schedule, as_value_like, check_positive_int


class Dec(Schedule):
    """Multiplies the value by ``factor`` every ``every`` steps, forever (config ``{'dec': f}``).

    Args:
        factor: Multiplier (> 0).
        every: Interval in steps (default 1000, ELEKTRONN2's fixed interval).

    Example:
        >>> s = Dec(0.5, every=2)
        >>> [s.update(step, 8.0) for step in (2, 4)], s.next_update
        ([4.0, 4.0], 6)
    """

    def __init__(self, factor: float, every: int = 1000):
        if not isinstance(factor, (int, float)) or factor <= 0:
            raise ConfigError(f"dec: the factor must be a number > 0, got {factor!r}.")
        self.factor, self.every = float(factor), check_positive_int("dec", "every", every)
        self.next_update = self.every

    def _update(self, step: int, value: Any) -> Any:
        self.next_update = step + self.every
        return as_value_like(np.asarray(value, dtype=float) * self.factor, value)


class Updates(Schedule):
    """Sets the value at listed steps, then stops (config ``{'updates': [(step, value), ...]}``).

    Values may be lists (e.g. per-layer dropout rates).

    Args:
        points: ``(step, value)`` pairs with strictly increasing steps >= 0.

    Example:
        >>> s = Updates([(0, 0.9), (100, 0.99)])
        >>> s.update(0, None), s.next_update, s.update(100, 0.9), s.next_update
        (0.9, 100, 0.99, -1)
    """

    STATE = ("index",)

    def __init__(self, points: Any):
        try:
            self.points = [(int(step), value) for step, value in points]
        except (TypeError, ValueError):
            raise ConfigError(f"updates: expected a list of (step, value) pairs, got {points!r}.") from None
        steps = [step for step, _ in self.points]
        if not steps or steps[0] < 0 or any(b <= a for a, b in zip(steps, steps[1:])):
            raise ConfigError(f"updates: steps must be >= 0 and strictly increasing, got {steps}.")
        self.index = 0
        self.next_update = steps[0]

    def _update(self, step: int, value: Any) -> Any:
        while self.index + 1 < len(self.points) and self.points[self.index + 1][0] <= step:
            self.index += 1  # a resumed run may have skipped points: the latest one wins
        new = self.points[self.index][1]
        self.index += 1
        self.next_update = self.points[self.index][0] if self.index < len(self.points) else -1
        return new


class LinDec(Schedule):
    """Decreases the value linearly to 0 at step ``n_steps`` (config ``{'lindec': [n_steps, init]}``).

    Every ``every`` steps ``init * every / n_steps`` is subtracted (never below 0), and the value is
    set to exactly 0 at step ``n_steps``. Unlike ELEKTRONN2, it reaches 0 at ``n_steps`` even when
    ``n_steps`` is not a multiple of ``every``.

    Args:
        spec: ``[n_steps, init_value]``.
        every: Interval in steps (default 1000).

    Example:
        >>> s = LinDec([2500, 1.0])
        >>> [round(s.update(k, v), 6) for k, v in ((1000, 1.0), (2000, 0.6))], s.next_update
        ([0.6, 0.2], 2500)
        >>> s.update(2500, 0.2), s.next_update
        (0.0, -1)
    """

    def __init__(self, spec: Any, every: int = 1000):
        try:
            n_steps, init = spec
            init = float(init)
        except (TypeError, ValueError):
            raise ConfigError(f"lindec: expected [n_steps, init_value], got {spec!r}.") from None
        self.n_steps = check_positive_int("lindec", "n_steps", n_steps)
        self.every = check_positive_int("lindec", "every", every)
        self.decrement = init * self.every / self.n_steps
        self.next_update = min(self.every, self.n_steps)

    def _update(self, step: int, value: Any) -> Any:
        array = np.asarray(value, dtype=float)
        if step >= self.n_steps:
            self.next_update = -1
            return as_value_like(np.zeros_like(array), value)
        self.next_update = min(step + self.every, self.n_steps)
        return as_value_like(np.maximum(array - self.decrement, 0.0), value)


class Permut(Schedule):
    """Alternates between two values every ``every`` steps (config ``{'permut': [a, b], 'every': n}``).

    Before training step ``s`` the value is ``a`` when ``(s // every)`` is even and ``b`` when it is
    odd: ``a`` for steps ``0 .. every-1``, ``b`` for ``every .. 2*every-1``, ``a`` again from
    ``2*every``, forever. The value at step 0 is replaced by ``a``. Values may be lists (e.g.
    per-layer dropout rates). ELEKTRONN2's ``permut`` took the interval from ``updates[0][0]``;
    here it is the ``every`` option.

    Args:
        values: ``[a, b]``, the two values.
        every: Steps each value is kept (a positive integer; required).

    Example:
        >>> s = Permut([0.1, 0.01], every=3)
        >>> [s.update(step, None) for step in (0, 3, 6)], s.next_update
        ([0.1, 0.01, 0.1], 9)
    """

    def __init__(self, values: Any, every: Any = None):
        if not isinstance(values, (list, tuple)) or len(values) != 2:
            raise ConfigError(f"permut: expected the two values [a, b], got {values!r}.")
        if every is None:
            raise ConfigError("permut: the option 'every' (steps between switches) is required, "
                              "e.g. {'permut': [0.1, 0.01], 'every': 1000}.")
        self.values = (values[0], values[1])
        self.every = check_positive_int("permut", "every", every)
        self.next_update = 0

    def _update(self, step: int, value: Any) -> Any:
        period = step // self.every
        self.next_update = (period + 1) * self.every  # a resumed run gets the value of its step
        return self.values[period % 2]
