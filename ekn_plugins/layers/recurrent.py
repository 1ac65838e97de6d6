"""Recurrent nets: ``GRU`` and ``LSTM`` steps, ``Scan`` over an arbitrary sub-graph, one-step rebuild.

A recurrent model is written as *one step* of ordinary nodes plus a :func:`Scan` that repeats it
(ELEKTRONN2's design, inventory §2.4):

.. code-block:: python

    inp = nm.Input((20, None, 58), 'r,b,f')                       # a sequence
    inp0, _ = nm.split(inp, 'r', index=1, strip_singleton_dims=True)   # step placeholder
    mem = nm.InitialState_like(inp0, 32)                          # learned initial state
    out = nm.GRU(inp0, mem, 32)                                   # one step
    seq = nm.Scan(out, mem, in_iterate=inp, in_iterate_0=inp0)    # all steps: (r, b, f)

Scan semantics: at step ``t`` (``0 <= t < n_steps``) every ``in_iterate_0`` node takes the slice
``t`` of its ``in_iterate`` node along ``r``, and every ``in_memory`` node takes the value of its
``out_memory`` node from step ``t - 1`` (at ``t = 0`` its own value). Every node between these
and the ``step_result`` nodes is re-evaluated each step; nodes outside that sub-graph are computed
once. The results are stacked on a new leading ``r`` axis, or only the last step is kept
(``last_only``). Several results, several memories and several iterated inputs are allowed.

:func:`one_step_model` rebuilds a model containing Scans into a model that computes one step:
every ``in_memory`` node becomes an ``Input`` of the same name (feed the previous step's
``out_memory`` values), every ``in_iterate_0`` node becomes an ``Input`` of the same name (feed
the step's slice), and each Scan output becomes the step result (with an ``r`` axis of length 1
unless ``last_only``). Looping it reproduces the multi-step outputs step by step.

Weight layouts (ELEKTRONN2's): GRU ``w`` ``(n_f + n_in, 3 n_f)`` (rows: memory then input;
columns: update gate ``z``, reset gate ``r``, candidate), ``b`` ``(3 n_f,)``; LSTM ``w``
``(n_f + n_in, 4 n_f)`` (columns: forget, input, output gates, candidate), ``b`` ``(4 n_f,)``
(forget-gate bias initialised to 1).

Example:
    >>> import numpy as np
    >>> from ekn_core import neuromancer as nm
    >>> _ = nm.model_manager.newmodel("doc_recurrent")
    >>> inp = nm.Input((5, 2, 3), 'r,b,f')
    >>> inp0, _ = nm.split(inp, 'r', index=1, strip_singleton_dims=True)
    >>> mem = nm.InitialState_like(inp0, 4)
    >>> seq = nm.Scan(nm.GRU(inp0, mem, 4), mem, in_iterate=inp, in_iterate_0=inp0)
    >>> seq.shape.tags, seq(np.ones((5, 2, 3))).shape
    (('r', 'b', 'f'), (5, 2, 4))
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from ekn_core.errors import ConfigError
from ekn_core.lazy import tf
from ekn_core.node import Node, topological_order
from ekn_core.shapes import TaggedShape
from ekn_plugins.layers.activations import apply_activation, parse_activation
from ekn_plugins.layers.merge import align_tensor


# ---------------------------------------------------------------------------------------------
# GRU / LSTM steps
# ---------------------------------------------------------------------------------------------
class _RecurrentStep(Node):
    """Common part of GRU and LSTM: validation, ``w``/``b`` and the ``[memory, input]`` product."""

    n_gates = 1
    memory_factor = 1

    def __init__(self, parent: Node, memory: Node, n_f: int, activation_func: str, flatten: bool,
                 batch_normalisation: Any, dropout_rate: float, name: str, print_repr: bool, w: Any, b: Any):
        super().__init__([parent, memory], name, print_repr)
        kind = type(self).__name__
        if flatten or batch_normalisation or dropout_rate:
            raise ConfigError(f"{kind} {name!r}: flatten, batch_normalisation and dropout_rate are not supported "
                              f"inside a recurrent step; use Reshape, BatchNorm or Dropout nodes around it")
        if not isinstance(n_f, int) or isinstance(n_f, bool) or n_f < 1:
            raise ConfigError(f"{kind} {name!r}: n_f must be a positive int, got {n_f!r}")
        for node in (parent, memory):
            if not node.shape.hastag("f") or node.shape.hastag("r"):
                raise ConfigError(f"{kind} {name!r}: {node.name!r} needs an 'f' axis and no 'r' axis (one step), "
                                  f"got {node.shape.tags}")
        if set(parent.shape.tags) != set(memory.shape.tags):
            raise ConfigError(f"{kind} {name!r}: input {parent.name!r} {parent.shape.tags} and memory "
                              f"{memory.name!r} {memory.shape.tags} need the same axes")
        if memory.shape["f"] != self.memory_factor * n_f:
            raise ConfigError(f"{kind} {name!r}: memory {memory.name!r} has {memory.shape['f']} features, needs "
                              f"{self.memory_factor * n_f} (= {self.memory_factor} x n_f)")
        self.act, _ = parse_activation(activation_func)
        if self.act in ("prelu", "maxout"):
            raise ConfigError(f"{kind} {name!r}: activation {activation_func!r} is not supported in a recurrent step")
        self.activation_func, self.n_f, self.n_in = activation_func, n_f, parent.shape["f"]
        rows, cols = n_f + self.n_in, self.n_gates * n_f
        self.add_param("w", w, shape=(rows, cols), init="ortho", scale=1.0, weight_decay=1.0)
        self.add_param("b", b, shape=(cols,), init="zeros")

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        return parent_shapes[0].updateshape("f", self.memory_factor * self.n_f)

    def _compute_cost(self) -> float:
        lead = self.parents[0].shape.stripnone_prod // self.n_in
        return float(lead * (self.n_f + self.n_in) * self.n_gates * self.n_f)

    def _operands(self, inputs: list[Any]) -> tuple[Any, Any]:
        return inputs[0], align_tensor(inputs[1], self.parents[1].shape, self.parents[0].shape)

    def _dot(self, h: Any, x: Any, cols: slice) -> Any:
        w, b = self.params["w"].variable, self.params["b"].variable
        hx = tf.concat([h, x], axis=-1)
        return tf.tensordot(hx, w[:, cols], axes=[[len(hx.shape) - 1], [0]]) + b[cols]

    def _repr_extras(self) -> str:
        return f"n_f={self.n_f} act={self.activation_func}"


class GRU(_RecurrentStep):
    """One gated-recurrent-unit step: ``h' = (1 - z) h + z act(W_h [r h, x] + b_h)``.

    ``z, r = sigmoid(W_zr [h, x] + b_zr)``.

    Args:
        parent: The step's input ``x`` (an ``f`` axis, no ``r``).
        memory_state: The previous state ``h`` (same axes, ``n_f`` features).
        n_f: Number of state features.
        activation_func: Candidate activation (default tanh).
        flatten, batch_normalisation, dropout_rate: Not supported (ConfigError when set).
        name: Node name.
        print_repr: Log the node description.
        w, b: Initial values, ``[array, 'const']`` or Params to share.

    Shape rule: ``parent``'s shape with ``f = n_f``; cost ``3 n_f (n_f + n_in)`` per position.
    """

    n_gates = 3

    def __init__(self, parent: Node, memory_state: Node, n_f: int, activation_func: str = "tanh",
                 flatten: bool = False, batch_normalisation: Any = False, dropout_rate: float = 0, name: str = "gru",
                 print_repr: bool = True, w: Any = None, b: Any = None):
        super().__init__(parent, memory_state, n_f, activation_func, flatten, batch_normalisation, dropout_rate,
                         name, print_repr, w, b)

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        x, h = self._operands(inputs)
        n = self.n_f
        gates = tf.sigmoid(self._dot(h, x, slice(0, 2 * n)))
        z, r = gates[..., :n], gates[..., n:]
        candidate = apply_activation(self._dot(r * h, x, slice(2 * n, 3 * n)), self.act)
        return (1.0 - z) * h + z * candidate


class LSTM(_RecurrentStep):
    """One long-short-term-memory step (no peepholes); memory and output hold ``[h, c]``.

    ``f, i, o = sigmoid(W_fio [h, x] + b_fio)``, ``c' = f c + i act(W_c [h, x] + b_c)``,
    ``h' = o act(c')``; output ``[h', c']``.

    Args:
        parent: The step's input ``x`` (an ``f`` axis, no ``r``).
        memory_states: The previous ``[h, c]`` (same axes, ``2 n_f`` features).
        n_f: Number of hidden features.
        activation_func: Cell activation (default tanh).
        flatten, batch_normalisation, dropout_rate: Not supported (ConfigError when set).
        name: Node name.
        print_repr: Log the node description.
        w, b: Initial values, ``[array, 'const']`` or Params to share.

    Shape rule: ``parent``'s shape with ``f = 2 n_f``; cost ``4 n_f (n_f + n_in)`` per position.
    """

    n_gates = 4
    memory_factor = 2

    def __init__(self, parent: Node, memory_states: Node, n_f: int, activation_func: str = "tanh",
                 flatten: bool = False, batch_normalisation: Any = False, dropout_rate: float = 0, name: str = "lstm",
                 print_repr: bool = True, w: Any = None, b: Any = None):
        super().__init__(parent, memory_states, n_f, activation_func, flatten, batch_normalisation, dropout_rate,
                         name, print_repr, w, b)
        if b is None and self.params["b"].variable is not None:
            value = self.params["b"].get_value()
            value[:n_f] = 1.0
            self.params["b"].set_value(value)

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        x, mem = self._operands(inputs)
        n = self.n_f
        h, c = mem[..., :n], mem[..., n:]
        gates = tf.sigmoid(self._dot(h, x, slice(0, 3 * n)))
        f, i, o = gates[..., :n], gates[..., n:2 * n], gates[..., 2 * n:]
        c_new = f * c + i * apply_activation(self._dot(h, x, slice(3 * n, 4 * n)), self.act)
        return tf.concat([o * apply_activation(c_new, self.act), c_new], axis=-1)


# ---------------------------------------------------------------------------------------------
# Scan
# ---------------------------------------------------------------------------------------------
def _as_list(value: Node | Sequence[Node] | None, what: str) -> list[Node]:
    if value is None:
        return []
    items = [value] if isinstance(value, Node) else list(value)
    if not all(isinstance(v, Node) for v in items):
        raise ConfigError(f"Scan: {what} must be a Node or a list of Nodes, got {value!r}")
    return items


def _step_slice_shape(seq: TaggedShape, placeholder: TaggedShape) -> TaggedShape:
    """The shape one step of ``seq`` has in the placeholder's form (``r`` removed or of size 1)."""
    return seq.delaxis("r") if not placeholder.hastag("r") else seq.updateshape("r", 1)


def _same_geometry(a: TaggedShape, b: TaggedShape) -> bool:
    return set(a.tags) == set(b.tags) and all(a[t] is None or b[t] is None or a[t] == b[t] for t in a.tags)


class ScanN(Node):
    """The node that runs the recurrence of :func:`Scan`; its value is the tuple of all results.

    Use the :class:`ScanOutput` nodes that :func:`Scan` returns, not this node directly.
    Arguments as for :func:`Scan` (lists of nodes).
    """

    #: Its value is a tuple of tensors: whole-graph tools (activations, timings) must skip it.
    multi_output = True

    def __init__(self, step_result: list[Node], in_memory: list[Node], out_memory: list[Node] | None = None,
                 in_iterate: list[Node] | None = None, in_iterate_0: list[Node] | None = None,
                 n_steps: int | None = None, unroll_scan: bool = True, last_only: bool = False, name: str = "scan",
                 print_repr: bool = True):
        results = _as_list(step_result, "step_result")
        memory = _as_list(in_memory, "in_memory")
        feedback = _as_list(out_memory, "out_memory") if out_memory is not None else list(results)
        iterate, iterate_0 = _as_list(in_iterate, "in_iterate"), _as_list(in_iterate_0, "in_iterate_0")
        fed = memory + iterate_0
        subgraph = self._subgraph(results + feedback, fed)
        boundary = [p for n in subgraph for p in n.parents if p not in subgraph and p not in fed]
        parents = list(dict.fromkeys(results + feedback + memory + iterate + boundary))
        super().__init__(parents, name, print_repr)
        if not results:
            raise ConfigError(f"Scan {name!r}: give at least one step_result node")
        if len(feedback) != len(memory):
            raise ConfigError(f"Scan {name!r}: {len(memory)} in_memory node(s) but {len(feedback)} out_memory "
                              f"node(s) (without out_memory every step_result feeds back, in order)")
        for m, o in zip(memory, feedback):
            if not _same_geometry(m.shape, o.shape):
                raise ConfigError(f"Scan {name!r}: out_memory {o.name!r} {o.shape.shape} ({','.join(o.shape.tags)}) "
                                  f"does not fit in_memory {m.name!r} {m.shape.shape} ({','.join(m.shape.tags)})")
        if len(iterate) != len(iterate_0):
            raise ConfigError(f"Scan {name!r}: {len(iterate)} in_iterate but {len(iterate_0)} in_iterate_0 nodes")
        lengths = set()
        for seq, ph in zip(iterate, iterate_0):
            if not seq.shape.hastag("r") or seq.shape["r"] is None:
                raise ConfigError(f"Scan {name!r}: in_iterate {seq.name!r} needs an 'r' axis of known length")
            if not _same_geometry(_step_slice_shape(seq.shape, ph.shape), ph.shape):
                raise ConfigError(f"Scan {name!r}: a step of {seq.name!r} {seq.shape.shape} ({','.join(seq.shape.tags)})"
                                  f" does not fit in_iterate_0 {ph.name!r} {ph.shape.shape}")
            lengths.add(seq.shape["r"])
        if n_steps is None:
            if not lengths:
                raise ConfigError(f"Scan {name!r}: give n_steps (there is no in_iterate to take it from)")
            n_steps = min(lengths)
        if not isinstance(n_steps, int) or isinstance(n_steps, bool) or n_steps < 1:
            raise ConfigError(f"Scan {name!r}: n_steps must be a positive int, got {n_steps!r}")
        if lengths and n_steps > min(lengths):
            raise ConfigError(f"Scan {name!r}: n_steps={n_steps} exceeds the in_iterate length {min(lengths)}")
        for r in results:
            if r.shape.hastag("r") and not last_only:
                raise ConfigError(f"Scan {name!r}: step_result {r.name!r} already has an 'r' axis; use last_only")
        self.results, self.memory, self.feedback = results, memory, feedback
        self.iterate, self.iterate_0 = iterate, iterate_0
        self.subgraph = subgraph
        self.n_steps, self.unroll_scan, self.last_only = n_steps, bool(unroll_scan), bool(last_only)

    @staticmethod
    def _subgraph(outputs: list[Node], fed: list[Node]) -> list[Node]:
        """Nodes between ``fed`` and ``outputs`` (topological order, ``fed`` excluded)."""
        fed_names = {n.name for n in fed}
        depends: set[str] = set(fed_names)
        chosen = []
        for name, node in topological_order(outputs).items():
            if name in fed_names:
                continue
            if any(p.name in depends for p in node.parents):
                depends.add(name)
                chosen.append(node)
        return chosen

    def output_shape(self, index: int) -> TaggedShape:
        """Shape of result ``index`` after the scan."""
        shape = self.results[index].shape
        return shape if self.last_only else shape.addaxis(0, self.n_steps, "r")

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        return self.output_shape(0)

    def _compute_cost(self) -> float:
        return float(self.n_steps * sum(n.computational_cost for n in self.subgraph))

    def _step(self, outside: dict[str, Any], memory: list[Any], slices: list[Any], training: bool) -> tuple[list, list]:
        values = dict(outside)
        values.update({m.name: v for m, v in zip(self.memory, memory)})
        values.update({p.name: v for p, v in zip(self.iterate_0, slices)})
        for node in self.subgraph:
            values[node.name] = node._forward([values[p.name] for p in node.parents], training)
        new_memory = [align_tensor(values[o.name], o.shape, m.shape) for o, m in zip(self.feedback, self.memory)]
        return [values[r.name] for r in self.results], new_memory

    def _slice(self, seqs: list[Any], t: Any) -> list[Any]:
        out = []
        for node, ph, x in zip(self.iterate, self.iterate_0, seqs):
            axis = node.shape.canonical_tags.index("r")
            piece = tf.gather(x, [t] if ph.shape.hastag("r") else t, axis=axis)
            out.append(align_tensor(piece, _step_slice_shape(node.shape, ph.shape), ph.shape))
        return out

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        outside = {p.name: v for p, v in zip(self.parents, inputs)}
        memory = [outside[m.name] for m in self.memory]
        seqs = [outside[s.name] for s in self.iterate]
        if self.unroll_scan:
            steps = []
            for t in range(self.n_steps):
                results, memory = self._step(outside, memory, self._slice(seqs, t), training)
                steps.append(results)
            per_result = list(zip(*steps))
            if self.last_only:
                return tuple(r[-1] for r in per_result)
            return tuple(tf.stack(r, axis=0) for r in per_result)
        arrays = [tf.TensorArray(outside[r.name].dtype, size=self.n_steps) for r in self.results]

        def body(t: Any, memory: list[Any], arrays: list[Any]) -> tuple[Any, list[Any], list[Any]]:
            results, new_memory = self._step(outside, memory, self._slice(seqs, t), training)
            return t + 1, new_memory, [a.write(t, r) for a, r in zip(arrays, results)]

        _, _, arrays = tf.while_loop(lambda t, m, a: t < self.n_steps, body, (tf.constant(0), memory, arrays))
        if self.last_only:
            return tuple(a.read(self.n_steps - 1) for a in arrays)
        return tuple(a.stack() for a in arrays)

    def _repr_extras(self) -> str:
        return (f"n_steps={self.n_steps} results={[r.name for r in self.results]} "
                f"memory={[m.name for m in self.memory]}" + (" last_only" if self.last_only else ""))


class ScanOutput(Node):
    """Result ``index`` of a :class:`ScanN` node (built by :func:`Scan`).

    Args:
        parent: The ScanN node.
        index: Which step result.
        name: Node name.

    Shape rule: the step result's shape with a leading ``r`` axis of ``n_steps`` (unless
    ``last_only``).
    """

    def __init__(self, parent: Node, index: int = 0, name: str = "scan_out"):
        super().__init__(parent, name)
        if not isinstance(parent, ScanN):
            raise ConfigError(f"ScanOutput {name!r}: parent must be a ScanN node, got {type(parent).__name__}")
        if not 0 <= index < len(parent.results):
            raise ConfigError(f"ScanOutput {name!r}: index {index} out of range ({len(parent.results)} results)")
        self.index = int(index)

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        return self.parents[0].output_shape(self.index)

    def _compute_cost(self) -> float:
        return 0.0

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        return inputs[0][self.index]


def Scan(step_result: Node | Sequence[Node], in_memory: Node | Sequence[Node], out_memory: Any = None,  # noqa: N802
         in_iterate: Any = None, in_iterate_0: Any = None, n_steps: int | None = None, unroll_scan: bool = True,
         last_only: bool = False, name: str = "scan", print_repr: bool = True) -> Node | tuple[Node, ...]:
    """Repeats the sub-graph from ``in_memory``/``in_iterate_0`` to ``step_result`` (ELEKTRONN2 ``Scan``).

    Args:
        step_result: The node(s) whose values are collected each step.
        in_memory: Node(s) replaced at step ``t`` by the ``out_memory`` values of step ``t - 1``
            (their own values at step 0).
        out_memory: Node(s) fed back, one per ``in_memory`` (default: the step results).
        in_iterate: Sequence node(s) with an ``r`` axis.
        in_iterate_0: Per-step placeholder node(s), one per ``in_iterate``, replaced by slice ``t``
            (e.g. ``split(seq, 'r', index=1, strip_singleton_dims=True)[0]``).
        n_steps: Number of steps (default: the ``r`` length of ``in_iterate``).
        unroll_scan: Unroll the loop in the compiled graph (default; fastest for short sequences)
            or use ``tf.while_loop`` (compact graph for long sequences).
        last_only: Keep only the last step's results (no ``r`` axis added).
        name: Name of the ScanN node; outputs are named ``<name>_<step result name>``.
        print_repr: Log the nodes.

    Returns:
        One output node per step result (a single node if ``step_result`` is a single node).
    """
    single = isinstance(step_result, Node)
    scan = ScanN(_as_list(step_result, "step_result"), _as_list(in_memory, "in_memory"),
                 None if out_memory is None else _as_list(out_memory, "out_memory"), _as_list(in_iterate, "in_iterate"),
                 _as_list(in_iterate_0, "in_iterate_0"), n_steps, unroll_scan, last_only, name=name,
                 print_repr=print_repr)
    outputs = tuple(ScanOutput(scan, i, name=f"{scan.name}_{r.name}") for i, r in enumerate(scan.results))
    return outputs[0] if single else outputs


# ---------------------------------------------------------------------------------------------
# One-step rebuild
# ---------------------------------------------------------------------------------------------
def _registered(name: str, node: str, parents: list[str], config: dict[str, Any]) -> dict[str, Any]:
    """A descriptor of registered layer ``name`` (its ``local`` path tells rebuilds the new class)."""
    from ekn_core.plugins import registry

    cls = registry("layers").get(name)
    return {"kind": "layers", "type": name, "local": f"{cls.__module__}:{cls.__qualname__}", "name": node,
            "parents": parents, "config": config, "config_version": cls.config_version}


def _input_descriptor(node: Node) -> dict[str, Any]:
    shape = node.shape
    return _registered("input", node.name, [], {
        "shape": list(shape.shape), "tags": list(shape.tags), "strides": list(shape.strides),
        "fov": list(shape.fov), "dtype": getattr(node, "dtype", "float32")})


def one_step_descriptors(model: Any) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The descriptors of ``model`` with every Scan replaced by one step (see :func:`one_step_model`).

    Returns:
        ``(descriptors, feedback)`` where ``feedback`` maps each new memory Input's name to the
        node whose value must be fed to it at the next step.
    """
    descriptors = {k: copy.deepcopy(d) for k, d in model.descriptors.items()}
    feedback: dict[str, str] = {}
    scans = [n for n in model.nodes.values() if isinstance(n, ScanN)]
    if not scans:
        raise ConfigError(f"model {model.name!r} has no Scan to rebuild as one step")
    for scan in scans:
        for m, o in zip(scan.memory, scan.feedback):
            descriptors[m.name] = _input_descriptor(m)
            feedback[m.name] = o.name
        for ph in scan.iterate_0:
            descriptors[ph.name] = _input_descriptor(ph)
        del descriptors[scan.name]
        for child in scan.children.values():
            result = scan.results[child.index]
            target = child.shape if scan.last_only else child.shape.updateshape("r", 1)
            descriptors[child.name] = _registered("reshape", child.name, [result.name], {
                "parent": {"node": result.name}, "shape": {"tagged_shape": target.to_dict()}})
    return list(descriptors.values()), feedback


def one_step_model(model: Any, name: str | None = None) -> tuple[Any, dict[str, str]]:
    """Rebuilds a model containing Scans as a model computing a single step (weights copied).

    Every ``in_memory`` and ``in_iterate_0`` node becomes an ``Input`` of the same name, every
    Scan output becomes a reshape of its step result (``r`` of length 1 unless ``last_only``).
    Designated roles are kept where their nodes still exist.

    Returns:
        ``(new_model, feedback)``: ``feedback[input_name]`` names the node whose output is the
        next step's value of that memory input.
    """
    from ekn_core.persistence import model_resolver, restore

    descriptors, feedback = one_step_descriptors(model)
    names = {d["name"] for d in descriptors}
    designated = {}
    for role, value in model.designated.items():
        if isinstance(value, list):
            value = [v for v in value if v in names]
        elif value not in names:
            continue
        designated[role] = value
    new = restore(descriptors, designated, model.get_param_values(), model_resolver(model),
                  name=name or f"{model.name}-one-step")
    return new, feedback
