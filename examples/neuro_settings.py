"""Settings shared by the neuro3d / unet3d example configs (ELEKTRONN2's neuro_data_zxy setup).

A config loads them first and then changes what differs::

    import os, runpy
    _shared = runpy.run_path(os.path.join(os.path.dirname(__file__), "neuro_settings.py"))
    globals().update({k: v for k, v in _shared.items() if not k.startswith("__")})

Data: ``raw_<i>.h5:raw`` and centred ``barrier_int16_<i>.h5:lab`` in ``$EKN_DATA_DIR``
(default ``~/ekn_data/neuro_data_zxy``; ``ekn data synth`` writes such volumes); cube 2 is the
validation cube and the preview volume.
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
n_steps = 1000000
max_runtime = 7 * 24 * 3600
history_freq = 200
monitor_batch_size = 30
optimiser = "Adam"
optimiser_params = {"lr": 5e-4, "mom": 0.9, "beta2": 0.999, "wd": 0.5e-4}
schedules = {"lr": {"dec": 0.995}}
batch_size = 1


def barrier_model(inp, logits):
    """Softmax, sparse-label NLL, errors and the designated roles for a 2-class barrier net."""
    import ekn_core.neuromancer as nm

    probs = nm.Softmax(logits)
    target = nm.Input_like(probs, override_f=1, dtype="int16", name="target")
    loss = nm.AggregateLoss(nm.MultinoulliNLL(probs, target, target_is_sparse=True, name="nll"), name="loss")
    errors = nm.Errors(probs, target, target_is_sparse=True)
    model = nm.model_manager.getmodel()
    model.designate_nodes(input_node=inp, target_node=target, loss_node=loss, prediction_node=probs,
                          prediction_ext=[loss, errors, probs], error_node=errors)
    return model


def warn_without_data(folder, make):
    """Logs how to get the training data when ``folder`` has no ``raw_0.h5``: ``make`` is the ``ekn
    data synth`` command for this config. The config still loads (e.g. for its ``create_model``);
    training then stops at the missing file."""
    import logging

    if not os.path.isfile(os.path.join(os.path.expanduser(folder), "raw_0.h5")):
        logging.getLogger("ekn.config").warning(
            "no training data in %s (raw_0.h5 is missing): make synthetic volumes with `%s`, or set EKN_DATA_DIR "
            "to the folder of your raw_<i>.h5 and label files", folder, make)


def scaled(width):
    """``n(f)``: the feature count ``f`` scaled by ``width`` (at least 1)."""
    return lambda f: max(1, round(f * width))
