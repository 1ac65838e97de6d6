"""neuro3d_lite: a small anisotropic 3-D CNN for membrane (barrier) prediction — the CPU tutorial.

ELEKTRONN2's ``examples/neuro3d_lite.py`` for ekn. Output 4×30×30 voxels per 11×155×155 patch,
strides 2×4×4, field of view 5×39×39, about 0.89 M parameters.

Data: ELEKTRONN2's ``neuro_data_zxy`` layout. Make synthetic data with

    ekn data synth ~/ekn_data/neuro_data_zxy --shape 48 220 220

(or point EKN_DATA_DIR at a folder with raw_<i>.h5:raw and barrier_int16_<i>.h5:lab), then

    ekn train examples/neuro3d_lite.py
"""

import os

_data = os.environ.get("EKN_DATA_DIR", "~/ekn_data/neuro_data_zxy")

save_path = "~/ekn_training/"
preview_data_path = (os.path.join(_data, "raw_2.h5"), "raw")
preview_kwargs = {"export_class": [1], "max_z_pred": 3}
initial_prev_h = 1.0
prev_save_h = 1.0
data_class = "BatchCreatorImage"
background_processes = 2
data_init_kwargs = {
    "d_path": _data,
    "l_path": _data,
    "d_files": [(f"raw_{i}.h5", "raw") for i in range(3)],
    "l_files": [(f"barrier_int16_{i}.h5", "lab") for i in range(3)],
    "aniso_factor": 2,
    "valid_cubes": [2],
    "augmenters": [{"type": "warp", "probability": 0.5, "perspective": 0.001}, {"type": "grey", "channels": [0]}],
}
data_batch_args = {}
n_steps = 150000
max_runtime = 24 * 3600
history_freq = 200
monitor_batch_size = 10
optimiser = "Adam"
optimiser_params = {"lr": 5e-4, "mom": 0.9, "beta2": 0.999, "wd": 0.5e-4}
schedules = {"lr": {"dec": 0.995}}
batch_size = 1


def create_model(patch_size=(11, 155, 155), n_f=(20, 40, 150, 200, 200, 200)):
    """The net; ``model_load_args = {'patch_size': ..., 'n_f': ...}`` changes patch and widths."""
    import ekn_core.neuromancer as nm

    inp = nm.Input((None, 1, *patch_size), "b,f,z,x,y", name="raw")
    out = nm.Conv(inp, n_f[0], (1, 4, 4), (1, 2, 2))
    out = nm.Conv(out, n_f[1], (3, 3, 3), (1, 2, 2))
    out = nm.Conv(out, n_f[2], (2, 4, 4), (2, 1, 1))
    out = nm.Conv(out, n_f[3], (1, 3, 3))
    out = nm.Conv(out, n_f[4], (1, 3, 3))
    out = nm.Conv(out, n_f[5], (1, 1, 1))
    out = nm.Conv(out, 2, (1, 1, 1), activation_func="lin")
    probs = nm.Softmax(out)
    target = nm.Input_like(probs, override_f=1, dtype="int16", name="target")
    loss_pix = nm.MultinoulliNLL(probs, target, target_is_sparse=True, name="nll")
    loss = nm.AggregateLoss(loss_pix, name="loss")
    errors = nm.Errors(probs, target, target_is_sparse=True)
    model = nm.model_manager.getmodel()
    model.designate_nodes(input_node=inp, target_node=target, loss_node=loss, prediction_node=probs,
                          prediction_ext=[loss, errors, probs], error_node=errors)
    return model


if __name__ == "__main__":
    model = create_model()
    print(model.summary())
    print(model.test_run_prediction()[0].shape)
