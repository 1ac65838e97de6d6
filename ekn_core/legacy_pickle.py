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
from types import FunctionType
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


class _Sealed(type):
    """Metaclass of the records: a pickle's BUILD cannot change the classes themselves."""

    def __setattr__(cls, name: str, value: Any) -> None:
        raise LegacyPickleError(f"the file tries to change the class {cls.__name__} (attribute {name!r}); it was "
                                "refused (ekn runs no code from model files)")


class _Record(metaclass=_Sealed):
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


class _Allowed:
    """One allowed callable as the unpickler hands it out: a pickle may call it, but its BUILD cannot
    change it (or the function behind it) for later files."""

    __slots__ = ("_call", "_name")

    def __init__(self, call: Callable[..., Any], name: str):
        object.__setattr__(self, "_call", call)
        object.__setattr__(self, "_name", name)

    def __call__(self, *args: Any) -> Any:
        return self._call(*args)

    def __setattr__(self, name: str, value: Any) -> None:
        raise LegacyPickleError(f"the file tries to change {self._name}; it was refused")

    def __setstate__(self, state: Any) -> None:
        raise LegacyPickleError(f"the file tries to change {self._name}; it was refused")


def _refuse_objects(dtype: np.dtype) -> np.dtype:
    if dtype.hasobject:
        raise LegacyPickleError("the file holds an array of Python objects (dtype object), which an ELEKTRONN2 "
                                "model file does not; it was refused (ekn runs no code from model files)")
    return dtype


def _dtype(*args: Any) -> np.dtype:
    return _refuse_objects(np.dtype(*args))


_NUMPY_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]
_NUMPY_SCALAR = np.float32(0).__reduce__()[0]


def _not_callable(*args: Any) -> Any:
    raise LegacyPickleError("the file calls numpy.ndarray directly, which numpy's own pickles never do")


#: ``numpy.ndarray`` as the file names it: only the subtype argument of ``_reconstruct``.
_NDARRAY = _Allowed(_not_callable, "numpy.ndarray")


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's ``_reconstruct`` as numpy pickles call it: an empty ndarray that BUILD then fills."""
    if subtype is not _NDARRAY or tuple(shape) != (0,):
        raise LegacyPickleError(f"the file rebuilds an array as {subtype!r} of shape {shape!r}, which numpy's own "
                                "pickles never do")
    return _NUMPY_RECONSTRUCT(np.ndarray, (0,), _refuse_objects(np.dtype(dtype)))


def _scalar(dtype: np.dtype, *data: Any) -> Any:
    return _NUMPY_SCALAR(_refuse_objects(dtype), *data)


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    if encoding.replace("-", "").lower() != "latin1":
        raise LegacyPickleError(f"the file encodes bytes as {encoding!r}; ELEKTRONN2 model files use latin-1")
    return text.encode("latin-1")


def _bytes(value: Any = b"", *rest: Any) -> bytes:
    """``bytes`` of text or bytes only: ``bytes(n)`` would let a tiny file allocate n bytes."""
    if not isinstance(value, str | bytes | bytearray):
        raise LegacyPickleError(f"the file calls bytes({type(value).__name__}), which model files never do")
    return bytes(value, *rest)


_SAFE_BUILTINS = {"set": set, "frozenset": frozenset, "list": list, "dict": dict, "tuple": tuple, "int": int,
                  "float": float, "complex": complex, "str": str, "bytes": _bytes, "bool": bool}
#: The ``future`` package's Python-2 types that ELEKTRONN2's ``from builtins import int, ...`` pickled.
_FUTURE_TYPES = {("future.types.newint", "newint"): int, ("future.types.newstr", "newstr"): str,
                 ("future.types.newbytes", "newbytes"): bytes, ("future.types.newlist", "newlist"): list,
                 ("future.types.newdict", "newdict"): dict}
_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
#: The allowed names. Python functions are handed out wrapped (:class:`_Allowed`); builtin types
#: (immutable) as they are, so protocol 2's NEWOBJ can create their instances.
ALLOWED: dict[tuple[str, str], Any] = {key: _Allowed(value, ".".join(key)) if isinstance(value, FunctionType) else value
                                       for key, value in {
    **{(m, n): v for m in ("builtins", "__builtin__") for n, v in _SAFE_BUILTINS.items()},
    **_FUTURE_TYPES,
    **{(m, "_reconstruct"): _reconstruct for m in _NUMPY_MODULES},
    **{(m, "scalar"): _scalar for m in _NUMPY_MODULES},
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _latin1_encode,
}.items()}
#: Deepest nesting of containers a model file may have (ELEKTRONN2's nest a few levels).
MAX_DEPTH = 100
#: An expanded gzip file may be at most this many times its compressed size (plus 1 MiB).
MAX_GZIP_RATIO = 64


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


def _check_content(content: Any) -> None:
    """Refuses object arrays anywhere inside ``content`` (a second line of defence after ``_dtype``) and
    nesting deeper than :data:`MAX_DEPTH` (the converter walks the arguments recursively)."""
    seen: set[int] = set()
    stack = [(content, 0)]
    while stack:
        value, depth = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if depth > MAX_DEPTH:
            raise LegacyPickleError(f"the file nests containers more than {MAX_DEPTH} levels deep, which ELEKTRONN2 "
                                    "model files do not")
        if isinstance(value, np.ndarray | np.generic):
            _refuse_objects(value.dtype)
        elif isinstance(value, dict):
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list | tuple | set | frozenset):
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, _Record):
            stack.append((value.__dict__, depth + 1))


def _gunzip(data: bytes, path: str) -> bytes:
    """Expands gzip ``data``, at most :data:`MAX_GZIP_RATIO` times its size (a small file cannot fill memory)."""
    limit = MAX_GZIP_RATIO * len(data) + 2**20
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            out = f.read(limit + 1)
    except (OSError, EOFError) as err:
        raise LegacyPickleError(f"{path}: damaged gzip data ({err})") from None
    if len(out) > limit:
        raise LegacyPickleError(f"{path}: its gzip data expand to more than {MAX_GZIP_RATIO} times the file's size, "
                                "which a model file does not; it was refused")
    return out


def read_legacy_model(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads an ELEKTRONN2 model file: ``(descriptors, designated)`` with inert records.

    Raises:
        LegacyPickleError: The file names anything outside the allowed set, holds object arrays,
            or is not a ``(descriptors, desig_descr)`` pickle.
    """
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == GZIP_MAGIC:
        data = _gunzip(data, path)
    try:
        content = RestrictedUnpickler(io.BytesIO(data)).load()
    except LegacyPickleError as err:
        raise LegacyPickleError(f"{path}: {err}") from None
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError, MemoryError,
            OverflowError, RecursionError) as err:
        raise LegacyPickleError(f"{path} is not a readable ELEKTRONN2 model file ({type(err).__name__}: {err})") \
            from None
    if not (isinstance(content, tuple | list) and len(content) == 2 and isinstance(content[0], dict)
            and isinstance(content[1], dict)):
        raise LegacyPickleError(f"{path} is a pickle but not an ELEKTRONN2 model file (expected the pair "
                                f"(descriptors, desig_descr) that Model.save writes)")
    _check_content(content)
    return content[0], content[1]


__all__ = ["LegacyPickleError", "LegacyName", "RestrictedUnpickler", "NodeDescriptor", "SplitDescriptor",
           "NodePointer", "ParamPointer", "TaggedShape", "looks_like_legacy_model", "read_legacy_model"]
