"""Compile modes per device: plain ``tf.function`` vs XLA (``jit_compile=True``) vs eager.

For every device (the CPU and each GPU TensorFlow sees) and every benchmark net, measures ekn's
Adam training step in each mode with ``ekn_core.compile_choice.tune_training_step``: the
first-step time (trace + compile + first run) and the median step time, with the model state
restored after each mode. The fastest mode is the choice for that function's key (device kind,
role, input shapes, precision, architecture), recorded in ekn's compile-mode cache, the one the
trainer and every compiled function read (``compile_mode='auto'``, or no setting at all). A later
run only measures keys that are missing (``--force`` measures again). Without a cached choice ekn
compiles plain on CPU and XLA on GPU (``EKN_COMPILE`` and ``set_compile_mode`` override both).

Usage:
    python bench/bench_compile_modes.py --nets unet3d --steps 3
    python bench/bench_compile_modes.py --modes plain xla --cache ~/.cache/ekn/compile_modes.json
    python bench/bench_compile_modes.py --devices GPU:0 --modes plain xla --precision mixed_bfloat16

Example (the markdown row of one measured mode):
    >>> table_row("CPU:0", "unet3d", "plain", {"first_step_s": 4.7, "median_s": 0.3}, "plain", "")
    '| CPU:0 | unet3d | plain | 4700 | 300.0 | **plain** |'
    >>> table_row("CPU:0", "unet3d", "eager", {"error": "AttributeError: x"}, "plain", "")
    '| CPU:0 | unet3d | eager | failed: AttributeError: x | | |'
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

MODES = ["plain", "xla", "eager"]


def measure(device: str, net: str, modes: list[str], steps: int, cache: str,
            force: bool) -> tuple[dict[str, Any], bool]:
    """The cached or freshly measured entry of ``net``'s training step on ``device``.

    Returns:
        ``(entry, cached)``: ``entry`` as :func:`ekn_core.compile_choice.tune_training_step`
        returns it; ``cached`` is True when it came from the cache unmeasured.
    """
    import tensorflow as tf

    from ekn_core import compile_choice

    spec = common.NETS[net]
    with tf.device(device):  # the key names this device's kind
        model = common.build_ekn(spec).model
        batch = common.batch_arrays(spec)
        entry = compile_choice.cached_entry(compile_choice.training_key(model, batch, "Adam"), cache)
        if entry is not None and not force and all(m in entry for m in modes):
            return entry, True
        return compile_choice.tune_training_step(model, batch, optimiser="Adam", modes=modes, steps=steps,
                                                 cache=cache), False


def table_row(device: str, net: str, mode: str, result: dict[str, Any], choice: str | None, note: str) -> str:
    """One markdown row: times in ms, the chosen mode in bold (``note`` follows it)."""
    if "error" in result:
        return f"| {device} | {net} | {mode} | failed: {result['error']} | | |"
    mark = f"**{mode}**{note}" if mode == choice else ""
    return (f"| {device} | {net} | {mode} | {1e3 * result['first_step_s']:.0f} | {1e3 * result['median_s']:.1f} "
            f"| {mark} |")


def main(argv: list[str] | None = None) -> int:
    from ekn_core.compile_choice import cache_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="+", default=list(common.NETS), choices=list(common.NETS))
    parser.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mode (default 3)")
    parser.add_argument("--cache", default=None,
                        help=f"JSON file of choices (default: ekn's compile-mode cache, now {cache_path()})")
    parser.add_argument("--force", action="store_true", help="measure even keys that are cached")
    parser.add_argument("--precision", default="float32", choices=["float32", "mixed_bfloat16", "mixed_float16"])
    parser.add_argument("--devices", nargs="+", help="devices to measure, e.g. GPU:0 (default: the CPU and every GPU)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from ekn_core.node import set_precision

    cache = os.path.abspath(os.path.expanduser(args.cache)) if args.cache else cache_path()
    set_precision(args.precision)
    devices = args.devices or ["CPU:0"] + [f"GPU:{i}" for i, _ in enumerate(tf.config.list_physical_devices("GPU"))]
    print(f"load average {common.load_average():.2f}; devices {devices}; times in ms; cache {cache}")
    print("| device | net | mode | first step | median step | choice |")
    print("|---|---|---|---:|---:|---|")
    for device in devices:
        for net in args.nets:
            entry, cached = measure(device, net, args.modes, args.steps, cache, args.force)
            for mode in args.modes:
                print(table_row(device, net, mode, entry[mode], entry["choice"], " (cached)" if cached else ""),
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
