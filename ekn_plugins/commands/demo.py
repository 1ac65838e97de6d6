"""``ekn demo [OUT_DIR] [--steps N]``: the whole workflow on a fresh machine, in minutes on a CPU.

1. writes synthetic neuron-like EM volumes (``OUT_DIR/data``: 2 training, 1 validation and 1
   held-out volume in ELEKTRONN2's ``neuro_data_zxy`` layout);
2. writes the experiment config ``OUT_DIR/neuro3d_lite_demo.py`` (demo settings; the net is
   ``create_model`` of ``examples/neuro3d_lite.py``, which ekn ships) and trains it for ``--steps`` steps into ``OUT_DIR/runs/<name>``
   (checkpoints, model files, history, plots, previews, TensorBoard files);
3. reloads the best model with max-fragment pooling and predicts the held-out volume densely
   (``OUT_DIR/prediction.h5:barrier``);
4. writes pictures of the held-out volume (raw, prediction, labels);
5. evaluates the model on the held-out volume like ``ekn evaluate`` (threshold sweep with ROC and
   precision-recall figures, a small watershed parameter search against its neuron ids, scored by
   variation of information; ``OUT_DIR/evaluation/REPORT.md``) and prints where everything is.

Example:
    >>> text = demo_config("/data", steps=10)
    >>> "n_steps = 10" in text and "neuro3d_lite.py" in text
    True
"""

from __future__ import annotations

import argparse
import os
import time

from ekn_core.commands import Command, add_gpu_option

#: Synthetic volume shape (z, y, x) and label margin of the demo data.
DEMO_SHAPE = (40, 200, 200)
DEMO_MARGIN = (8, 24, 24)
#: Patch of the MFP dense prediction and evaluation: valid for neuro3d_lite with max-fragment pooling.
DEMO_MFP_PATCH = (22, 170, 170)
#: Watershed parameters the demo's evaluation tries (``ekn evaluate`` searches a larger default grid).
DEMO_SEGMENTATION_GRID = {"threshold": [0.2, 0.3, 0.5, 0.7], "seed_erosion": [0.0, 2.0]}

_CONFIG = '''"""Demo config written by `ekn demo` (the examples/neuro3d_lite.py net on synthetic data)."""

_data = {data!r}

save_path = {runs!r}
save_name = "neuro3d_lite_demo"
overwrite = True
preview_data_path = (_data + "/raw_2.h5", "raw")
preview_kwargs = {{"export_class": [1], "max_z_pred": 3}}
data_class = "BatchCreatorImage"
background_processes = 1
data_init_kwargs = {{
    "d_path": _data, "l_path": _data,
    "d_files": [("raw_%i.h5" % i, "raw") for i in range(3)],
    "l_files": [("barrier_int16_%i.h5" % i, "lab") for i in range(3)],
    "aniso_factor": 2, "valid_cubes": [2],
    "augmenters": [{{"type": "warp", "probability": 0.5}}, {{"type": "grey", "channels": [0]}}],
}}
n_steps = {steps}
max_runtime = 3600
history_freq = {history}
monitor_batch_size = 4
optimiser = "Adam"
optimiser_params = {{"lr": 1e-3, "mom": 0.9, "beta2": 0.999, "wd": 0.5e-4}}
schedules = {{"lr": {{"dec": 0.995, "every": 100}}}}
batch_size = 1
seed = 0


# the net of examples/neuro3d_lite.py (shipped with ekn), with its settings module beside it
create_model = __import__("runpy").run_path({example!r})["create_model"]
'''


def example_path(name: str) -> str:
    """Path of an example config shipped with ekn (``examples/`` of the source tree)."""
    from importlib import resources

    return str(resources.files("ekn_plugins") / "examples" / name)


def demo_config(data_dir: str, steps: int, runs_dir: str = "runs") -> str:
    """The text of the demo's experiment config."""
    return _CONFIG.format(data=data_dir, runs=runs_dir, steps=int(steps), history=max(1, min(50, int(steps) // 4)),
                          example=example_path("neuro3d_lite.py"))


def aligned_crops(raw, pred, label):
    """Crops raw ``(z, y, x)``, prediction ``(c, z, y, x)`` and labels to the voxels all three cover
    (all three are centred on each other).

    Example:
        >>> import numpy as np
        >>> r, p, l = aligned_crops(np.zeros((10, 20, 20)), np.zeros((2, 6, 16, 16)), np.zeros((8, 12, 12)))
        >>> r.shape, p.shape, l.shape
        ((6, 12, 12), (2, 6, 12, 12), (6, 12, 12))
    """
    ctx = [(r - q) // 2 for r, q in zip(raw.shape, pred.shape[1:])]
    loff = [(r - q) // 2 for r, q in zip(raw.shape, label.shape)]
    lo = [max(c, o) for c, o in zip(ctx, loff)]
    hi = [min(c + q, o + m) for c, q, o, m in zip(ctx, pred.shape[1:], loff, label.shape)]

    def crop(origin):
        return tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, origin))

    return raw[crop([0, 0, 0])], pred[(slice(None), *crop(ctx))], label[crop(loff)]


def write_pictures(raw, pred, label, folder: str) -> list[str]:
    """PNGs of the central z-slice of aligned crops: raw, barrier probability (channel 1), labels."""
    import numpy as np

    from ekn_core.atomic import write_bytes
    from ekn_core.trainer.preview import png_bytes

    os.makedirs(folder, exist_ok=True)
    z = pred.shape[1] // 2
    pictures = {"raw.png": raw[z], "prediction.png": pred[1, z], "label.png": (label[z] > 0).astype(np.float32)}
    paths = []
    for name, image in pictures.items():
        path = os.path.join(folder, name)
        write_bytes(path, png_bytes(image))
        paths.append(path)
    return paths


class DemoCommand(Command):
    """Run the README demo: synthetic EM data, train neuro3d_lite, predict with MFP, write pictures.

    Takes a few minutes on a 2-core CPU with the default 300 steps.
    """

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("out_dir", nargs="?", default="ekn_demo", metavar="OUT_DIR",
                            help="folder for data, run, prediction and pictures (default ./ekn_demo)")
        parser.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
        add_gpu_option(parser)

    def run(self, args: argparse.Namespace) -> int:
        import numpy as np

        from ekn_core.errors import ConfigError
        from ekn_core.atomic import write_text
        from ekn_core.trainer.config import ExperimentConfig
        from ekn_core.trainer.loop import Trainer
        from ekn_plugins.data.synth import write_dataset

        if args.steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {args.steps}")
        out = os.path.abspath(os.path.expanduser(args.out_dir))
        data_dir = os.path.join(out, "data")
        t0 = time.perf_counter()
        print(f"[1/5] writing synthetic EM volumes to {data_dir}")
        files = write_dataset(data_dir, n_volumes=4, shape=DEMO_SHAPE, label_margin=DEMO_MARGIN, seed=0)
        config_path = os.path.join(out, "neuro3d_lite_demo.py")
        write_text(config_path, demo_config(data_dir, args.steps, os.path.join(out, "runs")))
        print(f"[2/5] training neuro3d_lite for {args.steps} steps (config {config_path})")
        trainer = Trainer(ExperimentConfig.from_file(config_path), device=args.gpu)  # also the device of 3-5
        try:
            status = trainer.run()
        finally:
            trainer.close()
        run_dir = trainer.run_dir
        best = run_dir.model_path("best")
        model_file = best if os.path.exists(best) else run_dir.model_path("final")
        print(f"[3/5] dense prediction of the held-out volume with MFP ({os.path.basename(model_file)})")
        import ekn_core.neuromancer as nm
        from ekn_core.prediction import predict_dense
        from ekn_core.volumes import create_volume, open_volume

        model = nm.modelload(model_file, override_mfp_to_active=True, imposed_patch_size=DEMO_MFP_PATCH)
        with open_volume(files[3]["raw"]) as vol:
            raw = np.asarray(vol[...])
        with open_volume(files[3]["barrier"]) as vol:
            label = np.asarray(vol[...])
        pred = predict_dense(model.prediction_node, raw)
        pred_path = os.path.join(out, "prediction.h5")
        with create_volume(pred_path + ":barrier", shape=pred.shape, dtype="float32") as vol:
            vol[...] = pred
        raw_c, pred_c, label_c = aligned_crops(raw, pred, label)
        pictures = write_pictures(raw_c, pred_c, label_c, os.path.join(out, "pictures"))
        error = float(np.mean((pred_c[1] > 0.5) != (label_c > 0)))
        print("[4/5] evaluating the model on the held-out volume (threshold sweep, segmentation search)")
        from ekn_plugins.evaluation.model_evaluation import evaluate_model
        from ekn_plugins.validation.spec import ValidationVolume

        held_out = ValidationVolume(files[3]["raw"], files[3]["barrier"], None, "held_out", files[3]["ids"])
        evaluation_dir = os.path.join(out, "evaluation")
        record = evaluate_model(model_file, [held_out], evaluation_dir, mfp=True, tile=DEMO_MFP_PATCH,
                                grid=DEMO_SEGMENTATION_GRID, progress=False)
        scores = record["volumes"][0]
        print("[5/5] done in %.1f min (training status: %s, %d steps)" % ((time.perf_counter() - t0) / 60, status,
                                                                        trainer.step))
        print(f"  data:           {data_dir}")
        print(f"  config:         {config_path}")
        print(f"  run directory:  {run_dir.path}")
        print(f"  model files:    {run_dir.models}")
        print(f"  checkpoints:    {run_dir.checkpoints}  (continue: ekn train --resume {run_dir.path})")
        print(f"  plots:          {run_dir.plots}")
        print(f"  previews:       {run_dir.previews}")
        print(f"  tensorboard:    tensorboard --logdir {run_dir.tensorboard}")
        print(f"  prediction:     {pred_path}:barrier  shape {pred.shape}")
        print(f"  pictures:       {', '.join(pictures)}")
        print(f"  evaluation:     {os.path.join(evaluation_dir, 'REPORT.md')}")
        print(f"  held-out pixel error (barrier > 0.5 vs labels): {error:.3f}")
        print(f"  held-out ROC AUC {scores['binary']['roc_auc']:.3f}, best F1 {scores['binary']['best_f1']:.3f}; "
              f"segmentation VI {scores['segmentation']['scores']['vi']:.3f} "
              f"(split {scores['segmentation']['scores']['vi_split']:.3f}, "
              f"merge {scores['segmentation']['scores']['vi_merge']:.3f})")
        return 0 if status == "finished" else 1
