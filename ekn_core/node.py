"""Node base class, parameters, the model manager, compile modes and compiled graph functions.

A model is a directed acyclic graph of :class:`Node` objects built functionally: every node
constructor takes its parent node(s) first, e.g. ``Conv(inp, 20, (1, 6, 6), (1, 2, 2))``.
Constructing a node

1. picks a unique name in the current model (``conv``, ``conv1``, ``conv2`` ...),
2. runs the subclass ``__init__`` (which calls ``Node.__init__(self, parents, name)`` and creates
   parameters with :meth:`Node.add_param`),
3. computes the output :class:`~ekn_core.shapes.TaggedShape` (sizes, strides, FOV, MFP offsets)
   and the computational cost *without running TensorFlow*,
4. registers the node and a JSON-serialisable descriptor of its constructor arguments (parents
   by name) in ``model_manager.current``.

Calling a node with numpy arrays (``node(raw)``) runs the sub-graph that leads to it, compiling
it on first use. Arrays are given and returned in each node's declared tag layout; inside, every
tensor is channels-last (see :mod:`ekn_core.shapes`).

Subclass API (see ``docs/writing_layers.md``): ``__init__(self, parent, ..., name="mynode")``
calling ``super().__init__(parent, name)``; :meth:`Node.add_param`; :meth:`Node._compute_shape`;
:meth:`Node._compute_cost`; :meth:`Node._forward`; :meth:`Node.shape_check`.

Example:
    >>> import numpy as np
    >>> from ekn_core.node import model_manager
    >>> from ekn_core.plugins import registry
    >>> _ = model_manager.newmodel("doc_node")
    >>> Input = registry("layers").get("input")
    >>> inp = Input((None, 1, 5, 5), 'b,f,x,y')
    >>> inp.shape.spatial_shape, inp.name
    ((5, 5), 'input')
    >>> inp(np.ones((2, 1, 5, 5), 'float32')).shape
    (2, 1, 5, 5)
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ekn_core.errors import ConfigError, EknError, ShapeError
from ekn_core.lazy import tf
from ekn_core.shapes import TaggedShape

if TYPE_CHECKING:  # pragma: no cover
    from ekn_core.model import Model

log = logging.getLogger("ekn.node")

FLOATX = "float32"


# ---------------------------------------------------------------------------------------------
# Compile mode
# ---------------------------------------------------------------------------------------------
COMPILE_MODES = ("plain", "xla", "eager")
#: Values accepted by :func:`set_compile_mode`, ``EKN_COMPILE`` and the trainer's ``compile_mode``:
#: a mode, or ``'auto'`` (the measured choice of :mod:`ekn_core.compile_choice`, else the device rule).
COMPILE_SETTINGS = (*COMPILE_MODES, "auto")
_compile_override: str | None = None


def _checked(value: str, allowed: Sequence[str], what: str) -> str:
    """``value`` if it is one of ``allowed``, else one clear ConfigError naming the choices."""
    if value not in allowed:
        raise ConfigError(f"{what} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _from_env(name: str, allowed: Sequence[str]) -> str | None:
    """The validated, lower-cased value of environment variable ``name``, or None when unset."""
    value = os.environ.get(name, "").strip().lower()
    return _checked(value, allowed, name) if value else None


def set_compile_mode(mode: str | None) -> None:
    """Overrides how graph functions are compiled: ``'plain'`` (tf.function), ``'xla'``
    (tf.function with ``jit_compile=True``), ``'eager'`` (no compilation), ``'auto'`` (the
    measured choice cached for each function, see :mod:`ekn_core.compile_choice`; the trainer
    measures it when it is missing), or None for the default (``EKN_COMPILE`` environment
    variable, else the cached choice, else XLA on GPU and plain on CPU).

    Existing compiled functions switch on their next call.

    Example:
        >>> set_compile_mode('eager'); compile_mode()
        'eager'
        >>> set_compile_mode(None)
    """
    global _compile_override
    _compile_override = None if mode is None else _checked(mode, COMPILE_SETTINGS, "compile mode")


def requested_compile_mode() -> str | None:
    """What was asked for: the :func:`set_compile_mode` override, else ``EKN_COMPILE``, else None.

    May be ``'auto'``. Use :func:`resolve_compile_mode` for the mode a function is compiled in.

    Example:
        >>> set_compile_mode('auto'); requested_compile_mode()
        'auto'
        >>> set_compile_mode(None)
    """
    return _compile_override or _from_env("EKN_COMPILE", COMPILE_SETTINGS)


def device_rule() -> str:
    """The fixed rule used when nothing else decides: ``'xla'`` when TensorFlow sees a GPU (a
    visible one: ``--gpu cpu`` hides them), else ``'plain'``."""
    return "xla" if tf.config.get_visible_devices("GPU") else "plain"


def resolve_compile_mode(key: str | Callable[[], str] | None = None) -> str:
    """The compile mode of a function: the one place the order is decided.

    1. the :func:`set_compile_mode` override, 2. ``EKN_COMPILE``, 3. the measured choice cached
    for ``key`` (:func:`ekn_core.compile_choice.cached_choice`), 4. :func:`device_rule`.
    ``'auto'`` at step 1 or 2 skips to step 3.

    Args:
        key: The function's compile-choice key (:meth:`GraphFunction.compile_key`), or a
            zero-argument callable returning it (called only when the cache is consulted), or
            None (no cache look-up).

    Example:
        >>> set_compile_mode('xla'); resolve_compile_mode('any|key')
        'xla'
        >>> set_compile_mode(None)
    """
    requested = requested_compile_mode()
    if requested is not None and requested != "auto":
        return requested
    if key is not None:
        from ekn_core.compile_choice import cached_choice

        choice = cached_choice(key() if callable(key) else key)
        if choice is not None:
            return choice
    return device_rule()


def compile_mode() -> str:
    """The compile mode in effect without a function key: override > ``EKN_COMPILE`` > device
    rule (``'auto'`` resolves to the rule; see :func:`resolve_compile_mode`)."""
    return resolve_compile_mode(None)


def compile_function(fn: Callable[..., Any], mode: str | None = None) -> Callable[..., Any]:
    """Wraps ``fn`` for ``mode`` (default and ``'auto'``: :func:`compile_mode`): tf.function, XLA
    or as is."""
    if mode in (None, "auto"):
        mode = compile_mode()
    if mode == "eager":
        return fn
    return tf.function(fn, jit_compile=(mode == "xla"), reduce_retracing=False)


# ---------------------------------------------------------------------------------------------
# Mixed precision
# ---------------------------------------------------------------------------------------------
#: Precision policies and their compute dtype (parameters, losses and outputs stay float32).
PRECISIONS = {"float32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}
_precision_override: str | None = None


def set_precision(policy: str | None) -> str | None:
    """Sets the precision policy: ``'float32'``, ``'mixed_bfloat16'`` or ``'mixed_float16'``, or
    None for the default (``EKN_PRECISION`` environment variable, else float32). The trainer sets
    its config's ``precision`` (or ``EKN_PRECISION``) for the run and restores the previous policy
    when it is closed.

    With a mixed policy, nodes whose ``mixed_precision`` attribute is true (convolutions,
    up-convolutions and perceptrons without batch normalisation or dropout, pooling,
    concatenation, cropping) compute in bfloat16/float16 with their float32 parameters cast on
    read; every other node (losses, softmax, normalisation, ...) gets float32 inputs, and graph
    outputs are float32. ``mixed_float16`` training uses dynamic loss scaling. bfloat16 needs a
    GPU of compute capability >= 8 or a CPU with AVX512_BF16/AMX to be fast; float16 a GPU.
    Existing compiled functions are retraced on their next call.

    Returns:
        The policy set before (None: the default), to restore it with ``set_precision(previous)``.

    Example:
        >>> previous = set_precision('mixed_bfloat16'); precision(), compute_dtype()
        ('mixed_bfloat16', 'bfloat16')
        >>> _ = set_precision(previous); compute_dtype()
        'float32'
    """
    global _precision_override
    previous = _precision_override
    _precision_override = None if policy is None else _checked(policy, tuple(PRECISIONS), "precision")
    return previous


def env_precision() -> str | None:
    """The policy the ``EKN_PRECISION`` environment variable names (checked), None when it is unset."""
    return _from_env("EKN_PRECISION", tuple(PRECISIONS))


def precision() -> str:
    """The precision policy in effect (see :func:`set_precision`)."""
    return _precision_override or env_precision() or "float32"


def compute_dtype() -> str:
    """dtype name that mixed-precision nodes compute in (``'float32'`` without a mixed policy)."""
    return PRECISIONS[precision()]


_CASTABLE = ("float32", "bfloat16", "float16")


def cast_floating(x: Any, dtype: str) -> Any:
    """``x`` cast to ``dtype`` if it is a float32/bfloat16/float16 tensor of another dtype (float64
    and integer tensors are returned unchanged)."""
    name = getattr(getattr(x, "dtype", None), "name", None)
    if name in _CASTABLE and name != dtype:
        return tf.cast(x, dtype)
    return x


# ---------------------------------------------------------------------------------------------
# Construction-time switches (shape-only replay for the geometry calculator)
# ---------------------------------------------------------------------------------------------
class _BuildState(threading.local):
    def __init__(self) -> None:
        self.depth = 0
        self.shape_only = False
        self.replaying = False
        self.lenient: list[tuple[str, int | None, str]] | None = None


_STATE = _BuildState()


@contextlib.contextmanager
def shape_only(lenient: bool = False) -> Iterator[list[tuple[str, int | None, str]]]:
    """Within this context nodes are built without TensorFlow variables (shapes only).

    With ``lenient=True`` failed :meth:`Node.shape_check` calls are recorded as
    ``(node name, spatial axis or None, message)`` in the yielded list instead of raising,
    so one replay tells which spatial axes of a candidate patch size are invalid.
    """
    old = (_STATE.shape_only, _STATE.lenient)
    _STATE.shape_only = True
    _STATE.lenient = [] if lenient else None
    try:
        yield _STATE.lenient if lenient else []
    finally:
        _STATE.shape_only, _STATE.lenient = old


def is_shape_only() -> bool:
    """Whether nodes are currently built without variables (see :func:`shape_only`)."""
    return _STATE.shape_only


@contextlib.contextmanager
def replaying() -> Iterator[None]:
    """Within this context nodes are rebuilt from a saved model: ``print_repr`` descriptions are
    logged at DEBUG, not INFO, so loading or rebuilding a model does not repeat them."""
    old, _STATE.replaying = _STATE.replaying, True
    try:
        yield
    finally:
        _STATE.replaying = old


# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------
_RNG = np.random.default_rng()


def set_seed(seed: int | None) -> None:
    """Seeds the generator used for initial parameter values (reproducible initialisation)."""
    global _RNG
    _RNG = np.random.default_rng(seed)


def initial_value(shape: Sequence[int], init: str = "zeros", scale: float = 1.0, dtype: str = FLOATX) -> np.ndarray:
    """An initial parameter array.

    Args:
        shape: Array shape.
        init: ``'zeros'``, ``'const'`` (all ``scale``), ``'normal'`` (std ``scale``),
            ``'uniform'`` (U(-scale, scale)) or ``'ortho'`` (orthogonalised normal times ``scale``,
            2-D shapes or flattened leading axes).
        scale: See ``init``.
        dtype: numpy dtype name.

    Example:
        >>> initial_value((2, 2), 'const', 0.5)
        array([[0.5, 0.5],
               [0.5, 0.5]], dtype=float32)
    """
    shape = tuple(int(s) for s in shape)
    if init == "zeros":
        value = np.zeros(shape)
    elif init == "const":
        value = np.full(shape, scale)
    elif init == "normal":
        value = _RNG.normal(0.0, scale, shape)
    elif init == "uniform":
        value = _RNG.uniform(-scale, scale, shape)
    elif init == "ortho":
        flat = (math.prod(shape[:-1]) if len(shape) > 1 else 1, shape[-1])
        u, _, vt = np.linalg.svd(_RNG.normal(0.0, 1.0, flat), full_matrices=False)
        value = (u if u.shape == flat else vt).reshape(shape) * scale
    else:
        raise ConfigError(f"unknown initialisation {init!r}; use zeros, const, normal, uniform or ortho")
    return value.astype(dtype)


class Param:
    """One parameter of a node: a ``tf.Variable`` plus training flags.

    Attributes:
        name: Parameter name within its node (``'w'``, ``'b'``, ``'gamma'``, ...).
        owner: Name of the node that owns it.
        variable: The ``tf.Variable`` (``None`` in shape-only builds).
        trainable: Updated by optimisers.
        weight_decay: Weight-decay multiplier (0 = no decay; BN gamma uses 3.0).
        constant: Frozen value: not trainable and :meth:`set_value` refuses unless forced.
    """

    def __init__(self, name: str, owner: str, value: np.ndarray, trainable: bool = True,
                 weight_decay: float = 0.0, constant: bool = False):
        self.name, self.owner = name, owner
        self.shape = tuple(value.shape)
        self.dtype = str(value.dtype)
        self.constant = bool(constant)
        self.trainable = bool(trainable) and not self.constant
        self.weight_decay = float(weight_decay)
        self.variable = None if is_shape_only() else tf.Variable(value, name=f"{owner}/{name}", trainable=True)

    @property
    def key(self) -> str:
        """``'<node>/<param>'``, the key used in model files and ``Model.get_param_values``."""
        return f"{self.owner}/{self.name}"

    @property
    def size(self) -> int:
        """Number of scalar values."""
        return math.prod(self.shape)

    def get_value(self) -> np.ndarray:
        """A numpy copy of the current value."""
        return np.array(self.variable.numpy())

    def set_value(self, value: Any, force: bool = False) -> None:
        """Assigns a new value of the same shape; constants need ``force=True``."""
        if self.constant and not force:
            raise EknError(f"parameter {self.key} is constant; pass skip_const=True or rebuild it trainable")
        value = np.asarray(value)
        if tuple(value.shape) != self.shape:
            raise ShapeError(f"parameter {self.key} has shape {self.shape}, got a value of shape {value.shape}")
        self.variable.assign(value.astype(self.dtype))

    def freeze(self) -> None:
        """Makes the parameter constant (no longer trained)."""
        self.constant, self.trainable = True, False

    def __repr__(self) -> str:
        flags = "const" if self.constant else ("trainable" if self.trainable else "non-trainable")
        return f"<Param {self.key} {self.shape} {flags} wd×{self.weight_decay:g}>"


# ---------------------------------------------------------------------------------------------
# Model manager
# ---------------------------------------------------------------------------------------------
class ModelContainer:
    """All models of the process; new nodes go into :attr:`current` (ELEKTRONN2 ``model_manager``).

    Example:
        >>> m = model_manager.newmodel("doc_container")
        >>> model_manager.current is m, model_manager.getmodel("doc_container") is m
        (True, True)
    """

    def __init__(self) -> None:
        self.models: dict[str, Model] = {}
        self._current: Model | None = None
        self.last: Model | None = None

    def _make(self, name: str) -> Model:
        from ekn_core.model import Model

        return Model(name)

    @property
    def current(self) -> Model:
        """The model that receives new nodes (a ``'default'`` model is created on demand)."""
        if self._current is None:
            self.setdefault()
        return self._current  # type: ignore[return-value]

    def _activate(self, model: Model) -> Model:
        if self._current is not model:
            self.last = self._current
        self._current = model
        return model

    def setdefault(self) -> Model:
        """Makes the ``'default'`` model current, creating it if needed."""
        if "default" not in self.models:
            self.models["default"] = self._make("default")
        return self._activate(self.models["default"])

    def newmodel(self, name: str | None = None) -> Model:
        """Creates a model (uuid name when None), makes it current and returns it.

        Raises:
            ConfigError: A model of that name exists (use :meth:`getmodel` or another name).
        """
        if name is None:
            import uuid

            name = uuid.uuid4().hex[:12]
        if name in self.models:
            raise ConfigError(f"a model named {name!r} exists already; use model_manager.getmodel({name!r}) "
                              f"or choose another name")
        self.models[name] = self._make(name)
        return self._activate(self.models[name])

    def getmodel(self, name: str | None = None) -> Model:
        """Makes an existing model current (``None``: the default model)."""
        if name is None:
            return self.setdefault()
        if name not in self.models:
            raise ConfigError(f"no model named {name!r}; existing: {', '.join(self.models) or 'none'}")
        return self._activate(self.models[name])

    def togglemodel(self) -> Model:
        """Switches back to the previously current model."""
        if self.last is None:
            raise ConfigError("there is no previous model to toggle to")
        return self._activate(self.last)

    def remove(self, name: str) -> None:
        """Forgets a model (the default is recreated on demand)."""
        model = self.models.pop(name)
        if self._current is model:
            self._current = None
        if self.last is model:
            self.last = None

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Model]:
        """A temporary current model that is not listed in :attr:`models` (used for replays)."""
        old_current, old_last = self._current, self.last
        self._current = self._make("_scratch")
        try:
            yield self._current
        finally:
            self._current, self.last = old_current, old_last


model_manager = ModelContainer()


# ---------------------------------------------------------------------------------------------
# Descriptor encoding (constructor arguments → JSON)
# ---------------------------------------------------------------------------------------------
_MAX_INLINE = 100_000


def encode_argument(value: Any, owner: Node, arg_name: str) -> Any:
    """JSON-encodes one constructor argument: nodes and params become pointers by name."""
    if isinstance(value, Node):
        return {"node": value.name}
    if isinstance(value, Param):
        return {"param": [value.owner, value.name]}
    if isinstance(value, TaggedShape):
        return {"tagged_shape": value.to_dict()}
    if isinstance(value, np.ndarray):
        if arg_name in owner.params:  # initial value of a parameter: restored from the weights
            return {"saved_param": arg_name}
        if value.size > _MAX_INLINE:
            return {"unserialisable": f"array of {value.size} values in argument {arg_name!r}"}
        return {"ndarray": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
        return np.dtype(value).name
    if isinstance(value, (list, tuple)):
        if arg_name in owner.params and len(value) == 2 and isinstance(value[0], np.ndarray):
            return {"saved_param": arg_name, "mode": str(value[1])}
        return [encode_argument(v, owner, arg_name) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            return {"unserialisable": f"dict with non-string keys in argument {arg_name!r}"}
        return {"dict": {k: encode_argument(v, owner, arg_name) for k, v in value.items()}}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return {"unserialisable": f"{type(value).__name__} in argument {arg_name!r}"}


def decode_argument(value: Any, model: Model, weights: dict[str, dict[str, np.ndarray]] | None,
                    owner: str) -> Any:
    """Inverse of :func:`encode_argument` against the nodes restored so far."""
    if isinstance(value, list):
        return [decode_argument(v, model, weights, owner) for v in value]
    if not isinstance(value, dict):
        return value
    if "node" in value:
        return model[value["node"]]
    if "param" in value:
        node_name, param_name = value["param"]
        return model[node_name].params[param_name]
    if "tagged_shape" in value:
        return TaggedShape.from_dict(value["tagged_shape"])
    if "ndarray" in value:
        return np.asarray(value["ndarray"], dtype=value["dtype"])
    if "dict" in value:
        return {k: decode_argument(v, model, weights, owner) for k, v in value["dict"].items()}
    if "saved_param" in value:
        array = (weights or {}).get(owner, {}).get(value["saved_param"])
        if array is None:
            return None
        return [array, value["mode"]] if "mode" in value else array
    if "unserialisable" in value:
        raise EknError(f"node {owner!r} cannot be rebuilt: its descriptor holds an unserialisable "
                       f"{value['unserialisable']}")
    raise EknError(f"node {owner!r}: unknown encoded argument {value!r}")


def find_unserialisable(config: Any) -> list[str]:
    """Descriptions of the unserialisable arguments inside an encoded config."""
    found: list[str] = []
    if isinstance(config, list):
        for v in config:
            found += find_unserialisable(v)
    elif isinstance(config, dict):
        if "unserialisable" in config:
            found.append(config["unserialisable"])
        for v in config.values():
            found += find_unserialisable(v)
    return found


_REGISTRY_NAMES: dict[type, str | None] = {}


def registry_name_of(cls: type) -> str | None:
    """The entry-point name under which ``cls`` is registered in its kind's registry, or None."""
    if "registry_name" in cls.__dict__ and cls.__dict__["registry_name"]:
        return cls.__dict__["registry_name"]
    if cls not in _REGISTRY_NAMES:
        from ekn_core.plugins import registry

        target = f"{cls.__module__}:{cls.__qualname__}"
        kind = getattr(cls, "kind", "layers")
        names = [e.name for e in registry(kind).entries()
                 if e.value.replace(" ", "") == target and e.status in {"available", "loaded", "failed"}]
        _REGISTRY_NAMES[cls] = names[0] if names else None
    return _REGISTRY_NAMES[cls]


# ---------------------------------------------------------------------------------------------
# Node
# ---------------------------------------------------------------------------------------------
_SIGNATURES: dict[type, inspect.Signature] = {}


def _signature(cls: type) -> inspect.Signature:
    if cls not in _SIGNATURES:
        sig = inspect.signature(cls.__init__)
        params = list(sig.parameters.values())[1:]
        if "name" not in sig.parameters:
            raise TypeError(f"{cls.__name__}.__init__ must accept a 'name' argument (with its default name)")
        if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
            raise TypeError(f"{cls.__name__}.__init__ must not take *args: descriptors replay arguments by name")
        _SIGNATURES[cls] = sig.replace(parameters=params)
    return _SIGNATURES[cls]


class NodeMeta(type):
    """Registers every constructed node in the current model (ELEKTRONN2 ``MetaNode``)."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if _STATE.depth > 0:
            raise EknError(f"{cls.__name__} was constructed inside another node's constructor; nodes must not "
                           f"create nodes. Write a factory function that builds the nodes one after another.")
        sig = _signature(cls)
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError as err:
            raise TypeError(f"{cls.__name__}{sig}: {err}") from None
        model = model_manager.current
        default = sig.parameters["name"].default
        wanted = bound.arguments.get("name") or (default if isinstance(default, str) and default else
                                                 re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower())
        name = model.choose_name(wanted)
        bound.arguments["name"] = name
        node = cls.__new__(cls)
        _STATE.depth += 1
        try:
            node.__init__(*bound.args, **bound.kwargs)
        finally:
            _STATE.depth -= 1
        if not getattr(node, "_node_initialised", False):
            raise TypeError(f"{cls.__name__}.__init__ must call super().__init__(parents, name)")
        node._finalize(model, bound)
        return node


class Node(metaclass=NodeMeta):
    """Base class of every graph node (layers, losses, sources).

    Args:
        parents: A parent Node, a list/tuple of Nodes, or None for source nodes.
        name: Requested name (made unique in the model).
        print_repr: Log the node's description at INFO level after construction (DEBUG when a
            saved model is replayed, see :func:`replaying`).

    Class attributes:
        kind: Registry kind the node class is registered in (``'layers'`` or ``'losses'``).
        config_version: Bumped when the constructor arguments change meaning.
        supports_mfp: Whether ``mfp=True`` may be switched on when loading for prediction.
        upsamples: Whether the output grid is finer than the input's (UpConv; MFP refuses such nets).
        xla_compatible: Whether XLA can compile ``_forward`` (see :meth:`GraphFunction.usable_mode`).
    """

    kind = "layers"
    config_version = 1
    supports_mfp = False
    upsamples = False
    registry_name: str | None = None
    #: False for nodes whose ``_forward`` XLA cannot compile (e.g. it calls ``tf.numpy_function``):
    #: a :class:`GraphFunction` containing one runs ``'plain'`` where ``'xla'`` was resolved.
    xla_compatible = True
    #: True for nodes whose output only moves, selects or pads their parents' values (Crop, Pad,
    #: Split, Reshape, Concat): checks of fed values follow them back to the sources
    #: (:func:`value_sources`).
    keeps_values = False
    #: The constant such a node adds to its parents' values (``Pad``'s fill value), else None: checks
    #: of fed values check it too (:func:`added_constants`).
    added_constant: float | None = None

    def __init__(self, parents: Node | Sequence[Node] | None, name: str, print_repr: bool = False):
        if parents is None:
            parents = []
        elif isinstance(parents, Node):
            parents = [parents]
        parents = list(parents)
        for p in parents:
            if not isinstance(p, Node):
                raise TypeError(f"{type(self).__name__} {name!r}: parents must be Nodes, got {type(p).__name__}")
        self.name = name
        self.parents: list[Node] = parents
        self.children: dict[str, Node] = {}
        self.params: dict[str, Param] = {}
        self.shared_params: dict[str, Param] = {}
        self.print_repr = print_repr
        self.shape: TaggedShape = None  # type: ignore[assignment]  # set by _finalize
        self.computational_cost = 0.0
        self.feature_names: tuple[str, ...] | None = None
        self.last_exec_time: float | None = None
        self.local_exec_time: float | None = None
        self._functions: dict[Any, GraphFunction] = {}
        self._node_initialised = True

    # ----------------------------------------------------------------------------- subclass API
    def add_param(self, name: str, value: Any = None, shape: Sequence[int] | None = None, init: str = "zeros",
                  scale: float = 1.0, trainable: bool = True, weight_decay: float = 0.0, constant: bool = False,
                  dtype: str = FLOATX) -> Param:
        """Creates (or shares) a parameter and registers it in :attr:`params`.

        Args:
            name: Parameter name, unique within the node.
            value: ``None`` (initialise with ``init``/``scale``), a numpy array (initial value),
                ``[array, 'const']`` or ``[array, 'trainable']`` (ELEKTRONN2 style), or a
                :class:`Param` of another node (shared: not added to :attr:`params`).
            shape: Required when ``value`` is None; checked against arrays and shared params.
            init, scale: See :func:`initial_value`.
            trainable: Whether optimisers update it.
            weight_decay: Weight-decay multiplier (0 = none).
            constant: Frozen value.
            dtype: numpy dtype name.

        Returns:
            The Param (use ``param.variable`` inside :meth:`_forward`).
        """
        if name in self.params or name in self.shared_params:
            raise EknError(f"node {self.name!r} already has a parameter {name!r}")
        if isinstance(value, Param):
            if shape is not None and tuple(shape) != value.shape:
                raise ShapeError(f"shared parameter {value.key} has shape {value.shape}, "
                                 f"node {self.name!r} needs {tuple(shape)} for {name!r}")
            self.shared_params[name] = value
            return value
        if isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[1], str):
            mode = value[1]
            if mode not in ("const", "trainable"):
                raise ConfigError(f"parameter {name!r} of {self.name!r}: mode must be 'const' or 'trainable', "
                                  f"got {mode!r}")
            constant = mode == "const"
            trainable = mode == "trainable"
            value = value[0]
        if value is None:
            if shape is None:
                raise ConfigError(f"add_param({name!r}) needs a value or a shape")
            array = (np.zeros(tuple(shape), dtype) if is_shape_only()
                     else initial_value(shape, init, scale, dtype))
        else:
            array = np.asarray(value, dtype=dtype)
            if shape is not None and tuple(array.shape) != tuple(shape):
                raise ShapeError(f"initial value for {self.name}/{name} has shape {array.shape}, "
                                 f"expected {tuple(shape)}")
        param = Param(name, self.name, array, trainable=trainable, weight_decay=weight_decay, constant=constant)
        self.params[name] = param
        return param

    def shape_check(self, condition: bool, message: str, axis: int | None = None) -> bool:
        """Raises :class:`ShapeError` unless ``condition`` (use it in :meth:`_compute_shape`).

        ``axis`` is the spatial axis number the failure concerns (None: not axis-specific).
        During the geometry calculator's lenient replay, failures are recorded instead and the
        method returns ``condition`` so the shape computation can continue with clamped sizes.
        """
        if condition:
            return True
        if _STATE.lenient is not None:
            _STATE.lenient.append((self.name, axis, message))
            return False
        raise ShapeError(f"{type(self).__name__} {self.name!r}: {message}")

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        """Output TaggedShape from the parents' shapes (pure; default: first parent's shape)."""
        return parent_shapes[0]

    def _compute_cost(self) -> float:
        """Computational cost (multiply-adds) of this node; default: #elements of the first parent."""
        if not self.parents:
            return 0.0
        return float(self.parents[0].shape.stripnone_prod)

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        """Output tensor (canonical layout) from the parents' output tensors (canonical layout).

        ``training`` is a Python bool: True inside training steps (dropout active, batch
        normalisation uses and updates batch statistics). Must be pure TensorFlow. Every node with
        parents defines it (or inherits it from a base layer): constructing one that does not is
        an error; source nodes (no parents) are fed and have none.
        """
        raise EknError(missing_forward(type(self)))

    def check_feed(self, feed: Mapping[str, np.ndarray]) -> None:
        """Checks the values fed to source nodes before a compiled call (default: nothing).

        Override it to refuse values whose results would be silently wrong, e.g. class ids
        outside the classes of a loss, with one clear error (:class:`ConfigError`). It runs on the
        host in :meth:`GraphFunction.check_arrays` of every function this node is part of (for
        training, before the batch is copied to the device), so keep it cheap.

        Args:
            feed: The call's canonical arrays by source-node name (only the sources of that call).
        """

    def _repr_extras(self) -> str:
        """Layer-specific text appended to ``repr`` (override)."""
        return ""

    # ----------------------------------------------------------------------------- construction
    def _finalize(self, model: Model, bound: inspect.BoundArguments) -> None:
        if self.parents and type(self)._forward is Node._forward:
            raise EknError(missing_forward(type(self)))
        self.shape = self._compute_shape([p.shape for p in self.parents])
        if not isinstance(self.shape, TaggedShape):
            raise TypeError(f"{type(self).__name__}._compute_shape must return a TaggedShape")
        self.computational_cost = float(self._compute_cost())
        self.model = model
        bound.apply_defaults()  # files record every argument: immune to later default changes
        config = {}
        for key, value in bound.arguments.items():
            if key == "name":
                continue
            if _signature(type(self)).parameters[key].kind is inspect.Parameter.VAR_KEYWORD:
                config.update({k: encode_argument(v, self, k) for k, v in value.items()})
            else:
                config[key] = encode_argument(value, self, key)
        descriptor = {
            "kind": self.kind,
            "type": registry_name_of(type(self)),
            "local": f"{type(self).__module__}:{type(self).__qualname__}",
            "name": self.name,
            "parents": [p.name for p in self.parents],
            "config": config,
            "config_version": self.config_version,
        }
        for p in self.parents:
            p.children[self.name] = self
        model.register_node(self, descriptor)
        if not is_shape_only():
            log.log(logging.INFO if self.print_repr and not _STATE.replaying else logging.DEBUG, "%r", self)

    # ----------------------------------------------------------------------------- graph introspection
    @property
    def is_source(self) -> bool:
        """True for nodes without parents (inputs)."""
        return not self.parents

    @property
    def all_parents(self) -> dict[str, Node]:
        """This node and all its ancestors, in topological order (parents first)."""
        order: dict[str, Node] = {}
        stack: list[tuple[Node, bool]] = [(self, False)]
        while stack:
            node, expanded = stack.pop()
            if node.name in order:
                continue
            if expanded:
                order[node.name] = node
                continue
            stack.append((node, True))
            for parent in reversed(node.parents):
                if parent.name not in order:
                    stack.append((parent, False))
        return order

    @property
    def input_nodes(self) -> list[Node]:
        """The source nodes this node depends on, in the order ``node(*arrays)`` expects them."""
        return [n for n in self.all_parents.values() if n.is_source]

    @property
    def all_children(self) -> dict[str, Node]:
        """All descendants (breadth first)."""
        found: dict[str, Node] = {}
        queue = list(self.children.values())
        while queue:
            node = queue.pop(0)
            if node.name not in found:
                found[node.name] = node
                queue.extend(node.children.values())
        return found

    @property
    def all_params(self) -> dict[str, Param]:
        """Every parameter of this node and its ancestors, keyed ``'<node>/<param>'`` (shared once)."""
        params: dict[str, Param] = {}
        seen: set[int] = set()
        for node in self.all_parents.values():
            for p in list(node.params.values()) + list(node.shared_params.values()):
                if id(p) not in seen:
                    seen.add(id(p))
                    params[p.key] = p
        return params

    @property
    def all_trainable_params(self) -> dict[str, Param]:
        """The trainable subset of :attr:`all_params`."""
        return {k: p for k, p in self.all_params.items() if p.trainable}

    @property
    def all_nontrainable_params(self) -> dict[str, Param]:
        """The non-trainable subset of :attr:`all_params`."""
        return {k: p for k, p in self.all_params.items() if not p.trainable}

    @property
    def param_count(self) -> int:
        """Number of trainable values owned by this node."""
        return sum(p.size for p in self.params.values() if p.trainable)

    @property
    def all_params_count(self) -> int:
        """Number of trainable values of this node and its ancestors."""
        return sum(p.size for p in self.all_trainable_params.values())

    @property
    def all_computational_cost(self) -> float:
        """Summed cost of this node and its ancestors."""
        return sum(n.computational_cost for n in self.all_parents.values())

    def get_param_values(self, skip_const: bool = False) -> dict[str, np.ndarray]:
        """``{param name: array}`` of this node's own parameters."""
        return {k: p.get_value() for k, p in self.params.items() if not (skip_const and p.constant)}

    def set_param_values(self, value_dict: dict[str, Any], skip_const: bool = False) -> None:
        """Sets parameters from ``{name: array}``; unknown names raise, constants need ``skip_const``.

        With ``skip_const=True`` constant parameters are overwritten too (their value is still
        what the caller provides, e.g. when restoring a model file).
        """
        unknown = set(value_dict) - set(self.params)
        if unknown:
            raise EknError(f"node {self.name!r} has no parameter(s) {sorted(unknown)}; it has {sorted(self.params)}")
        for key, value in value_dict.items():
            self.params[key].set_value(value, force=skip_const)

    # ----------------------------------------------------------------------------- running
    def function(self, training: bool = False) -> GraphFunction:
        """The (cached) compiled function computing this node from :attr:`input_nodes`."""
        if training not in self._functions:
            self._functions[training] = GraphFunction([self], training=training, name=self.name)
        return self._functions[training]

    def __call__(self, *arrays: Any, training: bool = False) -> np.ndarray:
        """Runs the sub-graph on numpy arrays given in :attr:`input_nodes` order (declared layouts)."""
        fn = self.function(training)
        out = fn(*arrays)
        self.last_exec_time = fn.last_exec_time
        return out

    def test_run(self, on_shape_mismatch: str = "warn", debug_outputs: bool = False) -> tuple[np.ndarray, float]:
        """Runs the node on random inputs of the declared shapes (unknown sizes → 1).

        Returns ``(output, seconds)``; with ``on_shape_mismatch='raise'`` a difference between the
        computed and the actual output shape raises :class:`ShapeError`. ``debug_outputs`` is
        accepted for ELEKTRONN2 compatibility and ignored.
        """
        arrays = [random_input(n.shape, getattr(n, "dtype", FLOATX)) for n in self.input_nodes]
        self(*arrays)  # compile
        t0 = time.perf_counter()
        out = self(*arrays)
        elapsed = time.perf_counter() - t0
        expected = tuple(a if s is None else s for s, a in zip(self.shape.shape, out.shape))
        ok = out.shape == expected
        n_vox = self.shape.spatial_size * (out.shape[self.shape.tag2index("b")] if self.shape.hastag("b") else 1)
        speed = f", {n_vox / elapsed / 1e6:.3f} MPix/s" if elapsed > 0 and self.shape.ndim else ""
        log.info("test_run of %r: output %s (computed %s, %s), %.4f s%s", self.name, out.shape,
                 self.shape.shape, "agree" if ok else "MISMATCH", elapsed, speed)
        if not ok:
            message = f"node {self.name!r}: computed shape {self.shape.shape} but actual output {out.shape}"
            if on_shape_mismatch == "raise":
                raise ShapeError(message)
            log.warning("%s", message)
        return out, elapsed

    def measure_exectime(self, n_samples: int = 5, n_warmup: int = 4, print_info: bool = True,
                         local: bool = True, nonegative: bool = True) -> float:
        """Median run time (seconds) of the node; ``local`` subtracts the time of its parents."""
        arrays = [random_input(n.shape, getattr(n, "dtype", FLOATX)) for n in self.input_nodes]
        total = _median_time(self.function(False), arrays, n_samples, n_warmup)
        self.last_exec_time = total
        result = total
        if local and self.parents and not all(p.is_source for p in self.parents):
            fn = GraphFunction(self.parents, inputs=self.input_nodes, name=f"{self.name}-parents")
            result = total - _median_time(fn, arrays, n_samples, n_warmup)
            if nonegative:
                result = max(result, 0.0)
        self.local_exec_time = result
        if print_info:
            log.info("%s: %.5f s (%s)", self.name, result, "local" if local else "total")
        return result

    def predict_dense(self, raw_img: np.ndarray, as_uint8: bool = False, pad_raw: bool = False,
                      tta: str | list[str] | None = None, affinity_offsets: Any = None,
                      grey_range: tuple[float, float] | None = None) -> np.ndarray:
        """Dense prediction of a whole image by tiling (see :func:`ekn_core.prediction.predict_dense`;
        ``tta="flips"`` etc. averages over flipped inputs, ``affinity_offsets`` restores an affinity
        net's channels under them, ``grey_range`` states the raw values mapped to 0 and 1)."""
        from ekn_core.prediction import predict_dense

        return predict_dense(self, raw_img, as_uint8=as_uint8, pad_raw=pad_raw, tta=tta,
                             affinity_offsets=affinity_offsets, grey_range=grey_range)

    # ----------------------------------------------------------------------------- text
    def __repr__(self) -> str:
        shape = ", ".join(f"({s},{t})" for s, t in zip(self.shape.shape, self.shape.tags)) if self.shape else "?"
        extras = self._repr_extras()
        geometry = (f" fov={list(self.shape.fov)} strides={list(self.shape.strides)}"
                    if self.shape is not None and self.shape.ndim else "")
        return (f"<{type(self).__name__}-Node> {self.name!r} #Params={self.param_count:,} "
                f"Comp.Cost={pretty_cost(self.computational_cost)} Out:[{shape}]{geometry}"
                + (f" {extras}" if extras else ""))


def near_forward(cls: type) -> list[str]:
    """The method of a node class (defined below ``Node``) whose name is a near miss of
    ``_forward`` (``forward``, ``_foward``), as a list of at most one name. A name with ``forward``
    in a longer word (``_forward_impl``, ``fast_forward``) is another method.

    Example:
        >>> class Half(Node):
        ...     def forward(self, inputs, training):
        ...         return inputs[0] / 2
        ...     def _forward_impl(self, x):
        ...         return x
        ...     def _onward(self):
        ...         pass
        >>> near_forward(Half)
        ['forward']
    """
    own = [name for c in cls.__mro__[:cls.__mro__.index(Node)] for name, value in vars(c).items()
           if callable(value) and ("forward" not in name or name.strip("_") == "forward")]
    return difflib.get_close_matches("_forward", own, n=1, cutoff=0.85)


def missing_forward(cls: type) -> str:
    """The error for a node class with parents that neither defines nor inherits ``_forward``, with
    the method it probably meant.

    Example:
        >>> class Half(Node):
        ...     def _foward(self, inputs, training):
        ...         return inputs[0] / 2
        >>> print(missing_forward(Half))  # doctest: +ELLIPSIS
        ekn_core.node:Half defines no _forward(self, inputs, training) (it defines _foward: a misspelt
        _forward?), so its nodes would have no output: ...
    """
    close = near_forward(cls)
    hint = f" (it defines {close[0]}: a misspelt _forward?)" if close else ""
    return (f"{cls.__module__}:{cls.__qualname__} defines no _forward(self, inputs, training){hint}, so its nodes "
            "would have no output: define it to return the output tensor computed from the parents' tensors "
            "(docs/writing_layers.md)")


def pretty_cost(cost: float) -> str:
    """``1.5e9`` → ``'1.5 Giga Ops'``.

    Example:
        >>> pretty_cost(2.5e6)
        '2.5 Mega Ops'
    """
    for factor, label in ((1e12, "Tera"), (1e9, "Giga"), (1e6, "Mega"), (1e3, "Kilo")):
        if cost >= factor:
            return f"{cost / factor:.3g} {label} Ops"
    return f"{cost:.3g} Ops"


def random_input(shape: TaggedShape, dtype: str = FLOATX) -> np.ndarray:
    """Random array of a declared input shape (unknown sizes → 1); integers in [0, 2)."""
    sizes = tuple(1 if s is None else s for s in shape.shape)
    if np.issubdtype(np.dtype(dtype), np.integer):
        return _RNG.integers(0, 2, sizes).astype(dtype)
    return _RNG.random(sizes).astype(dtype)


def _median_time(fn: GraphFunction, arrays: list[np.ndarray], n_samples: int, n_warmup: int) -> float:
    for _ in range(max(n_warmup, 1)):
        fn(*arrays)
    times = []
    for _ in range(max(n_samples, 1)):
        fn(*arrays)
        times.append(fn.last_exec_time)
    return float(np.median(times))


# ---------------------------------------------------------------------------------------------
# Evaluation and compiled graph functions
# ---------------------------------------------------------------------------------------------
def topological_order(outputs: Sequence[Node]) -> dict[str, Node]:
    """Union of the ancestors of ``outputs`` in topological order."""
    order: dict[str, Node] = {}
    for out in outputs:
        for name, node in out.all_parents.items():
            order.setdefault(name, node)
    return order


def evaluate(outputs: Sequence[Node], feed: dict[str, Any], training: bool) -> list[Any]:
    """Symbolically evaluates ``outputs`` (canonical tensors) given tensors for source nodes.

    Under a mixed precision policy (:func:`set_precision`) the inputs of each node are cast to
    the compute dtype or to float32, according to the node's ``mixed_precision`` attribute, and
    the outputs are float32.
    """
    values: dict[str, Any] = dict(feed)
    mixed = compute_dtype() if compute_dtype() != "float32" else None
    for name, node in topological_order(outputs).items():
        if name in values:
            continue
        if node.is_source:
            raise EknError(f"no value given for source node {name!r}")
        inputs = [values[p.name] for p in node.parents]
        if mixed:
            dtype = mixed if getattr(node, "mixed_precision", False) else "float32"
            inputs = [cast_floating(x, dtype) for x in inputs]
        values[name] = node._forward(inputs, training)
    if mixed:
        return [cast_floating(values[o.name], "float32") for o in outputs]
    return [values[o.name] for o in outputs]


def value_sources(node: Node) -> list[Node]:
    """The source nodes whose values alone make up ``node``: ``node`` itself when it is a source,
    else those of its parents when it only moves values (:attr:`Node.keeps_values`) and each parent
    has such sources, else none (some value is computed). :meth:`Node.check_feed` uses it to check
    the values a node gets from the arrays fed, e.g. a cropped target or one piece of a split one.

    Example:
        >>> from ekn_core import neuromancer as nm
        >>> _ = nm.model_manager.newmodel("doc_value_sources")
        >>> lab = nm.Input((1, 1, 8, 8), 'b,f,x,y', dtype='int16', name='lab')
        >>> [n.name for n in value_sources(nm.Crop(lab, 1))], value_sources(nm.ApplyFunc(lab, 'square'))
        (['lab'], [])
        >>> value_sources(nm.Concat([lab, nm.ApplyFunc(lab, 'neg')]))
        []
    """
    if node.is_source:
        return [node]
    if not node.keeps_values:
        return []
    found = [value_sources(p) for p in node.parents]
    if not all(found):
        return []
    return list({n.name: n for sources in found for n in sources}.values())


def added_constants(node: Node) -> dict[str, float]:
    """The constants that the nodes moving values into ``node`` add (:attr:`Node.added_constant`, e.g.
    a ``Pad`` of a target), by node name: :meth:`Node.check_feed` checks them with the fed values.

    Example:
        >>> from ekn_core import neuromancer as nm
        >>> _ = nm.model_manager.newmodel("doc_added_constants")
        >>> lab = nm.Input((1, 1, 8, 8), 'b,f,x,y', dtype='int16', name='lab')
        >>> added_constants(nm.Crop(nm.Pad(lab, 2, value=-1, name='pad'), 1))
        {'pad': -1.0}
    """
    if node.is_source or not node.keeps_values:
        return {}
    found = {node.name: node.added_constant} if node.added_constant is not None else {}
    for parent in node.parents:
        found.update(added_constants(parent))
    return found


def union_inputs(outputs: Sequence[Node]) -> list[Node]:
    """Source nodes of several outputs, in order of first appearance."""
    return [n for n in topological_order(outputs).values() if n.is_source]


def _describe_input(node: Node) -> str:
    dtype = getattr(node, "dtype", FLOATX)
    return f"{node.name!r} (shape {node.shape.shape}, tags {','.join(node.shape.tags)}, {dtype})"


class GraphFunction:
    """A compiled function from source-node arrays to output-node arrays.

    Validates the arrays (count, rank, sizes, dtype) with messages that name the input and what
    was expected, transposes them to the canonical layout, runs the compiled function and returns
    numpy arrays in the outputs' declared layouts (one array for one output, else a list).

    The compile mode is decided per call by :func:`resolve_compile_mode` with this function's
    :meth:`compile_key` (so a measured choice cached for this device, role, input shapes,
    precision and architecture is used); one compiled function is kept per (mode, precision).
    A function containing a node with ``xla_compatible = False`` runs ``'plain'`` instead of
    ``'xla'`` (:meth:`usable_mode`).

    Args:
        outputs: Nodes to compute.
        inputs: Source nodes in argument order (default: :func:`union_inputs` of ``outputs``).
        training: Training mode flag passed to every ``_forward``.
        name: For messages.
        role: What the function is for, part of its compile-choice key (``'predict'``,
            ``'train:adam'``, ...; default ``'nodes:<output names>'``, plus ``':training'``).

    Attributes:
        traces: How often the Python body was traced (compiled); counts retraces in tests.
        last_exec_time: Seconds of the last call (excluding conversion).
        last_mode: The compile mode of the last call (None before the first).
    """

    def __init__(self, outputs: Sequence[Node], inputs: Sequence[Node] | None = None, training: bool = False,
                 name: str = "", role: str | None = None):
        self.outputs = list(outputs)
        self.inputs = list(inputs) if inputs is not None else union_inputs(self.outputs)
        self.training = training
        self.name = name or ",".join(o.name for o in self.outputs)
        self.role = role or (f"nodes:{','.join(o.name for o in self.outputs)}" + (":training" if training else ""))
        self.traces = 0
        self.last_exec_time: float | None = None
        self.last_mode: str | None = None
        self._compiled: dict[tuple[str, str], Callable[..., Any]] = {}
        self._architecture: str | None = None
        self._keys: dict[tuple[Any, ...], str] = {}  # compile keys by (device scope, precision, signature)
        self._xla_blockers: list[str] | None = None
        self._xla_fallback_logged = False
        self._feed_checks: list[Callable[[Mapping[str, np.ndarray]], None]] | None = None

    def body(self, *tensors: Any) -> list[Any]:
        """The traced computation (canonical tensors in, list of canonical tensors out)."""
        self.traces += 1
        feed = {n.name: t for n, t in zip(self.inputs, tensors)}
        return evaluate(self.outputs, feed, self.training)

    def check_arrays(self, arrays: Sequence[Any]) -> list[np.ndarray]:
        """Validates the arrays and returns them as canonical-layout numpy arrays."""
        if len(arrays) != len(self.inputs):
            wanted = "; ".join(f"#{i} {_describe_input(n)}" for i, n in enumerate(self.inputs))
            raise TypeError(f"{self.name!r} needs {len(self.inputs)} input array(s), in this order: {wanted}; "
                            f"got {len(arrays)}")
        converted = []
        for i, (node, array) in enumerate(zip(self.inputs, arrays)):
            array = np.asarray(array)
            dtype = np.dtype(getattr(node, "dtype", FLOATX))
            declared = node.shape.shape
            where = f"input #{i} {node.name!r} of {self.name!r}"
            if array.ndim != len(declared):
                raise ShapeError(f"{where} must have {len(declared)} axes ({','.join(node.shape.tags)}, shape "
                                 f"{declared}), got an array of shape {array.shape}")
            for axis, (got, want, tag) in enumerate(zip(array.shape, declared, node.shape.tags)):
                if want is not None and got != want:
                    hint = ""
                    if tag in ("z", "y", "x"):
                        hint = (" To use another patch size rebuild the model, e.g. "
                                "nm.rebuild_model(model, imposed_patch_size=...).")
                    elif tag == "b":
                        hint = " The batch size is fixed; rebuild with imposed_batch_size to change it."
                    raise ShapeError(f"{where}: axis {tag!r} has size {got} but {want} is expected (declared shape "
                                     f"{declared}, tags {','.join(node.shape.tags)}).{hint}")
            if array.dtype != dtype:
                if not (np.can_cast(array.dtype, dtype, "same_kind")
                        or (np.issubdtype(dtype, np.floating) and np.issubdtype(array.dtype, np.number))
                        or array.dtype == np.bool_):
                    raise TypeError(f"{where} must have dtype {dtype} (or one that converts safely), "
                                    f"got {array.dtype}")
                array = array.astype(dtype)
            converted.append(np.ascontiguousarray(node.shape.to_canonical(array)))
        if self._feed_checks is None:  # the nodes that check what they are fed (Node.check_feed)
            self._feed_checks = [n.check_feed for n in topological_order(self.outputs).values()
                                 if type(n).check_feed is not Node.check_feed]
        if self._feed_checks:
            feed = {node.name: array for node, array in zip(self.inputs, converted)}
            for check in self._feed_checks:
                check(feed)
        return converted

    # ----------------------------------------------------------------------------- compile mode
    @property
    def architecture(self) -> str:
        """Short hash of the descriptors of every node the outputs depend on (see
        :func:`ekn_core.compile_choice.architecture_hash`)."""
        if self._architecture is None:
            from ekn_core.compile_choice import architecture_hash

            self._architecture = architecture_hash(topological_order(self.outputs).values())
        return self._architecture

    def compile_key(self, arrays: Sequence[np.ndarray], device: str | None = None) -> str:
        """This function's compile-choice key for canonical ``arrays``: device kind | role | input
        shapes and dtypes | precision | architecture hash (see :func:`ekn_core.compile_choice.choice_key`).

        Args:
            arrays: The canonical arrays of a call (:meth:`check_arrays`), or the same as tensors.
            device: TensorFlow device name (default: the current device scope, else the default device).
        """
        from ekn_core.compile_choice import choice_key, device_kind, device_scope, signature

        if device is None:
            device = device_scope()
        memo = (device, precision(), tuple((tuple(a.shape), getattr(a.dtype, "name", None) or str(a.dtype))
                                           for a in arrays))
        key = self._keys.get(memo)
        if key is None:
            key = self._keys[memo] = choice_key(device_kind(device), self.role, signature(arrays), memo[1],
                                                self.architecture)
        return key

    def _compile(self, mode: str) -> Callable[..., Any]:
        """The compiled body for ``mode`` (subclasses that compile another callable override it)."""
        return compile_function(self.body, mode)

    def compiled(self, mode: str) -> Callable[..., Any]:
        """The compiled function for ``mode`` and the precision in effect (compiled once, then kept)."""
        slot = (_checked(mode, COMPILE_MODES, "compile mode"), precision())
        fn = self._compiled.get(slot)
        if fn is None:
            # random nodes draw seeds from the global generator: create it here, outside any trace
            # (created during a trace it forces a second trace of the first compiled call)
            tf.random.get_global_generator()
            fn = self._compiled[slot] = self._compile(mode)
        return fn

    def forget_compiled(self, keep: str | None = None) -> None:
        """Drops the compiled functions (all, or all but those of mode ``keep``); the next call compiles again."""
        self._compiled = {slot: fn for slot, fn in self._compiled.items() if keep is not None and slot[0] == keep}

    @property
    def xla_blockers(self) -> list[str]:
        """Names of the nodes of this function whose class has ``xla_compatible = False``."""
        if self._xla_blockers is None:
            self._xla_blockers = [n.name for n in topological_order(self.outputs).values()
                                  if not getattr(n, "xla_compatible", True)]
        return self._xla_blockers

    def usable_mode(self, mode: str) -> str:
        """``mode``, except ``'plain'`` for ``'xla'`` when a node cannot be XLA-compiled
        (:attr:`xla_blockers`, e.g. a ``MalisNLL`` with its ``tf.numpy_function``); logged once
        per function at INFO level."""
        if mode == "xla" and self.xla_blockers:
            if not self._xla_fallback_logged:
                self._xla_fallback_logged = True
                log.info("%s: compiled with plain tf.function instead of XLA: node(s) %s cannot be "
                         "XLA-compiled (xla_compatible = False)", self.name, ", ".join(self.xla_blockers))
            return "plain"
        return mode

    def _function(self, arrays: Sequence[np.ndarray] = (), mode: str | None = None) -> Callable[..., Any]:
        """The compiled function for a call with canonical ``arrays`` in ``mode`` (default: resolved by
        :func:`resolve_compile_mode` from :meth:`compile_key`), made usable by :meth:`usable_mode`."""
        if mode is None:
            mode = resolve_compile_mode(lambda: self.compile_key(arrays))
        mode = self.usable_mode(mode)
        fn = self.compiled(mode)
        self.last_mode = mode
        return fn

    def run_canonical(self, arrays: Sequence[Any], mode: str | None = None) -> list[np.ndarray]:
        """Runs on already validated canonical arrays (in ``mode``, default resolved); returns
        canonical numpy arrays.

        ``arrays`` are numpy arrays (converted here) or tensors, which are passed on unchanged, so a
        batch already copied to the device (:class:`ekn_core.trainer.prefetch.DevicePrefetcher`)
        is not copied back to the host.
        """
        fn = self._function(arrays, mode)
        t0 = time.perf_counter()
        outs = fn(*[a if isinstance(a, tf.Tensor) else tf.convert_to_tensor(a) for a in arrays])
        outs = [np.asarray(o) for o in outs]
        self.last_exec_time = time.perf_counter() - t0
        return outs

    def __call__(self, *arrays: Any) -> Any:
        outs = self.run_canonical(self.check_arrays(arrays))
        results = [node.shape.from_canonical(o) for node, o in zip(self.outputs, outs)]
        return results[0] if len(results) == 1 else results
