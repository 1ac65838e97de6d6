"""Reading ELEKTRONN2 ``.mdl`` model files (pickles) without running code from them.

An ELEKTRONN2 model file is a pickle (protocol 2, possibly gzip-compressed) of
``(descriptors, desig_descr)``: ``descriptors`` maps node names, in creation order, to
``[NodeDescriptor, {param: array}]`` or to a ``SplitDescriptor``; ``desig_descr`` maps roles to
node names. Unpickling normally imports and calls whatever the file names, so a pickle can run
any code. :class:`RestrictedUnpickler` follows the "restricting globals" pattern of the Python
documentation: its ``find_class`` returns only

* inert records of this module for ELEKTRONN2's ``NodeDescriptor``, ``SplitDescriptor``,
  ``NodePointer``, ``ParamPointer`` and ``TaggedShape`` (pickle creates them empty and fills
  their ``__dict__``; they have no methods that run),
* :class:`LegacyName` for every other name of ELEKTRONN2's ``neuromancer`` modules (node classes,
  ``split``): a plain (module, name) pair that cannot be called,
* numpy's array, dtype and scalar reconstructors (object dtypes refused), ``collections.OrderedDict``,
  Python's plain containers and scalars, and ``_codecs.encode`` for latin-1 (how Python 3 pickles
  bytes with protocol 2),

and refuses every other name with one error naming it, before anything is called.

Example:
    >>> import io, pickle
    >>> data = pickle.dumps(print, protocol=2)
    >>> RestrictedUnpickler(io.BytesIO(data)).load()
    Traceback (most recent call last):
    ...
    ekn_core.legacy_pickle.LegacyPickleError: the file refers to __builtin__.print, which is not part of an ...
"""

from __future__ import annotations

import collections
import gzip
import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ekn_core.errors import EknError

GZIP_MAGIC = b"\x1f\x8b"
PICKLE_PROTO = b"\x80"
#: ELEKTRONN2 modules whose names a model file may mention (node classes, ``split``).
NEUROMANCER_MODULES = frozenset(f"elektronn2.neuromancer.{m}" for m in (
    "node_basic", "neural", "loss", "various", "graphmanager", "graphutils", "model", "variables"))


class LegacyPickleError(EknError):
    """An ELEKTRONN2 model file that cannot be read safely (or is not one)."""


class _Record:
    """Base of the inert stand-ins for ELEKTRONN2 objects: unpickling fills ``__dict__`` only."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.__dict__}>"


class NodeDescriptor(_Record):
    """ELEKTRONN2 ``NodeDescriptor``: ``args``, ``kwargs`` and ``cls`` (a :class:`LegacyName`)."""


class SplitDescriptor(_Record):
    """ELEKTRONN2 ``SplitDescriptor``: ``node_id``, ``func`` (a :class:`LegacyName`), ``args``, ``kwargs``."""


class NodePointer(_Record):
    """ELEKTRONN2 ``NodePointer``: ``target_id`` (a node name)."""


class ParamPointer(_Record):
    """ELEKTRONN2 ``ParamPointer``: ``target_id`` (node name) and ``param_name`` (a shared parameter)."""


class TaggedShape(_Record):
    """ELEKTRONN2 ``TaggedShape``: ``_shape``, ``_tags``, ``_strides``, ``_fov``, ``_mfp_offsets``."""


RECORDS: dict[tuple[str, str], type] = {
    ("elektronn2.neuromancer.graphmanager", "NodeDescriptor"): NodeDescriptor,
    ("elektronn2.neuromancer.graphmanager", "SplitDescriptor"): SplitDescriptor,
    ("elektronn2.neuromancer.graphmanager", "NodePointer"): NodePointer,
    ("elektronn2.neuromancer.graphmanager", "ParamPointer"): ParamPointer,
    ("elektronn2.neuromancer.graphutils", "TaggedShape"): TaggedShape,
}


@dataclass(frozen=True)
class LegacyName:
    """An ELEKTRONN2 class or function named by a model file (never imported, never called).

    Example:
        >>> LegacyName("elektronn2.neuromancer.neural", "Conv").name
        'Conv'
    """

    module: str
    name: str

    def __str__(self) -> str:
        return f"{self.module}.{self.name}"


def _refuse_objects(dtype: np.dtype) -> np.dtype:
    if dtype.hasobject:
        raise LegacyPickleError("the file holds an array of Python objects (dtype object), which an ELEKTRONN2 "
                                "model file does not; it was refused (ekn runs no code from model files)")
    return dtype


def _dtype(*args: Any) -> np.dtype:
    return _refuse_objects(np.dtype(*args))


_NUMPY_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]
_NUMPY_SCALAR = np.float32(0).__reduce__()[0]


def _scalar(dtype: np.dtype, *data: Any) -> Any:
    return _NUMPY_SCALAR(_refuse_objects(dtype), *data)


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    if encoding.replace("-", "").lower() != "latin1":
        raise LegacyPickleError(f"the file encodes bytes as {encoding!r}; ELEKTRONN2 model files use latin-1")
    return text.encode("latin-1")


_SAFE_BUILTINS = {"set": set, "frozenset": frozenset, "list": list, "dict": dict, "tuple": tuple, "int": int,
                  "float": float, "complex": complex, "str": str, "bytes": bytes, "bool": bool}
#: The ``future`` package's Python-2 types that ELEKTRONN2's ``from builtins import int, ...`` pickled.
_FUTURE_TYPES = {("future.types.newint", "newint"): int, ("future.types.newstr", "newstr"): str,
                 ("future.types.newbytes", "newbytes"): bytes, ("future.types.newlist", "newlist"): list,
                 ("future.types.newdict", "newdict"): dict}
_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
ALLOWED: dict[tuple[str, str], Callable[..., Any] | type] = {
    **{(m, n): v for m in ("builtins", "__builtin__") for n, v in _SAFE_BUILTINS.items()},
    **_FUTURE_TYPES,
    **{(m, "_reconstruct"): _NUMPY_RECONSTRUCT for m in _NUMPY_MODULES},
    **{(m, "scalar"): _scalar for m in _NUMPY_MODULES},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` that resolves only the names listed in the module docs."""

    def __init__(self, file: Any) -> None:
        super().__init__(file, encoding="latin1")

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in RECORDS:
            return RECORDS[(module, name)]
        if (module, name) in ALLOWED:
            return ALLOWED[(module, name)]
        if module in NEUROMANCER_MODULES and name.isidentifier():
            return LegacyName(module, name)
        raise LegacyPickleError(f"the file refers to {module}.{name}, which is not part of an ELEKTRONN2 model file; "
                                f"it was refused without running anything (ekn runs no code from model files)")

    def persistent_load(self, pid: Any) -> Any:
        raise LegacyPickleError("the file uses persistent ids, which ELEKTRONN2 model files do not")


def looks_like_legacy_model(path: str) -> bool:
    """Whether ``path`` starts like an ELEKTRONN2 model file (a pickle of protocol >= 2, or gzip)."""
    with open(path, "rb") as f:
        head = f.read(2)
    return head[:1] == PICKLE_PROTO or head == GZIP_MAGIC


def _check_arrays(value: Any, seen: set[int]) -> None:
    """Refuses object arrays anywhere inside ``value`` (a second line of defence after ``_dtype``)."""
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, np.ndarray | np.generic):
        _refuse_objects(value.dtype)
    elif isinstance(value, dict):
        for item in value.values():
            _check_arrays(item, seen)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            _check_arrays(item, seen)
    elif isinstance(value, _Record):
        _check_arrays(value.__dict__, seen)


def read_legacy_model(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads an ELEKTRONN2 model file: ``(descriptors, designated)`` with inert records.

    Raises:
        LegacyPickleError: The file names anything outside the allowed set, holds object arrays,
            or is not a ``(descriptors, desig_descr)`` pickle.
    """
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as err:
            raise LegacyPickleError(f"{path}: damaged gzip data ({err})") from None
    try:
        content = RestrictedUnpickler(io.BytesIO(data)).load()
    except LegacyPickleError as err:
        raise LegacyPickleError(f"{path}: {err}") from None
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError) as err:
        raise LegacyPickleError(f"{path} is not a readable ELEKTRONN2 model file ({type(err).__name__}: {err})") \
            from None
    if not (isinstance(content, tuple | list) and len(content) == 2 and isinstance(content[0], dict)
            and isinstance(content[1], dict)):
        raise LegacyPickleError(f"{path} is a pickle but not an ELEKTRONN2 model file (expected the pair "
                                f"(descriptors, desig_descr) that Model.save writes)")
    _check_arrays(content, set())
    return content[0], content[1]


__all__ = ["LegacyPickleError", "LegacyName", "RestrictedUnpickler", "NodeDescriptor", "SplitDescriptor",
           "NodePointer", "ParamPointer", "TaggedShape", "looks_like_legacy_model", "read_legacy_model"]
