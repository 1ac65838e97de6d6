"""Model files (one HDF5 file per model, no pickle) and restoring models with changes.

File layout (``format = "ekn-model"``, ``format_version = 1``):

* root attributes (JSON text): ``format``, ``format_version``, ``ekn_version``, ``model_name``,
  ``descriptors`` (list of node descriptors in creation order), ``designated`` (role → node
  name(s)), ``required_plugins`` (kind, name, distribution, version of every node type), ``state``
  (``meta``: the meta-parameters set on the model (``lr``, ``mom``, ``wd``, ``beta2``; see
  :func:`saved_meta`), ``iterations``, ``elapsed_time``), and, when the data source
  recorded it, ``training_data`` (the input grey scaling the net was trained with and the affinity
  offsets of affinity targets, :mod:`ekn_core.training_data`; files without it load with None);
* group ``weights/<node>/<param>``: one dataset per parameter, attributes ``trainable``,
  ``constant``, ``weight_decay``.

Node types are resolved only through the ``ekn.layers``/``ekn.losses`` registries; a descriptor
naming a module path or an unregistered class is refused, a missing plugin is reported as
"this file needs layer X from distribution Y >= v" with why (not installed, blocked, disabled), and
a plugin older than the one the file was saved with gets a warning
(:func:`ekn_core.plugins.check_required`). ELEKTRONN2 ``.mdl`` pickles are read too:
:func:`read_model_file` converts them (:mod:`ekn_core.legacy_mdl`; no code from the file runs).

:func:`modelload` and :func:`rebuild_model` replay the descriptors with changes: imposed batch or
patch size (snapped to the nearest valid size), max-fragment pooling switched on (a
``FragmentsToDense`` node is inserted before the prediction node), frozen parameters, batch
normalisation switched to inference.

Example:
    >>> import os, tempfile, numpy as np
    >>> import ekn_core.neuromancer as nm
    >>> model = nm.model_manager.newmodel("doc_persist")
    >>> inp = nm.Input((None, 1, 10, 10), 'b,f,x,y', name='raw')
    >>> out = nm.Conv(inp, 2, (3, 3), (2, 2), name='c')
    >>> model.designate_nodes(input_node=inp, prediction_node=out)
    >>> path = model.save(os.path.join(tempfile.mkdtemp(), 'm.h5'))
    >>> loaded = nm.modelload(path)
    >>> x = np.random.rand(1, 1, 10, 10).astype('float32')
    >>> bool(np.array_equal(model.predict(x), loaded.predict(x)))
    True
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ekn_core.atomic import atomic_write
from ekn_core.errors import ConfigError, EknError, ShapeError, keyword_names, unknown_keywords
from ekn_core.node import decode_argument, find_unserialisable, is_shape_only, model_manager, replaying
from ekn_core.training_data import TrainingData

log = logging.getLogger("ekn.persistence")

FORMAT = "ekn-model"
FORMAT_VERSION = 1
NODE_KINDS = ("layers", "losses")
BN_REPLACEMENTS = ("predict", "const", "remove")

Resolver = Callable[[dict[str, Any]], type]


@dataclass
class ModelFile:
    """Contents of a model file (everything but the weights is plain JSON data)."""

    descriptors: list[dict[str, Any]]
    designated: dict[str, Any]
    weights: dict[str, dict[str, np.ndarray]]
    flags: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    required_plugins: list[dict[str, str]] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)
    model_name: str = "model"
    ekn_version: str = "?"
    training_data: TrainingData | None = None


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def _requirements(descriptors: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    from ekn_core.plugins import required_plugin

    seen, reqs = set(), []
    for d in descriptors:
        if d.get("type") is None:
            raise EknError(f"node {d['name']!r} is of class {d.get('local')} which is not registered in an ekn "
                           f"registry, so the model cannot be saved loadably. Register it as an entry point in the "
                           f"'ekn.{d.get('kind', 'layers')}' group of your plugin's pyproject.toml.")
        key = (d["kind"], d["type"])
        if key not in seen:
            seen.add(key)
            reqs.append(required_plugin(*key))
    return reqs


def save_model(model: Any, path: str) -> str:
    """Writes ``model`` to ``path`` (HDF5, atomically). Returns ``path``."""
    import h5py

    from ekn_core._version import __version__

    descriptors = list(model.descriptors.values())
    for d in descriptors:
        bad = find_unserialisable(d["config"])
        if bad:
            raise EknError(f"node {d['name']!r} cannot be saved: {'; '.join(bad)} is not JSON-serialisable. Pass "
                           f"such values as parameters or plain numbers/strings/lists.")
    requirements = _requirements(descriptors)
    state = {"meta": model.meta_overrides, "iterations": model.iterations, "elapsed_time": model.elapsed_time}

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["ekn_version"] = __version__
            f.attrs["model_name"] = model.name
            f.attrs["descriptors"] = json.dumps(descriptors)
            f.attrs["designated"] = json.dumps(model.designated)
            f.attrs["required_plugins"] = json.dumps(requirements)
            f.attrs["state"] = json.dumps(state)
            if model.training_data is not None:
                f.attrs["training_data"] = json.dumps(model.training_data.to_json())
            weights = f.create_group("weights")
            for node in model.nodes.values():
                if not node.params:
                    continue
                group = weights.create_group(node.name)
                for pname, param in node.params.items():
                    ds = group.create_dataset(pname, data=param.get_value())
                    ds.attrs["trainable"] = param.trainable
                    ds.attrs["constant"] = param.constant
                    ds.attrs["weight_decay"] = param.weight_decay

    atomic_write(path, write)
    log.info("saved model %r to %s", model.name, path)
    return path


# ---------------------------------------------------------------------------------------------
# Reading and resolving
# ---------------------------------------------------------------------------------------------
def read_model_file(path: str) -> ModelFile:
    """Reads a model file written by :func:`save_model` (JSON and arrays only; no code is run), or an
    ELEKTRONN2 ``.mdl`` file converted by :func:`ekn_core.legacy_mdl.convert_legacy_model`."""
    import h5py

    if not os.path.exists(path):
        raise EknError(f"model file {path} does not exist")
    if os.path.isdir(path):
        models = os.path.join(path, "models")
        found = [os.path.join(models, f"{m}.mdl") for m in ("best", "latest")
                 if os.path.isfile(os.path.join(models, f"{m}.mdl"))]
        hint = f", e.g. {found[0]} (the run's {os.path.basename(found[0])[:-4]} model)" if found else ""
        raise EknError(f"{path} is a folder, not a model file: give a model file{hint}")
    from ekn_core.legacy_pickle import looks_like_legacy_model

    if looks_like_legacy_model(path):  # an ELEKTRONN2 pickle: converted without running code from it
        from ekn_core.legacy_mdl import convert_legacy_model

        return convert_legacy_model(path)
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise EknError(f"{path} is not an HDF5 model file ({err}); ekn model files are written by model.save()") \
            from None
    with f:
        if f.attrs.get("format") != FORMAT:
            from ekn_core.trainer.checkpoint import FORMAT as CHECKPOINT_FORMAT

            if f.attrs.get("format") == CHECKPOINT_FORMAT:
                run = os.path.dirname(os.path.dirname(os.path.abspath(path)))
                raise EknError(f"{path} is a training checkpoint (what `ekn train --resume` continues from), not a "
                               f"model file: give one of the run's model files, {run}/models/latest.mdl, best.mdl "
                               "or final.mdl")
            raise EknError(f"{path} is not an ekn model file (attribute format={f.attrs.get('format')!r})")
        version = int(f.attrs["format_version"])
        if version > FORMAT_VERSION:
            raise EknError(f"{path} has model format version {version}; this ekn reads up to {FORMAT_VERSION}. "
                           f"Upgrade ekn.")
        weights, flags = {}, {}
        for node_name, group in f["weights"].items():
            weights[node_name] = {k: np.array(ds) for k, ds in group.items()}
            flags[node_name] = {k: {a: ds.attrs[a].item() for a in ds.attrs} for k, ds in group.items()}
        return ModelFile(
            descriptors=json.loads(f.attrs["descriptors"]),
            designated=json.loads(f.attrs["designated"]),
            weights=weights,
            flags=flags,
            required_plugins=json.loads(f.attrs["required_plugins"]),
            state=json.loads(f.attrs.get("state", "{}")),
            model_name=str(f.attrs.get("model_name", "model")),
            ekn_version=str(f.attrs.get("ekn_version", "?")),
            training_data=(TrainingData.from_json(json.loads(f.attrs["training_data"]), path)
                           if "training_data" in f.attrs else None),
        )


def registry_resolver(requirements: Sequence[dict[str, str]] = ()) -> Resolver:
    """Resolves descriptor types through the registries only (never by module path)."""
    from ekn_core.plugins import kind_label, missing_requirement, normalise_distribution, registry

    by_name = {(r["kind"], r["name"]): r for r in requirements}

    def resolve(descriptor: dict[str, Any]) -> type:
        kind, name = descriptor.get("kind"), descriptor.get("type")
        node = descriptor.get("name")
        if kind not in NODE_KINDS:
            raise EknError(f"node {node!r}: kind {kind!r} is not a node registry ({', '.join(NODE_KINDS)})")
        if not isinstance(name, str) or not name:
            raise EknError(f"node {node!r} has no registry type (class {descriptor.get('local')}); ekn loads only "
                           f"node types registered under the 'ekn.{kind}' entry-point group")
        req = by_name.get((kind, name))
        label = kind_label(kind)
        if name not in registry(kind):
            needs = (missing_requirement(req) if req else f"{label} {name!r}, which is not installed (no such "
                     f"registered name; a module path or class name is not accepted)")
            raise EknError(f"this model needs {needs} for node {node!r}. Then run `ekn plugins` to check.")
        entry = registry(kind).info(name)
        if req and normalise_distribution(req.get("distribution", entry.distribution)) != entry.distribution:
            raise EknError(f"node {node!r} was saved with {label} {name!r} of distribution {req['distribution']} "
                           f"{req['version']}, but here {name!r} is {entry.distribution} {entry.version}'s (several "
                           f"distributions register the name; `ekn plugins` lists them): install "
                           f"{req['distribution']} and block {entry.distribution}'s (EKN_BLOCK_PLUGINS={kind}:{name}@"
                           f"{entry.distribution}, or all of it: EKN_BLOCK_PLUGINS={entry.distribution}) to load "
                           f"this model")
        return registry(kind).get(name)

    return resolve


def _first_parent_arg(cls: type) -> str:
    from ekn_core.node import _signature

    return next(iter(_signature(cls).parameters))


# ---------------------------------------------------------------------------------------------
# Replay
# ---------------------------------------------------------------------------------------------
def replay(descriptors: Sequence[dict[str, Any]], resolve: Resolver,
           weights: dict[str, dict[str, np.ndarray]] | None = None,
           flags: dict[str, dict[str, dict[str, Any]]] | None = None) -> None:
    """Rebuilds the nodes of ``descriptors`` in ``model_manager.current`` and sets their weights."""
    with replaying():
        _replay_nodes(model_manager.current, descriptors, resolve, weights, flags)


def _replay_nodes(model: Any, descriptors: Sequence[dict[str, Any]], resolve: Resolver,
                  weights: dict[str, dict[str, np.ndarray]] | None,
                  flags: dict[str, dict[str, dict[str, Any]]] | None) -> None:
    for d in descriptors:
        cls = resolve(d)
        name = d["name"]
        version = int(d.get("config_version", 1))
        config = dict(d["config"])
        if version > cls.config_version:
            raise EknError(f"node {name!r} was saved with config version {version} of {d['type']!r}, the installed "
                           f"plugin knows up to {cls.config_version}: upgrade the plugin")
        if version < cls.config_version:
            if not hasattr(cls, "upgrade_config"):
                raise EknError(f"node {name!r} was saved with config version {version} of {d['type']!r}, but the "
                               f"installed {cls.__module__}:{cls.__qualname__} has config_version "
                               f"{cls.config_version} and no upgrade_config(config, from_version) classmethod to "
                               f"convert older configs: its plugin must define one (docs/writing_layers.md), or "
                               f"install the plugin version the model was saved with")
            config = cls.upgrade_config(config, version)
        kwargs = {k: decode_argument(v, model, weights, name) for k, v in config.items()}
        node = cls(name=name, **kwargs)
        if node.name != name:
            raise EknError(f"node {name!r} was restored under the name {node.name!r}: duplicate names in the file")
        if weights and name in weights and not is_shape_only():
            values = {k: v for k, v in weights[name].items() if k in node.params}
            dropped = set(weights[name]) - set(values)
            if dropped:
                log.info("node %r: stored parameters %s are not used by the rebuilt node", name, sorted(dropped))
            node.set_param_values(values, skip_const=True)
            for pname, pflags in (flags or {}).get(name, {}).items():
                if pname in node.params and pflags.get("constant"):
                    node.params[pname].freeze()


def _check_single_path(descriptors: list[dict[str, Any]], pred_name: str, resolve: Resolver) -> None:
    """Refuses MFP for a prediction that passes an up-sampling node (a U-Net) or merges maps
    pooled by different factors: their fragments would not line up."""
    from ekn_core.geometry import _closure

    needed = _closure(descriptors, [pred_name])
    factor: dict[str, int] = {}  # product of the MFP-capable pooling windows above each node
    problem = None
    for d in descriptors:
        cls = resolve(d)
        parents = [p for p in d.get("parents", []) if p in factor]
        own = int(np.prod(d["config"].get("pool_shape") or 1)) if getattr(cls, "supports_mfp", False) else 1
        factor[d["name"]] = own * max((factor[p] for p in parents), default=1)
        if d["name"] not in needed or problem:
            continue
        if getattr(cls, "upsamples", False):
            problem = f"{d['name']!r} ({d['type']}) up-samples"
        elif len({factor[p] for p in parents}) > 1:
            problem = f"{d['name']!r} ({d['type']}) merges maps pooled by different factors"
    if problem:
        raise ConfigError(f"max-fragment pooling is for pooled single-path nets, but {problem} (a U-Net); U-Nets "
                          "already predict densely at stride 1: load or predict without MFP "
                          "(override_mfp_to_active=False, no --mfp)")


def apply_mfp(descriptors: list[dict[str, Any]], designated: dict[str, Any], resolve: Resolver) -> None:
    """Switches ``mfp=True`` on in every MFP-capable node and inserts FragmentsToDense before the
    prediction node (in place). Refuses nets whose prediction passes an up-sampling node or merges
    maps behind different pooling layers (U-Nets)."""
    pred_name = designated.get("prediction_node")
    if not pred_name:
        raise ConfigError("override_mfp_to_active needs a designated prediction node")
    _check_single_path(descriptors, pred_name, resolve)
    names = [d["name"] for d in descriptors]
    for d in descriptors:
        if getattr(resolve(d), "supports_mfp", False):
            d["config"]["mfp"] = True
    index = names.index(pred_name)
    pred = descriptors[index]
    extent = {k: pred["config"].get(k) for k in ("filter_shape", "pool_shape") if pred["config"].get(k) is not None}
    if any(int(v) > 1 for value in extent.values() for v in np.atleast_1d(value)):
        raise ConfigError(f"override_mfp_to_active inserts FragmentsToDense before the prediction node, but "
                          f"{pred_name!r} ({pred['type']}, {extent}) looks at a spatial neighbourhood, so its "
                          f"output would not be dense; designate a point-wise prediction node such as "
                          f"nm.Softmax(last_layer) or a 1x1x1 Conv")
    first = _first_parent_arg(resolve(pred))
    parent_ref = pred["config"].get(first)
    if not (isinstance(parent_ref, dict) and "node" in parent_ref):
        raise ConfigError(f"cannot insert FragmentsToDense before prediction node {pred_name!r}: its first "
                          f"argument {first!r} is not a single node (e.g. a Concat); designate a single-parent "
                          f"prediction node")
    to_dense = "to_dense"
    while to_dense in names:
        to_dense += "_"
    descriptors.insert(index, {"kind": "layers", "type": "fragments_to_dense", "local": None, "name": to_dense,
                               "parents": [parent_ref["node"]], "config": {"parent": dict(parent_ref)},
                               "config_version": 1})
    pred["config"][first] = {"node": to_dense}
    pred["parents"] = [to_dense if p == parent_ref["node"] else p for p in pred["parents"]]


def input_descriptor(descriptors: Sequence[dict[str, Any]], designated: dict[str, Any]) -> dict[str, Any]:
    """The descriptor of the designated input node, which must be an ``input`` node."""
    name = designated.get("input_node")
    for d in descriptors:
        if d["name"] == name:
            if d.get("type") != "input" or "shape" not in d["config"]:
                raise ConfigError(f"the designated input node {name!r} is not an Input node with a declared shape")
            return d
    raise ConfigError("the model has no designated input node; designate_nodes(input_node=...) before saving")


def _set_input_shape(desc: dict[str, Any], batch: int | None = None, patch: Sequence[int] | None = None) -> None:
    from ekn_core.shapes import TaggedShape

    config = desc["config"]
    shape = TaggedShape(config["shape"], config["tags"])
    if batch is not None:
        if not shape.hastag("b"):
            raise ConfigError(f"imposed_batch_size: input {desc['name']!r} has no batch axis")
        shape = shape.updateshape("b", int(batch))
    if patch is not None:
        shape = shape.with_spatial_shape([int(p) for p in patch])
    config["shape"] = list(shape.shape)


def _freeze_nodes(model: Any, lock: int | Sequence[str] | bool) -> None:
    with_params = [n for n in model.nodes.values() if n.params]
    if isinstance(lock, bool):
        chosen = with_params if lock else []
    elif isinstance(lock, int):
        chosen = with_params[:lock]
    else:
        missing = set(lock) - set(model.nodes)
        if missing:
            raise ConfigError(f"lock_trainable_params names unknown node(s) {sorted(missing)}")
        chosen = [model.nodes[n] for n in lock]
    for node in chosen:
        for p in node.params.values():
            p.freeze()


#: What model files of ekn before the ``meta`` state entry held for each meta-parameter never set
#: (ELEKTRONN2's global optimiser defaults).
_UNSET_META_OF_OLD_FILES = {"lr": 1.0, "mom": 0.9, "wd": 0.0, "beta2": 0.999}


def saved_meta(state: dict[str, Any]) -> dict[str, float]:
    """The meta-parameters set on a saved model, from a model file's ``state``.

    Files written by earlier ekn versions held all four, with ELEKTRONN2's global defaults where
    none was set: those values count as not set (the optimiser's own defaults apply), others as set.

    Example:
        >>> saved_meta({"meta": {"lr": 0.01}}), saved_meta({"lr": 1.0, "mom": 0.5, "wd": 0.0, "beta2": 0.999})
        ({'lr': 0.01}, {'mom': 0.5})
    """
    if "meta" in state:
        return {k: float(v) for k, v in state["meta"].items()}
    return {k: float(state[k]) for k, unset in _UNSET_META_OF_OLD_FILES.items()
            if k in state and float(state[k]) != unset}


def restore(descriptors: Sequence[dict[str, Any]], designated: dict[str, Any], weights: dict[str, Any] | None,
            resolve: Resolver, *, flags: dict[str, Any] | None = None, state: dict[str, Any] | None = None,
            training_data: TrainingData | None = None, name: str | None = None, override_mfp_to_active: bool = False,
            imposed_patch_size: Sequence[int] | None = None, imposed_batch_size: int | None = None,
            make_weights_constant: bool = False, lock_trainable_params: int | Sequence[str] | bool = False,
            unlock_all_params: bool = False, replace_bn: str | bool = False) -> Any:
    """Replays descriptors into a new current model with the requested changes (see :func:`modelload`)."""
    from ekn_core.geometry import snap_patch_size

    descriptors = copy.deepcopy(list(descriptors))
    designated = dict(designated)
    if replace_bn:
        if replace_bn not in BN_REPLACEMENTS:
            raise ConfigError(f"replace_bn must be one of {BN_REPLACEMENTS} or False, got {replace_bn!r}")
        for d in descriptors:
            if d["config"].get("batch_normalisation"):
                d["config"]["batch_normalisation"] = False if replace_bn == "remove" else replace_bn
    inp = input_descriptor(descriptors, designated) if designated.get("input_node") else None
    mfp = bool(override_mfp_to_active)
    if mfp:
        apply_mfp(descriptors, designated, resolve)
        if imposed_batch_size is None and inp is not None and None in inp["config"]["shape"]:
            imposed_batch_size = 1
            log.info("max-fragment pooling needs a fixed batch size: using imposed_batch_size=1")
    if imposed_batch_size is not None:
        if inp is None:
            raise ConfigError("imposed_batch_size needs a designated input node")
        _set_input_shape(inp, batch=imposed_batch_size)
    if inp is not None and (mfp or imposed_patch_size is not None):
        from ekn_core.shapes import TaggedShape

        current = TaggedShape(inp["config"]["shape"], inp["config"]["tags"]).spatial_shape
        desired = tuple(imposed_patch_size) if imposed_patch_size is not None else current
        if len(desired) != len(current):
            raise ShapeError(f"imposed_patch_size {tuple(desired)} needs {len(current)} entries like the input "
                             f"patch {current}")
        patch = snap_patch_size((descriptors, designated, resolve), desired)
        if tuple(patch) != tuple(desired):  # a warning for a size asked for, not for the model's own with MFP
            level = logging.WARNING if imposed_patch_size is not None else logging.INFO
            log.log(logging.DEBUG if is_shape_only() else level,  # a shape-only build plans the real one
                    "patch size %s is not valid for this net%s; using the nearest valid size %s",
                    "x".join(map(str, desired)), " with MFP" if mfp else "", "x".join(map(str, patch)))
        _set_input_shape(inp, patch=patch)
    if name is None:
        base = "restored"
        name = base
        i = 1
        while name in model_manager.models:
            name, i = f"{base}{i}", i + 1
    previous = model_manager._current
    model = model_manager.newmodel(name)
    try:
        replay(descriptors, resolve, weights, None if unlock_all_params else flags)
    except BaseException:
        model_manager.remove(name)
        if previous is not None:
            model_manager._activate(previous)
        raise
    if make_weights_constant:
        _freeze_nodes(model, True)
    if lock_trainable_params:
        _freeze_nodes(model, lock_trainable_params)
    for key, value in saved_meta(state or {}).items():
        setattr(model, key, value)
    if state:
        model.iterations = int(state.get("iterations", 0))
        model.elapsed_time = float(state.get("elapsed_time", 0.0))
    model.training_data = training_data
    if any(designated.get(k) for k in designated):
        model.designate_nodes(**designated)
    return model


def modelload(file_name: str, override_mfp_to_active: bool = False, imposed_patch_size: Sequence[int] | None = None,
              imposed_batch_size: int | None = None, name: str | None = None, **model_load_kwargs: Any) -> Any:
    """Loads a model file (ELEKTRONN2 ``modelload``), optionally with changes.

    Args:
        file_name: Path written by ``model.save``.
        override_mfp_to_active: Switch max-fragment pooling on for fast dense prediction (inserts
            FragmentsToDense before the prediction node; batch size becomes 1 unless imposed).
        imposed_patch_size: New input patch size (spatial, declared order); snapped to the nearest
            valid size (largest valid <= wish, else smallest above), or ShapeError when none exists.
        imposed_batch_size: New fixed batch size.
        name: Name of the new model (default ``restored``, ``restored1``, ...).
        **model_load_kwargs: ``make_weights_constant``, ``lock_trainable_params`` (first N nodes
            with parameters, or node names), ``unlock_all_params``, ``replace_bn``
            (``'predict'``, ``'const'``, ``'remove'``).

    Returns:
        The new model (also ``model_manager.current``).
    """
    from ekn_core.plugins import check_required

    _check_options(modelload, model_load_kwargs)
    data = read_model_file(file_name)
    check_required(data.required_plugins)
    resolve = registry_resolver(data.required_plugins)
    for d in data.descriptors:  # refuse the whole file before building anything
        resolve(d)
    return restore(data.descriptors, data.designated, data.weights, resolve, flags=data.flags, state=data.state,
                   training_data=data.training_data, name=name, override_mfp_to_active=override_mfp_to_active,
                   imposed_patch_size=imposed_patch_size, imposed_batch_size=imposed_batch_size, **model_load_kwargs)


def _check_options(func: Callable[..., Any], options: dict[str, Any]) -> None:
    """Raises ConfigError naming the ``options`` of ``func`` (modelload, rebuild_model) that
    :func:`restore` does not know, with the closest option."""
    internal = ("descriptors", "designated", "weights", "resolve", "flags", "state", "training_data")
    known = [n for n in keyword_names(restore) or [] if n not in internal]
    problems = unknown_keywords(func, options, names=known)
    if problems:
        raise ConfigError("; ".join(problems))


def model_resolver(model: Any) -> Resolver:
    """Resolves a live model's descriptors to the classes its nodes were built from, else the registries."""
    registry_resolve = registry_resolver()

    def resolve(descriptor: dict[str, Any]) -> type:
        cls = model.classes.get(descriptor["name"])
        if cls is not None and (descriptor.get("local") is None or
                                descriptor["local"] == f"{cls.__module__}:{cls.__qualname__}"):
            return cls
        return registry_resolve(descriptor)

    return resolve


def rebuild_model(model: Any, override_mfp_to_active: bool = False, imposed_patch_size: Sequence[int] | None = None,
                  name: str | None = None, **model_load_kwargs: Any) -> Any:
    """Rebuilds a live model with changes (same options as :func:`modelload`), copying its weights."""
    _check_options(rebuild_model, model_load_kwargs)
    flags = {n.name: {k: {"constant": p.constant} for k, p in n.params.items()} for n in model.nodes.values()}
    state = {"meta": model.meta_overrides, "iterations": model.iterations, "elapsed_time": model.elapsed_time}
    return restore(list(model.descriptors.values()), model.designated, model.get_param_values(),
                   model_resolver(model), flags=flags, state=state, training_data=model.training_data, name=name,
                   override_mfp_to_active=override_mfp_to_active, imposed_patch_size=imposed_patch_size,
                   **model_load_kwargs)


__all__ = ["FORMAT", "FORMAT_VERSION", "ModelFile", "save_model", "read_model_file", "modelload", "rebuild_model",
           "saved_meta", "restore", "replay", "apply_mfp", "registry_resolver", "model_resolver", "atomic_write"]
