"""unet3d_litelite: the cheapest 3-D U-Net of ELEKTRONN2 (``examples/unet3d_litelite.py``).

Output 10×36×36 per 22×140×140 patch, field of view 12×104×104, about 0.35 M parameters; the
deepest merge up-samples by (1, 4, 4).

    ekn train unet3d_litelite
"""

import os
import runpy

_shared = runpy.run_path(os.path.join(os.path.dirname(__file__), "neuro_settings.py"))
globals().update({k: v for k, v in _shared.items() if not k.startswith("__")})
if __name__ == "ekn_config":  # read by ekn train (not run, nor read by another config)
    warn_without_data(_data, f"ekn data synth {_data}")

data_init_kwargs["augmenters"][0]["probability"] = 0.1
n_steps = 150000
max_runtime = 24 * 3600
optimiser_params["lr"] = 0.0012
schedules = {"lr": {"dec": 0.99}}


def create_model(patch_size=(22, 140, 140), width=1.0):
    import ekn_core.neuromancer as nm

    n = scaled(width)
    inp = nm.Input((None, 1, *patch_size), "b,f,z,x,y", name="raw")
    conv0 = nm.Conv(inp, n(20), (1, 3, 3))
    conv1 = nm.Conv(conv0, n(20), (1, 3, 3))
    down0 = nm.Pool(conv1, (1, 2, 2))
    conv2 = nm.Conv(down0, n(30), (1, 3, 3))
    conv3 = nm.Conv(conv2, n(30), (1, 3, 3))
    down1 = nm.Pool(conv3, (1, 2, 2))
    conv4 = nm.Conv(down1, n(35), (1, 3, 3))
    conv5 = nm.Conv(conv4, n(35), (1, 3, 3))
    down2 = nm.Pool(conv5, (1, 2, 2))
    conv6 = nm.Conv(down2, n(42), (3, 3, 3))
    down3 = nm.Pool(conv6, (1, 2, 2))
    conv7 = nm.Conv(down3, n(42), (3, 3, 3))
    mrg0 = nm.UpConvMerge(conv5, conv7, n(45))
    mconv0 = nm.Conv(mrg0, n(42), (1, 3, 3))
    mconv1 = nm.Conv(mconv0, n(42), (1, 3, 3))
    mrg1 = nm.UpConvMerge(conv3, mconv1, n(42))
    mconv2 = nm.Conv(mrg1, n(35), (3, 3, 3))
    mconv3 = nm.Conv(mconv2, n(35), (3, 3, 3))
    mrg2 = nm.UpConvMerge(conv1, mconv3, n(30))
    mconv4 = nm.Conv(mrg2, n(20), (3, 3, 3))
    mconv5 = nm.Conv(mconv4, n(20), (3, 3, 3))
    out = nm.Conv(mconv5, 2, (1, 1, 1), activation_func="lin", name="barr")
    return barrier_model(inp, out)


if __name__ == "__main__":
    model = create_model()
    print(model.summary())
    print(model.test_run_prediction()[0].shape)
