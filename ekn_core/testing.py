"""Conformance checks for node plugins: ``check_node``.

``check_node(type, *args, input_shape=..., tags=..., **kwargs)`` builds ``Input → type(input,
*args, **kwargs)`` in a throw-away model and checks:

1. the computed output shape equals the actual output shape;
2. eager, ``tf.function`` and XLA give the same output (``atol``, default 1e-5);
3. the node's descriptor survives a JSON round trip and replays to the same shape;
4. save → load gives identical outputs;
5. the computed field of view of the centre output voxel ``i`` equals the one measured by
   perturbing single input voxels and seeing which change that voxel: its size ``fov`` and its
   position, starting at input voxel ``i * strides + field_start`` (= ``i * strides + offsets -
   fov // 2``; skipped for unknown FOVs and fixed batch sizes).

It raises ``AssertionError`` naming the failed check, else returns a small report.

Example:
    >>> report = check_node("conv", 3, (3, 3), (2, 2), input_shape=(1, 2, 10, 10), tags="b,f,x,y")
    >>> report["fov"], report["measured_field_start"]  # centre output voxel (2, 2), strides 2
    ((4, 4), (4, 4))
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from typing import Any, NamedTuple

import numpy as np

from ekn_core.node import GraphFunction, Node, model_manager, set_compile_mode, shape_only


def _resolve_type(node_type: str | type) -> type:
    from ekn_core.plugins import registry

    if not isinstance(node_type, str):
        return node_type
    for kind in ("layers", "losses"):
        if node_type in registry(kind):
            return registry(kind).get(node_type)
    raise AssertionError(f"{node_type!r} is not registered in ekn.layers or ekn.losses")


def _run(node: Node, x: np.ndarray, mode: str) -> np.ndarray:
    set_compile_mode(mode)
    try:
        return GraphFunction([node], name=f"{node.name}:{mode}")(x)
    finally:
        set_compile_mode(None)


class MeasuredField(NamedTuple):
    """The measured field of view of one output voxel (per spatial axis, declared order)."""

    voxel: tuple[int, ...]  #: the output voxel
    start: tuple[int, ...]  #: the first input voxel of its field
    size: tuple[int, ...]  #: the extent of its field (0 where no input voxel changes it)


def measure_field(node: Node, x: np.ndarray, magnitude: float = 100.0) -> MeasuredField:
    """Field of view of the centre output voxel of ``node`` measured on input ``x`` (batch 1): the
    input voxels whose perturbation by ±``magnitude`` changes that voxel.

    Example:
        >>> from ekn_core import neuromancer as nm
        >>> _ = model_manager.newmodel("doc_measure")
        >>> same = nm.Conv(nm.Input((None, 1, 9), 'b,f,x'), 1, 5, conv_mode='same', activation_func='lin')
        >>> measure_field(same, np.random.default_rng(0).random((1, 1, 9)).astype('float32'))
        MeasuredField(voxel=(4,), start=(2,), size=(5,))
        >>> same.shape.field_start, same.shape.offsets  # voxel i sees i - 2 ... i + 2
        ((-2,), (0,))
    """
    inp = node.input_nodes[0]
    xc = inp.shape.to_canonical(x)[0]  # (*spatial, f) for conv-like layouts
    out_shape = node.shape
    base = out_shape.to_canonical(node(x))[0]
    centre = tuple(s // 2 for s in base.shape[:-1])
    spatial = xc.shape[:-1]
    positions = list(np.ndindex(*spatial))
    batch = np.repeat(xc[None], 2 * len(positions), axis=0)
    for k, pos in enumerate(positions):
        batch[(2 * k, *pos)] += magnitude
        batch[(2 * k + 1, *pos)] -= magnitude
    out = out_shape.to_canonical(node(inp.shape.from_canonical(batch)))
    changed = np.abs(out[(slice(None), *centre)] - base[centre]).max(axis=-1) > 1e-6 * (1 + np.abs(base[centre]).max())
    hits = np.array([pos for k, pos in enumerate(positions) if changed[2 * k] or changed[2 * k + 1]])
    if hits.size == 0:
        return MeasuredField(centre, (0,) * len(spatial), (0,) * len(spatial))
    return MeasuredField(centre, tuple(int(v) for v in hits.min(axis=0)),
                         tuple(int(v) for v in hits.max(axis=0) - hits.min(axis=0) + 1))


def check_node(node_type: str | type, *args: Any, input_shape: tuple[int, ...] = (1, 2, 5, 9, 9),
               tags: str = "b,f,z,y,x", dtype: str = "float32", atol: float = 1e-5, xla: bool = True,
               fov: bool = True, roundtrip: bool = True, seed: int = 0, **kwargs: Any) -> dict[str, Any]:
    """Runs the conformance battery on one node type (see module docs).

    Args:
        node_type: Registry name (``ekn.layers`` or ``ekn.losses``) or class.
        *args: Constructor arguments after the parent.
        input_shape: Concrete input shape (batch first in ``tags`` if present; batch 1 recommended).
        tags: Input tag order.
        dtype: Input dtype.
        atol: Tolerance between compile modes.
        xla: Also compare with ``jit_compile=True``.
        fov: Check the FOV by perturbation.
        roundtrip: Check save → load (needs a registered type).
        seed: Seed of the random input and initial values.
        **kwargs: Constructor keyword arguments.

    Returns:
        ``{"shape", "fov", "measured_fov", "measured_field_start", "modes"}``.
    """
    from ekn_core.node import set_seed
    from ekn_core.persistence import modelload, replay
    from ekn_core.plugins import registry
    from ekn_core.shapes import TaggedShape

    cls = _resolve_type(node_type)
    set_seed(seed)
    rng = np.random.default_rng(seed)
    previous = model_manager._current
    name = f"check-{uuid.uuid4().hex[:8]}"
    created = [name]
    model = model_manager.newmodel(name)
    report: dict[str, Any] = {}
    try:
        declared = TaggedShape(input_shape, tags)
        free = declared.updateshape("b", None) if declared.hastag("b") and fov else declared
        inp = registry("layers").get("input")(free.shape, tags, dtype=dtype, name="input")
        node = cls(inp, *args, **kwargs)
        x = rng.random(input_shape).astype(dtype)

        outs = {"plain": _run(node, x, "plain"), "eager": _run(node, x, "eager")}
        if xla:
            outs["xla"] = _run(node, x, "xla")
        want = tuple(a if s is None else s for s, a in zip(node.shape.shape, outs["plain"].shape))
        assert outs["plain"].shape == want, (f"computed shape {node.shape.shape} of {node.name!r} differs from the "
                                             f"actual output shape {outs['plain'].shape}")
        for mode, value in outs.items():
            assert np.allclose(value, outs["plain"], atol=atol, rtol=0), \
                f"{mode} output differs from tf.function output by {np.abs(value - outs['plain']).max()}"
        report.update(shape=node.shape.shape, modes=sorted(outs))

        descriptor = model.descriptors[node.name]
        assert json.loads(json.dumps(descriptor)) == descriptor, "descriptor is not JSON round-trip stable"
        with model_manager.scratch(), shape_only():
            replay([model.descriptors["input"], json.loads(json.dumps(descriptor))],
                   lambda d: cls if d["name"] == node.name else type(inp))
            replayed = model_manager.current[node.name].shape
        assert replayed == node.shape, f"replayed descriptor gives shape {replayed}, original {node.shape}"

        if roundtrip:
            with tempfile.TemporaryDirectory() as tmp:
                path = model.save(os.path.join(tmp, "check.h5"))
                loaded = modelload(path, name=f"{name}-loaded")
                created.append(loaded.name)
            again = loaded[node.name](x)
            assert np.array_equal(again, outs["plain"]), "save → load changed the output"

        report["fov"] = node.shape.fov
        if fov and node.shape.ndim and min(node.shape.fov) > 0 and declared.hastag("b"):
            measured = measure_field(node, x)
            report["measured_fov"], report["measured_field_start"] = measured.size, measured.start
            assert measured.size == tuple(node.shape.fov), f"computed FOV {node.shape.fov} but measured {measured.size}"
            start = tuple(i * st + s for i, st, s in zip(measured.voxel, node.shape.strides, node.shape.field_start))
            assert measured.start == start, (
                f"output voxel {measured.voxel} sees the input from voxel {measured.start}, but strides "
                f"{node.shape.strides}, field_start {node.shape.field_start} (offsets {node.shape.offsets}) put "
                f"its field at {start}: the node moves its output grid without updating field_start")
        return report
    finally:
        for created_name in created:
            if created_name in model_manager.models:
                model_manager.remove(created_name)
        if previous is not None:
            model_manager._activate(previous)
