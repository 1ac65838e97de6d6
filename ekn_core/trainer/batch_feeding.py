"""The trainer's batches: the data source built from the config, batches seeded by
``(seed, step, stream)``, background data workers, and prefetching to the device.

Every batch is drawn with its own generator, ``numpy SeedSequence([seed, step, *stream])``
(:data:`BATCH_STREAMS`), so the batch of step *n* does not depend on what ran before and a resumed
run draws the same batches. Background workers (``background_processes``) draw the training
batches of the coming steps in other processes with the same seeds; with prefetching
(``prefetch_to_device``) the next step's batch is drawn and validated here and copied to the device
(:class:`~ekn_core.trainer.prefetch.DevicePrefetcher`) during the current step.

:class:`BatchFeeding` is mixed into :class:`~ekn_core.trainer.loop.Trainer`: it reads ``config``,
``model``, ``step``, ``batch_size``, ``prefetch_device``, ``stop_requested`` and
``pause_requested``, and sets ``data``. When it builds the source it refuses the config's
``class_weights`` for a loss without a class-weights input (:func:`check_class_weights`) and logs
what batches the source draws with ``data_batch_args``: its optional ``describe_batches(batch_args)``,
which may refuse them, else its ``repr``.

Example:
    >>> sorted(BATCH_STREAMS)
    ['model_file', 'monitor_train', 'monitor_valid', 'train']
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ekn_core.errors import ConfigError
from ekn_core.trainer.data_source import NodeInfo, data_source_keywords, make_data_source, resolve_data_class

log = logging.getLogger("ekn.trainer")

#: Seed entropy of each batch stream after ``(seed, step)``; training batches use ``[seed, step]``,
#: the scheme of the background workers (``ekn.data`` entry ``background_batches``). ``model_file``:
#: the training data that ``ekn_before_model_file`` hooks draw (batch-normalisation statistics).
BATCH_STREAMS: dict[str, tuple[int, ...]] = {"train": (), "monitor_train": (1,), "monitor_valid": (2,),
                                             "model_file": (3,)}


def parameter_names(method: Any) -> frozenset[str]:
    """Names of ``method``'s parameters (``'**'`` when it takes arbitrary keywords); empty when the
    signature cannot be read.

    Example:
        >>> sorted(parameter_names(lambda size, rng=None, **kwargs: None))
        ['**', 'kwargs', 'rng', 'size']
    """
    try:
        params = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return frozenset()
    names = set(params)
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        names.add("**")
    return frozenset(names)


def class_weights_positions(inputs: Sequence[Any], n_arrays: int) -> list[int]:
    """Where the config's ``class_weights`` go among the ``n_arrays`` arrays of a batch, for a loss
    whose inputs are ``inputs`` (``loss_node.input_nodes``, the order the training step takes): one
    copy in the place of each input without a batch axis (``'b'``; e.g. ``MultinoulliNLL``'s class
    weights node, which comes before its lazy-label masks; every class-weights input of an
    ``AggregateLoss``), a place after the arrays going last (ELEKTRONN2 appended them). The places
    are those in the batch with the weights inserted, ascending.

    Example:
        >>> class Input:
        ...     def __init__(self, tags):
        ...         self.shape = type("Shape", (), {"tags": tuple(tags.split(","))})()
        >>> loss_inputs = [Input("b,f,z,y,x"), Input("b,f,z,y,x"), Input("f"), Input("b,f"), Input("b,f")]
        >>> class_weights_positions(loss_inputs, 4), class_weights_positions(loss_inputs[:3], 2)
        ([2], [2])
        >>> class_weights_positions([Input("b,f"), Input("b,f"), Input("f"), Input("f")], 2)
        [2, 3]
    """
    places: list[int] = []
    for i in class_weight_inputs(inputs):
        places.append(min(i, n_arrays + len(places)))
    return places


def class_weight_inputs(inputs: Sequence[Any]) -> list[int]:
    """The indices of the class-weights inputs among a loss's ``inputs``: those without a batch
    axis (``'b'``)."""
    return [i for i, node in enumerate(inputs) if "b" not in node.shape.tags]


def check_class_weights(class_weights: Sequence[float] | None, loss: Any) -> None:
    """Refuses the config's ``class_weights`` for a loss node ``loss`` that cannot take them, when
    the run is set up rather than as a wrong number of arrays at the first step: the loss needs a
    class-weights input (an input without a batch axis, see :func:`class_weights_positions`) of one
    weight per class. A loss with several such inputs (an ``AggregateLoss`` of weighted losses) gets
    the same weights in each, so each must take that many.

    Raises:
        ConfigError: Saying how to give the loss its class weights.

    Example:
        >>> class Input:
        ...     def __init__(self, name, shape, tags):
        ...         self.name, self.shape = name, type("Shape", (), {"shape": shape, "tags": tuple(tags.split(","))})()
        >>> class Loss:
        ...     name = "loss"
        ...     def __init__(self, *inputs):
        ...         self.input_nodes = list(inputs)
        >>> raw, target = Input("raw", (None, 4), "b,f"), Input("target", (None, 1), "b,f")
        >>> check_class_weights([0.3, 0.7], Loss(raw, target, Input("cw", (2,), "f")))
        >>> check_class_weights([0.3, 0.7], Loss(raw, target))
        Traceback (most recent call last):
        ...
        ekn_core.errors.ConfigError: class_weights = [0.3, 0.7] (a config setting) feeds the loss's ...
    """
    if class_weights is None:
        return
    weights = [float(w) for w in np.ravel(class_weights)]
    inputs = loss.input_nodes
    unbatched = [inputs[i] for i in class_weight_inputs(inputs)]
    if not unbatched:
        names = ", ".join(repr(node.name) for node in inputs)
        raise ConfigError(
            f"class_weights = {weights} (a config setting) feeds the loss's class-weights input, but loss "
            f"{loss.name!r} has none (it takes {names}; a class-weights input has no batch axis). Either give the "
            f"loss node the weights and delete the setting: nm.MultinoulliNLL(probs, target, target_is_sparse=True, "
            f"class_weights={weights}); or give the loss a class-weights input, which the setting then feeds: "
            f"weights = nm.Input(({len(weights)},), 'f', name='class_weights') and nm.MultinoulliNLL(probs, target, "
            "target_is_sparse=True, class_weights=weights)")
    for node in unbatched:
        if tuple(node.shape.shape) not in ((len(weights),), (None,)):
            several = (f" (the setting feeds each of its class-weights inputs, "
                       f"{', '.join(repr(n.name) for n in unbatched)}: a loss of another number of classes takes "
                       "its own weights, e.g. nm.MultinoulliNLL(probs, target, target_is_sparse=True, "
                       "class_weights=[...]))") if len(unbatched) > 1 else ""
            raise ConfigError(f"class_weights = {weights} (a config setting) has {len(weights)} entries, but the "
                              f"loss's class-weights input {node.name!r} takes shape {tuple(node.shape.shape)}: give "
                              f"one weight per class{several}")


class BatchFeeding:
    """Batches for the training step, the monitor batches and the shell (mixed into the trainer)."""

    def _build_data(self, unbuilt: Callable[[Exception], None] | None = None) -> None:
        """Builds the data source from the config after checking ``class_weights`` against the loss,
        and logs what batches it draws (which may refuse ``data_batch_args``). ``unbuilt`` is called
        with the error when the source itself cannot be built (a resume explains it from ``run.json``;
        it raises or returns, and the error stands); the checks around it raise as they are."""
        cfg = self.config
        check_class_weights(cfg.class_weights, self.model.loss_node)
        kwargs = dict(cfg.data_init_kwargs)
        if (self._n_workers and "copies" not in kwargs
                and "copies" in data_source_keywords(resolve_data_class(cfg.data_class))):
            kwargs["copies"] = self._n_workers + 1  # this process and each worker hold a copy ('auto' memory)
        #: What ``data`` was built from; the background workers build their copies of it from this.
        self._data_recipe = (cfg.data_class, kwargs)
        try:
            self.data = make_data_source(cfg.data_class, self.model.input_node, self.model.target_node, dict(kwargs))
        except Exception as err:
            if unbuilt is not None:
                unbuilt(err)
            raise
        self._recipe_data = self.data  # the source the workers copy; another one in trainer.data is drawn here
        #: ``getbatch``'s keyword names, read once: which of rng, monitor, force_dense it takes.
        self._batch_keywords = parameter_names(self.data.getbatch)
        self._data_takes_rng = bool({"rng", "**"} & self._batch_keywords)
        describe = getattr(self.data, "describe_batches", None)  # checks data_batch_args against the source too
        log.info("data: %s", describe(dict(cfg.data_batch_args)) if callable(describe) else repr(self.data))
        if self._data_feedback:
            log.info("the data source takes feedback from every step: batches are drawn in this process "
                     "after the previous step (no background workers, no prefetching)")

    @property
    def _n_workers(self) -> int:
        """The number of background data workers ``background_processes`` asks for (True: 2)."""
        n = self.config.background_processes
        return 2 if n is True else int(n or 0)

    @property
    def _data_feedback(self) -> bool:
        """Whether the data source takes each step's debug outputs back (``feedback``): its batches
        depend on the steps before, so they are drawn here, one step at a time (no background
        workers, no prefetching)."""
        return callable(getattr(self.data, "feedback", None))

    def _background_batches(self, step: int) -> Any:
        """The background workers for training batches, whose next batch is that of ``step``
        (started on first use, restarted when another step's batch is wanted). None when the
        batch of ``step`` is drawn here: without workers, when the workers are one batch ahead
        (a prefetched batch was dropped, or the shell drew one), which is cheaper than a restart, or
        when ``trainer.data`` was replaced by a source the workers cannot copy. The workers restart
        when what their batches depend on changed (the shell may change the batch size,
        ``data_batch_args``, the seed or the model's inputs)."""
        n = self._n_workers
        if not n or not self._data_takes_rng or self._data_feedback:
            return None
        if self.data is not self._recipe_data:
            if self._background is not None:
                log.info("trainer.data was replaced: its training batches are drawn in this process, not by the "
                         "background workers (they copy the data source built from the config)")
                self.close_background()
            return None
        settings = (n, self.batch_size, int(self.config.seed), repr(self.config.data_batch_args),
                    *[(node.name, tuple(node.shape.shape)) for node in (self.model.input_node, self.model.target_node)
                      if node is not None])
        if self._background is not None and settings != self._background_settings:
            log.info("the batch settings changed: restarting the background data workers at step %d", step)
            self.close_background()
        if self._background is not None and self._background.next_index == step + 1:
            return None
        if self._background is None or self._background.next_index != step:
            import functools

            from ekn_core.plugins import registry

            self.close_background()
            nodes = [NodeInfo(n) if n is not None else None for n in (self.model.input_node, self.model.target_node)]
            data_class, data_init_kwargs = self._data_recipe
            factory = functools.partial(make_data_source, data_class, *nodes, dict(data_init_kwargs))
            self._background = registry("data").get("background_batches")(
                factory, self.batch_size, n_workers=n, seed=int(self.config.seed), source="train",
                batch_kwargs=dict(self.config.data_batch_args), start=step)
            self._background_settings = settings
            log.info("started %d background data worker(s) at step %d", n, step)
        return self._background

    def close_background(self) -> None:
        """Stops the background data workers (they restart at the current step when needed)."""
        if self._background is not None:
            self._background.close()
            self._background = None

    def _rng(self, stream: str, step: int) -> np.random.Generator:
        """The generator of the batch of ``step`` in ``stream`` (:data:`BATCH_STREAMS`)."""
        return np.random.default_rng(np.random.SeedSequence([int(self.config.seed), int(step),
                                                             *BATCH_STREAMS[stream]]))

    def _with_class_weights(self, batch: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        """``batch`` with the config's ``class_weights`` (when set) wherever the training step takes
        them (:func:`class_weights_positions`)."""
        if self.config.class_weights is None:
            return batch
        weights = np.asarray(self.config.class_weights, dtype=np.float32)
        arrays = list(batch)
        for at in class_weights_positions(self.model.loss_node.input_nodes, len(batch)):
            arrays.insert(at, weights)
        return tuple(arrays)

    def get_batch(self, source: str = "train", size: int | None = None, step: int | None = None,
                  stream: str | None = None) -> tuple[np.ndarray, ...]:
        """A batch as the training step needs it (``class_weights`` appended), seeded by ``(seed, step)``.

        Training batches of the current and the next step come from the background workers when
        ``background_processes`` is set; they are the same batches the serial path draws. Batches
        of a ``stream`` (the monitor batches) get ``monitor=True`` where ``getbatch`` takes it.
        """
        step = self.step if step is None else step
        background = self._background_batches(step) if (source == "train" and stream is None and size is None
                                                          and step in (self.step, self.step + 1)) else None
        if background is not None:  # SIGTERM and Ctrl-C end a wait for a worker (WaitInterrupted)
            batch = tuple(background.get(abort=lambda: self.stop_requested or self.pause_requested,
                                         timeout_s=self.config.batch_timeout_s))
        else:
            kwargs = dict(self.config.data_batch_args)
            rng = self._rng(stream or source, step)
            if stream is not None and "monitor" in self._batch_keywords:
                kwargs["monitor"] = True  # a monitor batch: a stateful source leaves its training state alone
            if self._data_takes_rng:
                kwargs["rng"] = rng
            elif hasattr(self.data, "rng"):
                self.data.rng = rng
            elif not self._warned_rng:
                log.warning("the data source %s takes no rng: batches are not reproducible and --resume is not "
                            "exact", type(self.data).__name__)
                self._warned_rng = True
            batch = tuple(self.data.getbatch(size or self.batch_size, source=source, **kwargs))
        return self._with_class_weights(batch)

    def _batch_key(self, step: int, fn: Any) -> tuple[Any, ...]:
        """What the training batch of ``step`` and its validation depend on: a prefetched batch is
        used only if this is unchanged when its step comes (schedules and the shell may change it)."""
        cfg = self.config
        weights = None if cfg.class_weights is None else np.asarray(cfg.class_weights).tobytes()
        return (int(step), self.batch_size, int(cfg.seed), id(self.data), id(self.model), id(fn),
                repr(cfg.data_batch_args), weights, tuple(tuple(n.shape.shape) for n in fn.inputs))

    def _training_batch(self) -> tuple[tuple[np.ndarray, ...], Sequence[Any]]:
        """The batch of the step after :attr:`step`: its numpy arrays (for the NaN check, monitoring
        and the shell) and the validated canonical arrays the step runs on (tensors on the device when
        the batch was prefetched during the previous step)."""
        fn = self.model.train_function(self.config.optimiser)
        key = self._batch_key(self.step, fn)
        prefetched, self._next = self._next, None
        if prefetched is not None:
            if prefetched[0] == key:
                if prefetched[1] is not None:
                    raise prefetched[1]  # drawing it failed: fail where the serial path fails
                item = self._prefetcher.take()
                return item.tag[1], item.tensors
            log.debug("the batch prefetched for step %d is not the next step's: drawing it again",
                      prefetched[0][0] + 1)
            self._drop_prefetched()
        batch = self.get_batch("train")
        return batch, fn.check_arrays(batch)

    def _prefetch_next(self) -> None:
        """With prefetching on, draws and validates the next step's batch here (data sources are not
        thread-safe) and submits it for the copy to the device, which overlaps the coming step."""
        step = self.step + 1
        if (self.prefetch_device is None or step >= int(self.config.n_steps) or self.stop_requested
                or self.pause_requested or self._data_feedback):
            return
        fn = self.model.train_function(self.config.optimiser)
        key = self._batch_key(step, fn)
        try:
            batch = self.get_batch("train", step=step)
            canonical = fn.check_arrays(batch)
        except Exception as err:  # raised when its step comes, where the serial path would raise it
            self._next = (key, err)
            return
        if self._prefetcher is None or self._prefetcher.closed:
            from ekn_core.trainer.prefetch import DevicePrefetcher

            self._prefetcher = DevicePrefetcher(self.prefetch_device)
        self._prefetcher.submit(canonical, tag=(key, batch))
        self._next = (key, None)

    def _drop_prefetched(self) -> None:
        """Forgets the prefetched batch (rollback, resume, the shell): the next step draws its batch again."""
        self._next = None
        if self._prefetcher is not None:
            self._prefetcher.discard()

    def close_prefetcher(self) -> None:
        """Stops the device prefetch thread (it restarts when needed)."""
        self._next = None
        if self._prefetcher is not None:
            self._prefetcher.close()

    def _voxels(self, batch: tuple[np.ndarray, ...]) -> int:
        """The input voxels of ``batch`` (all its examples, without the feature axis)."""
        tags = self.model.input_node.shape.tags
        shape = batch[0].shape
        return int(np.prod([s for s, t in zip(shape, tags) if t != "f"])) if len(tags) == len(shape) else batch[0].size
