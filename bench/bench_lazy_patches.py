"""patches/s of PatchSource in memory vs lazy, neuro3d_lite patch, HDF5 and zarr (uint8 raw 64x512x512).

Usage: python bench/bench_lazy_patches.py [DIR]   (default: a temporary folder)
"""
import time, numpy as np, h5py, sys, tempfile
from ekn_core.volumes import create_volume
from ekn_plugins.data.patches import PatchSource
d = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="bench_lazy_"); rng = np.random.default_rng(0)
raw = rng.integers(0, 256, (64, 512, 512), dtype=np.uint8); lab = rng.integers(0, 4, (48, 400, 400), dtype=np.int16)
with h5py.File(f"{d}/c.h5", "w") as f:
    f.create_dataset("raw", data=raw, chunks=(8, 64, 64)); f.create_dataset("lab", data=lab, chunks=(8, 64, 64))
for k, a in (("raw", raw), ("lab", lab)):
    with create_volume(f"{d}/c.zarr:{k}", a.shape, a.dtype, chunks=(8, 64, 64)) as v:
        v[...] = a
for fmt in ("h5", "zarr"):
    for mem in (True, False):
        t = time.perf_counter()
        src = PatchSource(patch_size=(11, 155, 155), offsets=(2, 19, 19), strides=(2, 4, 4), d_path=d, l_path=d,
                          d_files=[(f"c.{fmt}", "raw")], l_files=[(f"c.{fmt}", "lab")], augmenters=[{"type": "warp"}],
                          in_memory=mem, seed=0)
        t_load = time.perf_counter() - t; t = time.perf_counter(); n = 0
        while time.perf_counter() - t < 4: src.getbatch(1); n += 1
        print(f"{fmt} in_memory={mem}: load {t_load:.2f} s, {n / (time.perf_counter() - t):.1f} patches/s"); src.close()
