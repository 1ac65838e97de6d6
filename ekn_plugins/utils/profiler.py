"""Loop profiler: time named sections inside a loop and print a summary table.

Two ways to mark sections, which can be mixed:

- ``prof.check(name)`` attributes the time since the previous check (or since construction /
  :meth:`LoopProfiler.reset`) to ``name``, like ELEKTRONN2's ``Timer.check``;
- ``with prof.section(name):`` times exactly the enclosed block.

Example:
    >>> ticks = iter([0.0, 1.0, 1.5, 3.0, 3.5, 4.0, 4.25])
    >>> prof = LoopProfiler(clock=lambda: next(ticks))
    >>> for _ in range(2):
    ...     _ = prof.check("load")
    ...     _ = prof.check("step")
    >>> with prof.section("save"):
    ...     pass
    >>> prof.total("load"), prof.count("load")
    (2.5, 2)
    >>> print(prof.summary())
    section  calls  total [s]  mean [s]   share
    load         2      2.500     1.250   66.7%
    step         2      1.000     0.500   26.7%
    save         1      0.250     0.250    6.7%
    all          5      3.750     0.750  100.0%
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator


class LoopProfiler:
    """Accumulates wall-clock time of named sections.

    Args:
        clock: Function returning seconds (default :func:`time.perf_counter`); injectable for tests.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self._clock = clock
        self._totals: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._last = clock()

    def reset(self) -> None:
        """Forgets all sections and restarts the reference time of :meth:`check`."""
        self._totals.clear()
        self._counts.clear()
        self._last = self._clock()

    def add(self, name: str, seconds: float) -> None:
        """Adds one call of ``seconds`` to section ``name``."""
        if seconds < 0:
            raise ValueError(f"section {name!r}: negative duration {seconds}; the clock must not go backwards")
        self._totals[name] = self._totals.get(name, 0.0) + seconds
        self._counts[name] = self._counts.get(name, 0) + 1

    def check(self, name: str) -> float:
        """Attributes the time since the previous check to ``name`` and returns it."""
        now = self._clock()
        elapsed = now - self._last
        self._last = now
        self.add(name, elapsed)
        return elapsed

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        """Context manager timing the enclosed block as one call of ``name``.

        The reference time of :meth:`check` moves to the end of the block, so a later check
        does not count the block twice.
        """
        start = self._clock()
        try:
            yield
        finally:
            end = self._clock()
            self.add(name, end - start)
            self._last = end

    def total(self, name: str) -> float:
        """Total seconds of section ``name`` (0.0 if never timed)."""
        return self._totals.get(name, 0.0)

    def count(self, name: str) -> int:
        """Number of timed calls of section ``name``."""
        return self._counts.get(name, 0)

    def names(self) -> list[str]:
        """Section names, largest total first."""
        return sorted(self._totals, key=lambda n: (-self._totals[n], n))

    def as_dict(self) -> dict[str, dict[str, float]]:
        """``{name: {"calls", "total", "mean", "share"}}`` for logging or JSON."""
        grand = sum(self._totals.values())
        return {n: {"calls": self._counts[n], "total": self._totals[n],
                    "mean": self._totals[n] / self._counts[n],
                    "share": self._totals[n] / grand if grand > 0 else 0.0} for n in self.names()}

    def summary(self) -> str:
        """A plain-text table: section, calls, total, mean and share of the total, plus an ``all`` row."""
        stats = self.as_dict()
        calls = sum(self._counts.values())
        grand = sum(self._totals.values())
        rows = [[n, str(int(s["calls"])), f"{s['total']:.3f}", f"{s['mean']:.3f}", f"{100 * s['share']:.1f}%"]
                for n, s in stats.items()]
        rows.append(["all", str(calls), f"{grand:.3f}", f"{grand / calls if calls else 0.0:.3f}",
                     "100.0%" if calls else "0.0%"])
        header = ["section", "calls", "total [s]", "mean [s]", "share"]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)).rstrip()
                 for r in [header, *rows]]
        return "\n".join(lines)
