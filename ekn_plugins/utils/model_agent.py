"""An ekn model as a tracing agent: patch layout, direction and radius outputs, recurrent memory.

:class:`ModelAgent` turns a model into a predictor for :class:`~.tracing.Tracer` (ELEKTRONN2's
``Tracer(model, ...)``). It reads the geometry from the model's input node: the patch the tracer
cuts, ``(along, across 1, across 2)`` (:func:`~.skeleton.sample_patch`), is laid onto the input's
spatial axes in their declared order (for ``'b,f,z,x,y'``: along = z), with ``f = 1`` and the
batch on ``b``; a 2-D input ``(b, f, x, y)`` takes oriented slices, patch shape ``(1, x, y)``.
The prediction node's first three features are the direction in the patch frame (same axis
order); an optional radius (ELEKTRONN2's ``radius`` activation ``3 + 15 exp(0.15 x)``, in patch
samples) is a further feature of the prediction or a separate one-feature node.

A model containing ``Scan`` loops (a recurrent agent, trained on sequences of patches along a
skeleton) is rebuilt with :func:`~ekn_plugins.layers.recurrent.one_step_model`: each call
computes one step and keeps the memory for the next; :meth:`ModelAgent.reset` (called by the
tracer at the start of every trace) forgets it. The initial memory is the value of the model's
``in_memory`` nodes for a sequence made of the first patch of the trace.

Example:
    >>> import numpy as np
    >>> from ekn_core import neuromancer as nm
    >>> model = nm.model_manager.newmodel("doc_agent")
    >>> inp = nm.Input((None, 1, 3, 7, 7), 'b,f,z,x,y', name='patch')
    >>> out = nm.Perceptron(inp, 4, activation_func='lin', flatten=True)
    >>> model.designate_nodes(input_node=inp, prediction_node=out)
    >>> agent = ModelAgent(model, radius=3)
    >>> agent.patch_shape
    (3, 7, 7)
    >>> output = agent(np.zeros((2, 3, 7, 7), np.float32))
    >>> output.directions.shape, output.radii.shape
    ((2, 3), (2,))
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ekn_core.errors import ConfigError, ShapeError
from ekn_core.node import GraphFunction, Node, model_manager, union_inputs
from ekn_core.shapes import SPATIAL_TAGS, TaggedShape
from ekn_core.training_data import training_data_of
from ekn_plugins.layers.recurrent import ScanN, one_step_model
from ekn_plugins.utils.tracing import AgentOutput


def patch_shape_of(shape: TaggedShape) -> tuple[int, int, int]:
    """The tracer's patch shape ``(along, across, across)`` for an input of ``shape``.

    Example:
        >>> patch_shape_of(TaggedShape((None, 1, 5, 9, 11), 'b,f,z,x,y'))
        (5, 9, 11)
        >>> patch_shape_of(TaggedShape((1, 8, 6), 'f,x,y'))       # 2-D: oriented slices
        (1, 8, 6)
    """
    spatial = [shape[t] for t in shape.tags if t in SPATIAL_TAGS]
    extra = [t for t in shape.tags if t not in SPATIAL_TAGS + ("b", "f", "r")]
    if len(spatial) not in (2, 3) or None in spatial or extra:
        raise ShapeError(f"a tracing input needs 2 or 3 spatial axes of fixed size and only 'b', 'f', 'r' besides "
                         f"(tags {','.join(shape.tags)}, shape {shape.shape})")
    if shape.hastag("f") and shape["f"] != 1:
        raise ShapeError(f"a tracing input takes one-channel patches, but its 'f' axis has {shape['f']} features")
    return tuple(spatial) if len(spatial) == 3 else (1, *spatial)


def layout(patches: np.ndarray, shape: TaggedShape, sequence: bool = False) -> np.ndarray:
    """Patches ``(n, *patch_shape)`` as an array for an input of ``shape`` (declared axis order).

    The patch axes go onto the spatial axes in declared order, ``n`` onto ``b``, and an ``r``
    axis (a sequence) repeats the patches ``r`` times. With ``sequence``, the patches are
    trajectories ``(n, r, *patch_shape)``: step ``t`` goes to index ``t`` of the input's ``r``
    axis (what ``Scan``'s ``in_iterate`` takes).

    Example:
        >>> p = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
        >>> a = layout(p, TaggedShape((None, 3, 4, 5, 1), 'b,z,x,y,f'))
        >>> a.shape, bool(np.all(a[..., 0] == p))
        ((2, 3, 4, 5, 1), True)
        >>> s = layout(np.stack([p, p + 1], axis=1), TaggedShape((2, None, 1, 3, 4, 5), 'r,b,f,z,x,y'), sequence=True)
        >>> s.shape, bool(np.all(s[1, :, 0] == p + 1))
        ((2, 2, 1, 3, 4, 5), True)
    """
    patches = np.asarray(patches, dtype=np.float32)
    want = patch_shape_of(shape)
    lead = ["b", "r"] if sequence else ["b"]
    if sequence and not shape.hastag("r"):
        raise ShapeError(f"patch sequences need an input with an 'r' axis, got tags {','.join(shape.tags)}")
    if patches.shape[len(lead):] != want or (sequence and shape["r"] not in (None, patches.shape[1])):
        raise ShapeError(f"patches of shape {patches.shape[1:]} do not fit the input (patch shape {want}"
                         + (f", {shape['r']} steps)" if sequence else ")"))
    n_spatial = sum(t in SPATIAL_TAGS for t in shape.tags)
    data = patches if n_spatial == 3 else patches[..., 0, :, :]
    source = [*lead, *[t for t in shape.tags if t in SPATIAL_TAGS]]
    for tag in ("f", "r"):
        if shape.hastag(tag) and tag not in source:
            data, source = data[..., None], [*source, tag]
    data = data.transpose([source.index(t) for t in shape.tags])
    if shape.hastag("r") and not sequence:
        axis = shape.tags.index("r")
        data = np.repeat(data, shape["r"] or 1, axis=axis)
    return np.ascontiguousarray(data)


def rows(array: np.ndarray, shape: TaggedShape, what: str) -> np.ndarray:
    """An output of ``shape`` as ``(b, f)``; every other axis must have length 1.

    Example:
        >>> rows(np.ones((1, 2, 4)), TaggedShape((1, None, 4), 'r,b,f'), 'x').shape
        (2, 4)
    """
    if not (shape.hastag("b") and shape.hastag("f")):
        raise ShapeError(f"{what} needs 'b' and 'f' axes to be read per patch, got tags {','.join(shape.tags)}")
    others = [i for i, t in enumerate(shape.tags) if t not in ("b", "f")]
    array = np.asarray(array).transpose([shape.tags.index("b"), *others, shape.tags.index("f")])
    if int(np.prod(array.shape[1:-1])) != 1:
        raise ShapeError(f"{what} must have one value per patch and feature, but its axes "
                         f"{','.join(shape.tags)} have shape {np.asarray(array).shape}")
    return array.reshape(array.shape[0], array.shape[-1])


def _reorder(array: np.ndarray, source: TaggedShape, target: TaggedShape) -> np.ndarray:
    """``array`` (declared layout of ``source``) transposed to the declared layout of ``target``."""
    return array.transpose([source.tags.index(t) for t in target.tags])


class ModelAgent:
    """A tracing predictor (``patches -> AgentOutput``) made from an ekn model.

    Args:
        model: Model with designated ``input_node`` and ``prediction_node``; the prediction
            depends on the input only (plus recurrent memory). The prediction has one value per
            patch (``b`` and ``f`` axes; others of length 1) and at least 3 features (direction).
        radius: None, the index of the radius feature in the prediction (ELEKTRONN2's layout:
            direction 0-2, radius 3), or the name of a one-feature node giving the radius.

    Attributes:
        patch_shape: The patch shape to give :class:`~.tracing.Tracer`.
        recurrent: True when the model has Scan loops (memory is fed from step to step).
        step_model: The one-step rebuild of a recurrent model (None otherwise).
        training_data: What the model file records about its training data
            (:class:`~ekn_core.training_data.TrainingData`, written by
            :class:`~ekn_plugins.data.tracing.TracingData`), or None: the :class:`~.tracing.Tracer`
            scales the traced volume's grey values as they were scaled and takes the voxel size
            and patch spacing from it.
    """

    def __init__(self, model: Any, radius: int | str | None = None):
        inp, pred = model.input_node, model.prediction_node
        if inp is None or pred is None:
            raise ConfigError(f"model {model.name!r} needs designated input and prediction nodes; call "
                              "model.designate_nodes(input_node=..., prediction_node=...)")
        if isinstance(radius, str) and radius not in model:
            raise ConfigError(f"radius node {radius!r} is not in model {model.name!r}")
        if radius is not None and not isinstance(radius, str) and (not isinstance(radius, int) or radius < 3):
            raise ConfigError(f"radius must be a prediction feature index >= 3 (0-2 are the direction), a node "
                              f"name or None, got {radius!r}")
        needed = radius + 1 if isinstance(radius, int) else 3
        n_f = pred.shape["f"] if pred.shape.hastag("f") else None
        if n_f is not None and n_f < needed:
            what = "the direction (features 0-2)" + (f" and radius (feature {radius})" if needed > 3 else "")
            raise ShapeError(f"prediction {pred.name!r} has {n_f} features; {what} need {needed}")
        if not (pred.shape.hastag("b") and pred.shape.hastag("f")):
            raise ShapeError(f"prediction {pred.name!r} needs 'b' and 'f' axes (one row per patch), got tags "
                             f"{','.join(pred.shape.tags)}")
        self.model, self.radius = model, radius
        self.training_data = training_data_of(inp)
        memory = [m for n in model.nodes.values() if isinstance(n, ScanN) for m in n.memory]
        self.recurrent = bool(memory)
        self.step_model, self._memory, self._state = None, [], None
        graph = model
        if self.recurrent:
            self._initial = GraphFunction(memory, name=f"{model.name}:initial-memory")
            if any(n is not inp for n in self._initial.inputs):
                raise ConfigError(f"the initial memory of {model.name!r} depends on inputs other than "
                                  f"{inp.name!r}: {[n.name for n in self._initial.inputs]}")
            graph, feedback = self._rebuild(model)
            self.step_model, self._memory = graph, [(graph[m.name], graph[feedback[m.name]]) for m in memory]
        self._outputs = [graph[pred.name]] + ([graph[radius]] if isinstance(radius, str) else [])
        memory_in, memory_out = [m for m, _ in self._memory], [o for _, o in self._memory]
        patch_inputs = [n for n in union_inputs(self._outputs + memory_out) if n not in memory_in]
        if len(patch_inputs) != 1:
            raise ConfigError(f"the prediction of {model.name!r} must depend on one patch input (besides recurrent "
                              f"memory), found {[n.name for n in patch_inputs]}")
        self.patch_node: Node = patch_inputs[0]
        self.patch_shape = patch_shape_of(self.patch_node.shape)
        self._step = GraphFunction(self._outputs + memory_out, inputs=[self.patch_node, *memory_in],
                                   name=f"{model.name}:tracing-step", role="tracing-step")

    @staticmethod
    def _rebuild(model: Any) -> tuple[Any, dict[str, str]]:
        """The one-step model under a free name; the current model stays current."""
        previous = model_manager.current
        name, i = f"{model.name}-tracing-step", 1
        while name in model_manager.models:
            name, i = f"{model.name}-tracing-step{i}", i + 1
        try:
            return one_step_model(model, name=name)
        finally:
            if previous.name in model_manager.models:
                model_manager.getmodel(previous.name)

    def reset(self) -> None:
        """Forgets the recurrent memory (the next call starts a new trace)."""
        self._state = None

    def __call__(self, patches: np.ndarray) -> AgentOutput:
        """Directions (and radii) for patches ``(n, *patch_shape)``; one recurrent step if recurrent."""
        patches = np.asarray(patches, dtype=np.float32)
        if self.recurrent and self._state is None:
            state = self._initial(*([layout(patches, self.model.input_node.shape)] if self._initial.inputs else []))
            self._state, self._batch = state if isinstance(state, list) else [state], len(patches)
        if self.recurrent and self._batch != len(patches):
            raise ShapeError(f"a recurrent trace started with {self._batch} patch(es) per step and cannot continue "
                             f"with {len(patches)}; call reset() to start a new trace")
        out = self._step(layout(patches, self.patch_node.shape), *(self._state or []))
        out = out if isinstance(out, list) else [out]
        values, memory = out[:len(self._outputs)], out[len(self._outputs):]
        if self.recurrent:
            self._state = [_reorder(v, o.shape, m.shape) for v, (m, o) in zip(memory, self._memory)]
        table = rows(values[0], self._outputs[0].shape, f"prediction {self._outputs[0].name!r}")
        radii = None
        if isinstance(self.radius, int):
            radii = table[:, self.radius]
        elif isinstance(self.radius, str):
            radii = rows(values[1], self._outputs[1].shape, f"radius node {self.radius!r}")[:, 0]
        return AgentOutput(table[:, :3].astype(np.float64), None if radii is None else radii.astype(np.float64))
