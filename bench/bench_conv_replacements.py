"""Benchmark: Conv's automatic replacements against plain ``tf.nn.convolution`` (forward + backward).

1. A 3-D convolution whose filter has size 1 on ``z`` runs as a 2-D convolution over batch·z
   (:func:`ekn_plugins.layers.conv.conv_z_as_batch`).
2. An all-ones (1×1×1) filter runs as a dot product over the features (``tf.tensordot``).

Both are first checked to equal plain conv3d to 1e-5, then timed (median of ``--repeat`` compiled
training-like steps: output, loss, gradients with respect to input and filter).

Usage::

    python bench/bench_conv_replacements.py [--repeat 7] [--small]

Results on the shared 2-core CI machine (TensorFlow 2.21 CPU, oneDNN, load ~7 from other jobs,
so noisy), full sizes, four runs: filter (1,5,5) 20→20 features on 23×92×92: speed-up ×0.85–×1.11
(plain 162–215 ms); 1×1×1 filter 30→30 features on 23×45×45: speed-up ×1.09–×1.47. The z-as-batch
replacement is not clearly faster on this CPU; rerun on an idle machine / GPU before relying on it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--small", action="store_true", help="tiny sizes (smoke test)")
    args = parser.parse_args()

    import tensorflow as tf

    from ekn_plugins.layers.conv import conv_z_as_batch

    def plain(x, w):
        return tf.nn.convolution(x, w, padding="VALID")

    def z_as_batch(x, w):
        return conv_z_as_batch(x, w, 0, "VALID", (1, 1, 1))

    def ones_dot(x, w):
        return tf.tensordot(x, w[0, 0, 0], axes=[[4], [0]])

    scale = 4 if args.small else 1
    cases = {
        "filter (1,5,5)": ((1, 23 // scale, 92 // scale, 92 // scale, 20), (1, 5, 5, 20, 20), z_as_batch),
        "filter (1,1,1)": ((1, 23 // scale, 45 // scale, 45 // scale, 30), (1, 1, 1, 30, 30), ones_dot),
    }
    rng = np.random.default_rng(0)
    for label, (x_shape, w_shape, replacement) in cases.items():
        x = tf.Variable(rng.random(x_shape, dtype="float32"))
        w = tf.Variable(rng.normal(0, 0.1, w_shape).astype("float32"))
        diff = float(tf.reduce_max(tf.abs(replacement(x, w) - plain(x, w))))
        assert diff < 1e-5, f"{label}: replacement differs from conv3d by {diff}"
        times = {}
        for name, fn in (("plain conv3d", plain), ("replacement", replacement)):
            @tf.function
            def step(fn=fn):
                with tf.GradientTape() as tape:
                    y = fn(x, w)
                    loss = tf.reduce_sum(y * y)
                return tape.gradient(loss, [x, w])

            step()
            samples = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                step()
                samples.append(time.perf_counter() - t0)
            times[name] = float(np.median(samples))
        print(f"{label}: input {x_shape}, max difference {diff:.1e}; "
              + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in times.items())
              + f"; speed-up ×{times['plain conv3d'] / times['replacement']:.2f}")


if __name__ == "__main__":
    main()
