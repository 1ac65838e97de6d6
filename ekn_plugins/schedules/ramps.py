"""Smooth schedules users of ELEKTRONN2 missed: linear ``warmup`` and ``cosine`` annealing."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ekn_core.errors import ConfigError
from ekn_core.schedules import Schedule, as_value_like, check_positive_int


class Warmup(Schedule):
    """Ramps the value linearly from ``initial`` to its configured value (config ``{'warmup': n}``).

    The target is the value the parameter has when the warm-up starts (step 0); before training
    step ``s < n`` the value is ``initial + (target - initial) * (s + 1) / n``, so step ``n - 1``
    already trains with the target.

    Args:
        steps: Length ``n`` of the warm-up.
        initial: Starting value (default 0).

    Example:
        >>> s = Warmup(4)
        >>> [s.update(k, 0.1 if k == 0 else None) for k in range(4)], s.next_update
        ([0.025, 0.05, 0.075, 0.1], -1)
    """

    STATE = ("target",)

    def __init__(self, steps: int, initial: float = 0.0):
        self.steps = check_positive_int("warmup", "steps", steps)
        if not isinstance(initial, (int, float)):
            raise ConfigError(f"warmup: initial must be a number, got {initial!r}.")
        self.initial = float(initial)
        self.target: Any = None
        self.next_update = 0

    def _update(self, step: int, value: Any) -> Any:
        if self.target is None:
            self.target = value
        fraction = min(step + 1, self.steps) / self.steps
        self.next_update = step + 1 if step + 1 < self.steps else -1
        target = np.asarray(self.target, dtype=float)
        return as_value_like(self.initial + (target - self.initial) * fraction, self.target)


class Cosine(Schedule):
    """Cosine annealing from the current value to ``final`` over ``steps`` steps (``{'cosine': n}``).

    Before training step ``s`` the value is
    ``final + (base - final) * (1 + cos(pi * min(s - start, n) / n)) / 2``, where ``base`` is the
    value at step ``start``. Updates every ``every`` steps until ``start + n``.

    Args:
        steps: Length ``n`` of the annealing.
        final: End value (default 0).
        start: First step (default 0); e.g. the length of a preceding warm-up.
        every: Interval in steps (default 1).

    Example:
        >>> s = Cosine(10, final=0.0, every=5)
        >>> [round(s.update(k, 1.0), 6) for k in (0, 5, 10)], s.next_update
        ([1.0, 0.5, 0.0], -1)
    """

    STATE = ("base",)

    def __init__(self, steps: int, final: float = 0.0, start: int = 0, every: int = 1):
        self.steps = check_positive_int("cosine", "steps", steps)
        self.every = check_positive_int("cosine", "every", every)
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ConfigError(f"cosine: start must be an integer step >= 0, got {start!r}.")
        if not isinstance(final, (int, float)):
            raise ConfigError(f"cosine: final must be a number, got {final!r}.")
        self.final, self.start = float(final), start
        self.base: Any = None
        self.next_update = start

    def _update(self, step: int, value: Any) -> Any:
        if self.base is None:
            self.base = value
        elapsed = min(step - self.start, self.steps)
        self.next_update = step + self.every if elapsed < self.steps else -1
        if self.next_update > self.start + self.steps:
            self.next_update = self.start + self.steps
        base = np.asarray(self.base, dtype=float)
        weight = 0.5 * (1.0 + math.cos(math.pi * elapsed / self.steps))
        return as_value_like(self.final + (base - self.final) * weight, self.base)
