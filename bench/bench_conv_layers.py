"""Benchmark: the convolution kernels of an anisotropic net, layer by layer, against the matmul peak.

For every convolution of a benchmark net (``bench/common.py``) this times TensorFlow's three
kernels on their own, compiled with ``tf.function``: the forward convolution
(``Conv3D``), the input gradient (``Conv3DBackpropInputV2``) and the weight gradient
(``Conv3DBackpropFilterV2``), and gives each one's rate as a share of the matmul peak measured in
the same run. It also times three other ways to compute the weight gradient, after checking that
each equals TensorFlow's:

- ``im2col``: all shifted input windows concatenated into one matrix, one matrix product;
- ``per-tap``: one matrix product per filter tap, stacked;
- ``z-as-2d``: one 2-D weight gradient per z tap with z folded into the batch.

The sum of the kernel times is what a training step cannot go below with these kernels, so the
table shows how far a float32 step is from the peak and where the rest goes.

Usage::

    python bench/bench_conv_layers.py [--net neuro3d_lite] [--repeat 5] [--small]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import NETS, FlatNet, load_average, matmul_peak  # noqa: E402

KERNELS = ("forward", "input grad", "weight grad")
ALTERNATIVES = ("im2col", "per-tap", "z-as-2d")


def layer_geometry(net: FlatNet, scale: int = 1) -> list[dict[str, Any]]:
    """Input shape, channels and filter of every convolution of ``net`` (input divided by ``scale``
    laterally for smoke runs).

    Example:
        >>> [g["in_shape"] for g in layer_geometry(NETS["neuro3d_lite"])][:2]
        [(25, 171, 171), (25, 84, 84)]
    """
    size, n_in, layers = [net.input[0], net.input[1] // scale, net.input[2] // scale], 1, []
    for spec in net.layers:
        layers.append({"in_shape": tuple(size), "n_in": n_in, "n_out": spec.n_f, "filter": spec.filter})
        out = [s - f + 1 for s, f in zip(size, spec.filter)]
        size, n_in = [o // p for o, p in zip(out, spec.pool)], spec.n_f
    return layers


def kernel_functions(x: Any, w: Any, dy: Any) -> dict[str, Callable[[], Any]]:
    """The three TensorFlow kernels and the three weight-gradient alternatives for one layer."""
    import tensorflow as tf

    k, ci, co = tuple(w.shape[:3]), int(w.shape[3]), int(w.shape[4])
    out = tuple(int(s) for s in dy.shape[1:4])
    in_shape = tf.constant(x.shape.as_list())
    w_shape = tf.constant(w.shape.as_list())
    ones = dict(strides=[1] * 5, padding="VALID")
    taps = [(a, b, c) for a in range(k[0]) for b in range(k[1]) for c in range(k[2])]

    def window(a: int, b: int, c: int) -> Any:
        return x[:, a:a + out[0], b:b + out[1], c:c + out[2], :]

    def im2col() -> Any:
        cols = tf.reshape(tf.concat([window(*t) for t in taps], -1), (-1, len(taps) * ci))
        return tf.reshape(tf.matmul(cols, tf.reshape(dy, (-1, co)), transpose_a=True), (*k, ci, co))

    def per_tap() -> Any:
        grads = [tf.matmul(tf.reshape(window(*t), (-1, ci)), tf.reshape(dy, (-1, co)), transpose_a=True) for t in taps]
        return tf.reshape(tf.stack(grads), (*k, ci, co))

    def z_as_2d() -> Any:
        folded_dy = tf.reshape(dy, (out[0], out[1], out[2], co))
        return tf.stack([tf.raw_ops.Conv2DBackpropFilter(
            input=tf.reshape(x[:, a:a + out[0]], (out[0], *x.shape[2:])), filter_sizes=[k[1], k[2], ci, co],
            out_backprop=folded_dy, strides=[1] * 4, padding="VALID") for a in range(k[0])])

    plain = {
        "forward": lambda: tf.nn.conv3d(x, w, **ones),
        "input grad": lambda: tf.raw_ops.Conv3DBackpropInputV2(input_sizes=in_shape, filter=w, out_backprop=dy, **ones),
        "weight grad": lambda: tf.raw_ops.Conv3DBackpropFilterV2(input=x, filter_sizes=w_shape, out_backprop=dy, **ones),
        "im2col": im2col, "per-tap": per_tap, "z-as-2d": z_as_2d,
    }
    return {name: tf.function(fn) for name, fn in plain.items()}


def measure_layer(geometry: dict[str, Any], repeat: int) -> dict[str, float]:
    """Median seconds of each kernel/alternative for one layer, rounds interleaved."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    k, ci, co = geometry["filter"], geometry["n_in"], geometry["n_out"]
    out = tuple(s - f + 1 for s, f in zip(geometry["in_shape"], k))
    x = tf.constant(rng.random((1, *geometry["in_shape"], ci), dtype="float32"))
    w = tf.constant(rng.normal(0, 0.1, (*k, ci, co)).astype("float32"))
    dy = tf.constant(rng.normal(0, 1, (1, *out, co)).astype("float32"))
    functions = kernel_functions(x, w, dy)
    reference = functions["weight grad"]().numpy()
    for name in ALTERNATIVES:
        difference = float(np.abs(functions[name]().numpy() - reference).max())
        if difference > 1e-4 * float(np.abs(reference).max()):
            raise AssertionError(f"{name} differs from Conv3DBackpropFilterV2 by {difference}")
    samples: dict[str, list[float]] = {name: [] for name in functions}
    for fn in functions.values():  # trace and warm up
        fn().numpy()
    for _ in range(repeat):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn().numpy()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="neuro3d_lite", choices=[n for n, v in NETS.items() if isinstance(v, FlatNet)])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="lateral input size / 4 (smoke run)")
    args = parser.parse_args()

    net = NETS[args.net]
    load_before, peak = load_average(), matmul_peak() * 1e9
    macs = net.conv_macs() if not args.small else None
    rows, totals, best_saving = [], dict.fromkeys(KERNELS + ALTERNATIVES, 0.0), 0.0
    for index, geometry in enumerate(layer_geometry(net, 4 if args.small else 1)):
        times = measure_layer(geometry, args.repeat)
        flop = 2 * (macs[index] if macs else math.prod(
            s - f + 1 for s, f in zip(geometry["in_shape"], geometry["filter"]))
            * math.prod(geometry["filter"]) * geometry["n_in"] * geometry["n_out"])
        for name, seconds in times.items():
            if not (index == 0 and name == "input grad"):  # a first layer needs no input gradient
                totals[name] += seconds
        best_saving += max(0.0, times["weight grad"] - min(times[n] for n in ALTERNATIVES))
        rate = {name: flop / seconds / peak for name, seconds in times.items()}
        rows.append(f"| {index + 1} | {geometry['n_in']}→{geometry['n_out']} {geometry['filter']} on "
                    f"{'×'.join(map(str, geometry['in_shape']))} | {flop / 1e9:.2f} | "
                    + " | ".join(f"{times[n] * 1e3:.1f} ({rate[n]:.0%})" for n in KERNELS) + " | "
                    + " | ".join(f"{times[n] / times['weight grad']:.2f}×" for n in ALTERNATIVES) + " |")
    print(f"{args.net}: load average {load_before:.2f} → {load_average():.2f}; matmul peak {peak / 1e9:.0f} GFLOP/s; "
          f"median of {args.repeat}; ms (share of the peak); alternatives as time ÷ weight-grad time")
    print("| layer | convolution | GFLOP fwd | " + " | ".join(KERNELS) + " | " + " | ".join(ALTERNATIVES) + " |")
    print("|---|---|---:|" + "---:|" * (len(KERNELS) + len(ALTERNATIVES)))
    print("\n".join(rows))
    kernel_sum = sum(totals[n] for n in KERNELS)
    print(f"sum of the kernels (no input gradient for layer 1): {kernel_sum * 1e3:.0f} ms; with the fastest "
          f"weight gradient of each layer the sum would fall by at most "
          f"{best_saving * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
