"""``ekn segment`` (block by block, stitched) vs one watershed of the whole volume in memory.

A synthetic boundary map (the membranes of ``ekn data synth``'s generator plus Gaussian noise
σ = 0.4, blurred with σ = 1, stored as uint8) is segmented once in memory with
``watershed_segmentation`` and several times with ``ekn segment``'s ``segment_volume``. Every run
is its own process, so its peak memory (maximum resident set) is its own. The table gives seconds,
voxels/s, peak memory and the variation of information of each blockwise result against the
whole-volume one (0: the same segmentation up to the numbering).

With ``--halos``, the runs are instead one ``ekn segment`` of ``--block`` per halo (how the
agreement with the whole volume grows with the halo).

Usage::

    python bench/bench_segment.py [--shape 64,512,512] [--dir DIR]
    python bench/bench_segment.py --shape 32,160,160 --block 16,64,64 --halos 1,2,2 4,8,8 8,16,16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

PARAMS = {"threshold": 0.2, "min_size": 50, "anisotropy": [2.0, 1.0, 1.0]}
#: name → extra keyword arguments of ``segment_volume`` (None: the whole-volume watershed).
RUNS = {
    "whole volume in memory": None,
    "ekn segment, default block": {},
    "ekn segment, default block, 2 workers": {"workers": 2},
    "ekn segment, block 32,128,128": {"block": [32, 128, 128]},
    "rerun of the finished job (block 32,128,128)": {"block": [32, 128, 128]},
}
_CHILD = """
import json, sys, threading, time
import numpy as np
import psutil
from ekn_core.volumes import create_volume, open_volume
from ekn_plugins.evaluation.blockwise_segmentation import segment_volume
from ekn_plugins.evaluation.segmentation import WatershedParams, watershed_segmentation
prob, out, options, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), WatershedParams(**json.loads(sys.argv[4]))
done, peak = threading.Event(), [0]

def watch():  # workers started from a fork server are no children of this process: sample their memory
    while not done.is_set():
        for child in psutil.Process().children(recursive=True):
            try:
                peak[0] = max(peak[0], child.memory_info().rss)
            except psutil.Error:
                pass
        done.wait(0.05)

threading.Thread(target=watch, daemon=True).start()
t = time.perf_counter()
if options is None:
    with open_volume(prob) as v:
        seg = watershed_segmentation(np.asarray(v[...]) / 255.0, params)
    with create_volume(out, shape=seg.shape, dtype=seg.dtype) as v:
        v[...] = seg
else:
    segment_volume(prob, out, params, progress=False, **options)
seconds = time.perf_counter() - t
done.set()
print(json.dumps({"seconds": seconds, "workers_peak": peak[0]}))
"""


def make_map(folder: str, shape: str) -> None:
    """Writes the synthetic uint8 boundary map ``folder/prob.zarr`` of ``shape`` (``"z,y,x"``)."""
    import numpy as np
    from scipy import ndimage

    from ekn_core.volumes import create_volume
    from ekn_plugins.data.synth import synth_volume

    shape = tuple(int(v) for v in shape.split(","))
    vol = synth_volume(shape, np.random.default_rng(0))
    noise = np.random.default_rng(1).normal(0, 0.4, vol.ids.shape).astype(np.float32)
    prob = ndimage.gaussian_filter(vol.barrier.astype(np.float32) + noise, 1.0).clip(0, 1)
    chunks = tuple(min(c, s) for c, s in zip((64, 128, 128), shape))
    with create_volume(f"{folder}/prob.zarr", shape=prob.shape, dtype=np.uint8, chunks=chunks, axes="zyx") as v:
        v[...] = np.round(prob * 255).astype(np.uint8)


def output_path(folder: str, options: dict | None) -> str:
    """The segmentation a run writes (runs with the same options share it: the rerun resumes)."""
    if options is None:
        return f"{folder}/whole.zarr"
    block = "_".join(map(str, options.get("block", ["default"])))
    halo = "_".join(map(str, options.get("halo", ["default"])))
    return f"{folder}/block_{block}_halo_{halo}_w{options.get('workers', 1)}.zarr"


def run_child(folder: str, name: str, options: dict | None) -> tuple[float, float]:
    """Seconds and peak resident memory (GiB) of one run in its own process (the largest of it and
    its worker processes: those it waited for exactly, those of a fork server sampled every 50 ms).
    This process stays small and does all its heavy work in other processes too
    (:func:`in_subprocess`): Linux carries a process's peak memory over fork and exec, so a large
    parent would show up in every child's number."""
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, f"{folder}/prob.zarr", output_path(folder, options),
                             json.dumps(options), json.dumps(PARAMS)], stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{name} failed (exit {proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    return result["seconds"], max(usage.ru_maxrss * 2**10, result["workers_peak"]) / 2**30


def vi_against(folder: str, options: str) -> float:
    """VI of a blockwise result (``options`` as JSON) against the whole-volume segmentation."""
    import numpy as np

    from ekn_core.volumes import open_volume
    from ekn_plugins.evaluation.segmentation import segmentation_scores

    with open_volume(output_path(folder, None)) as whole, \
            open_volume(output_path(folder, json.loads(options))) as blockwise:
        return segmentation_scores(np.asarray(whole[...]), np.asarray(blockwise[...]), ignore_labels=())["vi"]


def in_subprocess(function: str, *args: str) -> str:
    """Runs ``function(*args)`` of this module in a fresh process; returns what it printed."""
    code = f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); " \
           f"import bench_segment; print(bench_segment.{function}(*sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True,
                          text=True).stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="64,512,512", help="map shape z,y,x")
    parser.add_argument("--dir", help="working folder (default: a temporary one)")
    parser.add_argument("--block", default="16,64,64", help="block z,y,x of the --halos runs")
    parser.add_argument("--halos", nargs="+", metavar="Z,Y,X", help="instead of the default runs, segment with "
                        "--block and each of these halos")
    args = parser.parse_args()
    runs = RUNS
    if args.halos:
        block = [int(v) for v in args.block.split(",")]
        runs = {"whole volume in memory": None, **{f"ekn segment, block {args.block}, halo {halo}":
                                                   {"block": block, "halo": [int(v) for v in halo.split(",")]}
                                                   for halo in args.halos}}
    shape = tuple(int(v) for v in args.shape.split(","))
    folder = args.dir or tempfile.mkdtemp(prefix="bench_segment_")
    os.makedirs(folder, exist_ok=True)
    load = os.getloadavg()[0]
    in_subprocess("make_map", folder, args.shape)
    voxels = 1
    for s in shape:
        voxels *= s
    print(f"map {shape} uint8, params {PARAMS}; load average {load:.2f}; folder {folder}")
    print("| run | seconds | voxels/s | peak memory | VI against the whole volume |")
    print("|---|---:|---:|---:|---:|")
    for name, options in runs.items():
        seconds, peak = run_child(folder, name, options)
        vi = "0 (reference)" if options is None else f"{float(in_subprocess('vi_against', folder, json.dumps(options))):.4f}"
        print(f"| {name} | {seconds:.1f} | {voxels / seconds:.2g} | {peak:.2f} GiB | {vi} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
