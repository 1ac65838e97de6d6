"""Dense-prediction benchmark: voxels/s of the stride loop, MFP and a naive sliding window,
a 3-D U-Net against MONAI's ``sliding_window_inference`` in PyTorch, and out-of-core peak memory.

Parts (``--parts``, default all):

- ``speed``: ELEKTRONN2's neuro3d net (``bench/common.py``; final 1×1×1 linear conv as
  logits) on a ``--shape`` volume (default 64×512×512, mirror-padded so the output has the
  input shape). ``naive``: one forward pass per output voxel (a few windows, extrapolated);
  ``loop``: ELEKTRONN2's tiles and stride-phase loop with the training patch 23×185×185 and
  ``loop-auto`` the same with the patch chosen by ``choose_patch`` (both on a crop of
  ``--loop-tiles`` whole tiles per axis: 32 passes per tile would take half an hour for the
  whole volume); ``mfp``: the model reloaded with MFP active and an automatically chosen patch,
  on the whole volume; with ``--tta flips`` (or ``flips+transpose``) also ``mfp-tta``: the same
  with test-time augmentation. Tile throughput does not depend on the volume size, so the rates
  compare. GFLOP/s count the multiply-adds of every convolution at every position it is
  evaluated (2 FLOP each; MFP fragments included) and are compared with the measured 4096²
  matmul rate.
- ``unet``: the 3-level U-Net of ``bench/common.py`` (same convolutions) on a ``--unet-shape``
  volume: ekn ``predict_dense`` (patch chosen for the volume, Gaussian blending of overlapping
  tiles) against MONAI ``sliding_window_inference`` with the training patch 32×64×64, overlap
  0.25, Gaussian mode, running the same architecture in PyTorch (``pip install monai``).
- ``memory``: ``predict_volume`` of HDF5 volumes of 1×, 2× and 4× the memory budget
  (``--memory-budget``, default 64 MiB, uint8 input) with a small conv net, each in a fresh process;
  peak RSS growth over the process baseline and the Python-heap peak (tracemalloc).

Usage:
    python bench/bench_predict.py                                  # everything (about 15 min)
    python bench/bench_predict.py --parts speed --shape 32,256,256 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def build(net: common.FlatNet | common.UNet, patch: tuple[int, int, int]) -> Any:
    """``net`` built by ``common.build_ekn`` with input ``patch`` (batch 1); returns the model.

    Its prediction node is a Softmax; the engine is run on the node below it (the linear
    1×1×1 convolution, or after MFP reloading the FragmentsToDense node).
    """
    import dataclasses

    from ekn_core import neuromancer as nm

    common.build_ekn(dataclasses.replace(net, input=tuple(patch)))
    return nm.model_manager.current


def logits(model: Any) -> Any:
    """The node below the model's Softmax prediction node."""
    return model.prediction_node.parents[0]


def forward_gflop(node: Any) -> float:
    """Convolution FLOP (2 per multiply-add) of one call of ``node``'s graph in units of 1e9:
    every valid convolution at every position it is evaluated, MFP fragments included."""
    macs = 0.0
    for n in node.all_parents.values():
        kernel = getattr(n, "filter_shape", None)
        if kernel is None:
            continue
        parent = n.parents[0].shape
        positions = (parent["b"] or 1) * np.prod([s - k + 1 for s, k in zip(parent.spatial_shape, kernel)])
        macs += float(positions) * np.prod(kernel) * parent["f"] * n.shape["f"]
    return 2.0 * macs / 1e9


def part_speed(args: argparse.Namespace, peak: float) -> dict[str, Any]:
    from ekn_core import neuromancer as nm
    from ekn_core.prediction import predict_dense
    from ekn_core.prediction.net import NetAdapter
    from ekn_core.prediction.tiling import choose_patch
    from ekn_core.prediction.tta import parse_tta

    shape = tuple(args.shape)
    raw = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    model = build(common.NEURO3D, common.NEURO3D.input)
    node = logits(model)
    results: dict[str, Any] = {"shape": shape}

    # naive: one pass per output voxel, measured on a few windows
    patch = common.NEURO3D.input
    node(np.zeros((1, 1, *patch), np.float32))
    t0 = time.perf_counter()
    for i in range(args.naive_windows):
        node((raw[None, None, :patch[0], i:i + patch[1], :patch[2]] / 255.0).astype(np.float32))
    dt = time.perf_counter() - t0
    results["naive"] = {"voxels_per_s": args.naive_windows / dt,
                        "gflop_per_s": args.naive_windows * forward_gflop(node) / dt}
    print("naive", results["naive"], flush=True)

    def timed(name: str, n: Any, tiles: int | None, tta: str | None = None) -> None:
        """Predicts ``raw`` (or a crop of ``tiles`` whole tiles per axis) with mirror padding."""
        g = NetAdapter(n).geometry
        factor = len(parse_tta(tta, g.ndim)) or 1
        crop = raw if tiles is None else raw[tuple(slice(0, min(s, t * tiles)) for s, t in zip(shape, g.tile_out))]
        warm = raw[tuple(slice(0, t) for t in g.tile_out)]
        predict_dense(n, warm, pad_raw=True, memory_budget=args.budget, tta=tta)  # trace and warm up
        t0 = time.perf_counter()
        predict_dense(n, crop, pad_raw=True, memory_budget=args.budget, tta=tta)
        dt = time.perf_counter() - t0
        n_tiles = np.prod([-(-s // t) for s, t in zip(crop.shape, g.tile_out)])
        gflop = n_tiles * g.passes * factor * forward_gflop(n)
        results[name] = {"patch": g.patch, "passes_per_tile": g.passes * factor, "predicted": crop.shape, "seconds": dt,
                         "voxels_per_s": crop.size / dt, "gflop_per_s": gflop / dt,
                         "share_of_matmul_peak": gflop / dt / peak}
        print(name, results[name], flush=True)

    timed("loop", node, args.loop_tiles)
    net = NetAdapter(node)
    auto = choose_patch(net.geometry, shape, net.bytes_per_voxel, args.budget // 4).patch
    timed("loop-auto", logits(build(common.NEURO3D, auto)), args.loop_tiles)
    with tempfile.TemporaryDirectory() as tmp:
        path = model.save(os.path.join(tmp, "neuro3d.h5"))
        mnet = NetAdapter(logits(nm.modelload(path, override_mfp_to_active=True, imposed_batch_size=1)))
        mpatch = choose_patch(mnet.geometry, shape, mnet.bytes_per_voxel, args.budget // 4).patch
        mfp = nm.modelload(path, override_mfp_to_active=True, imposed_patch_size=mpatch, imposed_batch_size=1)
        timed("mfp", logits(mfp), None)
        if args.tta:
            timed("mfp-tta", logits(mfp), None, args.tta)
    return results


def part_unet(args: argparse.Namespace) -> dict[str, Any]:
    from ekn_core.prediction import predict_dense
    from ekn_core.prediction.net import NetAdapter
    from ekn_core.prediction.tiling import choose_patch

    shape = tuple(args.unet_shape)
    raw = np.random.default_rng(1).random(shape, dtype=np.float32)
    results: dict[str, Any] = {"shape": shape}
    base = NetAdapter(logits(build(common.UNET, common.UNET.input)))
    patch = choose_patch(base.geometry, shape, base.bytes_per_voxel, args.budget // 4).patch
    node = logits(build(common.UNET, patch))
    overlap = tuple(p // 4 // 8 * 8 for p in patch)
    predict_dense(node, raw[: patch[0], : patch[1], : patch[2]], overlap=overlap, memory_budget=args.budget)
    t0 = time.perf_counter()
    predict_dense(node, raw, overlap=overlap, memory_budget=args.budget)
    dt = time.perf_counter() - t0
    results["ekn"] = {"patch": patch, "overlap": overlap, "seconds": dt, "voxels_per_s": np.prod(shape) / dt}
    print("unet ekn", results["ekn"], flush=True)
    try:
        import torch
        from monai.inferers import sliding_window_inference
    except ImportError as err:
        results["monai"] = f"not run: {err} (pip install monai)"
        return results
    torch.set_num_threads(os.cpu_count() or 1)
    model = common._TorchUNet(common.UNET).eval()
    x = torch.from_numpy(raw[None, None])
    with torch.inference_mode():
        sliding_window_inference(x[..., :64, :128, :128], common.UNET.input, 4, model, overlap=0.25, mode="gaussian")
        t0 = time.perf_counter()
        sliding_window_inference(x, common.UNET.input, 4, model, overlap=0.25, mode="gaussian")
        dt = time.perf_counter() - t0
    results["monai"] = {"roi": common.UNET.input, "sw_batch_size": 4, "overlap": 0.25, "seconds": dt,
                        "voxels_per_s": np.prod(shape) / dt, "torch": torch.__version__}
    results["ekn_speedup"] = results["ekn"]["voxels_per_s"] / results["monai"]["voxels_per_s"]
    print("unet monai", results["monai"], "speedup", results["ekn_speedup"], flush=True)
    return results


def memory_child(size_factor: int, budget: int, tmp: str) -> None:
    """One out-of-core run in this (fresh) process; prints a JSON line with its peaks."""
    import tracemalloc

    import h5py
    import psutil

    from ekn_core import neuromancer as nm
    from ekn_core.prediction.blockwise import predict_volume

    nm.model_manager.newmodel("bench_mem")
    inp = nm.Input((None, 1, 8, 64, 64), "b,f,z,y,x", name="raw")
    out = nm.Conv(nm.Conv(inp, 4, (3, 3, 3)), 2, (1, 1, 1), activation_func="sigmoid")
    nm.model_manager.current.designate_nodes(input_node=inp, prediction_node=out)
    side = int(round((size_factor * budget / 32) ** 0.5))
    path = os.path.join(tmp, f"raw{size_factor}.h5")
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("raw", shape=(32, side, side), dtype="uint8", chunks=(8, 128, 128))
        for z in range(32):
            ds[z] = np.random.default_rng(z).integers(0, 255, (side, side), dtype=np.uint8)
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.01)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    tracemalloc.start()
    t0 = time.perf_counter()
    summary = predict_volume(out, path + ":raw", os.path.join(tmp, f"out{size_factor}.zarr"), tile=None,
                             memory_budget=budget, progress=False)
    dt = time.perf_counter() - t0
    heap = tracemalloc.get_traced_memory()[1]
    stop.set()
    thread.join()
    print(json.dumps({"factor": size_factor, "input_bytes": 32 * side * side, "budget": budget,
                      "rss_growth": peak[0] - base, "python_heap_peak": heap, "blocks": summary["blocks"],
                      "seconds": dt}))


def part_memory(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for factor in (1, 2, 4):
            out = subprocess.run([sys.executable, __file__, "--memory-child", str(factor), str(args.memory_budget), tmp],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print("memory", rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="speed,unet,memory")
    parser.add_argument("--shape", type=lambda s: tuple(int(v) for v in s.split(",")), default=(64, 512, 512))
    parser.add_argument("--unet-shape", type=lambda s: tuple(int(v) for v in s.split(",")), default=(64, 256, 256))
    parser.add_argument("--budget", type=int, default=1 << 30, help="memory budget in bytes (speed, unet)")
    parser.add_argument("--memory-budget", type=int, default=64 * 2**20, help="budget of the memory part")
    parser.add_argument("--naive-windows", type=int, default=4)
    parser.add_argument("--loop-tiles", type=int, default=2, help="tiles per axis the stride loop predicts")
    parser.add_argument("--tta", choices=("flips", "flips+transpose"), help="speed: also time MFP with "
                        "test-time augmentation")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(int(args.memory_child[0]), int(args.memory_child[1]), args.memory_child[2])
        return
    results: dict[str, Any] = {"machine": common.machine_info(), "load_before": common.load_average()}
    parts = args.parts.split(",")
    if {"speed", "unet"} & set(parts):
        results["matmul_peak_gflops"] = common.matmul_peak()
    if "speed" in parts:
        results["speed"] = part_speed(args, results["matmul_peak_gflops"])
    if "unet" in parts:
        results["unet"] = part_unet(args)
    if "memory" in parts:
        results["memory"] = part_memory(args)
    results["load_after"] = common.load_average()
    print(json.dumps(results, indent=1, default=str))
    if args.json:
        common.write_json(args.json, results)


if __name__ == "__main__":
    main()
