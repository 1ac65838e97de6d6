"""tracing_agent_rnn: a recurrent tracing agent with GRU memory (ELEKTRONN2's ``TracingTrainerRNN``).

Each training example is a trajectory of 8 steps along a skeleton: the agent moves as the
Tracer moves when it predicts the ground truth (with a little random error), cutting a 5×11×11
patch along its heading at every step. A small CNN encodes each patch, a GRU carries the
memory from step to step, and a linear head predicts the direction to move in, in the patch's
frame; ``Scan`` repeats the step over the 8 patches and the loss is the cosine distance to the
target directions of all steps. ``ModelAgent`` traces with the trained model one step at a
time, feeding the memory on. See docs/training.md, "Training a tracing agent".

Data: bright tubes in noise with their skeletons. Write them with

    ekn data tubes ~/ekn_data/tubes

(or point EKN_TUBES_DIR at a folder with tube_<i>.h5:raw and tube_<i>.nml), then

    ekn train tracing_agent_rnn
"""

import logging
import os

_data = os.environ.get("EKN_TUBES_DIR", "~/ekn_data/tubes")
if __name__ == "ekn_config" and not os.path.isfile(os.path.join(os.path.expanduser(_data), "tube_0.h5")):
    logging.getLogger("ekn.config").warning(  # ekn train reads this config: say how to get its data
        "no training data in %s (tube_0.h5 is missing): make synthetic tubes with `ekn data tubes %s`, or set "
        "EKN_TUBES_DIR to the folder of your tube_<i>.h5 and tube_<i>.nml", _data, _data)
_steps = 8

save_path = "~/ekn_training/"
data_class = "TracingData"
data_init_kwargs = {
    "d_path": _data,
    "volumes": [(f"tube_{i}.h5", "raw") for i in range(4)],
    "skeletons": [f"tube_{i}.nml" for i in range(4)],
    "valid_skeletons": [3],
    "lookahead": 4.0,
    "max_turn": 0.5,
    "sequence_length": _steps,  # the model's 'r' length: trajectories of this many patches
    "walk_step": 1.5,  # the Tracer's step and inertia
    "walk_inertia": 0.3,
    "walk_jitter": 0.5,  # largest random error (radians) of the step directions
}
n_steps = 2000
max_runtime = 3600
history_freq = 100
monitor_batch_size = 32
batch_size = 16
optimiser = "Adam"
optimiser_params = {"lr": 3e-3}
schedules = {"lr": {"dec": 0.95, "every": 100}}


def create_model(patch_size=(5, 11, 11), steps=_steps, n_mem=32, width=1.0):
    """``steps`` must equal ``data_init_kwargs['sequence_length']``."""
    import ekn_core.neuromancer as nm

    def n(f):
        return max(1, round(f * width))

    inp = nm.Input((steps, None, 1, *patch_size), "r,b,f,z,y,x", name="raw")  # a trajectory of patches
    patch, _ = nm.split(inp, "r", index=1, strip_singleton_dims=True, name=["patch", "later_patches"])
    out = nm.Conv(patch, n(8), (1, 3, 3))  # the CNN encoder of one step
    out = nm.Conv(out, n(16), (3, 3, 3))
    features = nm.Perceptron(out, n(48), flatten=True, name="features")
    memory = nm.InitialState_like(features, n_mem, name="memory")
    gru = nm.GRU(features, memory, n_mem, name="gru")
    step = nm.Concat([features, gru], name="step")  # the head sees this patch's features and the memory
    steps_out = nm.Scan(step, memory, out_memory=gru, in_iterate=inp, in_iterate_0=patch, name="scan")  # (r, b, f)
    direction = nm.Perceptron(steps_out, 3, activation_func="lin", name="direction")  # (r, b, 3)
    target = nm.Input_like(direction, name="target")
    loss = nm.AggregateLoss(nm.CosineDistance(direction, target), name="loss")
    model = nm.model_manager.getmodel()
    model.designate_nodes(input_node=inp, target_node=target, loss_node=loss, prediction_node=direction,
                          prediction_ext=[loss, direction])
    return model


if __name__ == "__main__":
    model = create_model()
    print(model.summary())
