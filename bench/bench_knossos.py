"""Random patch reads per second from a KNOSSOS data set, cold and warm cube cache.

A synthetic data set (default 256 x 512 x 512 voxels (z, y, x), 128³ cubes) is written once per
cube format into a temporary folder. Then random patches (default 32 x 128 x 128, the size of a
typical 3D training patch) are read through :func:`ekn_core.volumes.open_volume`:

- ``cold``: a fresh volume per patch (empty cache; every cube decoded from disk, OS page cache warm);
- ``warm``: one volume whose cache holds the whole data set (cubes decoded once, then reused);
- ``warm+prefetch``: like cold, but one volume with a cache, background prefetching of neighbours
  and parallel cube decoding (the realistic training setting when patches move through a region).

Run: ``python bench/bench_knossos.py [--formats raw,png,seg] [--patches 200] [--shape 256,512,512]``.
Prints patches/s and Mvoxel/s per format and mode.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from ekn_core.volumes import create_volume, open_volume

EXT = {"raw": (".raw", "uint8"), "png": (".png", "uint8"), "jpg": (".jpg", "uint8"), "seg": (".seg.sz.zip", "uint64")}


def make_dataset(root: str, fmt: str, shape: tuple[int, int, int]) -> str:
    ext, dtype = EXT[fmt]
    path = f"{root}/{fmt}.k.toml"
    rng = np.random.default_rng(0)
    with create_volume(path, shape=shape, dtype=dtype, cube_shape=(128, 128, 128), extension=ext) as vol:
        for z0 in range(0, shape[0], 64):
            z, y, x = np.indices((min(64, shape[0] - z0), shape[1], shape[2]))
            z += z0
            if dtype == "uint64":  # 40-voxel blocks of ids
                block = (x // 40 + 100 * (y // 40) + 10000 * (z // 40)).astype(dtype)
            else:  # smooth pattern plus noise, compresses like EM data rather than like zeros
                block = ((x // 7 + y // 5 + z // 3) % 200 + rng.integers(0, 3, size=x.shape)).astype(dtype)
            vol[z0:z0 + block.shape[0]] = block
    return path


def run(path: str, shape, patch, count: int, mode: str) -> float:
    rng = np.random.default_rng(1)
    starts = [[int(rng.integers(0, s - p + 1)) for s, p in zip(shape, patch)] for _ in range(count)]
    boxes = [tuple(slice(a, a + p) for a, p in zip(s, patch)) for s in starts]
    if mode == "warm":
        vol = open_volume(path, prefetch=0, threads=0, cache_mb=4096)
        vol[:]  # fill the cache
    elif mode == "warm+prefetch":
        vol = open_volume(path, prefetch=1, threads=2, cache_mb=4096)
    begin = time.perf_counter()
    for box in boxes:
        if mode == "cold":
            with open_volume(path, prefetch=0, threads=2, cache_mb=64) as fresh:
                fresh[box]
        else:
            vol[box]
    elapsed = time.perf_counter() - begin
    if mode != "cold":
        vol.close()
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--formats", default="raw,png,seg")
    parser.add_argument("--patches", type=int, default=200)
    parser.add_argument("--shape", default="256,512,512")
    parser.add_argument("--patch", default="32,128,128")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    patch = tuple(int(v) for v in args.patch.split(","))
    with tempfile.TemporaryDirectory() as root:
        for fmt in args.formats.split(","):
            path = make_dataset(root, fmt, shape)
            for mode in ("cold", "warm", "warm+prefetch"):
                rate = run(path, shape, patch, args.patches, mode)
                print(f"{fmt:4s} {mode:14s} {rate:9.1f} patches/s {rate * np.prod(patch) / 1e6:8.1f} Mvox/s")


if __name__ == "__main__":
    main()
