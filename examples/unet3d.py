"""unet3d: the 3-D U-Net of Çiçek et al. as in ELEKTRONN2's ``examples/unet3d.py`` (very heavy).

Output 28×44×44 per 116×132×132 patch, strides 1, field of view 88×88×88, about 19.1 M
parameters: meant for a large GPU. ``model_load_args = {'patch_size': ..., 'width': ...}``
changes the patch size and scales the number of features.

    ekn train unet3d --gpu auto
"""

import os
import runpy

_shared = runpy.run_path(os.path.join(os.path.dirname(__file__), "neuro_settings.py"))
globals().update({k: v for k, v in _shared.items() if not k.startswith("__")})
if __name__ == "ekn_config":  # read by ekn train (not run, nor read by another config)
    warn_without_data(_data, f"ekn data synth {_data} --shape 132 160 160")

max_runtime = 14 * 24 * 3600


def create_model(patch_size=(116, 132, 132), width=1.0):
    import ekn_core.neuromancer as nm

    n = scaled(width)
    inp = nm.Input((None, 1, *patch_size), "b,f,z,x,y", name="raw")
    conv0 = nm.Conv(inp, n(32), (3, 3, 3))
    conv1 = nm.Conv(conv0, n(64), (3, 3, 3))
    down0 = nm.Pool(conv1, (2, 2, 2))
    conv2 = nm.Conv(down0, n(64), (3, 3, 3))
    conv3 = nm.Conv(conv2, n(128), (3, 3, 3))
    down1 = nm.Pool(conv3, (2, 2, 2))
    conv4 = nm.Conv(down1, n(128), (3, 3, 3))
    conv5 = nm.Conv(conv4, n(256), (3, 3, 3))
    down2 = nm.Pool(conv5, (2, 2, 2))
    conv6 = nm.Conv(down2, n(256), (3, 3, 3))
    conv7 = nm.Conv(conv6, n(512), (3, 3, 3))
    mrg0 = nm.UpConvMerge(conv5, conv7, n(512))
    mconv0 = nm.Conv(mrg0, n(256), (3, 3, 3))
    mconv1 = nm.Conv(mconv0, n(256), (3, 3, 3))
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
