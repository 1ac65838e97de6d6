"""Dense-prediction benchmark: voxels/s of the stride loop, MFP and a naive sliding window,
a 3-D U-Net against MONAI's ``sliding_window_inference`` in PyTorch, and out-of-core peak memory.

Parts (``--parts``, default all):

- ``speed``: ELEKTRONN2's neuro3d net (``bench/common.py``; final 1×1×1 linear conv as
  prediction node) on a ``--shape`` volume (default 64×512×512, mirror-padded so the output has
  the input shape). ``naive``: one forward pass per output voxel (measured on a few windows and
  extrapolated); ``loop``: ELEKTRONN2's tiles and stride-phase loop with the training patch
  23×185×185; ``loop-auto``: the same with the patch chosen by ``choose_patch``; ``mfp``: the
  model reloaded with MFP active and an automatically chosen patch. GFLOP/s count the forward
  multiply-adds of the passes actually run (2 FLOP each) and are compared with the measured
  4096² matmul rate.
- ``unet``: the 3-level U-Net of ``bench/common.py`` (same convolutions) on a ``--unet-shape``
  volume: ekn ``predict_dense`` (patch chosen for the volume, Gaussian blending of overlapping
  tiles) against MONAI ``sliding_window_inference`` with the training patch 32×64×64, overlap
  0.25, Gaussian mode, running the same architecture in PyTorch (``pip install monai``).
- ``memory``: ``predict_volume`` of HDF5 volumes of 1×, 2× and 4× the memory budget
  (``--budget``, default 64 MiB, uint8 input) with a small conv net, each in a fresh process;
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


def build_flat(net: common.FlatNet, patch: tuple[int, int, int]) -> Any:
    """The ekn model of a flat net for prediction (final linear 1×1×1 conv as prediction node)."""
    import uuid

    from ekn_core import neuromancer as nm

    model = nm.model_manager.newmodel(f"bench_pred_{uuid.uuid4().hex[:6]}")
    out = inp = nm.Input((None, 1, *patch), "b,f,z,x,y", name="raw")
    for layer in net.layers:
        out = nm.Conv(out, layer.n_f, layer.filter, layer.pool, activation_func=layer.act, print_repr=False)
    model.designate_nodes(input_node=inp, prediction_node=out)
    return model


def forward_gflop(node: Any) -> float:
    """Forward FLOP (2 per multiply-add) of one call of ``node``'s graph, in units of 1e9."""
    return 2.0 * float(node.all_computational_cost) / 1e9


def part_speed(args: argparse.Namespace, peak: float) -> dict[str, Any]:
    from ekn_core import neuromancer as nm
    from ekn_core.prediction import predict_dense
    from ekn_core.prediction.net import NetAdapter
    from ekn_core.prediction.tiling import choose_patch

    shape = tuple(args.shape)
    raw = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    voxels = float(np.prod(shape))
    model = build_flat(common.NEURO3D, common.NEURO3D.input)
    node = model.prediction_node
    results: dict[str, Any] = {"shape": shape}

    # naive: one pass per output voxel, measured on a few windows
    patch = common.NEURO3D.input
    windows = np.stack([raw[:patch[0], i:i + patch[1], :patch[2]] for i in range(args.naive_windows)])
    x = (windows[:, None] / 255.0).astype(np.float32)
    node(x[:1])
    t0 = time.perf_counter()
    node(x)
    dt = time.perf_counter() - t0
    results["naive"] = {"voxels_per_s": args.naive_windows / dt,
                        "gflop_per_s": args.naive_windows * forward_gflop(node) / dt}

    def timed(name: str, n: Any, **kw: Any) -> None:
        net = NetAdapter(n)
        g = net.geometry
        small = raw[: g.tile_in[0] + 2, : g.tile_in[1] + 8, : g.tile_in[2] + 8]
        predict_dense(n, small, pad_raw=True, **kw)  # trace and warm up
        t0 = time.perf_counter()
        predict_dense(n, raw, pad_raw=True, **kw)
        dt = time.perf_counter() - t0
        tiles = np.prod([-(-s // t) for s, t in zip(shape, g.tile_out)])
        gflop = tiles * g.passes * forward_gflop(n) / (n.input_nodes[0].shape["b"] or 1)
        results[name] = {"patch": g.patch, "passes_per_tile": g.passes, "seconds": dt,
                         "voxels_per_s": voxels / dt, "gflop_per_s": gflop / dt,
                         "share_of_matmul_peak": gflop / dt / peak}
        print(name, results[name], flush=True)

    timed("loop", node)
    net = NetAdapter(node)
    auto = choose_patch(net.geometry, shape, net.bytes_per_voxel, args.budget // 4).patch
    with tempfile.TemporaryDirectory() as tmp:
        path = model.save(os.path.join(tmp, "neuro3d.h5"))
        timed("loop-auto", nm.modelload(path, imposed_patch_size=auto).prediction_node)
        mfp = nm.modelload(path, override_mfp_to_active=True, imposed_batch_size=1)
        mnet = NetAdapter(mfp.prediction_node)
        mpatch = choose_patch(mnet.geometry, shape, mnet.bytes_per_voxel, args.budget // 4).patch
        timed("mfp", nm.modelload(path, override_mfp_to_active=True, imposed_patch_size=mpatch,
                                  imposed_batch_size=1).prediction_node)
    return results


def build_unet(net: common.UNet, patch: tuple[int, int, int]) -> Any:
    """The ekn U-Net of ``bench/common.py`` (same convolutions) for prediction."""
    import uuid

    from ekn_core import neuromancer as nm

    model = nm.model_manager.newmodel(f"bench_unet_{uuid.uuid4().hex[:6]}")
    skips, out = [], None
    out = inp = nm.Input((None, 1, *patch), "b,f,z,x,y", name="raw")
    for level, c in enumerate(net.channels):
        if level:
            out = nm.Pool(out, (2, 2, 2), print_repr=False)
        out = nm.Conv(out, c, (3, 3, 3), conv_mode="same", print_repr=False)
        out = nm.Conv(out, c, (3, 3, 3), conv_mode="same", print_repr=False)
        skips.append(out)
    for level in range(len(net.channels) - 2, -1, -1):
        c = net.channels[level]
        up = nm.UpConv(out, c, (2, 2, 2), identity_init=False, print_repr=False)
        out = nm.Concat([skips[level], up])
        out = nm.Conv(out, c, (3, 3, 3), conv_mode="same", print_repr=False)
        out = nm.Conv(out, c, (3, 3, 3), conv_mode="same", print_repr=False)
    out = nm.Conv(out, net.n_class, (1, 1, 1), activation_func="lin", print_repr=False)
    model.designate_nodes(input_node=inp, prediction_node=out)
    return model


def part_unet(args: argparse.Namespace) -> dict[str, Any]:
    from ekn_core.prediction import predict_dense
    from ekn_core.prediction.net import NetAdapter
    from ekn_core.prediction.tiling import choose_patch

    shape = tuple(args.unet_shape)
    raw = np.random.default_rng(1).random(shape, dtype=np.float32)
    results: dict[str, Any] = {"shape": shape}
    base = build_unet(common.UNET, common.UNET.input)
    g = NetAdapter(base.prediction_node).geometry
    patch = choose_patch(g, shape, NetAdapter(base.prediction_node).bytes_per_voxel, args.budget // 4).patch
    node = build_unet(common.UNET, patch).prediction_node
    overlap = tuple(p // 4 // 8 * 8 for p in patch)
    predict_dense(node, raw[: patch[0], : patch[1], : patch[2]], overlap=overlap)
    t0 = time.perf_counter()
    predict_dense(node, raw, overlap=overlap)
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
            out = subprocess.run([sys.executable, __file__, "--memory-child", str(factor), str(args.budget), tmp],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print("memory", rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="speed,unet,memory")
    parser.add_argument("--shape", type=lambda s: tuple(int(v) for v in s.split(",")), default=(64, 512, 512))
    parser.add_argument("--unet-shape", type=lambda s: tuple(int(v) for v in s.split(",")), default=(64, 256, 256))
    parser.add_argument("--budget", type=int, default=64 * 2**20, help="memory budget in bytes")
    parser.add_argument("--naive-windows", type=int, default=8)
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
