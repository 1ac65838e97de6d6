"""Tiny 2-D img-img config for trainer CLI tests: barrier prediction on synthetic EM slices.

The data folder comes from EKN_TEST_DATA (written by the test with `write_dataset`).
"""

import os

_data = os.environ["EKN_TEST_DATA"]

data_class = "BatchCreatorImage"
data_init_kwargs = {
    "d_path": _data, "l_path": _data,
    "d_files": [(f"raw_{i}.h5", "raw") for i in range(3)],
    "l_files": [(f"barrier_int16_{i}.h5", "lab") for i in range(3)],
    "valid_cubes": [2],
    "augmenters": [{"type": "warp", "probability": 0.5, "rotation": 30}, {"type": "grey"}],
}
preview_data_path = os.path.join(_data, "raw_2.h5") + ":raw"
preview_kwargs = {"export_class": "all", "max_z_pred": 2}
n_steps = 8
history_freq = 4
monitor_batch_size = 4
batch_size = 2
optimiser = "Adam"
optimiser_params = {"lr": 3e-3, "wd": 1e-4}
schedules = {"lr": {"dec": 0.9, "every": 5}}
param_save_it = 4
preview_freq = 4
tensorboard_freq = 1
background_processes = False


def create_model():
    import ekn_core.neuromancer as nm

    inp = nm.Input((None, 1, 21, 21), "b,f,x,y", name="raw")
    out = nm.Conv(inp, 6, (4, 4), (2, 2))
    out = nm.Conv(out, 6, (3, 3))
    out = nm.Conv(out, 2, (1, 1), activation_func="lin")
    probs = nm.Softmax(out)
    target = nm.Input_like(probs, override_f=1, dtype="int16", name="target")
    loss = nm.AggregateLoss(nm.MultinoulliNLL(probs, target, target_is_sparse=True, name="nll"), name="loss")
    errors = nm.Errors(probs, target, target_is_sparse=True)
    model = nm.model_manager.getmodel()
    model.designate_nodes(input_node=inp, target_node=target, loss_node=loss, prediction_node=probs,
                          prediction_ext=[loss, errors, probs], error_node=errors)
    return model
