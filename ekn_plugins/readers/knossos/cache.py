"""A thread-safe LRU cache of decoded KNOSSOS cubes with a byte limit and background loading.

Example:
    >>> import numpy as np
    >>> cache = CubeCache(max_bytes=16, threads=0)
    >>> a = cache.get("a", lambda: np.zeros(8, np.uint8))
    >>> b = cache.get("b", lambda: np.ones(8, np.uint8))
    >>> c = cache.get("c", lambda: np.ones(8, np.uint8))  # evicts "a", the least recently used
    >>> sorted(cache.keys()), cache.nbytes
    (['b', 'c'], 16)
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Hashable, Iterable

import numpy as np

log = logging.getLogger("ekn.knossos")

#: Bytes charged for a cached "cube file is missing" entry.
_MISSING_COST = 64


class CubeCache:
    """Least-recently-used cube cache; ``None`` values record missing cube files.

    Args:
        max_bytes: Upper bound of the cached arrays' total size; the oldest entries are evicted.
        threads: Background loader threads for :meth:`prefetch` (0: prefetching does nothing).
        max_pending: Most background loads queued at once.
    """

    def __init__(self, max_bytes: int = 512 * 2**20, threads: int = 2, max_pending: int = 64):
        self.max_bytes, self.threads, self.max_pending = int(max_bytes), int(threads), int(max_pending)
        self._data: OrderedDict[Hashable, np.ndarray | None] = OrderedDict()
        self._inflight: dict[Hashable, Future] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self.nbytes = 0
        self.hits = self.misses = 0

    def keys(self) -> list:
        with self._lock:
            return list(self._data)

    @staticmethod
    def _cost(value: np.ndarray | None) -> int:
        return _MISSING_COST if value is None else int(value.nbytes)

    def put(self, key: Hashable, value: np.ndarray | None) -> None:
        """Stores ``value`` (made read-only) and evicts least recently used entries over the limit."""
        if value is not None:
            value.setflags(write=False)
        with self._lock:
            old = self._data.pop(key, False)
            if old is not False:
                self.nbytes -= self._cost(old)
            cost = self._cost(value)
            if cost > self.max_bytes:
                return
            self._data[key] = value
            self.nbytes += cost
            while self.nbytes > self.max_bytes:
                _, evicted = self._data.popitem(last=False)
                self.nbytes -= self._cost(evicted)

    def discard(self, key: Hashable) -> None:
        """Forgets ``key`` (after its file changed on disk)."""
        with self._lock:
            if key in self._data:
                self.nbytes -= self._cost(self._data.pop(key))

    def get(self, key: Hashable, loader: Callable[[], np.ndarray | None]) -> np.ndarray | None:
        """Returns the cached value, waiting for a background load of it or calling ``loader``."""
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self.hits += 1
                return self._data[key]
            future = self._inflight.get(key)
            self.misses += 1
        if future is not None and not future.cancelled():
            return future.result()
        value = loader()
        self.put(key, value)
        return value

    def prefetch(self, items: Iterable[tuple[Hashable, Callable[[], np.ndarray | None]]]) -> None:
        """Loads ``(key, loader)`` items in background threads, skipping cached or queued keys."""
        if self.threads <= 0:
            return
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="ekn-knossos")
            for key, loader in items:
                if len(self._inflight) >= self.max_pending:
                    break
                if key in self._data or key in self._inflight:
                    continue
                self._inflight[key] = self._pool.submit(self._load, key, loader)

    def _load(self, key: Hashable, loader: Callable[[], np.ndarray | None]) -> np.ndarray | None:
        try:
            value = loader()
            self.put(key, value)
            return value
        finally:
            with self._lock:
                self._inflight.pop(key, None)

    def wait(self) -> None:
        """Blocks until every queued background load has finished (errors are left to :meth:`get`)."""
        with self._lock:
            futures = list(self._inflight.values())
        for future in futures:
            try:
                future.result()
            except Exception as err:  # noqa: BLE001 - reported again when the cube is read
                log.debug("background load failed: %s", err)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.nbytes = 0

    def close(self) -> None:
        """Stops the loader threads; queued loads that have not started are cancelled."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._inflight.clear()
