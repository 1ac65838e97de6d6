"""Model: the node graph of one network, its designated roles and the compiled training step.

A :class:`Model` collects every node built while it is ``model_manager.current``, together with
the JSON descriptor of each node's constructor call (the graph can be replayed from these
descriptors: that is how files are loaded and models are rebuilt with changes).

``designate_nodes`` names the roles (input, target, loss, prediction, ...). The training step
computes the gradients of the loss node with respect to its trainable parameters and lets an
optimiser from the ``ekn.optimisers`` registry apply them. It is compiled once per input
signature; the meta-parameters (``lr``, ``mom``, ``wd``, ``beta2``, ``dropout_rates``,
``mixing``) live in ``tf.Variable``\\ s, so changing them takes effect at the next step without a
retrace.

Example:
    >>> import numpy as np
    >>> from ekn_core import neuromancer as nm
    >>> model = nm.model_manager.newmodel("doc_model")
    >>> inp = nm.Input((None, 1, 8, 8), 'b,f,x,y', name='raw')
    >>> out = nm.Conv(inp, 3, (3, 3), (2, 2), activation_func='lin')
    >>> model.designate_nodes(input_node=inp, prediction_node=out)
    >>> model.predict(np.zeros((2, 1, 8, 8), 'float32')).shape
    (2, 3, 3, 3)
    >>> print(model.summary().splitlines()[0])
    Model 'doc_model': 2 nodes, 30 trainable parameters, cost 9.7e+02 multiply-adds
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ekn_core.errors import ConfigError, EknError
from ekn_core.node import GraphFunction, Node, Param, evaluate, is_shape_only, precision, topological_order
from ekn_core.training_data import TrainingData
from ekn_core.lazy import tf

log = logging.getLogger("ekn.model")

_ROLES = ("input_node", "target_node", "loss_node", "prediction_node", "prediction_ext", "error_node",
          "debug_outputs")

#: Initial loss scale of mixed_float16 training and the number of finite steps that doubles it.
LOSS_SCALE_INITIAL = 2.0 ** 15
LOSS_SCALE_PERIOD = 2000

#: The meta-parameters a model sets on its optimisers (``model.lr``, ``model.mom``, ...).
META_PARAMETERS = ("lr", "mom", "wd", "beta2")


def optimiser_params_problems(optimiser: str, params: Mapping[str, Any], owner: str = "optimiser_params"
                              ) -> list[str]:
    """What is wrong with a config's ``optimiser_params`` for the optimiser named ``optimiser``:
    names that are neither the model's meta-parameters (:data:`META_PARAMETERS`, taken for every
    optimiser: the model holds them, as ELEKTRONN2's shared values) nor the optimiser's, and
    invalid values (without building anything, so before a run starts).
    ``owner`` names the source of ``params`` in the messages.

    Raises:
        UnknownPluginError: No optimiser of that name.

    Example:
        >>> optimiser_params_problems("SGD", {"lrr": 0.1, "mom": 1.5, "beta2": 0.9})
        ["optimiser_params: ['lrr'] are not meta-parameters of SGD (did you mean 'lr'?); it takes lr, mom, wd, beta2 (without the others: {'mom': 1.5, 'beta2': 0.9})", 'optimiser_params: mom must be in [0, 1), got 1.5.']
    """
    import difflib

    from ekn_core.optimisation import optimiser_class

    cls = optimiser_class(optimiser)
    known = list(dict.fromkeys([*META_PARAMETERS, *cls.META]))
    unknown = [k for k in params if k not in known]
    problems = []
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        kept = {k: v for k, v in params.items() if k not in unknown}
        problems.append(f"{owner}: {unknown} are not meta-parameters of {optimiser}{hint}; it takes "
                        f"{', '.join(known)} (without the others: {kept})")
    for name, value in params.items():
        if name in known:
            try:
                cls.check_meta(name, value, owner=owner)
            except ConfigError as err:
                problems.append(str(err))
    return problems


def _has_one_output(node: Node) -> bool:
    """Nodes whose single output statistics and timings describe (not sources, not tuple nodes
    such as a Scan's internal node, whose results are read through its output nodes)."""
    return not node.is_source and not getattr(node, "multi_output", False)


def _is_one_number(node: Node) -> bool:
    """Whether ``node`` outputs one number per batch (as an error rate: ``Errors`` gives ``(1,)``)."""
    return all(size == 1 for size in node.shape.shape)


def optimiser_role(optimiser: Any) -> str:
    """``'train:<optimiser registry name>'``: the role of a training step in compile-choice keys."""
    return f"train:{getattr(optimiser, 'registry_name', None) or type(optimiser).__name__.lower()}"


class TrainStep(GraphFunction):
    """Compiled training step: loss, gradients and the optimiser update in one function.

    Its role in compile-choice keys is ``'train:<optimiser>'`` (e.g. ``'train:adam'``). Besides the
    loss and the debug outputs it computes, without a second call, whether every trainable
    parameter is finite after the update and the mean of the batch's target
    (:meth:`split_outputs` stores them in :attr:`params_finite` and :attr:`target_mean`).
    """

    def __init__(self, model: Model, optimiser: Any, params: list[Param]):
        super().__init__([model.loss_node, *model.debug_outputs], inputs=model.loss_node.input_nodes,
                         training=True, name=f"{model.name}:train", role=optimiser_role(optimiser))
        self.optimiser, self.params = optimiser, params
        self.target_name = model.target_node.name if model.target_node is not None else None
        #: Whether every trainable parameter was finite after the last step (a loss that clips
        #: probabilities can hide NaNs in the weights).
        self.params_finite = True
        #: Mean of the last step's target batch (ELEKTRONN2's "prevalence"; NaN without a target).
        self.target_mean = math.nan
        with tf.init_scope():
            #: Dynamic loss scale of ``mixed_float16`` training (and the finite steps since it changed).
            self.loss_scale = tf.Variable(LOSS_SCALE_INITIAL, trainable=False, dtype="float32")
            self.good_steps = tf.Variable(0, trainable=False, dtype="int64")

    def get_loss_scale(self) -> tuple[float, int]:
        """``(loss_scale, good_steps)``: the state of ``mixed_float16`` loss scaling (checkpoints hold it)."""
        return float(self.loss_scale.numpy()), int(self.good_steps.numpy())

    def set_loss_scale(self, loss_scale: float, good_steps: int) -> None:
        """Restores what :meth:`get_loss_scale` returned."""
        self.loss_scale.assign(float(loss_scale))
        self.good_steps.assign(int(good_steps))

    def body(self, *tensors: Any) -> list[Any]:
        self.traces += 1
        T = tf
        feed = {n.name: t for n, t in zip(self.inputs, tensors)}
        variables = [p.variable for p in self.params]
        scaled = precision() == "mixed_float16"
        with T.GradientTape() as tape:
            outs = evaluate(self.outputs, feed, True)
            loss = T.reduce_mean(T.cast(outs[0], "float32"))
            objective = loss * self.loss_scale if scaled else loss
        grads = tape.gradient(objective, variables, unconnected_gradients=T.UnconnectedGradients.ZERO)
        grads = self.reduce_gradients(grads)
        if scaled:
            self._apply_scaled([g / self.loss_scale for g in grads])
        else:
            self.optimiser.apply(grads, self.params)
        finite = T.reduce_all([T.reduce_all(T.math.is_finite(v)) for v in variables]) if variables else True
        target = feed.get(self.target_name)
        target_mean = T.reduce_mean(T.cast(target, "float32")) if target is not None else math.nan
        # float32 outputs: a distributed step averages them over the replicas
        return [loss, *outs[1:], T.cast(finite, "float32"), T.convert_to_tensor(target_mean, "float32")]

    def split_outputs(self, outs: Sequence[Any]) -> tuple[Any, list[Any]]:
        """``(loss, debug outputs)`` of a step's outputs; sets :attr:`params_finite` and :attr:`target_mean`."""
        self.params_finite, self.target_mean = float(outs[-2]) == 1.0, float(outs[-1])
        return outs[0], list(outs[1:-2])

    def _apply_scaled(self, grads: list[Any]) -> None:
        """float16 loss scaling: skip the update and halve the scale when a gradient is not finite;
        double the scale after :data:`LOSS_SCALE_PERIOD` finite steps."""
        T = tf
        finite = T.reduce_all([T.reduce_all(T.math.is_finite(g)) for g in grads])

        def update() -> Any:
            self.optimiser.apply(grads, self.params)
            grow = self.good_steps + 1 >= LOSS_SCALE_PERIOD
            self.loss_scale.assign(T.where(grow, self.loss_scale * 2.0, self.loss_scale))
            self.good_steps.assign(T.where(grow, T.constant(0, "int64"), self.good_steps + 1))
            return T.constant(True)

        def skip() -> Any:
            self.loss_scale.assign(T.maximum(self.loss_scale / 2.0, 1.0))
            self.good_steps.assign(0)
            return T.constant(False)

        T.cond(finite, update, skip)

    def reduce_gradients(self, grads: list[Any]) -> list[Any]:
        """Combines gradients across replicas before the update (identity here; see ``DistributedTrainStep``)."""
        return grads


def _train_step(model: Model, optimiser: Any, params: list[Param]) -> TrainStep:
    """The training step; data-parallel when built inside a tf.distribute strategy's scope."""
    T = tf
    if T.distribute.has_strategy():
        from ekn_core.trainer.distributed import DistributedTrainStep

        return DistributedTrainStep(model, optimiser, params, T.distribute.get_strategy())
    return TrainStep(model, optimiser, params)


class GradientFunction(GraphFunction):
    """Compiled gradients of the loss node with respect to the trainable parameters.

    The loss is computed in training mode (batch statistics, dropout), as in a training step, but
    the call changes nothing: the non-trainable parameters (e.g. the batch-normalisation
    statistics a training-mode pass accumulates) and TensorFlow's global random generator (which
    dropout draws from) are put back afterwards, so inspecting gradients (``gradstats``) leaves
    the training that follows as it would have been.
    """

    def __init__(self, model: Model, params: list[Param]):
        super().__init__([model.loss_node], inputs=model.loss_node.input_nodes, training=True,
                         name=f"{model.name}:gradients", role="gradients")
        self.params = params
        self.kept = [p.variable for p in model.nontrainable_params.values()]

    def body(self, *tensors: Any) -> list[Any]:
        self.traces += 1
        T = tf
        feed = {n.name: t for n, t in zip(self.inputs, tensors)}
        kept = [*self.kept, T.random.get_global_generator().state]
        saved = [v.read_value() for v in kept]
        with T.GradientTape() as tape:
            loss = T.reduce_mean(T.cast(evaluate(self.outputs, feed, True)[0], "float32"))
        grads = tape.gradient(loss, [p.variable for p in self.params],
                              unconnected_gradients=T.UnconnectedGradients.ZERO)
        for variable, value in zip(kept, saved):  # after the pass: stateful ops run in program order
            variable.assign(value)
        return grads


class Model:
    """A named graph of nodes with designated roles (ELEKTRONN2 ``Model``/``GraphManager``).

    Attributes:
        name: Model name (key in ``model_manager.models``).
        nodes: ``{name: Node}`` in creation order.
        descriptors: ``{name: descriptor}`` in creation order (JSON-serialisable).
        iterations: Training steps done.
        elapsed_time: Seconds spent in training steps.
        training_data: What the net was trained on (input grey scaling, affinity offsets of the
            targets; :class:`~ekn_core.training_data.TrainingData`), recorded by the data source and
            saved in model files; None when unknown.
    """

    def __init__(self, name: str):
        self.name = name
        self.nodes: dict[str, Node] = {}
        self.descriptors: dict[str, dict[str, Any]] = {}
        self.classes: dict[str, type] = {}
        self._designated: dict[str, Any] = {}
        self.input_node: Node | None = None
        self.target_node: Node | None = None
        self.loss_node: Node | None = None
        self.prediction_node: Node | None = None
        self.prediction_ext: list[Node] = []
        self.error_node: Node | None = None
        self.debug_outputs: list[Node] = []
        self.batch_size: int | None = None
        self.ndim: int | None = None
        self.iterations = 0
        self.elapsed_time = 0.0
        self.training_data: TrainingData | None = None
        self._meta: dict[str, float] = {}  # meta-parameters set on the model (see meta_overrides)
        self._optimiser_in_use: str | None = None  # registry name of the optimiser model.lr etc. report
        self.optimisers: dict[str, Any] = {}
        self._optimiser_keys: dict[str, str] = {}  # config name ('Adam') → registry name, resolved once
        self._functions: dict[str, GraphFunction] = {}

    # ----------------------------------------------------------------------------- registration
    def choose_name(self, name: str) -> str:
        """A unique node name: ``conv`` → ``conv1`` → ``conv2`` (trailing digits are incremented).

        Example:
            >>> m = Model('naming'); m.nodes = {'conv': None, 'conv1': None}
            >>> m.choose_name('conv'), m.choose_name('x')
            ('conv2', 'x')
        """
        if not isinstance(name, str) or not name:
            raise ConfigError(f"node names must be non-empty strings, got {name!r}")
        if "/" in name:
            raise ConfigError(f"node name {name!r} must not contain '/'")
        while name in self.nodes:
            match = re.match(r"^(.*?)(\d+)$", name)
            name = f"{match.group(1)}{int(match.group(2)) + 1}" if match else f"{name}1"
        return name

    def register_node(self, node: Node, descriptor: dict[str, Any]) -> None:
        """Adds a constructed node and its descriptor (called by the Node machinery)."""
        if node.name in self.nodes:
            raise EknError(f"model {self.name!r} already has a node named {node.name!r}")
        self.nodes[node.name] = node
        self.descriptors[node.name] = descriptor
        self.classes[node.name] = type(node)
        self._functions.clear()

    def __getitem__(self, key: str | int) -> Node:
        if isinstance(key, int):
            return list(self.nodes.values())[key]
        if key not in self.nodes:
            raise KeyError(f"model {self.name!r} has no node {key!r}; nodes: {', '.join(self.nodes)}")
        return self.nodes[key]

    def __contains__(self, key: str) -> bool:
        return key in self.nodes

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def node_count(self) -> int:
        """Number of nodes."""
        return len(self.nodes)

    @property
    def sources(self) -> list[Node]:
        """Nodes without parents."""
        return [n for n in self.nodes.values() if n.is_source]

    @property
    def sinks(self) -> list[Node]:
        """Nodes without children."""
        return [n for n in self.nodes.values() if not n.children]

    # ----------------------------------------------------------------------------- roles
    def _resolve(self, value: Node | str | None) -> Node | None:
        if value is None or isinstance(value, Node):
            return value
        return self[value]

    def designate_nodes(self, input_node: Node | str | None = "input", target_node: Node | str | None = None,
                        loss_node: Node | str | None = None, prediction_node: Node | str | None = None,
                        prediction_ext: Sequence[Node | str] | None = None, error_node: Node | str | None = None,
                        debug_outputs: Sequence[Node | str] | None = None) -> None:
        """Names the roles of nodes (nodes or node names; lists for ``prediction_ext``/``debug_outputs``).

        Without an ``error_node``, ELEKTRONN2's convention ``prediction_ext=[loss, errors, prediction]``
        designates its second node as the error node (the trainer's train/valid error rates) if it
        outputs one number (as ``Errors`` does) and is neither the loss nor the prediction node.

        Repairs the FOV of the prediction and target nodes when up-convolutions left it unknown
        (U-Nets): ``fov = in - strides * (out - 1)`` per spatial axis (the input context of the
        output block plus one, as dense prediction counts it: ``lead = fov - 1``) with the field
        starting at input voxel 0, i.e. the output block centred in the input.
        """
        if input_node == "input" and "input" not in self.nodes:
            input_node = None
        self.input_node = self._resolve(input_node)
        self.target_node = self._resolve(target_node)
        self.loss_node = self._resolve(loss_node)
        self.prediction_node = self._resolve(prediction_node)
        self.error_node = self._resolve(error_node)
        self.prediction_ext = [self._resolve(n) for n in (prediction_ext or [])]  # type: ignore[misc]
        self.debug_outputs = [self._resolve(n) for n in (debug_outputs or [])]  # type: ignore[misc]
        quiet = logging.DEBUG if is_shape_only() else None  # a shape-only build plans; the real one reports
        if self.error_node is None and len(self.prediction_ext) == 3 and \
                self.prediction_ext[1] not in (self.loss_node, self.prediction_node) and \
                _is_one_number(self.prediction_ext[1]):
            self.error_node = self.prediction_ext[1]
            log.log(quiet or logging.INFO, "error node: %r, the second of prediction_ext (ELEKTRONN2's [loss, "
                    "errors, prediction])", self.error_node.name)
        if self.input_node is None and self.prediction_node is not None:
            self.input_node = self.prediction_node.input_nodes[0]
        self._designated = {
            "input_node": self.input_node.name if self.input_node else None,
            "target_node": self.target_node.name if self.target_node else None,
            "loss_node": self.loss_node.name if self.loss_node else None,
            "prediction_node": self.prediction_node.name if self.prediction_node else None,
            "prediction_ext": [n.name for n in self.prediction_ext],
            "error_node": self.error_node.name if self.error_node else None,
            "debug_outputs": [n.name for n in self.debug_outputs],
        }
        pred = self.prediction_node
        if pred is not None:
            self.batch_size = pred.shape["b"] if pred.shape.hastag("b") else None
            self.ndim = pred.shape.ndim
            if pred.shape.ndim and any(f < 0 for f in pred.shape.fov):
                self._repair_fov()
            elif pred.shape.ndim and not pred.shape.fov_all_centered:
                log.log(quiet or logging.WARNING, "FOV %s of %r is not centered (not all odd)", pred.shape.fov,
                        pred.name)
        self._functions.clear()
        self.optimisers.clear()
        if pred is not None:
            log.log(quiet or logging.INFO, "prediction %r: shape %s, fov %s, offsets %s, strides %s", pred.name,
                    pred.shape.shape, pred.shape.fov, pred.shape.offsets, pred.shape.strides)

    @property
    def designated(self) -> dict[str, Any]:
        """Role → node name(s), as saved in model files."""
        return dict(self._designated)

    def _repair_fov(self) -> None:
        pred, inp = self.prediction_node, self.input_node
        if inp is None or inp.shape.ndim != pred.shape.ndim or any(st != int(st) for st in pred.shape.strides):
            log.warning("cannot repair the unknown FOV of %r: it needs a spatial input node and whole strides",
                        pred.name)
            return
        fov = tuple(int(s_in - st * (s_out - 1))
                    for s_in, s_out, st in zip(inp.shape.spatial_shape, pred.shape.spatial_shape, pred.shape.strides))
        if min(fov) < 1:
            log.warning("cannot repair the unknown FOV of %r: its output %s reaches beyond its input %s", pred.name,
                        pred.shape.spatial_shape, inp.shape.spatial_shape)
            return
        for node in (pred, self.target_node):
            if node is not None and node.shape.ndim == len(fov):
                node.shape = node.shape.updatefov(fov).updatefield_start((0,) * len(fov))
        log.info("repaired FOV of %r to %s (up-convolutions made it unknown)", pred.name, tuple(fov))

    def _need(self, role: str) -> Any:
        value = getattr(self, role)
        if value is None or value == []:
            raise ConfigError(f"model {self.name!r} has no {role.replace('_', ' ')}; call "
                              f"model.designate_nodes({role}=...) first")
        return value

    # ----------------------------------------------------------------------------- functions
    def _function(self, role: str, outputs: Sequence[Node], training: bool = False) -> GraphFunction:
        if role not in self._functions:
            self._functions[role] = GraphFunction(outputs, training=training, name=f"{self.name}:{role}", role=role)
        return self._functions[role]

    def predict(self, *inputs: Any) -> np.ndarray:
        """Output of the prediction node (inference mode)."""
        return self._function("predict", [self._need("prediction_node")])(*inputs)

    def predict_ext(self, *inputs: Any) -> list[np.ndarray]:
        """Outputs of the ``prediction_ext`` nodes (inputs: union of their sources, in order)."""
        out = self._function("predict_ext", self._need("prediction_ext"))(*inputs)
        return out if isinstance(out, list) else [out]

    def loss(self, *inputs: Any) -> float:
        """Loss value on a batch (inference mode: no dropout, BN running statistics)."""
        return float(np.mean(self._function("loss", [self._need("loss_node")])(*inputs)))

    def activations(self, *inputs: Any) -> dict[str, np.ndarray]:
        """Output of every non-source node the loss depends on (inference mode)."""
        nodes = [n for n in topological_order([self._need("loss_node")]).values() if _has_one_output(n)]
        fn = self._function("activations", nodes)
        fn.inputs = self.loss_node.input_nodes
        out = fn(*inputs)
        out = out if isinstance(out, list) else [out]
        return {n.name: o for n, o in zip(nodes, out)}

    def predict_dense(self, raw_img: np.ndarray, as_uint8: bool = False, pad_raw: bool = False,
                      tta: str | list[str] | None = None, affinity_offsets: Any = None,
                      grey_range: tuple[float, float] | None = None) -> np.ndarray:
        """Dense prediction with the prediction node (see :meth:`Node.predict_dense`)."""
        return self._need("prediction_node").predict_dense(raw_img, as_uint8=as_uint8, pad_raw=pad_raw, tta=tta,
                                                           affinity_offsets=affinity_offsets, grey_range=grey_range)

    # ----------------------------------------------------------------------------- training
    @property
    def trainable_params(self) -> dict[str, Param]:
        """Trainable parameters the loss depends on."""
        return self._need("loss_node").all_trainable_params

    @property
    def nontrainable_params(self) -> dict[str, Param]:
        """Non-trainable parameters the loss depends on."""
        return self._need("loss_node").all_nontrainable_params

    def get_optimiser(self, name: str = "SGD") -> Any:
        """The optimiser instance for ``name`` (``'SGD'``, ``'Adam'``, ...: registry names, any case).

        It is built on first use with the meta-parameters set on the model (:attr:`meta_overrides`);
        the others start at the optimiser's own defaults (docs/optimisers.md).

        Example:
            >>> from ekn_core import neuromancer as nm
            >>> model = nm.model_manager.newmodel("doc_get_optimiser")
            >>> out = nm.Perceptron(nm.Input((None, 4), 'b,f'), 1, activation_func='lin')
            >>> model.designate_nodes(loss_node=nm.AggregateLoss(out), prediction_node=out)
            >>> model.get_optimiser("Adam")
            Adam(lr=0.001, mom=0.9, beta2=0.999, wd=0)
            >>> model.wd = 1e-4
            >>> model.get_optimiser("SGD"), model.get_optimiser("Adam").wd
            (SGD(lr=0.01, mom=0.9, wd=0.0001), 0.0001)
        """
        key = self._optimiser_keys.get(name)
        if key in self.optimisers:  # the per-step path: no registry look-up
            return self.optimisers[key]
        from ekn_core.optimisation import optimiser_class

        cls = optimiser_class(name)
        key = self._optimiser_keys[name] = cls.registry_name
        if key not in self.optimisers:
            params = list(self.trainable_params.values())
            opt = cls(**{k: v for k, v in self._meta.items() if k in cls.META})
            opt.build(params)
            self.optimisers[key] = opt
            self._functions[optimiser_role(opt)] = _train_step(self, opt, params)
        if self._optimiser_in_use not in self.optimisers:
            self._optimiser_in_use = key
        return self.optimisers[key]

    def train_function(self, optimiser: str = "SGD") -> TrainStep:
        """The compiled training step of optimiser ``optimiser`` (built with it on first use).

        Getting it does not change the optimiser whose meta-parameters ``model.lr`` etc. report:
        running a training step does (:meth:`trainingstep`)."""
        return self._functions[optimiser_role(self.get_optimiser(optimiser))]  # type: ignore[return-value]

    def trainingstep(self, *batch: Any, optimiser: str = "SGD", update_loss: bool = False) -> tuple[float, float, Any]:
        """One optimisation step on a batch (arrays in ``loss_node.input_nodes`` order).

        Returns:
            ``(loss, seconds, debug_outputs or None)``.
        """
        step = self.train_function(optimiser)
        return self._run_training_step(step, step.check_arrays(batch))

    def trainingstep_prepared(self, canonical: Sequence[Any], optimiser: str = "SGD") -> tuple[float, float, Any]:
        """One optimisation step on a batch that was validated already.

        ``canonical`` is what ``model.train_function(optimiser).check_arrays(batch)`` returned: the
        arrays in canonical layout, as numpy arrays or as tensors already on the training device
        (from :class:`ekn_core.trainer.prefetch.DevicePrefetcher`). They are not checked again and
        tensors are not copied back to the host. Bookkeeping and result are those of
        :meth:`trainingstep`.

        Example:
            >>> import numpy as np
            >>> from ekn_core import neuromancer as nm
            >>> model = nm.model_manager.newmodel("doc_prepared")
            >>> inp = nm.Input((None, 4), 'b,f', name='x')
            >>> probs = nm.Softmax(nm.Perceptron(inp, 3, activation_func='lin'))
            >>> target = nm.Input_like(probs, override_f=1, dtype='int16', name='target')
            >>> loss = nm.AggregateLoss(nm.MultinoulliNLL(probs, target, target_is_sparse=True))
            >>> model.designate_nodes(input_node=inp, target_node=target, loss_node=loss, prediction_node=probs)
            >>> step = model.train_function("SGD")
            >>> canonical = step.check_arrays([np.ones((2, 4), "float32"), np.zeros((2, 1), "int16")])
            >>> loss_value, seconds, debug = model.trainingstep_prepared(canonical, optimiser="SGD")
            >>> model.iterations, isinstance(loss_value, float)
            (1, True)
        """
        return self._run_training_step(self.train_function(optimiser), canonical)

    def _run_training_step(self, step: TrainStep, canonical: Sequence[Any]) -> tuple[float, float, Any]:
        """Runs ``step`` on canonical arrays or tensors and does the per-step bookkeeping
        (``iterations``, ``elapsed_time``, the optimiser in use, debug outputs in their declared layouts)."""
        t0 = time.perf_counter()
        loss, outs = step.split_outputs(step.run_canonical(canonical))
        elapsed = time.perf_counter() - t0
        self._optimiser_in_use = type(step.optimiser).registry_name
        self.iterations += 1
        self.elapsed_time += elapsed
        debug = [n.shape.from_canonical(o) for n, o in zip(self.debug_outputs, outs)] or None
        return float(loss), elapsed, debug

    def gradients(self, *batch: Any) -> dict[str, np.ndarray]:
        """``{param key: gradient}`` of the loss on a batch, in training mode as in a training step
        (batch statistics, dropout), without any update: not of the weights, nor of the
        batch-normalisation statistics or the random generator (see :class:`GradientFunction`)."""
        params = list(self.trainable_params.values())
        if "gradients" not in self._functions:
            self._functions["gradients"] = GradientFunction(self, params)
        fn = self._functions["gradients"]
        grads = fn.run_canonical(fn.check_arrays(batch))
        return {p.key: g for p, g in zip(params, grads)}

    # ----------------------------------------------------------------------------- meta-parameters
    # ``model.lr`` (``mom``, ``wd``, ``beta2``) reads the value set on the model, else that of the
    # optimiser in use (the one of the last training step, else the first built), else None (no
    # optimiser yet, or it has no such meta-parameter). Setting it validates the value, sets it on
    # every optimiser of the model that has the meta-parameter (no retrace) and on those built
    # later; None removes the model's value and resets the optimisers to their own defaults.
    @property
    def meta_overrides(self) -> dict[str, float]:
        """The meta-parameters set on the model (``model.lr = ...``, the trainer's
        ``optimiser_params``, a model file); every other one is the optimiser's own default.

        Example:
            >>> m = Model("doc_meta"); m.lr = 0.05
            >>> m.meta_overrides, m.mom
            ({'lr': 0.05}, None)
        """
        return dict(self._meta)

    def _get_meta(self, key: str) -> float | None:
        if key in self._meta:
            return self._meta[key]
        opt = self.optimisers.get(self._optimiser_in_use)  # type: ignore[arg-type]
        return opt.get_meta(key) if opt is not None and key in opt.meta else None

    def _set_meta(self, key: str, value: float | None) -> None:
        from ekn_core.optimisation import Optimiser

        owners = [opt for opt in self.optimisers.values() if key in opt.meta]
        if value is None:
            self._meta.pop(key, None)
            for opt in owners:
                opt.set_meta(**{key: type(opt).META[key]})
            return
        value = Optimiser.check_meta(key, value, owner=f"model {self.name!r}")
        for opt in owners:  # every check before any change
            type(opt).check_meta(key, value)
        self._meta[key] = value
        for opt in owners:
            opt.set_meta(**{key: value})

    lr = property(lambda self: self._get_meta("lr"), lambda self, v: self._set_meta("lr", v),
                  doc="Learning rate of the model's optimisers (no retrace when changed).")
    mom = property(lambda self: self._get_meta("mom"), lambda self, v: self._set_meta("mom", v),
                   doc="Momentum (Adam: beta1; AdaDelta, RMSProp: the decay rate), in [0, 1).")
    wd = property(lambda self: self._get_meta("wd"), lambda self, v: self._set_meta("wd", v),
                  doc="Weight decay (times each parameter's weight_decay multiplier).")
    beta2 = property(lambda self: self._get_meta("beta2"), lambda self, v: self._set_meta("beta2", v),
                     doc="Adam's second-moment decay, in [0, 1).")

    def set_opt_meta_params(self, opt_name: str, value_dict: dict[str, float]) -> Any:
        """Sets meta-parameters for optimiser ``opt_name`` (ELEKTRONN2's method; the trainer's
        ``optimiser`` and ``optimiser_params``): ``lr``, ``mom``, ``wd`` and ``beta2`` as
        ``model.lr = ...`` does (on every optimiser of the model, as ELEKTRONN2's were shared; an
        optimiser without one, e.g. SGD without ``beta2``, leaves it to the others), any other
        meta-parameter of that optimiser on it.

        Returns:
            The optimiser (built on first use, see :meth:`get_optimiser`).

        Raises:
            ConfigError: A name that is neither the model's meta-parameter nor the optimiser's, or
                an invalid value; nothing is changed then.
            UnknownPluginError: No optimiser is registered as ``opt_name``.

        Example:
            >>> from ekn_core import neuromancer as nm
            >>> model = nm.model_manager.newmodel("doc_set_opt_meta_params")
            >>> out = nm.Perceptron(nm.Input((None, 4), 'b,f'), 1, activation_func='lin')
            >>> model.designate_nodes(loss_node=nm.AggregateLoss(out), prediction_node=out)
            >>> model.set_opt_meta_params("Adam", {"lr": 1e-3, "beta2": 0.99}), model.lr
            (Adam(lr=0.001, mom=0.9, beta2=0.99, wd=0), 0.001)
        """
        params = dict(value_dict)
        problems = optimiser_params_problems(opt_name, params, owner=f"model {self.name!r}")
        if problems:
            raise ConfigError("; ".join(problems))
        for key in META_PARAMETERS:
            if key in params:
                setattr(self, key, params.pop(key))
        optimiser = self.get_optimiser(opt_name)
        if params:
            optimiser.set_meta(**params)
        return optimiser

    def _params_named(self, pname: str) -> list[Param]:
        return [n.params[pname] for n in self.nodes.values() if pname in n.params]

    @property
    def dropout_rates(self) -> list[float]:
        """Dropout rate of every node that has one (settable with a scalar or one value per node)."""
        return [float(p.get_value()) for p in self._params_named("dropout_rate")]

    @dropout_rates.setter
    def dropout_rates(self, value: float | Sequence[float]) -> None:
        params = self._params_named("dropout_rate")
        values = [value] * len(params) if np.isscalar(value) else list(value)
        if len(values) != len(params):
            raise ConfigError(f"dropout_rates needs {len(params)} values (one per node with dropout), got {len(values)}")
        for p, v in zip(params, values):
            if not 0 <= float(v) < 1:
                raise ConfigError(f"dropout rates must be in [0, 1), got {v}")
            p.set_value(np.asarray(v, p.dtype).reshape(p.shape), force=True)

    def _mixing_param(self) -> Param:
        loss = self.loss_node
        if loss is not None and "mixing_weights" in loss.params:
            return loss.params["mixing_weights"]
        found = self._params_named("mixing_weights")
        if not found:
            raise ConfigError(f"model {self.name!r} has no node with mixing weights (AggregateLoss)")
        return found[0]

    @property
    def mixing(self) -> np.ndarray:
        """Mixing weights of the AggregateLoss (settable; no retrace)."""
        return self._mixing_param().get_value()

    @mixing.setter
    def mixing(self, value: Sequence[float]) -> None:
        p = self._mixing_param()
        p.set_value(np.asarray(value, p.dtype).reshape(p.shape), force=True)

    @property
    def batch_normalisation_active(self) -> bool:
        """Whether any node uses batch statistics in training (batch_normalisation='train')."""
        return any(getattr(n, "batch_normalisation", False) == "train" for n in self.nodes.values())

    # ----------------------------------------------------------------------------- parameters
    @property
    def all_params(self) -> dict[str, Param]:
        """Every parameter of the model, keyed ``'<node>/<param>'``."""
        params: dict[str, Param] = {}
        for node in self.nodes.values():
            for p in node.params.values():
                params[p.key] = p
        return params

    def get_param_values(self, skip_const: bool = False) -> dict[str, dict[str, np.ndarray]]:
        """``{node: {param: array}}`` for every node with parameters."""
        return {n.name: n.get_param_values(skip_const) for n in self.nodes.values() if n.params}

    def set_param_values(self, value_dict: dict[str, dict[str, Any]] | str, skip_const: bool = False) -> None:
        """Sets parameters from ``{node: {param: array}}`` or from a model file's weights."""
        if isinstance(value_dict, str):
            from ekn_core.persistence import read_model_file

            value_dict = read_model_file(value_dict).weights
        unknown = set(value_dict) - set(self.nodes)
        if unknown:
            raise EknError(f"model {self.name!r} has no node(s) {sorted(unknown)}")
        for name, values in value_dict.items():
            self.nodes[name].set_param_values(values, skip_const=skip_const)

    # ----------------------------------------------------------------------------- statistics
    @staticmethod
    def _stats(arrays: dict[str, np.ndarray], title: str) -> dict[str, dict[str, float]]:
        stats = {}
        lines = [title]
        for key, a in arrays.items():
            a = np.asarray(a, dtype="float64")
            s = {"mean": float(a.mean()), "std": float(a.std()), "median_abs": float(np.median(np.abs(a)))}
            stats[key] = s
            lines.append(f"  {key:<28} {str(a.shape):<22} mean={s['mean']:+.4g} std={s['std']:.4g} "
                         f"median|x|={s['median_abs']:.4g}")
        log.info("%s", "\n".join(lines))
        return stats

    def paramstats(self) -> dict[str, dict[str, float]]:
        """Mean, std and median absolute value of every parameter (logged and returned)."""
        return self._stats({k: p.get_value() for k, p in self.all_params.items()}, "parameter statistics")

    def gradstats(self, *batch: Any) -> dict[str, dict[str, float]]:
        """Statistics of the gradients on a batch."""
        return self._stats(self.gradients(*batch), "gradient statistics")

    def actstats(self, *batch: Any) -> dict[str, dict[str, float]]:
        """Statistics of every activation on a batch."""
        return self._stats(self.activations(*batch), "activation statistics")

    def test_run_prediction(self) -> tuple[np.ndarray, float]:
        """Runs the prediction node on random input (see :meth:`Node.test_run`)."""
        return self._need("prediction_node").test_run()

    def measure_exectimes(self, n_samples: int = 5, n_warmup: int = 4, print_info: bool = True) -> dict[str, float]:
        """Local run time of every non-source node the prediction depends on (seconds)."""
        nodes = [n for n in self._need("prediction_node").all_parents.values() if _has_one_output(n)]
        times = {n.name: n.measure_exectime(n_samples, n_warmup, print_info=False) for n in nodes}
        if print_info:
            total = sum(times.values()) or 1.0
            log.info("execution times:\n%s", "\n".join(f"  {k:<20} {v * 1e3:9.3f} ms {100 * v / total:5.1f}%"
                                                       for k, v in times.items()))
        return times

    # ----------------------------------------------------------------------------- text and pictures
    def summary(self) -> str:
        """Table of nodes: type, output shape, fov, strides, #trainable params, cost."""
        total_params = sum(n.param_count for n in self.nodes.values())
        total_cost = sum(n.computational_cost for n in self.nodes.values())
        lines = [f"Model {self.name!r}: {len(self.nodes)} nodes, {total_params:,} trainable parameters, "
                 f"cost {total_cost:.2g} multiply-adds",
                 f"{'node':<18} {'type':<18} {'shape':<34} {'fov':<16} {'strides':<14} {'params':>10} {'cost':>10}"]
        for node in self.nodes.values():
            shape = ",".join(f"{'?' if s is None else s}{t}" for s, t in zip(node.shape.shape, node.shape.tags))
            fov = "x".join(map(str, node.shape.fov)) if node.shape.ndim else "-"
            strides = "x".join(map(str, node.shape.strides)) if node.shape.ndim else "-"
            lines.append(f"{node.name:<18} {type(node).__name__:<18} {shape:<34} {fov:<16} {strides:<14} "
                         f"{node.param_count:>10,} {node.computational_cost:>10.3g}")
        pred = self.prediction_node
        if pred is not None and pred.shape.ndim:
            lines.append(f"cost per predicted voxel: {pred.all_computational_cost / max(pred.shape.spatial_size, 1):.4g}")
        return "\n".join(lines)

    def to_dot(self) -> str:
        """The node graph in graphviz DOT syntax."""
        lines = [f'digraph "{self.name}" {{', "  node [shape=box, fontname=Helvetica, fontsize=10];"]
        for node in self.nodes.values():
            shape = ",".join(f"{'?' if s is None else s}{t}" for s, t in zip(node.shape.shape, node.shape.tags))
            label = f"{node.name}\\n{type(node).__name__}\\n{shape}"
            if node.param_count:
                label += f"\\n{node.param_count:,} params"
            lines.append(f'  "{node.name}" [label="{label}"];')
            for parent in node.parents:
                lines.append(f'  "{parent.name}" -> "{node.name}";')
        lines.append("}")
        return "\n".join(lines)

    def plot(self, path: str) -> str:
        """Draws the graph to ``path`` (``.png``/``.svg``/``.pdf``; ``.dot`` writes DOT text).

        Returns the written path. Without graphviz's ``dot`` program the DOT text is written next
        to ``path`` (``.dot``) and :class:`EknError` says how to install graphviz.
        """
        import os
        import shutil

        fmt = os.path.splitext(path)[1].lstrip(".").lower() or "png"
        dot_text = self.to_dot()
        if fmt == "dot":
            with open(path, "w") as f:
                f.write(dot_text)
            return path
        if shutil.which("dot") is None:
            dot_path = os.path.splitext(path)[0] + ".dot"
            with open(dot_path, "w") as f:
                f.write(dot_text)
            raise EknError(f"graphviz's 'dot' program is not installed, so {path} was not drawn; the graph was "
                           f"written to {dot_path}. Install graphviz (e.g. `apt-get install graphviz` or "
                           f"`conda install graphviz`) or render the .dot file elsewhere.")
        import pydot

        (graph,) = pydot.graph_from_dot_data(dot_text)
        graph.write(path, format=fmt)
        return path

    def save(self, path: str) -> str:
        """Writes the model (graph, roles, weights) to one HDF5 file atomically; returns the path."""
        from ekn_core.persistence import save_model

        return save_model(self, path)

    def __repr__(self) -> str:
        return f"<Model {self.name!r}: {len(self.nodes)} nodes>"


__all__ = ["Model", "TrainStep", "GradientFunction", "META_PARAMETERS"]
