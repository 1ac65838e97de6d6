"""Data-parallel training on ``tf.distribute``: several local GPUs or several hosts.

Set ``distribute`` in the experiment config (or ``--set distribute=...``):

* ``'mirrored'``: :class:`tf.distribute.MirroredStrategy` over every visible GPU of this host
  (the CPU when there is none);
* ``'multiworker'``: :class:`tf.distribute.MultiWorkerMirroredStrategy`; every host (worker)
  runs ``ekn train`` with the same config and its own ``TF_CONFIG``, e.g. on worker 1 of 2::

      TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 1}}'

The trainer creates the strategy before any TensorFlow op runs and builds the model and its
optimiser inside ``strategy.scope()``, so every parameter, optimiser slot and meta-parameter is
a mirrored variable. :class:`DistributedTrainStep` then gives each replica an equal slice of the
global batch (``batch_size`` examples, drawn identically on every worker from the seeded data
stream), averages the gradients over all replicas (all-reduce) and applies the same update on
every replica. With a loss that is a mean over the batch, a step on ``n`` replicas equals a step
on one device with the whole batch (up to float rounding). Batch normalisation in training mode
uses per-replica statistics.

Example:
    >>> make_strategy(None) is None
    True
    >>> make_strategy("ring")
    Traceback (most recent call last):
    ...
    ekn_core.errors.ConfigError: distribute must be None, 'mirrored' or 'multiworker', got 'ring'
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import numpy as np

from ekn_core.errors import ConfigError
from ekn_core.model import TrainStep
from ekn_core.node import compile_function
from ekn_core.lazy import tf

log = logging.getLogger("ekn.trainer")

STRATEGIES = ("mirrored", "multiworker")


def check_tf_config(text: str | None) -> dict[str, Any]:
    """Parses and checks a ``TF_CONFIG`` value for multi-worker training.

    Example:
        >>> cfg = check_tf_config('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}')
        >>> cfg["task"]["index"]
        1
        >>> check_tf_config('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}')
        Traceback (most recent call last):
        ...
        ekn_core.errors.ConfigError: TF_CONFIG: task index 3 is not in the 1 worker(s) of the cluster
    """
    example = ('e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
               '"task": {"type": "worker", "index": 0}}\'')
    if not text:
        raise ConfigError(f"distribute='multiworker' needs the TF_CONFIG environment variable on every worker, {example}")
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({err}); {example}") from None
    cluster = cfg.get("cluster") if isinstance(cfg, dict) else None
    task = cfg.get("task") if isinstance(cfg, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ConfigError(f"TF_CONFIG needs 'cluster' and 'task'; {example}")
    kind, index = task.get("type"), task.get("index")
    members = cluster.get(kind)
    if not isinstance(members, list) or not members:
        raise ConfigError(f"TF_CONFIG: task type {kind!r} has no address list in the cluster {sorted(cluster)}")
    if not isinstance(index, int) or not 0 <= index < len(members):
        raise ConfigError(f"TF_CONFIG: task index {index} is not in the {len(members)} {kind}(s) of the cluster")
    return cfg


def make_strategy(kind: str | None) -> Any:
    """The ``tf.distribute`` strategy for a config's ``distribute`` value (None: no strategy).

    Must run before any TensorFlow op (multi-worker collectives are configured at start-up).

    Raises:
        ConfigError: Unknown kind, or a missing/invalid ``TF_CONFIG`` for ``'multiworker'``.
    """
    if kind is None:
        return None
    if kind not in STRATEGIES:
        raise ConfigError(f"distribute must be None, 'mirrored' or 'multiworker', got {kind!r}")
    T = tf
    if kind == "mirrored":
        strategy = T.distribute.MirroredStrategy()
    else:
        cfg = check_tf_config(os.environ.get("TF_CONFIG"))
        strategy = T.distribute.MultiWorkerMirroredStrategy()
        log.info("multi-worker training: %s %d of %d", cfg["task"]["type"], cfg["task"]["index"],
                 len(cfg["cluster"][cfg["task"]["type"]]))
    log.info("distributed training (%s): %d replica(s) in sync", kind, strategy.num_replicas_in_sync)
    return strategy


class DistributedTrainStep(TrainStep):
    """The training step run on every replica of a strategy, gradients averaged by all-reduce.

    Args:
        model: The model (built inside ``strategy.scope()``).
        optimiser: Its optimiser (built inside the scope too).
        params: The trainable parameters.
        strategy: The ``tf.distribute`` strategy.
    """

    def __init__(self, model: Any, optimiser: Any, params: list[Any], strategy: Any):
        super().__init__(model, optimiser, params)
        self.strategy = strategy
        self.role = f"{self.role}:{type(strategy).__name__}x{strategy.num_replicas_in_sync}"
        self.batch_axes = [_batch_axis(n) for n in self.inputs]
        self.output_axes = [_batch_axis(n) for n in self.outputs[1:]]

    def reduce_gradients(self, grads: list[Any]) -> list[Any]:
        """Mean of every gradient over all replicas (runs in replica context)."""
        T = tf
        return T.distribute.get_replica_context().all_reduce(T.distribute.ReduceOp.MEAN, grads)

    def _step(self, *per_replica: Any) -> list[Any]:
        T = tf
        outs = self.strategy.run(self.body, args=per_replica)
        mean = T.distribute.ReduceOp.MEAN
        loss = self.strategy.reduce(mean, outs[0], axis=None)
        rest = [self.strategy.gather(o, axis=axis or 0) for o, axis in zip(outs[1:-2], self.output_axes)]
        # 1.0 when every replica's parameters are finite; the target mean of equal shards is the batch's
        return [loss, *rest, *[self.strategy.reduce(mean, o, axis=None) for o in outs[-2:]]]

    def _compile(self, mode: str) -> Any:
        """The compiled distributed step; the mode comes from the same resolution as every
        function's (:func:`ekn_core.node.resolve_compile_mode` with this step's key), and XLA
        falls back to plain ``tf.function`` (collectives across replicas)."""
        if mode == "xla":
            log.info("distributed training step: tf.function without XLA (collectives across replicas)")
        return compile_function(self._step, "plain" if mode == "xla" else mode)

    def shards(self, arrays: list[np.ndarray]) -> Any:
        """The per-replica slices of a global batch (inputs without a batch axis are copied)."""
        n = self.strategy.num_replicas_in_sync
        for array, axis, node in zip(arrays, self.batch_axes, self.inputs):
            if axis is not None and array.shape[axis] % n:
                raise ConfigError(f"the batch of {node.name!r} has {array.shape[axis]} examples, which the "
                                  f"{n} replicas cannot share equally: make batch_size a multiple of {n}")

        def value_fn(ctx: Any) -> tuple[Any, ...]:
            i = ctx.replica_id_in_sync_group
            return tuple(tf.constant(a if axis is None else np.split(a, n, axis=axis)[i])
                         for a, axis in zip(arrays, self.batch_axes))

        return self.strategy.experimental_distribute_values_from_function(value_fn)

    def run_canonical(self, arrays: list[np.ndarray], mode: str | None = None) -> list[np.ndarray]:
        """Runs one distributed step on a global batch of canonical arrays (in ``mode``, default resolved)."""
        fn = self._function(arrays, mode)
        values = self.shards(list(arrays))
        t0 = time.perf_counter()
        outs = [np.asarray(o) for o in fn(*values)]
        self.last_exec_time = time.perf_counter() - t0
        return outs


def _batch_axis(node: Any) -> int | None:
    tags = node.shape.canonical_tags
    return tags.index("b") if "b" in tags else None


__all__ = ["make_strategy", "check_tf_config", "DistributedTrainStep", "STRATEGIES"]
