"""Amortised cost of AppendableKDTree: append + query vs rebuilding a KD-tree after each append.

The workload mimics a tracing agent: append one point, then query the nearest neighbour of a
new position, ``N`` times. Compared:

- ``appendable``: :class:`ekn_plugins.utils.kdtree.AppendableKDTree` (auto threshold);
- ``rebuild-each``: a fresh scikit-learn KDTree after every append (what the buffer avoids);
- ``brute``: numpy brute force over all points.

Run: ``python bench/bench_kdtree.py [N ...]`` (default 1000 4000 16000; the rebuild-each variant is
skipped above 8000 points because it is quadratic). Prints microseconds per append+query.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from sklearn.neighbors import KDTree

from ekn_plugins.utils.kdtree import AppendableKDTree


def run_appendable(points: np.ndarray, queries: np.ndarray) -> float:
    tree = AppendableKDTree(points[:1])
    start = time.perf_counter()
    for p, q in zip(points[1:], queries[1:]):
        tree.append(p)
        tree.query(q[None], k=1)
    return time.perf_counter() - start


def run_rebuild_each(points: np.ndarray, queries: np.ndarray) -> float:
    start = time.perf_counter()
    for n in range(2, len(points) + 1):
        KDTree(points[:n]).query(queries[n - 1][None], k=1)
    return time.perf_counter() - start


def run_brute(points: np.ndarray, queries: np.ndarray) -> float:
    start = time.perf_counter()
    for n in range(2, len(points) + 1):
        d = ((points[:n] - queries[n - 1]) ** 2).sum(1)
        int(np.argmin(d))
    return time.perf_counter() - start


def main(sizes: list[int]) -> None:
    rng = np.random.default_rng(0)
    print(f"{'N':>7} {'appendable':>12} {'rebuild-each':>13} {'brute':>10}   [us per append+query]")
    for n in sizes:
        points = np.cumsum(rng.normal(size=(n, 3)), axis=0)  # a random walk, like a trace
        queries = points + rng.normal(size=(n, 3))
        a = run_appendable(points, queries) / (n - 1) * 1e6
        r = run_rebuild_each(points, queries) / (n - 1) * 1e6 if n <= 8000 else float("nan")
        b = run_brute(points, queries) / (n - 1) * 1e6
        print(f"{n:>7} {a:>12.1f} {r:>13.1f} {b:>10.1f}")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1000, 4000, 16000])
