"""Value nodes: constants or learned arrays as graph nodes (``ValueNode``, ``InitialState_like``).

* :class:`ValueNode` holds an array of a declared shape (e.g. class weights, a fixed or learned
  initial recurrent state). It has no parents and is *not* an input: nothing is fed to it.
* :class:`InitialStateLike` (ELEKTRONN2 ``InitialState_like``) is a learned vector of
  ``override_f`` features broadcast to the shape of its parent with ``f`` replaced, e.g. the
  learned initial memory of a GRU whose batch size follows the input.

``init_kwargs`` uses ELEKTRONN2's names: ``{'mode': 'const'|'fix-uni'|'normal'|'ortho',
'scale': s}`` (``fix-uni`` is U(-s, s)).

Example:
    >>> import numpy as np
    >>> from ekn_core import neuromancer as nm
    >>> _ = nm.model_manager.newmodel("doc_values")
    >>> inp = nm.Input((3, 4), 'b,f')
    >>> w = nm.ValueNode((2,), 'f', value=np.array([0.2, 1.8]))
    >>> w(), w.input_nodes
    (array([0.2, 1.8], dtype=float32), [])
    >>> s = nm.InitialState_like(inp, 5, init_kwargs={'mode': 'const', 'scale': 0.5})
    >>> s(np.zeros((3, 4))).shape, float(s(np.zeros((3, 4)))[2, 4])
    ((3, 5), 0.5)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ekn_core.errors import ConfigError
from ekn_core.lazy import tf
from ekn_core.node import FLOATX, Node
from ekn_core.shapes import TaggedShape

#: ELEKTRONN2 ``init_kwargs['mode']`` → :func:`ekn_core.node.initial_value` ``init``.
_INIT_MODES = {"const": "const", "fix-uni": "uniform", "uni": "uniform", "uniform": "uniform",
               "normal": "normal", "ortho": "ortho", "zeros": "zeros"}


def init_from_kwargs(init_kwargs: dict[str, Any] | None, default_mode: str = "const",
                     default_scale: float = 0.0) -> tuple[str, float]:
    """``(init, scale)`` for :meth:`Node.add_param` from ELEKTRONN2-style ``init_kwargs``.

    Example:
        >>> init_from_kwargs({'mode': 'fix-uni', 'scale': 0.1})
        ('uniform', 0.1)
    """
    kwargs = dict(init_kwargs or {})
    mode = kwargs.pop("mode", default_mode)
    scale = kwargs.pop("scale", default_scale)
    if mode not in _INIT_MODES:
        raise ConfigError(f"init_kwargs mode must be one of {sorted(_INIT_MODES)}, got {mode!r}")
    if kwargs:
        raise ConfigError(f"unknown init_kwargs {sorted(kwargs)}; only 'mode' and 'scale' are understood")
    if not isinstance(scale, (int, float)):
        raise ConfigError(f"init_kwargs scale must be a number, got {scale!r}")
    return _INIT_MODES[mode], float(scale)


class ValueNode(Node):
    """A constant or trainable array as a node without inputs.

    Args:
        shape: Sizes in tag order (all known).
        tags: Tag order, e.g. ``'f'`` or ``'b,f'``.
        strides, fov: Per spatial axis (default 1).
        dtype: dtype name.
        apply_train: Whether the value is trained.
        value: Initial array (default from ``init_kwargs``, else zeros); ``[array, 'const']``
            forces a constant.
        init_kwargs: ``{'mode': ..., 'scale': ...}`` when ``value`` is None.
        name: Node name.
        print_repr: Log the node description.

    Shape rule: the declared shape; FOV and strides as given.
    """

    def __init__(self, shape: Sequence[int], tags: str | Sequence[str], strides: Sequence[int] | None = None,
                 fov: Sequence[int] | None = None, dtype: str = FLOATX, apply_train: bool = False,
                 value: Any = None, init_kwargs: dict[str, Any] | None = None, name: str = "value_state",
                 print_repr: bool = True):
        super().__init__(None, name, print_repr)
        if any(s is None for s in shape):
            raise ConfigError(f"ValueNode {name!r} needs all sizes known, got {tuple(shape)}")
        self._declared = TaggedShape(shape, tags, strides, fov)
        self.dtype = np.dtype(dtype).name
        init, scale = init_from_kwargs(init_kwargs, "zeros", 0.0)
        self.add_param("value", value, shape=self._declared.shape, init=init, scale=scale,
                       trainable=bool(apply_train), dtype=self.dtype)

    @property
    def is_source(self) -> bool:
        """A ValueNode has no parents but is not fed: it is not a source."""
        return False

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        return self._declared

    def _compute_cost(self) -> float:
        return 0.0

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        return tf.transpose(self.params["value"].variable, self.shape.canonical_perm)

    def _repr_extras(self) -> str:
        return "trainable" if self.params["value"].trainable else "constant"


class InitialStateLike(Node):
    """A learned vector of ``override_f`` features broadcast to ``parent``'s shape (f replaced).

    Args:
        parent: Node whose shape (tags, batch and spatial sizes) the output takes.
        override_f: Number of features of the state.
        dtype: dtype name (default float32).
        name: Node name.
        print_repr: Log the node description.
        init_kwargs: Initialisation ``{'mode': ..., 'scale': ...}`` (default const 0).
        value: Initial vector of length ``override_f`` (e.g. from a saved model).

    Shape rule: ``parent``'s shape with ``f = override_f``; cost 0.
    """

    def __init__(self, parent: Node, override_f: int, dtype: str | None = None, name: str = "initial_state",
                 print_repr: bool = True, init_kwargs: dict[str, Any] | None = None, value: Any = None):
        super().__init__(parent, name, print_repr)
        if not parent.shape.hastag("f"):
            raise ConfigError(f"InitialState_like {name!r}: parent {parent.name!r} has no 'f' axis")
        if not isinstance(override_f, int) or isinstance(override_f, bool) or override_f < 1:
            raise ConfigError(f"InitialState_like {name!r}: override_f must be a positive int, got {override_f!r}")
        self.override_f = override_f
        self.dtype = np.dtype(dtype or FLOATX).name
        init, scale = init_from_kwargs(init_kwargs)
        self.add_param("value", value, shape=(override_f,), init=init, scale=scale, dtype=self.dtype)

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        return parent_shapes[0].updateshape("f", self.override_f)

    def _compute_cost(self) -> float:
        return 0.0

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        x = inputs[0]
        target = tf.concat([tf.shape(x)[:-1], [self.override_f]], axis=0)
        return tf.broadcast_to(self.params["value"].variable, target)

    def _repr_extras(self) -> str:
        return f"n_f={self.override_f}"
