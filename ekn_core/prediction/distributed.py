"""Blockwise prediction on a Dask cluster (``dask.distributed``).

Workers compute blocks of the same :class:`~ekn_core.prediction.blockwise.Plan` the
single-process path uses (same global tile grid, same blocks, same batching), so the result is
identical to a one-process run. Each worker loads the net and opens the input once (cached per
process); the client writes the returned blocks and records them in the progress log, so any
output format works (HDF5 included) and a resumed run skips finished blocks. Blocks of a
worker that dies are rescheduled by the scheduler; tasks that fail are retried ``retries`` times.

Example:
    >>> from ekn_core.prediction.distributed import BlockJob, run_blocks
    >>> callable(run_blocks)
    True
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from collections.abc import Iterator, Sequence
from typing import Any, Callable

import numpy as np

from ekn_core.errors import EknError
from ekn_core.prediction.blockwise import NetSpec, Plan, adapt, as_channel_volume, predict_block

log = logging.getLogger("ekn.prediction")

#: Per worker process: job key → (net, input volume).
_WORKER_CACHE: dict[str, tuple[Any, Any]] = {}


@dataclass(frozen=True)
class BlockJob:
    """Everything a worker needs to predict any block of a run (picklable)."""

    spec: NetSpec
    input: str
    input_options: dict[str, Any]
    plan: Plan

    def key(self) -> str:
        """Cache key of the loaded net and opened volume in a worker."""
        return repr((self.spec, self.input, sorted(self.input_options.items())))


def compute_block(job: BlockJob, index: int) -> tuple[int, np.ndarray]:
    """Worker task: predicts block ``index``; returns ``(index, (n_lab, *block) float32)``."""
    cached = _WORKER_CACHE.get(job.key())
    if cached is None:
        from ekn_core.volumes import open_volume

        net = adapt(job.spec.load(), job.plan.tta or None, job.plan.affinity_offsets)
        if net.geometry != job.plan.geometry:
            raise EknError(f"worker loaded {job.spec.model!r} with geometry {net.geometry}, the plan "
                           f"needs {job.plan.geometry}")
        cached = (net, as_channel_volume(open_volume(job.input, **job.input_options)))
        _WORKER_CACHE.clear()
        _WORKER_CACHE[job.key()] = cached
    net, volume = cached
    return index, predict_block(net, volume, job.plan, index)


def connect(scheduler: str | None = None, workers: int | None = None) -> tuple[Any, Callable[[], None]]:
    """A ``distributed.Client`` for ``scheduler`` or a new local cluster with ``workers`` processes
    (one task thread each; the machine's cores are split between their TensorFlow thread pools).

    The local cluster talks TLS with temporary credentials that only this process holds
    (``LocalCluster(security=True)``): without them any user of the machine could connect to its
    scheduler and run code as you. A ``scheduler`` you give must be secured by its own set-up.

    Returns:
        ``(client, close)``; ``close()`` shuts down what was started here.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError as err:  # pragma: no cover - distributed is a dependency
        raise EknError("blockwise prediction on Dask needs the 'distributed' package") from err
    if scheduler:
        client = Client(scheduler)
        return client, client.close
    n = int(workers or 1)
    threads = str(max(1, (os.cpu_count() or 1) // n))  # the cores are shared by the workers' nets
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                           memory_limit=0, security=True,
                           env={"OMP_NUM_THREADS": threads, "TF_NUM_INTRAOP_THREADS": threads,
                                "TF_NUM_INTEROP_THREADS": "1"})
    client = Client(cluster)

    def close() -> None:
        client.close()
        cluster.close()

    return client, close


def as_finished(client: Any, function: Callable[..., Any], items: Sequence[Any], *args: Any,
                retries: int = 3, name: str = "ekn-task") -> Iterator[Any]:
    """Runs ``function(*args, item)`` for every item on the cluster of ``client`` and yields the
    results in the order they finish. At most two tasks per worker thread are in flight, so the
    client's memory stays bounded; a task that raises is retried ``retries`` times, and the tasks of
    a worker that dies are rescheduled. When a task fails for good, or the caller stops early (an
    error in its loop, the iterator closed or dropped), the tasks still in flight are cancelled.

    Example:
        >>> from distributed import Client
        >>> with Client(processes=False, n_workers=1, dashboard_address=None) as client:
        ...     sorted(as_finished(client, pow, [1, 2, 3], 2))
        [2, 4, 8]
    """
    import uuid

    from distributed import as_completed

    slots = max(2, 2 * sum(client.nthreads().values()))
    todo = list(items)
    run = uuid.uuid4().hex[:12]

    def submit(position: int, item: Any) -> Any:
        return client.submit(function, *args, item, retries=retries, pure=False, key=f"{name}-{run}-{position}")

    in_flight = {submit(i, item) for i, item in enumerate(todo[:slots])}
    futures = as_completed(in_flight)
    submitted = len(in_flight)
    try:
        for future in futures:
            result = future.result()
            in_flight.discard(future)
            future.release()
            yield result
            if submitted < len(todo):
                future = submit(submitted, todo[submitted])
                in_flight.add(future)
                futures.add(future)
                submitted += 1
    finally:  # a task failed, or the caller stopped (an error in its loop, the iterator closed)
        if in_flight:
            client.cancel(list(in_flight))


def run_blocks(job: BlockJob, pending: list[int], write: Callable[[int, np.ndarray], None], *,
               scheduler: str | None = None, workers: int | None = None, retries: int = 3,
               client: Any = None) -> None:
    """Computes ``pending`` blocks on the cluster and calls ``write(index, array)`` on the client
    (at most two blocks per worker thread in flight, see :func:`as_finished`)."""
    close = None
    if client is None:
        client, close = connect(scheduler, workers)
    try:
        for index, pred in as_finished(client, compute_block, pending, job, retries=retries, name="ekn-block"):
            write(index, pred)
    finally:
        if close is not None:
            close()
