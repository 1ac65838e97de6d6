"""ELEKTRONN2 look-alikes for writing synthetic ``.mdl`` files in tests.

:class:`E2Graph` installs temporary modules under ELEKTRONN2's real module paths
(``elektronn2.neuromancer.graphmanager``, ``.node_basic``, ``.neural``, ``.loss``, ...) with
classes of the same names and attributes, records nodes the way ELEKTRONN2's ``MetaNode`` and
``GraphManager`` did (``NodeDescriptor(args, kwargs, cls)`` with nodes replaced by ``NodePointer``,
bare arrays in keyword arguments dropped, unique names by ``choose_name``), and pickles
``(descriptors, desig_descr)`` with protocol 2 as ``Model.save`` did. The modules are removed on
exit, so the converter under test never finds them.
"""

from __future__ import annotations

import gzip
import pickle
import re
import sys
import types
from collections import OrderedDict
from typing import Any

import numpy as np

PACKAGE = "elektronn2.neuromancer"
NODE_CLASSES = {
    "node_basic": ["Input", "Concat", "Add", "MultMerge", "FromTensor", "ApplyFunc", "ValueNode"],
    "neural": ["Perceptron", "Conv", "UpConv", "Pool", "Crop", "Pad", "FragmentsToDense", "GRU", "LSTM", "LRN",
               "FaithlessMerge"],
    "loss": ["Softmax", "MultinoulliNLL", "_Errors", "Classification", "AggregateLoss", "SquaredLoss"],
    "various": ["ScanN", "Reshape"],
}
FUNCTIONS = {"node_basic": ["split"], "various": ["scansplit"]}
DEFAULT_NAMES = {"Input": "input", "Conv": "conv", "UpConv": "upconv", "Perceptron": "dot", "Pool": "pool",
                 "Crop": "crop", "Concat": "concat", "Softmax": "softmax", "MultinoulliNLL": "nll",
                 "_Errors": "errors", "Classification": "cls", "AggregateLoss": "total_loss", "GRU": "gru",
                 "LSTM": "lstm", "FromTensor": "from_tensor", "ScanN": "scan", "FragmentsToDense": "to_dense"}


class NodePointer:
    def __init__(self, target_id: str):
        self.target_id = target_id


class ParamPointer:
    def __init__(self, target_id: str, param_name: str):
        self.target_id = target_id
        self.param_name = param_name


class NodeDescriptor:
    def __init__(self, args: tuple, kwargs: dict, cls: type):
        self.args, self.kwargs, self.cls = list(args), kwargs, cls


class SplitDescriptor:
    def __init__(self, node_id: str, func: Any, args: tuple, kwargs: dict):
        self.node_id, self.func, self.args, self.kwargs = node_id, func, args, kwargs


class TaggedShape:
    def __init__(self, shape: Any, tags: Any, strides: Any = None, fov: Any = None):
        self._shape, self._tags = list(shape), tags.split(",") if isinstance(tags, str) else list(tags)
        n = sum(t in "zxy" for t in self._tags)
        self._strides = np.array(strides if strides is not None else [1] * n, int)
        self._fov = np.array(fov if fov is not None else [1] * n, int)
        self._mfp_offsets = np.zeros((1, n), int)


class Node(str):
    """A recorded node (its name)."""


def choose_name(proposal: str, names: Any) -> str:
    """ELEKTRONN2's unique-name rule (``conv``, ``conv1``, ``conv2`` ...)."""
    if proposal in names:
        if not re.findall(r"(\d+)$", proposal):
            proposal += "1"
        while proposal in names:
            proposal = re.sub(r"(\d+)$", lambda m: str(int(m.group(0)) + 1), proposal)
    return proposal


def _module(name: str, members: dict[str, Any]) -> types.ModuleType:
    module = types.ModuleType(name)
    for key, value in members.items():
        value.__module__ = name
        value.__qualname__ = key
        setattr(module, key, value)
    return module


class E2Graph:
    """Records an ELEKTRONN2 graph and writes it as a ``.mdl`` pickle (use as a context manager)."""

    def __init__(self) -> None:
        self.descriptors: OrderedDict[str, Any] = OrderedDict()
        self.modules: dict[str, types.ModuleType] = {}

    def __enter__(self) -> E2Graph:
        records = {"graphmanager": {"NodeDescriptor": NodeDescriptor, "SplitDescriptor": SplitDescriptor,
                                    "NodePointer": NodePointer, "ParamPointer": ParamPointer},
                   "graphutils": {"TaggedShape": TaggedShape}}
        for sub in set(NODE_CLASSES) | set(FUNCTIONS) | set(records):
            members = dict(records.get(sub, {}))
            members.update({c: type(c, (object,), {}) for c in NODE_CLASSES.get(sub, [])})
            members.update({f: types.FunctionType((lambda: None).__code__, {}, f) for f in FUNCTIONS.get(sub, [])})
            self.modules[f"{PACKAGE}.{sub}"] = _module(f"{PACKAGE}.{sub}", members)
        self.modules["elektronn2"] = types.ModuleType("elektronn2")
        self.modules[PACKAGE] = types.ModuleType(PACKAGE)
        assert not set(self.modules) & set(sys.modules), "elektronn2 is importable here; the test needs it absent"
        sys.modules.update(self.modules)
        return self

    def __exit__(self, *exc: Any) -> None:
        for name in self.modules:
            sys.modules.pop(name, None)

    def cls(self, name: str) -> Any:
        for table in (NODE_CLASSES, FUNCTIONS):
            for sub, names in table.items():
                if name in names:
                    return getattr(self.modules[f"{PACKAGE}.{sub}"], name)
        raise KeyError(name)

    @staticmethod
    def _pointer(value: Any) -> Any:
        if isinstance(value, Node):
            return NodePointer(str(value))
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, Node) for v in value):
            return [NodePointer(str(v)) for v in value]
        return value

    def node(self, cls_name: str, *args: Any, params: dict[str, np.ndarray] | None = None, **kwargs: Any) -> Node:
        """Records one node; ``params`` are its saved parameter values (ELEKTRONN2 layouts)."""
        name = choose_name(kwargs.get("name", DEFAULT_NAMES.get(cls_name, "node")), self.descriptors)
        kwargs = {k: self._pointer(v) for k, v in kwargs.items() if not isinstance(v, np.ndarray)}
        kwargs["name"] = name
        descr = NodeDescriptor(tuple(self._pointer(a) for a in args), kwargs, self.cls(cls_name))
        self.descriptors[name] = [descr, OrderedDict(params or {})]
        return Node(name)

    def split(self, node: Node, axis: str = "f", index: Any = None, n_out: int | None = None,
              strip_singleton_dims: bool = False, name: str = "split", n_pieces: int = 2) -> tuple[Node, ...]:
        """Records ELEKTRONN2's ``split``: a SplitDescriptor, then one FromTensor per piece."""
        kwargs = dict(axis=axis, index=index, n_out=n_out, strip_singleton_dims=strip_singleton_dims, name=name)
        key = choose_name(name, self.descriptors)
        self.descriptors[key] = SplitDescriptor(str(node), self.cls("split"), (), kwargs)
        return tuple(self.node("FromTensor", "TensorVariable not found", TaggedShape([1], "f"), node, name=name)
                     for _ in range(n_pieces))

    def save(self, path: str, compress: bool = False, **designated: Any) -> str:
        """Writes ``(descriptors, desig_descr)`` with protocol 2 (gzip-compressed if asked)."""
        desig = {k: [str(n) for n in v] if isinstance(v, list) else (str(v) if isinstance(v, Node) else v)
                 for k, v in designated.items()}
        data = pickle.dumps((self.descriptors, desig), protocol=2)
        with open(path, "wb") as f:
            f.write(gzip.compress(data) if compress else data)
        return path
