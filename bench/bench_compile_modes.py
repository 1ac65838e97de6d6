"""Compile modes per device: plain ``tf.function`` vs XLA (``jit_compile=True``) vs eager.

For every device (the CPU and each GPU TensorFlow sees) and every benchmark net, runs ekn's
training step in each mode (``ekn_core.node.set_compile_mode``) and records the first-step time
(trace + compile + first run) and the median step time. The fastest mode is the choice for that
(device, net, input shape, precision); choices are cached in a JSON file, so a later run only
measures keys that are missing (``--force`` measures again). ekn's default without measurement is
plain on CPU and XLA on GPU (``EKN_COMPILE`` overrides it).

Usage:
    python bench/bench_compile_modes.py --nets unet3d --steps 3
    python bench/bench_compile_modes.py --modes plain xla --cache ~/.cache/ekn/compile_modes.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "ekn", "compile_modes.json")


def cache_key(device: str, net: str, precision: str) -> str:
    """Key of one choice: device kind, net and input shape, precision policy.

    Example:
        >>> cache_key("CPU:0", "unet3d", "float32")
        'CPU:0|unet3d|32x64x64|float32'
    """
    return f"{device}|{net}|{'x'.join(map(str, common.NETS[net].input))}|{precision}"


def load_cache(path: str) -> dict[str, Any]:
    """The cached choices (empty when the file does not exist)."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def measure(device: str, net: str, modes: list[str], steps: int) -> dict[str, Any]:
    """First-step and median step seconds of each mode on one device; the fastest is ``choice``."""
    import tensorflow as tf

    from ekn_core.node import set_compile_mode

    result: dict[str, Any] = {}
    with tf.device(device):
        step = common.build_ekn(common.NETS[net])
        for mode in modes:
            set_compile_mode(mode)
            t0 = time.perf_counter()
            try:
                step()
            except Exception as exc:  # a mode that fails is reported, not chosen
                result[mode] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:200]}
                continue
            first = time.perf_counter() - t0
            times = common.time_calls(step, steps)
            result[mode] = {"first_step_s": first, "median_s": statistics.median(times)}
    set_compile_mode(None)
    working = [m for m in modes if "median_s" in result[m]]
    result["choice"] = min(working, key=lambda m: result[m]["median_s"]) if working else None
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="+", default=list(common.NETS), choices=list(common.NETS))
    parser.add_argument("--modes", nargs="+", default=["plain", "xla", "eager"], choices=["plain", "xla", "eager"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mode (default 3)")
    parser.add_argument("--cache", default=DEFAULT_CACHE, help=f"JSON file of choices (default {DEFAULT_CACHE})")
    parser.add_argument("--force", action="store_true", help="measure even keys that are cached")
    parser.add_argument("--precision", default="float32", choices=["float32", "mixed_bfloat16", "mixed_float16"])
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from ekn_core.node import set_precision

    set_precision(args.precision)
    devices = ["CPU:0"] + [f"GPU:{i}" for i, _ in enumerate(tf.config.list_physical_devices("GPU"))]
    cache = load_cache(args.cache)
    print(f"load average {common.load_average():.2f}; devices {devices}; times in ms")
    print("| device | net | mode | first step | median step | choice |")
    print("|---|---|---|---:|---:|---|")
    for device in devices:
        for net in args.nets:
            key = cache_key(device, net, args.precision)
            if key in cache and not args.force and all(m in cache[key] for m in args.modes):
                entry, note = cache[key], " (cached)"
            else:
                entry, note = measure(device, net, args.modes, args.steps), ""
                cache[key] = entry
                os.makedirs(os.path.dirname(os.path.abspath(args.cache)), exist_ok=True)
                common.write_json(args.cache, cache)
            for mode in args.modes:
                r = entry[mode]
                if "error" in r:
                    print(f"| {device} | {net} | {mode} | failed: {r['error']} | | |")
                    continue
                mark = f"**{mode}**{note}" if mode == entry["choice"] else ""
                print(f"| {device} | {net} | {mode} | {1e3 * r['first_step_s']:.0f} | {1e3 * r['median_s']:.0f} | {mark} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
