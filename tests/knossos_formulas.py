"""The formulas of shared/fixtures/knossos/README.md that define every fixture voxel."""

import numpy as np

MISSING = {(1, 1, 0), (2, 2, 0), (2, 2, 1)}
GOLD = 0x9E3779B97F4A7C15


def raw_mag1(extent=(80, 70, 40), cube=(32, 32, 32), missing=MISSING):
    z, y, x = np.indices(extent[::-1])
    v = ((x + 3 * y + 7 * z) % 251).astype(np.uint8)
    for cx, cy, cz in missing:
        v[(x // cube[0] == cx) & (y // cube[1] == cy) & (z // cube[2] == cz)] = 0
    return v


def H(n):
    with np.errstate(over="ignore"):
        return np.asarray(n, np.uint64) * np.uint64(GOLD)


def seg_mag1():
    z, y, x = np.indices((40, 70, 80))
    v = H(x // 16 + 5 * (y // 16) + 25 * (z // 16))
    for cx, cy, cz in MISSING:
        v[(x // 32 == cx) & (y // 32 == cy) & (z // 32 == cz)] = 0
    return v


def mag2(a):
    return a[::2, ::2, ::2]
