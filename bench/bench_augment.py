"""Augmented training patches per second per core, and the data-wait share of a training step.

Part 1 (no TensorFlow): single-process throughput of :class:`~ekn_plugins.data.patches.PatchSource`
with warping (rotation, shear, stretch, flips, perspective) plus grey-value augmentation, image
and label cut, at 25×171×171 and 32×64×64, against a plain baseline in the same run: the same
random rotation done with ``scipy.ndimage.map_coordinates`` (trilinear) on precomputed
coordinates, image only. Rates are per CPU second of this process (``time.process_time``), i.e.
per core. Goal: ≥ 2× the baseline. Then the same rate at 25×171×171 for other pipelines
(:data:`PIPELINES`: a plain crop, flips only, warps with elastic deformation and misalignment, warps
with every intensity augmenter).

``--per-augmenter`` instead prints a table of each augmenter's milliseconds per patch and share of
the patch time (:meth:`~ekn_plugins.augmenters.base.Pipeline.timings`; the rest is cutting and
resampling) for :data:`PER_AUGMENTER`, every augmenter acting, at 25×171×171 (wall time, one
process).

Part 2 (``--train``): trains ELEKTRONN2's neuro3d_lite architecture (input 11×155×155, output
4×30×30, strides 2×4×4; built directly with Keras layers here) on synthetic EM volumes fed by
:class:`~ekn_plugins.data.workers.BackgroundBatches` with 2 workers and warping, and reports the
share of wall time the loop spends waiting in ``get()``. Goal: < 5 %.

Run: ``python bench/bench_augment.py [--seconds 5] [--per-augmenter] [--train] [--steps 30] [--workers 2]``. Numbers
are noisy when other processes share the cores; each row gives the load average of the machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import time

import numpy as np

from ekn_plugins.augmenters import sampling
from ekn_plugins.data.patches import PatchSource
from ekn_plugins.data.synth import write_dataset

WARP = [{"type": "warp", "rotation": 180, "shear": 0.1, "stretch": 0.1, "perspective": 0.001},
        {"type": "grey"}]
#: Further pipelines timed at 25×171×171 (image and labels, one process).
PIPELINES = {
    "crop": None,
    "flip": [{"type": "flip"}],
    "warp+elastic+misalignment+grey": [{"type": "warp"}, {"type": "elastic"},
                                       {"type": "misalignment", "probability": 1}, {"type": "grey"}],
    "warp+all intensity": [{"type": "warp"}, {"type": "grey"}, {"type": "histogram"}, {"type": "blur"},
                           {"type": "noise"}, {"type": "missing_section", "probability": 1},
                           {"type": "low_contrast", "probability": 1}],
}

#: The pipeline that ``--per-augmenter`` times: every augmenter, each acting on every patch.
PER_AUGMENTER = [{"type": name, "probability": 1} for name in
                 ("flip", "warp", "elastic", "misalignment", "grey", "histogram", "blur", "noise", "missing_section",
                  "low_contrast", "random_erasing", "blurry_blobs")]


def per_core_rate(fn, seconds: float) -> float:
    fn()  # warm-up (numba compilation, caches)
    start, n = time.process_time(), 0
    while time.process_time() - start < seconds:
        fn()
        n += 1
    return n / (time.process_time() - start)


def baseline(raw: np.ndarray, patch: tuple[int, int, int], rng: np.random.Generator):
    """Plain trilinear warp: random rotation about z, coordinates in numpy, scipy map_coordinates."""
    from scipy.ndimage import map_coordinates

    centre = (np.array(patch) - 1) / 2
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in patch], indexing="ij")).reshape(3, -1)
    grid -= centre[:, None].astype(np.float32)

    def one():
        a = rng.uniform(0, 2 * np.pi)
        rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]], np.float32)
        pos = np.array(raw.shape) / 2
        crd = rot @ grid + pos[:, None].astype(np.float32)
        return map_coordinates(raw, crd, order=1, prefilter=False).reshape(patch)

    return one


def bench_augment(files: list[dict[str, str]], seconds: float) -> list[dict]:
    rows = []
    for patch, offsets, strides in (((25, 171, 171), (7, 52, 52), (2, 4, 4)), ((32, 64, 64), (8, 16, 16), (1, 1, 1))):
        src = PatchSource(patch_size=patch, offsets=offsets, strides=strides, d_files=[f["raw"] for f in files],
                          l_files=[f["barrier"] for f in files], aniso_factor=2.0, augmenters=WARP, seed=0)
        ours = per_core_rate(lambda: src.getbatch(1), seconds)
        base = per_core_rate(baseline(np.asarray(src.train_cubes[0].raw)[0], patch, np.random.default_rng(0)), seconds)
        rows.append({"patch": "x".join(map(str, patch)), "augmented_per_s_per_core": round(ours, 1),
                     "baseline_map_coordinates_per_s_per_core": round(base, 1), "speedup": round(ours / base, 2),
                     "numba": sampling.HAVE_NUMBA, "warp_redraws": src.warp_stats["redrawn"],
                     "load": round(os.getloadavg()[0], 2)})
    return rows


def bench_pipelines(files: list[dict[str, str]], seconds: float) -> list[dict]:
    """Patches per second per core of each of :data:`PIPELINES` at 25×171×171."""
    rows = []
    for name, augmenters in PIPELINES.items():
        src = PatchSource(patch_size=(25, 171, 171), offsets=(7, 52, 52), strides=(2, 4, 4), aniso_factor=2.0,
                          d_files=[f["raw"] for f in files], l_files=[f["barrier"] for f in files],
                          augmenters=augmenters, seed=0, in_memory=True)
        rows.append({"pipeline": name, "patch": "25x171x171",
                     "per_s_per_core": round(per_core_rate(lambda: src.getbatch(1), seconds), 1),
                     "load": round(os.getloadavg()[0], 2)})
    return rows


def bench_per_augmenter(files: list[dict[str, str]], seconds: float) -> str:
    """A markdown table of each augmenter's time per patch and share of the patch time (wall time
    of ``getbatch(1)``), :data:`PER_AUGMENTER` at 25×171×171 for ``seconds`` seconds."""
    src = PatchSource(patch_size=(25, 171, 171), offsets=(7, 52, 52), strides=(2, 4, 4), aniso_factor=2.0,
                      d_files=[f["raw"] for f in files], l_files=[f["barrier"] for f in files],
                      augmenters=PER_AUGMENTER, seed=0, in_memory=True)
    src.getbatch(1)  # warm-up (numba compilation, caches)
    before = src.pipeline.timings()
    start, n = time.perf_counter(), 0
    while not n or time.perf_counter() - start < seconds:
        src.getbatch(1)
        n += 1
    total = time.perf_counter() - start
    lines = [f"{n} patches 25x171x171, {1000 * total / n:.2f} ms each (load {os.getloadavg()[0]:.2f}, "
             f"numba {sampling.HAVE_NUMBA})", "", "| augmenter | calls per patch | ms per patch | share |",
             "|---|---|---|---|"]
    spent = 0.0
    for name, t in src.pipeline.timings().items():
        seconds_used = t["seconds"] - before[name]["seconds"]
        spent += seconds_used
        lines.append(f"| {name} | {(t['calls'] - before[name]['calls']) / n:.2f} | {1000 * seconds_used / n:.2f} | "
                     f"{100 * seconds_used / total:.1f} % |")
    lines.append(f"| rest (cutting, resampling, labels) | | {1000 * (total - spent) / n:.2f} | "
                 f"{100 * (total - spent) / total:.1f} % |")
    return "\n".join(lines)


def bench_training(files: list[dict[str, str]], steps: int, n_workers: int) -> dict:
    """Share of the training-step time spent waiting for augmented batches, training ekn's
    neuro3d_lite model (``examples/neuro3d_lite.py``) with warping on ``n_workers`` workers."""
    import runpy

    from ekn_plugins.data.workers import BackgroundBatches

    example = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "neuro3d_lite.py")
    model = runpy.run_path(example)["create_model"]()
    inp, target = model.input_node.shape, model.target_node.shape
    assert tuple(target.spatial_shape) == (4, 30, 30)
    factory = functools.partial(PatchSource, patch_size=inp.spatial_shape, offsets=target.offsets,
                                strides=target.strides, target_shape=target.spatial_shape,
                                input_tags=",".join(inp.tags), target_tags=",".join(target.tags),
                                target_dtype=model.target_node.dtype,
                                d_files=[f["raw"] for f in files], l_files=[f["barrier"] for f in files],
                                aniso_factor=2.0, augmenters=[{"type": "flip"}, {**WARP[0], "probability": 0.5},
                                                              WARP[1]])
    with BackgroundBatches(factory, batch_size=1, n_workers=n_workers, seed=0) as batches:
        for _ in range(3):  # warm-up: worker start, tracing
            model.trainingstep(*batches.get(), optimiser="Adam")
        wait = 0.0
        start = time.perf_counter()
        for _ in range(steps):
            t0 = time.perf_counter()
            batch = batches.get()
            wait += time.perf_counter() - t0
            model.trainingstep(*batch, optimiser="Adam")
        total = time.perf_counter() - start
    return {"model": "neuro3d_lite (ekn)", "workers": n_workers, "steps": steps,
            "step_ms": round(1000 * total / steps, 1), "data_wait_share": round(wait / total, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="CPU seconds per throughput measurement")
    parser.add_argument("--per-augmenter", action="store_true",
                        help="only print the time per patch of each augmenter (a table), for --seconds seconds")
    parser.add_argument("--train", action="store_true", help="also measure the data-wait share of training")
    parser.add_argument("--steps", type=int, default=30, help="training steps to time")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = write_dataset(tmp, n_volumes=2, shape=(40, 300, 300), label_margin=(4, 24, 24), seed=0)
        if args.per_augmenter:
            print(bench_per_augmenter(files, args.seconds))
            return
        for row in bench_augment(files, args.seconds) + bench_pipelines(files, args.seconds):
            print(json.dumps(row))
        if args.train:
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            print(json.dumps(bench_training(files, args.steps, args.workers)))


if __name__ == "__main__":
    main()
