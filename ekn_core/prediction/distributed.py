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

        net = adapt(job.spec.load(), job.plan.tta or None)
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
                           memory_limit=0, env={"OMP_NUM_THREADS": threads, "TF_NUM_INTRAOP_THREADS": threads,
                                                "TF_NUM_INTEROP_THREADS": "1"})
    client = Client(cluster)

    def close() -> None:
        client.close()
        cluster.close()

    return client, close


def run_blocks(job: BlockJob, pending: list[int], write: Callable[[int, np.ndarray], None], *,
               scheduler: str | None = None, workers: int | None = None, retries: int = 3,
               client: Any = None) -> None:
    """Computes ``pending`` blocks on the cluster and calls ``write(index, array)`` on the client.

    At most two blocks per worker thread are in flight, so the client's memory stays bounded.
    """
    from distributed import as_completed

    close = None
    if client is None:
        client, close = connect(scheduler, workers)
    try:
        import uuid

        slots = max(2, 2 * sum(client.nthreads().values()))
        todo = list(pending)
        run = uuid.uuid4().hex[:12]

        def submit(index: int) -> Any:
            return client.submit(compute_block, job, index, retries=retries, pure=False,
                                 key=f"ekn-block-{run}-{index}")

        first, todo = todo[:slots], todo[slots:]
        futures = as_completed([submit(i) for i in first])
        for future in futures:
            index, pred = future.result()
            future.release()
            write(index, pred)
            if todo:
                futures.add(submit(todo.pop(0)))
    finally:
        if close is not None:
            close()
