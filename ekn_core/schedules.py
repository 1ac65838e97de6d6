"""Meta-parameter schedules: the :class:`Schedule` base and the binder for config ``schedules``.

A config names, for any meta-parameter of a model or trainer (``lr``, ``mom``, ``wd``,
``dropout_rates``, ``mixing``, ...), one schedule mode from the ``ekn.schedules`` registry with its
value, plus options, or a list of such dicts applied in order::

    schedules = {
        "lr": {"dec": 0.995},                          # x0.995 every 1000 steps (ELEKTRONN2)
        "mom": {"updates": [(0, 0.9), (5000, 0.99)]},  # set at listed steps
        "wd": {"lindec": [20000, 1e-4], "every": 100}, # linear decrease to 0 at step 20000
        "dropout_rates": [{"warmup": 500}, {"cosine": 10000, "start": 500, "final": 0.0}],
    }

:func:`bind_schedules` finds each name on the first target object that has it (an attribute or
property, a ``tf.Variable`` attribute, or a key of a dict target). Call :meth:`Schedules.update`
with the number of steps done so far before every training step; schedule state is a JSON-able
dict (:meth:`Schedules.get_state`) to save with checkpoints.

Example:
    >>> from types import SimpleNamespace
    >>> model = SimpleNamespace(lr=1.0)
    >>> sched = bind_schedules({"lr": {"dec": 0.5, "every": 10}}, model)
    >>> for step in range(25):
    ...     _ = sched.update(step)
    >>> model.lr
    0.25
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Mapping, MutableMapping
from typing import Any, ClassVar

import numpy as np

from ekn_core.errors import ConfigError


def as_value_like(array: Any, like: Any) -> Any:
    """Returns ``array`` in the container type of ``like`` (float, list of floats or ndarray)."""
    array = np.asarray(array, dtype=float)
    if isinstance(like, np.ndarray):
        return array
    if isinstance(like, (list, tuple)):
        return array.tolist()
    return float(array)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


class Schedule:
    """Changes one meta-parameter at certain steps.

    Subclasses implement :meth:`_update` and set :attr:`next_update` (the first step at which
    :meth:`update` must run; -1 when finished) in ``__init__`` and in :meth:`_update`. Attributes
    named in :attr:`STATE` are saved by :meth:`get_state` besides ``next_update``.
    """

    STATE: ClassVar[tuple[str, ...]] = ()
    next_update: int = 0

    def due(self, step: int) -> bool:
        """Whether :meth:`update` must run before training step ``step``."""
        return 0 <= self.next_update <= step

    def update(self, step: int, value: Any) -> Any:
        """Returns the new value of the meta-parameter at ``step`` and advances :attr:`next_update`."""
        return self._update(step, value)

    def _update(self, step: int, value: Any) -> Any:
        raise NotImplementedError

    def get_state(self) -> dict[str, Any]:
        """JSON-able state: ``next_update`` and the attributes in :attr:`STATE`."""
        return {k: _jsonable(getattr(self, k)) for k in ("next_update", *self.STATE)}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restores :meth:`get_state`'s output."""
        expected = {"next_update", *self.STATE}
        if set(state) != expected:
            raise ConfigError(f"{type(self).__name__} state has keys {sorted(state)}, expected {sorted(expected)}.")
        for key, value in state.items():
            setattr(self, key, value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(next_update={self.next_update})"


def check_positive_int(owner: str, name: str, value: Any) -> int:
    """``value`` as an int > 0, or a :class:`ConfigError` naming ``owner`` and ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ConfigError(f"{owner}: {name} must be a positive integer number of steps, got {value!r}.")
    return int(value)


def make_schedule(spec: Mapping[str, Any]) -> Schedule:
    """Creates a schedule from its config dict: one mode name (a registry name) plus options.

    Raises:
        ConfigError: No mode, several modes, an unknown mode or invalid options.

    Example:
        >>> make_schedule({"dec": 0.99, "every": 100}).next_update
        100
    """
    from ekn_core.plugins import registry

    reg = registry("schedules")
    if not isinstance(spec, Mapping):
        raise ConfigError(f"a schedule must be a dict such as {{'dec': 0.995}}, got {spec!r}.")
    modes = [k for k in spec if k in reg]
    if len(modes) != 1:
        unknown = [k for k in spec if k not in reg]
        close = difflib.get_close_matches(unknown[0], reg.names(), n=1) if unknown and not modes else []
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"schedule {dict(spec)!r} must name exactly one mode, found {len(modes)} ({', '.join(modes) or 'none'})."
            f"{hint} Modes: {', '.join(reg.names())}.")
    mode = modes[0]
    options = {k: v for k, v in spec.items() if k != mode}
    cls = reg.get(mode)
    try:
        return cls(spec[mode], **options)
    except TypeError as err:
        raise ConfigError(f"schedule {mode!r}: {err}. See docs/optimisers.md for its options.") from None


class _Binding:
    """Reads and writes one named meta-parameter of one target object.

    Values written are multiplied by :attr:`factor` and values read are divided by it, so the
    schedules compute without it (e.g. the lr factor of NaN rollbacks, see :meth:`Schedules.set_factor`).
    """

    def __init__(self, target: Any, name: str):
        self.target, self.name = target, name
        self.factor = 1.0

    def _raw(self) -> Any:
        if isinstance(self.target, Mapping):
            return self.target[self.name]
        return getattr(self.target, self.name)

    def get(self) -> Any:
        raw = self._raw()
        if hasattr(raw, "assign") and hasattr(raw, "numpy"):
            value = raw.numpy()
            raw = value.tolist() if np.ndim(value) else float(value)
        return raw if self.factor == 1.0 else as_value_like(np.asarray(raw, dtype=float) / self.factor, raw)

    def set(self, value: Any) -> None:
        if self.factor != 1.0:
            value = as_value_like(np.asarray(value, dtype=float) * self.factor, value)
        raw = self._raw()
        if hasattr(raw, "assign") and hasattr(raw, "numpy"):
            raw.assign(np.asarray(value, dtype=raw.dtype.as_numpy_dtype).reshape(raw.shape))
        elif isinstance(self.target, MutableMapping):
            self.target[self.name] = value
        else:
            setattr(self.target, self.name, value)


def _find_target(name: str, targets: tuple[Any, ...]) -> Any:
    for target in targets:
        if isinstance(target, Mapping):
            if name in target:
                return target
        elif hasattr(target, name):
            return target
    kinds = ", ".join(type(t).__name__ for t in targets)
    raise ConfigError(f"schedules: no meta-parameter {name!r} on {kinds}. Schedulable names are attributes "
                      "such as lr, mom, wd, dropout_rates, mixing, or entries of the trainer config.")


class Schedules:
    """The schedules of a training run, each bound to one meta-parameter.

    Create with :func:`bind_schedules`.
    """

    def __init__(self, bound: list[tuple[str, _Binding, Schedule]]):
        self._bound = bound

    def update(self, step: int) -> dict[str, Any]:
        """Applies every schedule due before training step ``step``; returns the changed values."""
        changed = {}
        for name, binding, schedule in self._bound:
            if schedule.due(step):
                value = schedule.update(step, binding.get())
                binding.set(value)
                changed[name] = value
        return changed

    def get_state(self) -> dict[str, list[dict[str, Any]]]:
        """JSON-able state of every schedule, by meta-parameter name, in config order."""
        state: dict[str, list[dict[str, Any]]] = {}
        for name, _, schedule in self._bound:
            state.setdefault(name, []).append(schedule.get_state())
        return state

    def set_state(self, state: Mapping[str, list[Mapping[str, Any]]]) -> None:
        """Restores :meth:`get_state`'s output (same config required)."""
        if {k: len(v) for k, v in state.items()} != {k: len(v) for k, v in self.get_state().items()}:
            raise ConfigError(f"saved schedule state covers {sorted(state)}, but the config schedules "
                              f"{sorted(self.get_state())}: resume with the config the state was saved with.")
        position: dict[str, int] = {}
        for name, _, schedule in self._bound:
            i = position[name] = position.get(name, -1) + 1
            schedule.set_state(state[name][i])

    def set_factor(self, name: str, factor: float) -> None:
        """Multiplies every value the schedules of ``name`` set by ``factor`` (1: none), e.g. the lr
        factor after NaN rollbacks: a schedule that sets absolute values (``cosine``, ``warmup``,
        ``updates``, ``permut``) keeps it, and relative ones (``dec``, ``lindec``) compute on the
        value without it.

        Example:
            >>> from types import SimpleNamespace
            >>> model = SimpleNamespace(lr=1.0)
            >>> sched = bind_schedules({"lr": {"updates": [(0, 1.0), (5, 0.5)]}}, model)
            >>> _ = sched.update(0); sched.set_factor("lr", 0.1); model.lr *= 0.1
            >>> _ = sched.update(5); model.lr
            0.05
        """
        for bound_name, binding, _ in self._bound:
            if bound_name == name:
                binding.factor = float(factor)

    def names(self) -> list[str]:
        """Names of the scheduled meta-parameters."""
        return list(dict.fromkeys(name for name, _, _ in self._bound))

    def __repr__(self) -> str:
        return "Schedules(" + ", ".join(f"{n}={s!r}" for n, _, s in self._bound) + ")"


def bind_schedules(config: Mapping[str, Any] | None, *targets: Any) -> Schedules:
    """Builds the schedules of a config and binds each to the first target having its name.

    Args:
        config: ``{name: spec}`` where spec is a schedule dict or a list of them (applied in order).
        *targets: Objects or dicts to search, e.g. ``(model, trainer_config)``.

    Raises:
        ConfigError: An invalid schedule or a name no target has.
    """
    bound: list[tuple[str, _Binding, Schedule]] = []
    for name, spec in (config or {}).items():
        specs = spec if isinstance(spec, (list, tuple)) else [spec]
        binding = _Binding(_find_target(name, targets), name)
        bound.extend((name, binding, make_schedule(s)) for s in specs)
    return Schedules(bound)
