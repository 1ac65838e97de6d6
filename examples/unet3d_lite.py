"""unet3d_lite: an anisotropic 3-D U-Net (ELEKTRONN2's ``examples/unet3d_lite.py``).

Output 10×52×52 per 22×140×140 patch, field of view 12×88×88, about 7.8 M parameters. To
continue from a model file instead of create_model, set ``model_load_path`` (and e.g.
``model_load_args = {'override_mfp_to_active': False}``).

    ekn train unet3d_lite
"""

import os
import runpy

_shared = runpy.run_path(os.path.join(os.path.dirname(__file__), "neuro_settings.py"))
globals().update({k: v for k, v in _shared.items() if not k.startswith("__")})
if __name__ == "ekn_config":  # read by ekn train (not run, nor read by another config)
    warn_without_data(_data, f"ekn data synth {_data}")

max_runtime = 14 * 24 * 3600
# model_load_path = "~/ekn_training/unet3d_lite/models/latest.mdl"
# model_load_args = {"override_mfp_to_active": False}


def create_model(patch_size=(22, 140, 140), width=1.0):
    import ekn_core.neuromancer as nm

    n = scaled(width)
    inp = nm.Input((None, 1, *patch_size), "b,f,z,x,y", name="raw")
    conv0 = nm.Conv(inp, n(32), (1, 3, 3))
    conv1 = nm.Conv(conv0, n(32), (1, 3, 3))
    down0 = nm.Pool(conv1, (1, 2, 2))
    conv2 = nm.Conv(down0, n(64), (1, 3, 3))
    conv3 = nm.Conv(conv2, n(64), (1, 3, 3))
    down1 = nm.Pool(conv3, (1, 2, 2))
    conv4 = nm.Conv(down1, n(128), (1, 3, 3))
    conv5 = nm.Conv(conv4, n(128), (1, 3, 3))
    down2 = nm.Pool(conv5, (1, 2, 2))
    conv6 = nm.Conv(down2, n(256), (3, 3, 3))
    conv7 = nm.Conv(conv6, n(256), (3, 3, 3))
    mrg0 = nm.UpConvMerge(conv5, conv7, n(512))
    mconv0 = nm.Conv(mrg0, n(256), (1, 3, 3))
    mconv1 = nm.Conv(mconv0, n(256), (1, 3, 3))
    mrg1 = nm.UpConvMerge(conv3, mconv1, n(256))
    mconv2 = nm.Conv(mrg1, n(128), (3, 3, 3))
    mconv3 = nm.Conv(mconv2, n(128), (3, 3, 3))
    mrg2 = nm.UpConvMerge(conv1, mconv3, n(128))
    mconv4 = nm.Conv(mrg2, n(64), (3, 3, 3))
    mconv5 = nm.Conv(mconv4, n(64), (3, 3, 3))
    out = nm.Conv(mconv5, 2, (1, 1, 1), activation_func="lin", name="barr")
    return barrier_model(inp, out)


if __name__ == "__main__":
    model = create_model()
    print(model.summary())
    print(model.test_run_prediction()[0].shape)
