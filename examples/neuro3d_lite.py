"""neuro3d_lite: a small anisotropic 3-D CNN for membrane (barrier) prediction — the CPU tutorial.

ELEKTRONN2's ``examples/neuro3d_lite.py`` for ekn. Output 4×30×30 voxels per 11×155×155 patch,
strides 2×4×4, field of view 5×39×39, about 0.89 M parameters.

Data: ELEKTRONN2's ``neuro_data_zxy`` layout. Make synthetic data with

    ekn data synth ~/ekn_data/neuro_data_zxy --shape 48 220 220

(or point EKN_DATA_DIR at a folder with raw_<i>.h5:raw and barrier_int16_<i>.h5:lab), then

    ekn train neuro3d_lite
"""

import os
import runpy

_shared = runpy.run_path(os.path.join(os.path.dirname(__file__), "neuro_settings.py"))
globals().update({k: v for k, v in _shared.items() if not k.startswith("__")})
if __name__ == "ekn_config":  # read by ekn train (not run, nor read by another config)
    warn_without_data(_data, f"ekn data synth {_data} --shape 48 220 220")

n_steps = 150000
max_runtime = 24 * 3600
monitor_batch_size = 10


def create_model(patch_size=(11, 155, 155), width=1.0):
    import ekn_core.neuromancer as nm

    n = scaled(width)
    inp = nm.Input((None, 1, *patch_size), "b,f,z,x,y", name="raw")
    out = nm.Conv(inp, n(20), (1, 4, 4), (1, 2, 2))
    out = nm.Conv(out, n(40), (3, 3, 3), (1, 2, 2))
    out = nm.Conv(out, n(150), (2, 4, 4), (2, 1, 1))
    out = nm.Conv(out, n(200), (1, 3, 3))
    out = nm.Conv(out, n(200), (1, 3, 3))
    out = nm.Conv(out, n(200), (1, 1, 1))
    out = nm.Conv(out, 2, (1, 1, 1), activation_func="lin")
    return barrier_model(inp, out)


if __name__ == "__main__":
    model = create_model()
    print(model.summary())
    print(model.test_run_prediction()[0].shape)
