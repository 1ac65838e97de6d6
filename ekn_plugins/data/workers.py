"""Background batch workers: processes that fill shared-memory slots while the model trains.

Each worker process builds its own data source from a picklable ``factory`` (so open files are
never shared), computes batches and writes them into its own ``depth`` shared-memory slots
(:mod:`multiprocessing.shared_memory`, no pickling of arrays); the parent copies a batch out and
hands the slot back. Memory is bounded by ``n_workers × depth`` batches.

Determinism: batch ``i`` is made by worker ``i % n_workers`` with the generator
:func:`batch_rng` ``(seed, i)`` and handed out in order, so the stream of batches depends only on
the seed, not on the number of workers or on timing (and equals a serial loop).

Failures: an :class:`~ekn_core.errors.EknError` in a worker (a patch that fits no cube, a bad
setting: the same on every try; ``batch_kwargs`` that ``getbatch`` does not take are a
:class:`~ekn_core.errors.ConfigError` naming them) is raised in the parent at once, with the same message and no traceback
(as the same class for ekn's own error classes, as ``EknError`` for a plugin's subclass). Any other exception is reported (logged with the worker's traceback) and
the worker is replaced, starting again at the batch it failed on; a worker that dies without a word
(killed, segfault) is replaced too, and so is one that does not deliver within ``timeout_s`` of
:meth:`BackgroundBatches.get` (a stuck read). A batch that fails ``max_restarts`` times raises
:class:`~ekn_core.errors.EknError` with the traceback. A worker that exits while it starts (before
it runs any ekn code: the spawned process could not import the main module, e.g. a script
without ``if __name__ == "__main__":``) and a factory that cannot be pickled raise at once,
saying how to fix it. While :meth:`~BackgroundBatches.get` waits it logs a warning every
``warn_after_s`` seconds naming the worker's pid and the batch, and ends the wait with
:class:`~ekn_core.errors.WaitInterrupted` when ``abort()`` says so. Workers ignore SIGINT: on
Ctrl-C the parent gets the KeyboardInterrupt and :meth:`BackgroundBatches.close` (also on
``with`` exit, at interpreter exit and on garbage collection) stops the workers and frees the
shared memory.

Log records: a worker sends its warnings (and errors), and the INFO records marked
``extra={"relay": True}`` (the patch source's warp statistics), to the parent, which logs each
message once (through its handlers: the console, a run's log file), however many workers and
restarts repeat it. The warnings of building a worker's copy of the data source (grey values that misfit their
scaling, ...) repeat those of the copy the parent built first (the trainer does, and checks the
data there), so the parent logs them at DEBUG only.

Example:
    >>> import functools
    >>> from ekn_plugins.data.mnist import DigitsSource
    >>> with BackgroundBatches(functools.partial(DigitsSource), batch_size=4, n_workers=1, seed=0) as batches:
    ...     img, label = batches.get()
    >>> img.shape, label.shape
    ((4, 1, 7, 7), (4, 1))
    >>> ref = DigitsSource().getbatch(4, rng=batch_rng(0, 0))
    >>> bool((ref[0] == img).all())
    True
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import pickle
import queue
import signal
import sys
import time
import traceback
import weakref
from multiprocessing import shared_memory
from typing import Any, Callable

import numpy as np

from ekn_core.errors import ConfigError, EknError, NoValidationData, ShapeError, WaitInterrupted, unknown_keywords

log = logging.getLogger("ekn.data.workers")

#: Seconds between liveness checks while waiting for a worker.
POLL_S = 0.5
#: Seconds of waiting for one batch before a warning (repeated at this interval).
WARN_AFTER_S = 60.0
#: Distinct worker log messages remembered to drop their repeats (later ones are logged unchecked).
MAX_REMEMBERED = 10_000
#: The errors a worker's EknError is raised as in the parent, by class name (any other: EknError).
_RAISED_AS = {cls.__name__: cls for cls in (EknError, ConfigError, ShapeError, NoValidationData)}


def batch_rng(seed: int, index: int) -> np.random.Generator:
    """The random generator of batch ``index`` in a stream seeded with ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def _attach(names: list[list[str]]) -> list[list[shared_memory.SharedMemory]]:
    return [[shared_memory.SharedMemory(name=n) for n in slot] for slot in names]


class _LogRelay(logging.Handler):
    """A worker's handler of its WARNING and higher records and of INFO records marked
    ``extra={"relay": True}``: sends each to the parent as ``("log", logger name, level, text,
    building)``; ``building`` is True while the worker builds its data source."""

    def __init__(self, results: Any):
        super().__init__(logging.INFO)
        self.results, self.building = results, True

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.WARNING and not getattr(record, "relay", False):
            return
        try:
            self.results.put(("log", record.name, record.levelno, self.format(record), self.building))
        except Exception:  # a closed queue while the worker ends: logging's own fallback reports it
            self.handleError(record)


def _relay_logs(results: Any) -> _LogRelay:
    """Sends this worker's log records to the parent instead of this process's stderr (with the
    ``fork`` start method the parent's handlers of the ``ekn`` logger were copied: they go too);
    ekn's INFO records reach the relay, which passes on those marked for it."""
    relay = _LogRelay(results)
    logging.getLogger().handlers = [relay]
    ekn = logging.getLogger("ekn")
    ekn.handlers, ekn.propagate = [], True
    ekn.setLevel(logging.INFO)
    return relay


def _worker_main(wid: int, n_workers: int, first: int, factory: Callable[[], Any], batch_size: int,
                 source: str, batch_kwargs: dict, seed: int, depth: int, names: list[list[str]] | None,
                 ctrl: Any, results: Any, started: Any) -> None:
    """Body of a worker process (module level so that it can be spawned)."""
    started.set()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    relay = _relay_logs(results)
    slots = None
    index = first
    try:
        data = factory()
        relay.building = False
        _check_batch_kwargs(data, batch_kwargs)
        free = list(range(depth))
        while True:
            arrays = data.getbatch(batch_size, source, rng=batch_rng(seed, index), **batch_kwargs)
            arrays = arrays if isinstance(arrays, tuple) else (arrays,)
            if slots is None:
                if names is None:
                    results.put(("spec", wid, [(a.shape, a.dtype.str) for a in arrays]))
                    while True:  # wait for the parent to allocate the slots
                        msg = _next_message(ctrl, parent)
                        if msg[0] == "slots":
                            names = msg[1]
                            break
                        if msg[0] == "stop":
                            return
                slots = _attach(names)
            while not free:
                msg = _next_message(ctrl, parent)
                if msg[0] == "stop":
                    return
                free.append(msg[1])
            slot = free.pop(0)
            for shm, a in zip(slots[slot], arrays):
                np.ndarray(a.shape, a.dtype, buffer=shm.buf)[...] = a
            results.put(("batch", index, slot))
            index += n_workers
    except EknError as err:  # the config's or the data's fault: trying again gives the same
        results.put(("fatal", index, type(err).__name__, str(err)))
    except Exception:
        results.put(("error", index, traceback.format_exc()))
    finally:
        for slot in slots or ():
            for shm in slot:
                shm.close()


def _check_batch_kwargs(data: Any, batch_kwargs: dict) -> None:
    """Raises :class:`ConfigError` naming the ``batch_kwargs`` that ``data.getbatch`` does not take
    (they would fail every batch alike).

    Example:
        >>> from ekn_plugins.data.mnist import DigitsSource
        >>> _check_batch_kwargs(DigitsSource(), {"ignore_thresh": 0.5})
        Traceback (most recent call last):
        ...
        ekn_core.errors.ConfigError: batch arguments: getbatch takes no argument 'ignore_thresh'; ...
    """
    problems = unknown_keywords(data.getbatch, batch_kwargs, "batch arguments")
    if problems:
        raise ConfigError("; ".join(problems))


def _next_message(ctrl: Any, parent: int) -> tuple:
    """Next control message; ``("stop",)`` when the parent process has gone."""
    while True:
        try:
            return ctrl.get(timeout=POLL_S)
        except queue.Empty:
            if os.getppid() != parent:
                return ("stop",)


class _Worker:
    """Parent-side handle of one worker: process, queues, shared-memory slots."""

    def __init__(self, wid: int):
        self.wid, self.process, self.ctrl, self.results, self.started = wid, None, None, None, None
        self.shms: list[list[shared_memory.SharedMemory]] = []
        self.spec: list[tuple[tuple[int, ...], str]] | None = None


class BackgroundBatches:
    """Batches from ``n_workers`` background processes, in a deterministic order.

    Args:
        factory: Picklable callable that builds the data source in the worker (a class, or a
            ``functools.partial`` of one); the source needs ``getbatch(batch_size, source, rng=...)``.
        batch_size: Examples per batch.
        n_workers: Worker processes (at least 1).
        seed: Seed of the batch stream.
        depth: Shared-memory slots per worker (batches computed ahead).
        source: ``"train"`` or ``"valid"``, passed to ``getbatch``.
        batch_kwargs: Further ``getbatch`` keyword arguments.
        max_restarts: Failures of one batch before giving up.
        start_method: multiprocessing start method; ``"spawn"`` (default) is safe with threads
            (TensorFlow) in the parent.
        start: Index of the first batch (to resume a stream).
        warn_after_s: Seconds of waiting for one batch before a warning (repeated at this interval).
    """

    def __init__(self, factory: Callable[[], Any], batch_size: int, n_workers: int = 2, seed: int = 0,
                 depth: int = 2, source: str = "train", batch_kwargs: dict | None = None, max_restarts: int = 3,
                 start_method: str = "spawn", start: int = 0, warn_after_s: float = WARN_AFTER_S):
        if n_workers < 1 or depth < 1 or batch_size < 1:
            raise EknError(f"need n_workers, depth and batch_size >= 1, got {n_workers}, {depth}, {batch_size}")
        self._ctx = mp.get_context(start_method)
        self.factory, self.batch_size, self.n_workers, self.seed = factory, batch_size, n_workers, seed
        self.depth, self.source, self.batch_kwargs = depth, source, dict(batch_kwargs or {})
        self.max_restarts, self.warn_after_s = max_restarts, warn_after_s
        self.next_index = start
        self.failures: dict[int, int] = {}
        self.restarts = 0
        self._relayed: set[tuple[str, int, str]] = set()
        self._closed = False
        self._workers = [_Worker(w) for w in range(n_workers)]
        self._finalizer = weakref.finalize(self, BackgroundBatches._shutdown, self._workers)
        for worker in self._workers:
            self._start(worker, first=start + (worker.wid - start) % n_workers)

    # ----------------------------------------------------------------------------- processes
    def _start(self, worker: _Worker, first: int) -> None:
        worker.ctrl, worker.results, worker.started = self._ctx.Queue(), self._ctx.Queue(), self._ctx.Event()
        names = [[s.name for s in slot] for slot in worker.shms] if worker.shms else None
        process = self._ctx.Process(
            target=_worker_main, name=f"ekn-data-{worker.wid}", daemon=True,
            args=(worker.wid, self.n_workers, first, self.factory, self.batch_size, self.source,
                  self.batch_kwargs, self.seed, self.depth, names, worker.ctrl, worker.results, worker.started))
        try:
            process.start()  # pickles the factory for the new process
        except (pickle.PicklingError, TypeError, AttributeError) as err:
            self.close()
            raise EknError(f"the data source cannot be sent to a background worker process: {type(err).__name__}: "
                           f"{err}. Workers are fresh Python processes that import everything the factory refers "
                           "to: move functions and classes that the data source's arguments (ekn train: "
                           "data_init_kwargs) use out of the config file into an importable module, or set "
                           "background_processes = False") from err
        worker.process = process

    def _exit_reason(self, worker: _Worker) -> str:
        """Why a worker that is no longer alive stopped; raises when it died while starting."""
        code = worker.process.exitcode
        if code is not None and code >= 0 and not worker.started.is_set():
            self.close()
            main = getattr(sys.modules.get("__main__"), "__file__", None)
            raise EknError(f"data worker {worker.wid} exited with code {code} while starting, before it ran any "
                           f"ekn code: the new process could not import the main module{f' {main}' if main else ''} "
                           "or unpickle the data source (its error is printed above). Workers are started with "
                           "'spawn' and import the main module again: a script that starts training must do so "
                           "under `if __name__ == \"__main__\":`. Or set background_processes = False")
        return f"the process exited with code {code} without reporting an error (killed or crashed)"

    def _replace(self, worker: _Worker, index: int, reason: str) -> None:
        count = self.failures[index] = self.failures.get(index, 0) + 1
        if count > self.max_restarts:
            self.close()
            raise EknError(f"data worker {worker.wid} failed {count} times on batch {index}; giving up. "
                           f"Last failure:\n{reason}")
        log.warning("data worker %d failed on batch %d (restart %d of %d):\n%s", worker.wid, index, count,
                    self.max_restarts, reason)
        if worker.process.is_alive():  # stuck, or still ending after its report
            worker.process.terminate()
        _stop_process(worker)
        self.restarts += 1
        self._start(worker, first=index)

    def _log(self, worker: _Worker, name: str, level: int, text: str, building: bool) -> None:
        """Logs a record a worker sent, unless its message was logged before: the warnings of
        building the worker's copy of the data source at DEBUG (the parent's copy gave them)."""
        key = (name, level, text)
        if key in self._relayed:
            return
        if len(self._relayed) < MAX_REMEMBERED:
            self._relayed.add(key)
        if building:
            logging.getLogger(name).debug("data worker %d, building its copy of the data source: %s",
                                          worker.wid, text)
        else:
            logging.getLogger(name).log(level, "%s", text)

    def _allocate(self, worker: _Worker, spec: list) -> None:
        worker.spec = [(tuple(shape), dtype) for shape, dtype in spec]
        sizes = [max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize) for shape, dtype in worker.spec]
        worker.shms = [[shared_memory.SharedMemory(create=True, size=s) for s in sizes] for _ in range(self.depth)]
        worker.ctrl.put(("slots", [[s.name for s in slot] for slot in worker.shms]))

    # ----------------------------------------------------------------------------- consumer side
    def get(self, abort: Callable[[], bool] | None = None, timeout_s: float | None = None) -> tuple[np.ndarray, ...]:
        """The next batch (copies, in the source's ``getbatch`` layout).

        Args:
            abort: Asked every :data:`POLL_S` seconds while waiting; True ends the wait with
                :class:`~ekn_core.errors.WaitInterrupted` (the batch stays the next one).
            timeout_s: Seconds to wait for the batch before its worker counts as stuck and is
                replaced (a failure of the batch, see ``max_restarts``); None waits as long as it takes.
        """
        if self._closed:
            raise EknError("these background batches were closed")
        index = self.next_index
        worker = self._workers[index % self.n_workers]
        since = warned = time.monotonic()
        while True:
            try:
                msg = worker.results.get(timeout=POLL_S)
            except queue.Empty:
                now = time.monotonic()
                if not worker.process.is_alive():
                    self._replace(worker, index, self._exit_reason(worker))
                    since = warned = time.monotonic()
                elif abort is not None and abort():
                    raise WaitInterrupted(f"stopped waiting for batch {index} from data worker {worker.wid} "
                                          f"(pid {worker.process.pid})") from None
                elif timeout_s is not None and now - since >= timeout_s:
                    self._replace(worker, index, f"no batch after {now - since:.1f} s (timeout {timeout_s} s): "
                                                 "stuck (a hanging read?)")
                    since = warned = time.monotonic()
                elif now - warned >= self.warn_after_s:
                    log.warning("data worker %d (pid %d) has not delivered batch %d for %.0f s; still waiting%s",
                                worker.wid, worker.process.pid, index, now - since,
                                f" (it is replaced after {timeout_s} s)" if timeout_s is not None else "")
                    warned = now
                continue
            kind = msg[0]
            if kind == "log":
                self._log(worker, *msg[1:])
            elif kind == "spec":
                self._allocate(worker, msg[2])
            elif kind == "error":
                self._replace(worker, msg[1], msg[2])
                since = warned = time.monotonic()
            elif kind == "fatal":
                self.close()
                raise _RAISED_AS.get(msg[2], EknError)(msg[3])
            elif kind == "batch":
                if msg[1] != index:
                    raise EknError(f"internal error: expected batch {index}, worker {worker.wid} sent {msg[1]}")
                out = tuple(np.ndarray(shape, dtype, buffer=shm.buf).copy()
                            for (shape, dtype), shm in zip(worker.spec, worker.shms[msg[2]]))
                worker.ctrl.put(("free", msg[2]))
                self.next_index += 1
                return out

    def __iter__(self):
        while True:
            yield self.get()

    def close(self) -> None:
        """Stops the workers and frees the shared memory (safe to call twice)."""
        if not self._closed:
            self._closed = True
            self._finalizer()

    @staticmethod
    def _shutdown(workers: list[_Worker]) -> None:
        for worker in workers:
            if worker.ctrl is not None:
                try:
                    worker.ctrl.put(("stop",))
                except (OSError, ValueError):
                    pass
        for worker in workers:
            _stop_process(worker)
            for slot in worker.shms:
                for shm in slot:
                    shm.close()
                    try:
                        shm.unlink()
                    except FileNotFoundError:
                        pass
            worker.shms = []

    def __enter__(self) -> BackgroundBatches:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _stop_process(worker: _Worker, timeout: float = 2.0) -> None:
    """Joins a worker's process (terminating it if needed) and closes its queues."""
    process = worker.process
    if process is not None:
        process.join(timeout)
        if process.is_alive():
            process.terminate()
            process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join(timeout)
        if process.is_alive():  # e.g. in an uninterruptible read of a hanging file system
            log.warning("data worker %d (pid %d) does not end; leaving it behind", worker.wid, process.pid)
    for q in (worker.ctrl, worker.results):
        if q is not None:
            q.cancel_join_thread()
            q.close()
