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

import contextlib
import json
import logging
import os
import tempfile
import uuid
from collections.abc import Iterator, Sequence
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


def _run(node: Node, inputs: Sequence[Node], arrays: Sequence[np.ndarray], mode: str) -> np.ndarray:
    set_compile_mode(mode)
    try:
        return GraphFunction([node], inputs=inputs, name=f"{node.name}:{mode}")(*arrays)
    finally:
        set_compile_mode(None)


@contextlib.contextmanager
def _throwaway_model() -> Iterator[tuple[Any, list[str]]]:
    """A new current model, and a list of the models made while it is current; all are removed
    afterwards and the previous model is current again."""
    previous = model_manager._current
    name = f"check-{uuid.uuid4().hex[:8]}"
    created = [name]
    try:
        yield model_manager.newmodel(name), created
    finally:
        for created_name in created:
            if created_name in model_manager.models:
                model_manager.remove(created_name)
        if previous is not None:
            model_manager._activate(previous)


class _NoRetracingWarning(logging.Filter):
    """Drops TensorFlow's warning that calls "triggered tf.function retracing": the checks compile
    new functions of the same nodes on purpose (one per compile mode, after a reload)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


@contextlib.contextmanager
def _no_retracing_warnings() -> Iterator[None]:
    """TensorFlow's logger without the retracing warning (:class:`_NoRetracingWarning`) meanwhile."""
    quiet = _NoRetracingWarning()
    logging.getLogger("tensorflow").addFilter(quiet)
    try:
        yield
    finally:
        logging.getLogger("tensorflow").removeFilter(quiet)


def _check_node_type(node: Node, inputs: Sequence[Node], arrays: Sequence[np.ndarray], model: Any,
                     created: list[str], atol: float, xla: bool, roundtrip: bool) -> dict[str, Any]:
    """Checks 1–4 of the module docs on ``node`` (built from ``inputs``, perhaps through other
    nodes of ``model``, and fed ``arrays``); returns ``{"shape", "modes", "output"}`` (the
    tf.function output)."""
    from ekn_core.persistence import modelload, replay

    outs = {"plain": _run(node, inputs, arrays, "plain"), "eager": _run(node, inputs, arrays, "eager")}
    if xla:
        outs["xla"] = _run(node, inputs, arrays, "xla")
    want = tuple(a if s is None else s for s, a in zip(node.shape.shape, outs["plain"].shape))
    assert outs["plain"].shape == want, (f"computed shape {node.shape.shape} of {node.name!r} differs from the "
                                         f"actual output shape {outs['plain'].shape}")
    for mode, value in outs.items():
        assert np.allclose(value, outs["plain"], atol=atol, rtol=0), \
            f"{mode} output differs from tf.function output by {np.abs(value - outs['plain']).max()}"

    descriptor = model.descriptors[node.name]
    assert json.loads(json.dumps(descriptor)) == descriptor, "descriptor is not JSON round-trip stable"
    types = {name: type(model[name]) for name in model.descriptors}
    with model_manager.scratch(), shape_only():
        replay([json.loads(json.dumps(d)) for d in model.descriptors.values()], lambda d: types[d["name"]])
        replayed = model_manager.current[node.name].shape
    assert replayed == node.shape, f"replayed descriptor gives shape {replayed}, original {node.shape}"

    if roundtrip:
        with tempfile.TemporaryDirectory() as tmp:
            path = model.save(os.path.join(tmp, "check.h5"))
            loaded = modelload(path, name=f"{model.name}-loaded")
            created.append(loaded.name)
        again = _run(loaded[node.name], [loaded[inp.name] for inp in inputs], arrays, "plain")
        assert np.array_equal(again, outs["plain"]), "save → load changed the output"
    return {"shape": node.shape.shape, "modes": sorted(outs), "output": outs["plain"]}


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
    from ekn_core.plugins import registry
    from ekn_core.shapes import TaggedShape

    cls = _resolve_type(node_type)
    set_seed(seed)
    rng = np.random.default_rng(seed)
    with _throwaway_model() as (model, created), _no_retracing_warnings():
        declared = TaggedShape(input_shape, tags)
        free = declared.updateshape("b", None) if declared.hastag("b") and fov else declared
        inp = registry("layers").get("input")(free.shape, tags, dtype=dtype, name="input")
        node = cls(inp, *args, **kwargs)
        x = rng.random(input_shape).astype(dtype)
        report = _check_node_type(node, [inp], [x], model, created, atol, xla, roundtrip)
        del report["output"]

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


def check_loss(node_type: str | type, inputs: Sequence[tuple[Any, ...]], *args: Any, atol: float = 1e-5,
               xla: bool = True, gradient: bool = True, roundtrip: bool = True, seed: int = 0,
               **kwargs: Any) -> dict[str, Any]:
    """Runs the conformance battery on a node type with several parents, a loss or a layer (``add``,
    ``mult``): checks 1–4 of the module docs, that a class registered in ``ekn.losses`` says
    ``kind = "losses"`` (else a model that uses it cannot be saved; a name of ``ekn.losses`` with
    another kind already fails to import), and (``gradient``) that the gradient of its output with
    respect to the first input (the prediction) is nonzero and matches central finite differences
    along a random direction.

    Args:
        node_type: Registry name (``ekn.losses`` or ``ekn.layers``) or class.
        inputs: One ``(array, tags)`` per parent, in the order the constructor takes them (one
            argument each, first), e.g. ``[(prediction, "b,f,x"), (target, "b,f,x")]``: an input
            node of the array's shape and dtype is that parent. ``(array, tags, make_parent)``
            makes the parent ``make_parent(input node)`` instead, for a type that needs a parent of
            some kind: ``registry("losses").get("softmax")`` for ``multinoulli_nll``.
        *args: Constructor arguments after the parents.
        atol: Tolerance between compile modes.
        xla: Also compare with ``jit_compile=True``.
        gradient: Check the gradient (the first input must be floating point).
        roundtrip: Check save → load (needs a registered type).
        seed: Seed of the initial values and the gradient's direction.
        **kwargs: Constructor keyword arguments.

    Returns:
        ``{"shape", "modes", "gradient"}``, the last the directional derivative
        ``(from the tape, from finite differences)``, or None.

    Example:
        >>> from ekn_core.plugins import registry
        >>> rng = np.random.default_rng(0)
        >>> pred, target = rng.random((2, 3, 4)).astype("float32"), rng.random((2, 3, 4)).astype("float32")
        >>> report = check_loss("squared_loss", [(pred, "b,f,x"), (target, "b,f,x")], xla=False)
        >>> report["shape"], report["modes"]
        ((2, 1, 4), ['eager', 'plain'])
        >>> check_loss("add", [(pred, "b,f,x"), (target, "b,f,x")], xla=False)["shape"]  # a layer
        (2, 3, 4)
        >>> ids = rng.integers(0, 3, (2, 1, 4)).astype("int16")
        >>> softmax = registry("losses").get("softmax")
        >>> check_loss("multinoulli_nll", [(pred, "b,f,x", softmax), (ids, "b,f,x")], target_is_sparse=True,
        ...            xla=False)["shape"]
        (2, 1, 4)
    """
    from ekn_core.node import set_seed
    from ekn_core.plugins import registry

    cls = _resolve_type(node_type)
    target = f"{getattr(cls, '__module__', '')}:{getattr(cls, '__qualname__', '')}"
    as_loss = [e.name for e in registry("losses").entries() if e.value.replace(" ", "") == target]
    assert not as_loss or getattr(cls, "kind", "layers") == "losses", (
        f"{cls.__name__} is registered in ekn.losses as {as_loss[0]!r} but has kind = "
        f"{getattr(cls, 'kind', 'layers')!r}: a loss class needs kind = 'losses', else a model that uses it cannot "
        "be saved")
    set_seed(seed)
    with _throwaway_model() as (model, created), _no_retracing_warnings():
        arrays = [np.asarray(item[0]) for item in inputs]
        nodes = [registry("layers").get("input")(array.shape, item[1], dtype=array.dtype.name, name=f"input{i}")
                 for i, (array, item) in enumerate(zip(arrays, inputs))]
        parents = [item[2](inp) if len(item) > 2 else inp for inp, item in zip(nodes, inputs)]
        node = cls(*parents, *args, **kwargs)
        report = _check_node_type(node, nodes, arrays, model, created, atol, xla, roundtrip)
        del report["output"]
        report["gradient"] = _check_gradient(node, nodes, arrays, np.random.default_rng(seed)) if gradient else None
        return report


def _check_gradient(node: Node, inputs: Sequence[Node], arrays: Sequence[np.ndarray],
                    rng: np.random.Generator, step: float = 1e-3, rtol: float = 2e-2) -> tuple[float, float]:
    """The derivative of ``sum(weights * node output)`` along a random direction of the first
    input, from the gradient tape and from central differences; they must agree and be nonzero."""
    from ekn_core.lazy import tf

    function = GraphFunction([node], inputs=inputs)
    tensors = [tf.constant(a) for a in function.check_arrays(arrays)]
    assert tensors[0].dtype.is_floating, f"the first input of {node.name!r} is {tensors[0].dtype.name}, not floating"
    weights = tf.constant(rng.random(function.body(*tensors)[0].shape), tf.float64)
    direction = tf.constant(rng.standard_normal(tensors[0].shape), tensors[0].dtype)

    def weighted(first: Any) -> Any:
        return tf.reduce_sum(tf.cast(function.body(first, *tensors[1:])[0], tf.float64) * weights)

    with tf.GradientTape() as tape:
        tape.watch(tensors[0])
        value = weighted(tensors[0])
    grad = tape.gradient(value, tensors[0])
    assert grad is not None, f"{node.name!r} has no gradient with respect to its first input (the prediction)"
    taped = float(tf.reduce_sum(tf.cast(grad, tf.float64) * tf.cast(direction, tf.float64)))
    differences = float(weighted(tensors[0] + step * direction) - weighted(tensors[0] - step * direction)) / (2 * step)
    assert taped != 0, f"the gradient of {node.name!r} with respect to its first input is zero"
    assert abs(taped - differences) <= rtol * max(abs(taped), abs(differences)), (
        f"the gradient of {node.name!r} along a random direction is {taped:.6g}, but finite differences give "
        f"{differences:.6g}")
    return taped, differences


def check_reader(reader: str, path: str | os.PathLike, shape: tuple[int, ...] = (3, 10, 12), dtype: str = "uint8",
                 seed: int = 0, **options: Any) -> dict[str, Any]:
    """Runs the conformance battery on a volume reader (``ekn.readers``) with a new volume at
    ``path`` (e.g. in a temporary folder; its suffix or ``:key`` as the reader wants):

    1. the reader provides ``open`` and ``create`` (:func:`ekn_core.plugin_checks.reader_problem`);
    2. :func:`~ekn_core.volumes.create_volume` (``options`` are its options) gives a writable
       volume of that shape, dtype and ``ndim``, whose ``axes`` and ``chunks`` fit it; values
       written (then ``flush()``, if it has one, and ``close()``) read back the same through
       :func:`~ekn_core.volumes.open_volume`, whole and in a box;
    3. opened with ``mode="r+"`` (when ``open`` takes it), a box written reads back after reopening;
    4. ``create`` at the same place with another shape (and ``overwrite=True``, when ``create``
       takes it) replaces the volume there: ``ekn predict`` replaces an earlier job's output so.

    Returns:
        ``{"axes", "chunks", "writable_open"}`` of the volume it made.

    Example:
        >>> import tempfile
        >>> check_reader("hdf5", os.path.join(tempfile.mkdtemp(), "v.h5:raw"))["axes"]
        'zyx'
    """
    from ekn_core.errors import keyword_names
    from ekn_core.plugin_checks import reader_problem
    from ekn_core.plugins import registry
    from ekn_core.volumes import create_volume, open_volume

    cls = registry("readers").get(reader)
    problem = reader_problem(cls, reader)
    assert problem is None, f"reader {reader!r}: {problem}"
    rng = np.random.default_rng(seed)

    def values(size: tuple[int, ...]) -> np.ndarray:
        if np.issubdtype(dtype, np.integer):
            return rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max, size, dtype=dtype, endpoint=True)
        return rng.standard_normal(size).astype(dtype)

    data = values(shape)
    with create_volume(path, shape, dtype, reader=reader, **options) as volume:
        assert tuple(volume.shape) == tuple(shape) and np.dtype(volume.dtype) == np.dtype(dtype) and \
            volume.ndim == len(shape), f"created {volume.shape} {volume.dtype}, asked for {shape} {dtype}"
        assert len(volume.axes) == volume.ndim, f"axes {volume.axes!r} do not fit {volume.ndim} dimensions"
        assert volume.chunks is None or len(volume.chunks) == volume.ndim, f"chunks {volume.chunks} do not fit"
        report = {"axes": volume.axes, "chunks": volume.chunks}
        volume[...] = data
        if callable(getattr(volume, "flush", None)):
            volume.flush()
    box = tuple(slice(n // 3, n // 3 + max(1, n // 2)) for n in shape)
    with open_volume(path, reader=reader) as volume:
        assert tuple(volume.shape) == tuple(shape) and np.dtype(volume.dtype) == np.dtype(dtype), \
            f"reopened as {volume.shape} {volume.dtype}, created as {shape} {dtype}"
        assert np.array_equal(volume[...], data), "the values read back differ from those written"
        assert np.array_equal(volume[box], data[box]), f"the box {box} read back differs from the values written"
    report["writable_open"] = "mode" in (keyword_names(cls.open, named_only=True) or ())
    if report["writable_open"]:
        patch = values(tuple(s.stop - s.start for s in box))
        with open_volume(path, reader=reader, mode="r+") as volume:
            volume[box] = patch
        data[box] = patch
        with open_volume(path, reader=reader) as volume:
            assert np.array_equal(volume[...], data), "values written after open(mode='r+') did not read back"
    other = tuple(n + 1 for n in shape)
    replace = {"overwrite": True} if "overwrite" in (keyword_names(cls.create, named_only=True) or ()) else {}
    replaced = f"create at {os.fspath(path)!r} again with shape {other} left shape"
    with create_volume(path, other, dtype, reader=reader, **{**options, **replace}) as volume:
        assert tuple(volume.shape) == other, f"{replaced} {volume.shape}: create must replace the volume at that place"
        data = values(other)
        volume[...] = data
    with open_volume(path, reader=reader) as volume:
        assert tuple(volume.shape) == other and np.array_equal(volume[...], data), \
            f"{replaced} {volume.shape} on reopening, or other values: create must replace the volume at that place"
    return report
