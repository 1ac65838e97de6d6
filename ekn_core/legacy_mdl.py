"""ELEKTRONN2 ``.mdl`` model files converted into ekn model contents (graph, roles, weights).

:func:`convert_legacy_model` reads the pickle safely (:mod:`ekn_core.legacy_pickle`: no code from
the file runs), maps each ELEKTRONN2 node class by its name to the registered ekn node (the
``ekn_core.neuromancer`` names: ``Conv`` → ``conv``, ``_Errors`` → ``errors`` ...), replays the
constructor arguments in creation order (shapes only, no TensorFlow), turns ``split`` descriptors
into ``split_node`` pieces named like ELEKTRONN2's ``FromTensor`` nodes, turns an ``Input`` that
ELEKTRONN2's ``Input_like`` saved with the fixed shape of a node (a target) back into ekn's
``Input_like`` of that node (so it follows MFP and new patch sizes; the prediction node or a node
read together with the target or its split pieces, built first where the file created the target
before it), and translates the weights to ekn's layouts so the converted model computes the same
function:

* ``Conv``: ELEKTRONN2 ``w`` is ``(n_f, n_in, *filter)`` (``(n_f, kz, n_in, kx, ky)`` for 3-D
  inputs in Theano order ``b,z,f,x,y``), and Theano's ``conv2d``, ``conv3d2d`` and cuDNN's
  ``dnn_conv`` compute a true convolution (the filter flipped); ekn computes a cross-correlation
  with ``(*filter, n_in, n_f)``, so the filter is flipped on every spatial axis and transposed
  (1×1 filters, ELEKTRONN2's tensordot path, are unaffected by the flip);
* ``UpConv``: the gradient of a cross-correlation (``filter_flip=False``; the no-cuDNN 3-D path,
  unpooling plus a true convolution, computes the same), ``out[i·p + k, o] = Σ_c x[i, c] w[o, c, k]``:
  no flip, ``(n_f, n_in, *pool)`` → ``(*pool, n_f, n_in)``;
* ``Perceptron``: ``(n_in, n_f)`` as is; with ``flatten=True`` the rows are reordered from
  ELEKTRONN2's ``f, spatial…`` flattening to ekn's channels-last one;
* ``GRU``/``LSTM`` (``[h, x]`` rows, gate columns), biases (``prelu``: ``(n_f, 2)``), batch
  normalisation ``gamma``/``mean``/``std`` and the other parameters: same layout (scalars stored as
  ``(1,)`` become ``()``).

Batch normalisation then uses the stored statistics at inference (ELEKTRONN2 rebuilt its models
with ``replace_bn='const'`` for that); ekn's accumulated count starts at zero, so continued
training restarts the statistics. Refused with one error naming the node and class: node classes
without an ekn counterpart, ``Scan`` loops, ``maxout`` activations (their ELEKTRONN2
implementation pooled the wrong axis), ``gradnet_mode`` and ``batch_normalisation='fadeout'``,
parameters shared in a transformed form (``make_dual(share_w=True)``).

Example:
    >>> _conv_weight(np.arange(6.).reshape(1, 1, 2, 3), ('b', 'f', 'x', 'y'), transposed=False)[..., 0, 0]
    array([[5., 4., 3.],
           [2., 1., 0.]])
"""

from __future__ import annotations

import heapq
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ekn_core.legacy_pickle import (LegacyName, LegacyPickleError, NodeDescriptor, NodePointer, ParamPointer,
                                    SplitDescriptor, TaggedShape, read_legacy_model)

log = logging.getLogger("ekn.persistence")

#: ELEKTRONN2 class names that are not ``nm`` names of ekn nodes.
CLASS_ALIASES = {"_Errors": "errors"}
#: Positional parameter names of ELEKTRONN2 constructors whose order differs from ekn's.
E2_POSITIONAL = {
    "MultinoulliNLL": ("pred", "target", "target_is_sparse", "class_weights", "example_weights",
                       "mask_class_labeled", "mask_class_not_present", "name", "print_repr"),
}
#: Why some ELEKTRONN2 nodes are not converted.
UNSUPPORTED = {
    "ScanN": "Scan loops are not converted; rebuild the recurrent model with nm.Scan and load its weights "
             "node by node",
    "FromTensor": "a FromTensor node that no split created cannot be converted",
}
PARAM_ARGUMENTS = ("w", "b", "gamma", "mean", "std")
ROLES = ("input_node", "target_node", "loss_node", "prediction_node", "prediction_ext", "error_node",
         "debug_outputs")
#: Names defined at once and their file entry: a node, or the pieces of a split (see :func:`_units`).
Unit = tuple[list[str], Any]


class LegacyModelError(LegacyPickleError):
    """An ELEKTRONN2 model whose graph or weights cannot be converted."""


# ---------------------------------------------------------------------------------------------
# Weight layouts
# ---------------------------------------------------------------------------------------------
def _conv_weight(w: np.ndarray, tags: Sequence[str], transposed: bool) -> np.ndarray:
    """ELEKTRONN2 Conv/UpConv ``w`` for an input with ``tags`` → ekn's layout (see module docs)."""
    spatial = [i for i, t in enumerate(tags) if t in ("z", "y", "x")]
    if len(spatial) == 3 and tags.index("f") > spatial[0]:  # Theano order b,z,f,x,y: (n_f, kz, n_in, kx, ky)
        w = w.transpose(0, 2, 1, 3, 4)
    axes = tuple(range(2, w.ndim))
    if transposed:
        return w.transpose(*axes, 0, 1)
    return np.flip(w, axis=axes).transpose(*axes, 1, 0)


def _flatten_rows(w: np.ndarray, shape: Any) -> np.ndarray:
    """Rows of a flattening Perceptron: ELEKTRONN2 order (declared tags after ``b``) → canonical order."""
    e2 = [t for t in shape.tags if t != "b"]
    ekn = [t for t in shape.canonical_tags if t != "b"]
    sizes = [shape[t] for t in e2]
    return w.reshape(*sizes, w.shape[-1]).transpose(*[e2.index(t) for t in ekn], len(e2)).reshape(w.shape)


def translate_param(cls_name: str, pname: str, value: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    """An ELEKTRONN2 parameter value in the layout of the ekn node built from ``config``."""
    value = np.asarray(value)
    parent = config.get("parent")
    if pname == "w" and cls_name in ("Conv", "UpConv"):
        return _conv_weight(value, list(parent.shape.tags), transposed=cls_name == "UpConv")
    if pname == "w" and cls_name == "Perceptron" and config.get("flatten"):
        return _flatten_rows(value, parent.shape)
    return value


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------
def _argument(value: Any, model: Any, where: str) -> Any:
    """An ELEKTRONN2 constructor argument as ekn takes it (pointers resolved, numpy → Python)."""
    from ekn_core.shapes import TaggedShape as EknShape

    if isinstance(value, NodePointer):
        if value.target_id not in model.nodes:
            raise LegacyModelError(f"{where} refers to node {value.target_id!r}, which is not built before it")
        return model.nodes[value.target_id]
    if isinstance(value, ParamPointer):
        node = model.nodes.get(value.target_id)
        param = node and (node.params.get(value.param_name) or node.shared_params.get(value.param_name))
        if param is None:
            raise LegacyModelError(f"{where} shares parameter {value.param_name!r} of node {value.target_id!r}, "
                                   f"which has no such parameter in ekn")
        return param
    if isinstance(value, TaggedShape):
        return EknShape(_argument(value._shape, model, where), value._tags, _argument(value._strides, model, where),
                        fov=_argument(value._fov, model, where))
    if isinstance(value, LegacyName) or (isinstance(value, str) and value == "TensorVariable not found"):
        what = value if isinstance(value, LegacyName) else "a Theano expression ELEKTRONN2 could not save"
        raise LegacyModelError(f"{where} takes {what} as an argument (e.g. a function of ApplyFunc or a "
                               f"transformed shared weight of make_dual(share_w=True)), which cannot be converted")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return type(value)(_argument(v, model, where) for v in value)
    if isinstance(value, dict):
        return {k: _argument(v, model, where) for k, v in value.items()}
    return value


def _resolve(cls: Any, name: str) -> tuple[str, type]:
    """ELEKTRONN2 class → (its ELEKTRONN2 name, the registered ekn node class)."""
    from ekn_core.neuromancer import KINDS, registry_name
    from ekn_core.node import Node
    from ekn_core.plugins import registry

    if not isinstance(cls, LegacyName):
        raise LegacyModelError(f"node {name!r}: its descriptor names no ELEKTRONN2 class ({cls!r})")
    if cls.name in UNSUPPORTED:
        raise LegacyModelError(f"node {name!r} ({cls}): {UNSUPPORTED[cls.name]}")
    key = CLASS_ALIASES.get(cls.name) or registry_name(cls.name)
    for kind in KINDS:
        if key in registry(kind):
            found = registry(kind).get(key)
            if isinstance(found, type) and issubclass(found, Node):
                return cls.name, found
    raise LegacyModelError(f"node {name!r} ({cls}) has no ekn counterpart (no node registered as {key!r}); "
                           f"`ekn plugins` lists the installed nodes")


def _keywords(cls_name: str, ekn_cls: type, descr: NodeDescriptor, model: Any, where: str) -> dict[str, Any]:
    """The descriptor's positional and keyword arguments as ekn keywords."""
    from ekn_core.node import _signature

    params = _signature(ekn_cls).parameters
    names = E2_POSITIONAL.get(cls_name) or tuple(params)
    args, kwargs = list(descr.args), dict(descr.kwargs)
    if len(args) > len(names):
        raise LegacyModelError(f"{where} has {len(args)} positional arguments, the ekn node takes {len(names)}")
    config = dict(zip(names, args))
    for key, value in kwargs.items():
        if key in config:
            raise LegacyModelError(f"{where} gives argument {key!r} twice")
        config[key] = value
    for key in [k for k in config if k not in params]:
        if key == "print_repr" or config[key] is None or config[key] is False:  # cosmetic, or an option left off
            del config[key]
        else:
            raise LegacyModelError(f"{where}: argument {key}={config[key]!r} has no counterpart in ekn's "
                                   f"{ekn_cls.__name__}")
    return {k: _argument(v, model, where) if k not in PARAM_ARGUMENTS else v for k, v in config.items()}


def _check_options(cls_name: str, config: dict[str, Any], where: str) -> None:
    if config.get("gradnet_mode"):
        raise LegacyModelError(f"{where} uses gradnet_mode (ELEKTRONN2's GradNet experiment), which ekn does not "
                               f"support")
    if config.get("batch_normalisation") == "fadeout":
        raise LegacyModelError(f"{where} uses batch_normalisation='fadeout' (GradNet), which ekn does not support")
    act = config.get("activation_func")
    if isinstance(act, str) and act.startswith("maxout"):
        raise LegacyModelError(f"{where} uses activation {act!r}: ELEKTRONN2's maxout pooled the wrong axis for "
                               f"most layouts, so its weights cannot be mapped to ekn's maxout")


# ---------------------------------------------------------------------------------------------
# Graph
# ---------------------------------------------------------------------------------------------
def _check_name(node: Any, name: str, where: str) -> None:
    if node.name != name:
        raise LegacyModelError(f"{where} was built under the name {node.name!r}: duplicate names in the file")


def _build_node(name: str, descr: NodeDescriptor, params: dict[str, Any], model: Any,
                weights: dict[str, dict[str, np.ndarray]]) -> None:
    cls_name, ekn_cls = _resolve(descr.cls, name)
    where = f"node {name!r} ({descr.cls})"
    config = _keywords(cls_name, ekn_cls, descr, model, where)
    _check_options(cls_name, config, where)
    for key in PARAM_ARGUMENTS:  # [array, 'const'|'trainable'] initial values; bare arrays were not saved
        value = config.get(key)
        if isinstance(value, list | tuple) and len(value) == 2 and isinstance(value[0], np.ndarray):
            config[key] = [translate_param(cls_name, key, value[0], config), value[1]]
        elif value is not None:  # a shared parameter (ParamPointer), or what cannot be converted
            config[key] = _argument(value, model, where)
    config["name"] = name
    try:
        node = ekn_cls(**config)
    except (TypeError, ValueError, NotImplementedError, KeyError) as err:  # ekn's errors are ValueErrors
        raise LegacyModelError(f"{where} cannot be built in ekn: {err}") from None
    _check_name(node, name, where)
    converted = {}
    for pname, value in (params or {}).items():
        target = node.params.get(pname)
        array = translate_param(cls_name, pname, value, config)
        if target is None or array.size != int(np.prod(target.shape)):
            wanted = f"ekn's {pname!r} has shape {target.shape}" if target else f"ekn's node has no {pname!r}"
            raise LegacyModelError(f"{where}: stored parameter {pname!r} of shape {np.shape(value)} does not fit "
                                   f"({wanted})")
        converted[pname] = array.reshape(target.shape).astype(target.dtype)
    if converted:
        weights[name] = converted


def _node_pointers(value: Any, shared: bool = False) -> list[str]:
    """Names of the nodes that ``NodePointer``s (with ``shared``: also ``ParamPointer``s) in ``value``
    (nested lists, tuples, dicts) point to."""
    if isinstance(value, NodePointer) or (shared and isinstance(value, ParamPointer)):
        return [value.target_id]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return [name for v in value for name in _node_pointers(v, shared)]
    return []


def _same_geometry(shape: Any, declared: Any) -> bool:
    """Whether a node's ``shape`` has the tags, strides and sizes (``f`` apart) of ``declared``."""
    return shape.tags == declared.tags and shape.strides == declared.strides and \
        all(shape[t] == declared[t] for t in declared.tags if t != "f")


def _like_candidates(units: list[Unit], name: str, designated: dict[str, Any]) -> list[str]:
    """Nodes whose shape an ELEKTRONN2 ``Input`` called ``name`` may have copied (``Input_like``): the
    prediction node, then the other nodes read by the nodes that read it or a split piece of it
    (e.g. the loss's prediction). Empty for the designated input node."""
    if name == designated.get("input_node"):
        return []
    sources, names = {name}, [designated.get("prediction_node")]
    for defined, entry in units:  # creation order: readers come after what they read
        if isinstance(entry, SplitDescriptor):
            sources.update(defined if entry.node_id in sources else [])
            continue
        read = _node_pointers([entry[0].args, dict(entry[0].kwargs)])
        if sources.intersection(read):
            names += [n for n in read if n not in sources]
    return [n for n in names if n]


def _reaches(start: int, goal: int, needs: list[set[int]]) -> bool:
    """Whether unit ``start`` needs unit ``goal``, directly or through others."""
    todo, seen = [start], set()
    while todo:
        unit = todo.pop()
        if unit == goal:
            return True
        if unit not in seen:
            seen.add(unit)
            todo.extend(needs[unit])
    return False


def _input_references(units: list[Unit], needs: list[set[int]], built: Any, designated: dict[str, Any]
                      ) -> dict[str, str]:
    """``{input name: reference name}`` for the ELEKTRONN2 ``Input``s that have the geometry of one of
    their :func:`_like_candidates` in the model ``built`` from the file as it is (a reference that
    needs the input itself is skipped); adds each input's need of its reference to ``needs``."""
    owner = {name: k for k, (defined, _) in enumerate(units) for name in defined}
    found = {}
    for k, (defined, entry) in enumerate(units):
        if isinstance(entry, SplitDescriptor) or getattr(entry[0].cls, "name", None) != "Input":
            continue
        declared = built.nodes[defined[0]].shape
        for ref in (built.nodes.get(n) for n in _like_candidates(units, defined[0], designated)):
            if ref is not None and not ref.is_source and _same_geometry(ref.shape, declared) and \
                    not _reaches(owner[ref.name], k, needs):
                found[defined[0]] = ref.name
                needs[k].add(owner[ref.name])
                break
    return found


def _build_input_like(name: str, descr: NodeDescriptor, model: Any, reference: str) -> None:
    """Builds an ELEKTRONN2 ``Input`` as ekn's ``Input_like`` of the node ``reference`` (built before
    it, with the same tags, strides and sizes but ``f``).

    ELEKTRONN2's ``Input_like`` (e.g. of the target) saved a plain ``Input`` of fixed shape, which
    would not follow the net when it is rebuilt with MFP or another patch size; ekn's follows its
    reference, as in models built with ekn.
    """
    from ekn_core.plugins import registry
    from ekn_core.shapes import TaggedShape as EknShape

    _, input_cls = _resolve(descr.cls, name)
    config = _keywords("Input", input_cls, descr, model, f"node {name!r} ({descr.cls})")
    declared = EknShape(config["shape"], config["tags"], config.get("strides"), config.get("fov"))
    ref = model.nodes[reference]
    f = declared["f"] if declared.hastag("f") and declared["f"] != ref.shape["f"] else False
    node = registry("layers").get("input_like")(ref, dtype=config.get("dtype"), name=name, override_f=f)
    _check_name(node, name, f"node {name!r} ({descr.cls})")
    log.debug("ELEKTRONN2 Input %r has the shape of %r: converted as Input_like(%r) so that it follows new "
              "patch sizes", name, reference, reference)


def _build_split(descr: SplitDescriptor, pieces: list[str], model: Any) -> None:
    from ekn_core.plugins import registry

    where = f"split of node {descr.node_id!r}"
    if not isinstance(descr.func, LegacyName) or descr.func.name != "split":
        raise LegacyModelError(f"{where} is made by {descr.func}, which is not converted (only "
                               f"elektronn2's split is; Scan loops are not)")
    if descr.node_id not in model.nodes:
        raise LegacyModelError(f"{where}: node {descr.node_id!r} is not built before it")
    kwargs = {k: _argument(v, model, where) for k, v in dict(descr.kwargs).items()}
    kwargs["name"] = pieces
    try:
        registry("layers").get("split")(model.nodes[descr.node_id], *descr.args, **kwargs)
    except (TypeError, ValueError) as err:
        raise LegacyModelError(f"{where} cannot be built in ekn: {err}") from None


def _split_pieces(items: list[tuple[str, Any]], start: int, node_id: str) -> list[str]:
    """Names of the FromTensor entries right after a SplitDescriptor (the pieces of ``node_id``)."""
    names = []
    for name, entry in items[start:]:
        descr = entry[0] if isinstance(entry, list | tuple) else entry
        if not (isinstance(descr, NodeDescriptor) and getattr(descr.cls, "name", None) == "FromTensor"):
            break
        parent = descr.args[2] if len(descr.args) > 2 else descr.kwargs.get("tensor_parent")
        if getattr(parent, "target_id", None) != node_id:
            break
        names.append(name)
    return names


def _units(items: list[tuple[str, Any]], path: str) -> list[Unit]:
    """The file's entries in creation order as units that are built at once: ``([name], [descriptor,
    params])`` for a node, ``(piece names, SplitDescriptor)`` for a split with its FromTensor pieces."""
    units: list[Unit] = []
    index = 0
    while index < len(items):
        name, entry = items[index]
        index += 1
        if isinstance(entry, SplitDescriptor):
            pieces = _split_pieces(items, index, entry.node_id)
            units.append((pieces, entry))
            index += len(pieces)
        elif isinstance(entry, list | tuple) and len(entry) == 2 and isinstance(entry[0], NodeDescriptor):
            units.append(([name], entry))
        else:
            raise LegacyModelError(f"{path}: entry {name!r} is neither a node nor a split descriptor")
    return units


def _needs(units: list[Unit]) -> list[set[int]]:
    """For each unit, the units it refers to (nodes read, parameters shared, the node split)."""
    owner = {name: k for k, (defined, _) in enumerate(units) for name in defined}
    pointed = [[entry.node_id, *_node_pointers(dict(entry.kwargs), shared=True)]
               if isinstance(entry, SplitDescriptor) else _node_pointers([entry[0].args, dict(entry[0].kwargs)], True)
               for _, entry in units]
    return [{owner[n] for n in names if n in owner} for names in pointed]


def _build_order(needs: list[set[int]]) -> list[int]:
    """Unit indices in creation order, except that each comes after the units it needs."""
    waiting = [set(n) for n in needs]
    users: dict[int, list[int]] = {}
    for k, unit_needs in enumerate(needs):
        for needed in unit_needs:
            users.setdefault(needed, []).append(k)
    ready = [k for k, n in enumerate(waiting) if not n]
    order = []
    while ready:
        k = heapq.heappop(ready)
        order.append(k)
        for user in users.get(k, []):
            waiting[user].discard(k)
            if not waiting[user]:
                heapq.heappush(ready, user)
    return order


def _build_unit(unit: Unit, model: Any, weights: dict[str, dict[str, np.ndarray]], like: dict[str, str]) -> None:
    defined, entry = unit
    if isinstance(entry, SplitDescriptor):
        _build_split(entry, defined, model)
    elif defined[0] in like:
        _build_input_like(defined[0], entry[0], model, like[defined[0]])
    else:
        _build_node(defined[0], entry[0], entry[1], model, weights)


def convert_legacy_model(path: str) -> Any:
    """Reads an ELEKTRONN2 ``.mdl`` file as an ekn :class:`~ekn_core.persistence.ModelFile`.

    The graph is built twice: as the file has it, to learn every node's shape, then with each
    ``Input`` that has the geometry of the prediction (or of a node read together with it) as
    ``Input_like`` of that node, built after it where the file created the ``Input`` first.

    Raises:
        LegacyPickleError: The file cannot be read safely (:mod:`ekn_core.legacy_pickle`).
        LegacyModelError: A node, argument or parameter cannot be converted (the message names
            the node and its ELEKTRONN2 class).
    """
    from ekn_core._version import __version__
    from ekn_core.node import model_manager, replaying, shape_only
    from ekn_core.persistence import ModelFile, _requirements

    descriptors, designated = read_legacy_model(path)
    units = _units(list(descriptors.items()), path)
    needs = _needs(units)
    weights: dict[str, dict[str, np.ndarray]] = {}
    with shape_only(), replaying():
        with model_manager.scratch() as built:
            for unit in units:
                _build_unit(unit, built, {}, {})
            like = _input_references(units, needs, built, designated)
        with model_manager.scratch() as model:
            for k in _build_order(needs):
                _build_unit(units[k], model, weights, like)
            roles = {k: v for k, v in designated.items() if k in ROLES and v not in (None, [], ())}
            missing = [n for v in roles.values() for n in (v if isinstance(v, list | tuple) else [v])
                       if n not in model.nodes]
            if missing:
                raise LegacyModelError(f"{path}: designated node(s) {missing} are not in the model")
            nodes = list(model.descriptors.values())
    log.info("%s is an ELEKTRONN2 model file: converted it (%d nodes) in memory; `ekn convert` writes it as an ekn "
             "model file", path, len(nodes))
    return ModelFile(descriptors=nodes, designated={k: list(v) if isinstance(v, list | tuple) else v
                                                    for k, v in roles.items()},
                     weights=weights, required_plugins=_requirements(nodes),
                     model_name=os.path.splitext(os.path.basename(path))[0], ekn_version=__version__)


__all__ = ["LegacyModelError", "convert_legacy_model", "translate_param"]
