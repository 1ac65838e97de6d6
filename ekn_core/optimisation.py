"""Optimiser base class: live meta-parameters, per-parameter slots and exact-resume state.

Every optimiser plugin (registry ``ekn.optimisers``) subclasses :class:`Optimiser`. The model's
compiled training step uses it in three calls:

1. ``opt = get_optimiser("Adam", lr=1e-3, wd=1e-4)`` (config names are matched to registry
   names case-insensitively);
2. ``opt.build(params)`` once, outside ``tf.function``: creates the slot variables of every
   trainable parameter;
3. ``opt.apply(grads, params)`` inside the compiled step.

Meta-parameters (``lr``, ``mom``, ``wd`` and optimiser-specific ones such as ``beta2``) are
``tf.Variable`` objects read inside the compiled function, so ``opt.lr = 0.01`` between two steps
changes the next update without a retrace. They belong to one optimiser instance, not to the
process (unlike ELEKTRONN2's class-level ``global_lr``). Every rule has the form
``p -= lr * (direction + wd * weight_decay_p * p)``, where ``weight_decay_p`` is the parameter's
own multiplier (0 for biases and other undecayed parameters).

Example:
    >>> import numpy as np, tensorflow as tf
    >>> from types import SimpleNamespace
    >>> p = SimpleNamespace(variable=tf.Variable([1.0, -2.0]), trainable=True, weight_decay=1.0)
    >>> opt = get_optimiser("SGD", lr=0.1, mom=0.0)
    >>> opt.build([p])
    >>> opt.apply([tf.constant([1.0, 1.0])], [p])
    >>> p.variable.numpy()
    array([ 0.9, -2.1], dtype=float32)
    >>> opt.lr = 0.5
    >>> opt.lr
    0.5
"""

from __future__ import annotations

import difflib
import math
from typing import Any, ClassVar, Protocol, Sequence

import numpy as np

from ekn_core.errors import ConfigError, EknError
from ekn_core.lazy import tf


class Param(Protocol):
    """What an optimiser needs to know about one model parameter."""

    variable: tf.Variable
    trainable: bool
    weight_decay: float


def _meta_property(name: str) -> property:
    """A property that reads/writes the meta-parameter variable ``name`` as a Python float."""

    def fget(self: Optimiser) -> float:
        return self.get_meta(name)

    def fset(self: Optimiser, value: float) -> None:
        if name not in self.meta:
            raise AttributeError(self._no_meta_message(name))
        self.set_meta(**{name: value})

    return property(fget, fset, doc=f"Meta-parameter ``{name}`` (live: no retrace on change).")


class Optimiser:
    """Base class of ekn's optimisers.

    Subclasses set :attr:`META` (live meta-parameters and their defaults), :attr:`OPTIONS`
    (fixed constants such as ``eps``; changing them needs a new optimiser), :attr:`SLOTS` (names of
    per-parameter state variables) and implement :meth:`_direction`.

    Args:
        **params: Values for any name in :attr:`META` or :attr:`OPTIONS`; the others keep their
            defaults.

    Raises:
        ConfigError: An unknown name, or an invalid value (negative ``lr``, ``mom`` not in [0, 1)).
    """

    META: ClassVar[dict[str, float]] = {"lr": 0.01, "wd": 0.0}
    OPTIONS: ClassVar[dict[str, Any]] = {}
    SLOTS: ClassVar[tuple[str, ...]] = ()
    #: Meta-parameters that must lie in [0, 1).
    _UNIT_INTERVAL: ClassVar[frozenset[str]] = frozenset({"mom", "beta2"})

    lr = _meta_property("lr")
    mom = _meta_property("mom")
    wd = _meta_property("wd")
    beta2 = _meta_property("beta2")

    def __init__(self, **params: Any):
        known = [*self.META, *self.OPTIONS]
        unknown = [k for k in params if k not in known]
        if unknown:
            raise ConfigError(self._unknown_message(unknown[0], known))
        self.options: dict[str, Any] = {k: params.get(k, v) for k, v in self.OPTIONS.items()}
        self._check_options()
        #: The meta-parameters' values as Python floats (what :meth:`get_meta` reads: no device sync).
        self._meta_values = {k: self.check_meta(k, params.get(k, v)) for k, v in self.META.items()}
        with tf.init_scope():
            self.meta: dict[str, tf.Variable] = {
                k: tf.Variable(v, dtype=tf.float64, trainable=False, name=f"{type(self).__name__}_{k}")
                for k, v in self._meta_values.items()
            }
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name=f"{type(self).__name__}_step")
        self._slots: dict[Any, dict[str, tf.Variable]] = {}
        self._built: list[tf.Variable] = []

    # -- meta-parameters -------------------------------------------------------------------------

    def _unknown_message(self, name: str, known: Sequence[str]) -> str:
        close = difflib.get_close_matches(name, list(known), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return (f"{type(self).__name__} has no parameter {name!r}.{hint} "
                f"Its parameters are: {', '.join(known)}.")

    def _no_meta_message(self, name: str) -> str:
        return (f"{type(self).__name__} has no meta-parameter {name!r}; "
                f"its meta-parameters are: {', '.join(self.META)}.")

    @classmethod
    def check_meta(cls, name: str, value: Any, owner: str | None = None) -> float:
        """``value`` as a float if it is valid for meta-parameter ``name`` (finite, >= 0; ``mom``
        and ``beta2`` below 1).

        Args:
            name: The meta-parameter.
            value: The value to check.
            owner: Who is named in the error (default: the class name).

        Raises:
            ConfigError: An invalid value.

        Example:
            >>> Optimiser.check_meta("mom", 1.0, owner="model 'm'")
            Traceback (most recent call last):
            ...
            ekn_core.errors.ConfigError: model 'm': mom must be in [0, 1), got 1.0.
        """
        owner = owner or cls.__name__
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{owner}: {name} must be a number, got {value!r}.") from None
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"{owner}: {name} must be a finite number >= 0, got {value}.")
        if name in cls._UNIT_INTERVAL and value >= 1:
            raise ConfigError(f"{owner}: {name} must be in [0, 1), got {value}.")
        return value

    def _check_options(self) -> None:
        """Validates :attr:`options` (subclasses with options extend this)."""
        eps = self.options.get("eps")
        if eps is not None and (not isinstance(eps, (int, float)) or eps < 0):
            raise ConfigError(f"{type(self).__name__}: eps must be a number >= 0, got {eps!r}.")

    def get_meta(self, name: str | None = None) -> Any:
        """One meta-parameter as a float, or all of them as a dict when ``name`` is None."""
        if name is None:
            return dict(self._meta_values)
        if name not in self.meta:
            raise AttributeError(self._no_meta_message(name))
        return self._meta_values[name]

    def set_meta(self, **values: float) -> None:
        """Sets meta-parameters (takes effect at the next step, without a retrace).

        Raises:
            ConfigError: An unknown name or an invalid value; nothing is changed then.
        """
        for name in values:
            if name not in self.meta:
                raise ConfigError(self._unknown_message(name, list(self.META)))
        checked = {k: self.check_meta(k, v) for k, v in values.items()}
        for name, value in checked.items():
            self.meta[name].assign(value)
            self._meta_values[name] = value

    # -- building and applying ---------------------------------------------------------------------

    def _initial_slot(self, name: str, variable: tf.Variable) -> Any:
        """Initial value of slot ``name`` for ``variable`` (zeros unless overridden)."""
        return tf.zeros_like(variable)

    def build(self, params: Sequence[Param]) -> None:
        """Creates the slot variables of every trainable parameter (call outside ``tf.function``).

        Calling it again with more parameters adds slots for the new ones only.
        """
        with tf.init_scope():
            for param in params:
                var = param.variable
                if not param.trainable or var.ref() in self._slots:
                    continue
                base = var.name.split(":")[0]
                self._slots[var.ref()] = {
                    slot: tf.Variable(self._initial_slot(slot, var), dtype=var.dtype, trainable=False,
                                      name=f"{base}/{slot}")
                    for slot in self.SLOTS
                }
                self._built.append(var)

    def apply(self, grads: Sequence[Any], params: Sequence[Param]) -> None:
        """Applies one update step (eagerly or inside a compiled function).

        Args:
            grads: One gradient per parameter (None: the parameter is left unchanged).
            params: The parameters, built with :meth:`build`.

        Raises:
            EknError: Lengths differ, or a trainable parameter was not built.
        """
        if len(grads) != len(params):
            raise EknError(f"{type(self).__name__}.apply got {len(grads)} gradients for {len(params)} parameters.")
        step = self.step.assign_add(1)
        t = tf.cast(step, tf.float64)
        meta64 = {k: v.read_value() for k, v in self.meta.items()}
        for grad, param in zip(grads, params):
            if grad is None or not param.trainable:
                continue
            var = param.variable
            slots = self._slots.get(var.ref())
            if slots is None:
                raise EknError(f"parameter {var.name} has no optimiser state: pass it to "
                               f"{type(self).__name__}.build() before apply().")
            meta = {k: tf.cast(v, var.dtype) for k, v in meta64.items()}
            grad = tf.cast(tf.convert_to_tensor(grad), var.dtype)
            direction = self._direction(grad, slots, meta, t)
            if float(param.weight_decay):
                direction = direction + (meta["wd"] * float(param.weight_decay)) * var
            var.assign_sub(meta["lr"] * direction)

    def _direction(self, grad: tf.Tensor, slots: dict[str, tf.Variable], meta: dict[str, tf.Tensor],
                   t: tf.Tensor) -> tf.Tensor:
        """Updates the slots of one parameter and returns its descent direction (before ``lr``).

        Args:
            grad: The gradient, in the parameter's dtype.
            slots: This parameter's slot variables by name.
            meta: Meta-parameter values cast to the parameter's dtype.
            t: The step number of this update (1 for the first), float64.
        """
        raise NotImplementedError

    # -- checkpoint state ----------------------------------------------------------------------------

    def get_state(self) -> dict[str, np.ndarray]:
        """Step counter, meta-parameters and every slot, for an exact-resume checkpoint.

        Slots are keyed ``slots/<i>/<name>`` with ``i`` the position of the parameter among the
        trainable ones passed to :meth:`build`: restore onto an optimiser built with the same
        parameter list in the same order.
        """
        state = {"step": self.step.numpy()}
        state.update({f"meta/{k}": v.numpy() for k, v in self.meta.items()})
        for i, var in enumerate(self._built):
            for name, slot in self._slots[var.ref()].items():
                state[f"slots/{i}/{name}"] = slot.numpy()
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`get_state` returned (all keys must match exactly).

        Raises:
            EknError: Missing or unexpected keys, or a slot of a different shape.
        """
        current = self.get_state()
        missing, extra = sorted(set(current) - set(state)), sorted(set(state) - set(current))
        if missing or extra:
            raise EknError(
                f"{type(self).__name__} state does not match this optimiser "
                f"(missing: {', '.join(missing) or 'none'}; unexpected: {', '.join(extra) or 'none'}). "
                "Was it saved from another optimiser type or another parameter list? Build the "
                "optimiser with the same parameters, in the same order, before restoring.")
        for key, value in state.items():
            value = np.asarray(value)
            if value.shape != np.shape(current[key]):
                raise EknError(f"{type(self).__name__} state {key!r} has shape {value.shape}, "
                               f"expected {np.shape(current[key])}.")
        self.step.assign(int(state["step"]))
        self.set_meta(**{k[len("meta/"):]: float(state[k]) for k in state if k.startswith("meta/")})
        for i, var in enumerate(self._built):
            for name, slot in self._slots[var.ref()].items():
                slot.assign(np.asarray(state[f"slots/{i}/{name}"], dtype=slot.dtype.as_numpy_dtype))

    def __repr__(self) -> str:
        meta = ", ".join(f"{k}={v:g}" for k, v in self.get_meta().items())
        return f"{type(self).__name__}({meta})"


def optimiser_class(name: str) -> type[Optimiser]:
    """The optimiser class registered as ``name`` (case-insensitive: ``'Adam'`` → ``adam``).

    Raises:
        UnknownPluginError: No such optimiser (the message suggests close names).

    Example:
        >>> optimiser_class("AdaGrad").registry_name
        'adagrad'
    """
    from ekn_core.plugins import registry

    reg = registry("optimisers")
    by_lower = {n.lower(): n for n in reg.names()}
    cls = reg.get(by_lower.get(name.strip().lower(), name.strip().lower()))
    if not (isinstance(cls, type) and issubclass(cls, Optimiser)):
        raise EknError(f"optimiser plugin {name!r} is {cls!r}, not a subclass of ekn_core.optimisation.Optimiser.")
    return cls


def get_optimiser(name: str, **params: Any) -> Optimiser:
    """Creates the optimiser registered as ``name`` (case-insensitive: ``'Adam'`` → ``adam``).

    Args:
        name: Registry name or ELEKTRONN2 config name (``'SGD'``, ``'AdaGrad'``, ``'AdaDelta'``,
            ``'Adam'``, ``'AdamW'``).
        **params: Meta-parameters and options of that optimiser.

    Raises:
        UnknownPluginError: No such optimiser (the message suggests close names).
        ConfigError: An unknown or invalid parameter.

    Example:
        >>> get_optimiser("Adam", lr=0.001)
        Adam(lr=0.001, mom=0.9, beta2=0.999, wd=0)
    """
    return optimiser_class(name)(**params)
