"""neuro3d: the anisotropic 3-D CNN of ELEKTRONN2's main tutorial (membrane / barrier prediction).

Output 5×21×21 voxels per 23×185×185 patch, strides 2×4×4, field of view 15×105×105, about
2.76 M parameters. Data: ELEKTRONN2's ``neuro_data_zxy`` layout (``ekn data synth
~/ekn_data/neuro_data_zxy --shape 48 260 260`` makes synthetic volumes; EKN_DATA_DIR points
elsewhere). ``model_load_args = {'patch_size': ..., 'width': ...}`` changes the patch size and
scales the number of features (tests use tiny nets).

    ekn train neuro3d
"""

import os
import runpy

_shared = runpy.run_path(os.path.join(os.path.dirname(__file__), "neuro_settings.py"))
globals().update({k: v for k, v in _shared.items() if not k.startswith("__")})
if __name__ == "ekn_config":  # read by ekn train (not run, nor read by another config)
    warn_without_data(_data, f"ekn data synth {_data} --shape 48 260 260")


def create_model(patch_size=(23, 185, 185), width=1.0):
    import ekn_core.neuromancer as nm

    n = scaled(width)
    inp = nm.Input((None, 1, *patch_size), "b,f,z,x,y", name="raw")
    out = nm.Conv(inp, n(20), (1, 6, 6), (1, 2, 2))
    out = nm.Conv(out, n(30), (1, 5, 5), (1, 2, 2))
    out = nm.Conv(out, n(40), (1, 5, 5))
    out = nm.Conv(out, n(80), (4, 4, 4), (2, 1, 1))
    out = nm.Conv(out, n(100), (3, 4, 4))
    out = nm.Conv(out, n(100), (3, 4, 4))
    out = nm.Conv(out, n(150), (2, 4, 4))
    out = nm.Conv(out, n(200), (1, 4, 4))
    out = nm.Conv(out, n(200), (1, 4, 4))
    out = nm.Conv(out, n(200), (1, 1, 1))
    out = nm.Conv(out, 2, (1, 1, 1), activation_func="lin")
    return barrier_model(inp, out)


if __name__ == "__main__":
    model = create_model()
    print(model.summary())
    print(model.test_run_prediction()[0].shape)
