"""Geometry calculator: valid input patch sizes, nearest valid size, per-layer fov/offset/stride.

Works for any graph, not only sequential conv/pool stacks (ELEKTRONN2's ``cnncalculator``): the
net's descriptors are replayed shape-only (no TensorFlow variables) with a candidate patch size,
and every node's :meth:`~ekn_core.node.Node.shape_check` reports which spatial axis fails.
Because the rules act per spatial axis, one replay judges every axis of a candidate at once.

``net`` arguments accept a :class:`~ekn_core.model.Model` (with a designated input node) or a
``(descriptors, designated, resolver)`` triple (used while restoring a file).

Example:
    >>> import ekn_core.neuromancer as nm
    >>> model = nm.model_manager.newmodel("doc_geometry")
    >>> inp = nm.Input((None, 1, 23, 185, 185), 'b,f,z,x,y', name='raw')
    >>> c = nm.Conv(inp, 4, (4, 6, 6), (2, 2, 2))
    >>> out = nm.Conv(c, 2, (1, 1, 1), activation_func='lin')  # point-wise head (MFP goes before it)
    >>> model.designate_nodes(input_node=inp, prediction_node=out)
    >>> nearest_valid_patch_sizes(model, (24, 180, 180))
    ((23, 179, 179), (25, 181, 181))
    >>> check_patch_size(model, (24, 180, 180))
    Traceback (most recent call last):
    ...
    ekn_core.errors.ShapeError: patch 24×180×180 is not valid for this net; nearest valid: 23×179×179, 25×181×181
    >>> snap_patch_size(model, (24, 180, 180), mfp=True)
    (24, 180, 180)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from ekn_core.errors import ConfigError, EknError, ShapeError
from ekn_core.shapes import TaggedShape

Net = Any  # Model or (descriptors, designated, resolver)


def _spec(net: Net, mfp: bool = False) -> tuple[list[dict[str, Any]], dict[str, Any], Any, dict[str, Any]]:
    from ekn_core.persistence import apply_mfp, input_descriptor, model_resolver

    if isinstance(net, tuple):
        descriptors, designated, resolve = net
    else:
        descriptors, designated, resolve = list(net.descriptors.values()), net.designated, model_resolver(net)
        if not designated.get("input_node"):
            raise ConfigError(f"model {net.name!r} has no designated input node; call designate_nodes first")
    descriptors = copy.deepcopy(list(descriptors))
    if mfp:
        apply_mfp(descriptors, designated, resolve)
    if designated.get("prediction_node"):
        needed = _closure(descriptors, [designated["prediction_node"], designated["input_node"]])
        descriptors = [d for d in descriptors if d["name"] in needed]
    inp = input_descriptor(descriptors, designated)
    if mfp and None in inp["config"]["shape"]:
        shape = TaggedShape(inp["config"]["shape"], inp["config"]["tags"])
        inp["config"]["shape"] = list(shape.updateshape("b", 1).shape) if shape.hastag("b") else inp["config"]["shape"]
    return descriptors, designated, resolve, inp


def _references(config: Any) -> list[str]:
    if isinstance(config, list):
        return [name for v in config for name in _references(v)]
    if isinstance(config, dict):
        if "node" in config and isinstance(config["node"], str):
            return [config["node"]]
        if "param" in config:
            return [config["param"][0]]
        return [name for v in config.values() for name in _references(v)]
    return []


def _closure(descriptors: list[dict[str, Any]], roots: list[str]) -> set[str]:
    """Names of the roots and every node their descriptors refer to (parents and references)."""
    by_name = {d["name"]: d for d in descriptors}
    needed: set[str] = set()
    stack = list(roots)
    while stack:
        name = stack.pop()
        if name not in needed and name in by_name:
            needed.add(name)
            stack.extend(_references(by_name[name]["config"]))
    return needed


def _input_shape(inp: dict[str, Any]) -> TaggedShape:
    return TaggedShape(inp["config"]["shape"], inp["config"]["tags"])


def _judge(net: Net, patch: Sequence[int], mfp: bool = False, _spec_cache: Any = None) -> tuple[list[bool], str | None]:
    """:func:`axis_validity` and the error that fails every axis at once (not tied to one axis), if any."""
    from ekn_core.node import model_manager, shape_only
    from ekn_core.persistence import replay

    descriptors, _, resolve, inp = _spec_cache or _spec(net, mfp)
    ndim = _input_shape(inp).ndim
    if len(patch) != ndim:
        raise ShapeError(f"patch {tuple(patch)} needs {ndim} entries (spatial axes of the input)")
    if min(patch) < 1:
        return [p >= 1 for p in patch], None
    original = list(inp["config"]["shape"])
    inp["config"]["shape"] = list(_input_shape(inp).with_spatial_shape(patch).shape)
    try:
        with model_manager.scratch(), shape_only(lenient=True) as errors:
            try:
                replay(descriptors, resolve)
            except EknError as err:
                return [False] * ndim, str(err)
    finally:
        inp["config"]["shape"] = original
    overall = [f"{name!r}: {message}" for name, axis, message in errors if axis is None]
    if overall:
        return [False] * ndim, "; ".join(overall)
    bad = {axis for _, axis, _ in errors}
    return [i not in bad for i in range(ndim)], None


def axis_validity(net: Net, patch: Sequence[int], mfp: bool = False, _spec_cache: Any = None) -> list[bool]:
    """Per spatial axis: whether ``patch[i]`` is valid on axis ``i`` (judged independently)."""
    return _judge(net, patch, mfp, _spec_cache)[0]


def current_patch_size(net: Net) -> tuple[int, ...]:
    """Spatial shape of the designated input node."""
    return tuple(_input_shape(_spec(net)[3]).spatial_shape)  # type: ignore[arg-type]


def valid_patch_sizes(net: Net, mfp: bool = False, max_size: int | Sequence[int] | None = None) -> list[list[int]]:
    """All valid sizes per spatial axis from 1 to ``max_size`` (default twice the current patch)."""
    spec = _spec(net, mfp)
    current = _input_shape(spec[3]).spatial_shape
    limits = ([int(max_size)] * len(current) if isinstance(max_size, int) else
              list(max_size) if max_size is not None else [2 * c for c in current])
    found: list[list[int]] = [[] for _ in current]
    for size in range(1, max(limits) + 1):
        verdict = axis_validity(net, [min(size, lim) for lim in limits], _spec_cache=spec)
        for i, ok in enumerate(verdict):
            if ok and size <= limits[i]:
                found[i].append(size)
    return found


def nearest_valid_patch_sizes(net: Net, desired: Sequence[int], mfp: bool = False,
                              max_steps: int = 512) -> tuple[tuple[int | None, ...], tuple[int | None, ...]]:
    """Per axis, the largest valid size ``<= desired`` and the smallest valid size ``>= desired``
    (None where none exists within ``max_steps``)."""
    spec = _spec(net, mfp)
    desired = [int(d) for d in desired]
    below: list[int | None] = [None] * len(desired)
    above: list[int | None] = [None] * len(desired)
    for step in range(max_steps + 1):
        down = [max(d - step, 1) for d in desired]
        if any(b is None and d - step >= 1 for b, d in zip(below, desired)):
            for i, ok in enumerate(axis_validity(net, down, _spec_cache=spec)):
                if ok and below[i] is None and desired[i] - step >= 1:
                    below[i] = down[i]
        if any(a is None for a in above):
            up = [d + step for d in desired]
            for i, ok in enumerate(axis_validity(net, up, _spec_cache=spec)):
                if ok and above[i] is None:
                    above[i] = up[i]
        if all(a is not None for a in above) and all(b is not None or d - step < 1 for b, d in zip(below, desired)):
            break
    return tuple(below), tuple(above)


def _fmt(sizes: Sequence[int | None]) -> str:
    return "×".join("?" if s is None else str(s) for s in sizes)


def check_patch_size(net: Net, patch: Sequence[int], mfp: bool = False) -> None:
    """Raises ShapeError ("patch 24×180×180 is not valid for this net; nearest valid: ...") if invalid."""
    if all(axis_validity(net, patch, mfp)):
        return
    below, above = nearest_valid_patch_sizes(net, patch, mfp)
    lower = [b if b is not None else a for b, a in zip(below, above)]
    options = ", ".join(dict.fromkeys(_fmt(v) for v in (lower, above)))
    raise ShapeError(f"patch {_fmt(patch)} is not valid for this net{' with MFP' if mfp else ''}; "
                     f"nearest valid: {options}")


def snap_patch_size(net: Net, desired: Sequence[int], mfp: bool = False) -> tuple[int, ...]:
    """The largest valid size ``<= desired`` per axis (else the smallest above); ShapeError if none."""
    below, above = nearest_valid_patch_sizes(net, desired, mfp)
    snapped = [b if b is not None else a for b, a in zip(below, above)]
    if any(s is None for s in snapped):
        reason = _judge(net, desired, mfp)[1]
        why = f"; at {_fmt(desired)} it fails on every axis: {reason}" if reason else ""
        raise ShapeError(f"no valid patch size found near {_fmt(desired)} for this net "
                         f"(per axis below: {_fmt(below)}, above: {_fmt(above)}){why}")
    return tuple(int(s) for s in snapped)  # type: ignore[arg-type]


def layer_geometry(model: Any) -> list[dict[str, Any]]:
    """Per node: spatial shape, fov, offsets and strides (the FOV-repaired values for the prediction).

    Example:
        >>> from ekn_core.node import model_manager
        >>> [g['name'] for g in layer_geometry(model_manager.getmodel('doc_geometry'))]
        ['raw', 'conv', 'conv1']
    """
    rows = []
    for node in model.nodes.values():
        shape = node.shape
        rows.append({"name": node.name, "type": type(node).__name__, "spatial_shape": shape.spatial_shape,
                     "fov": shape.fov, "offsets": shape.offsets, "strides": shape.strides})
    return rows
