"""tracing_agent: a small 3-D CNN that learns to follow neurites (ELEKTRONN2's ``TracingTrainer``).

The agent sees a 5×11×11 patch cut along its heading and predicts the direction to move in, in
the patch's frame (first component: straight ahead); the loss is the cosine distance to the
direction towards the skeleton's centre line 4 voxels ahead. With ``sequence_training`` each
training example follows the agent's own predictions for up to 4 steps, so the agent learns to
recover from its drift. See docs/training.md, "Training a tracing agent".

Data: bright tubes in noise with their skeletons. Write them with

    ekn data tubes ~/ekn_data/tubes

(or point EKN_TUBES_DIR at a folder with tube_<i>.h5:raw and tube_<i>.nml), then

    ekn train tracing_agent

and trace with the trained model (``models/best.mdl``) as the docs show.
"""

import logging
import os

_data = os.environ.get("EKN_TUBES_DIR", "~/ekn_data/tubes")
if __name__ == "ekn_config" and not os.path.isfile(os.path.join(os.path.expanduser(_data), "tube_0.h5")):
    logging.getLogger("ekn.config").warning(  # ekn train reads this config: say how to get its data
        "no training data in %s (tube_0.h5 is missing): make synthetic tubes with `ekn data tubes %s`, or set "
        "EKN_TUBES_DIR to the folder of your tube_<i>.h5 and tube_<i>.nml", _data, _data)

save_path = "~/ekn_training/"
data_class = "TracingData"
data_init_kwargs = {
    "d_path": _data,
    "volumes": [(f"tube_{i}.h5", "raw") for i in range(4)],
    "skeletons": [f"tube_{i}.nml" for i in range(4)],
    "valid_skeletons": [3],
    "lookahead": 4.0,
    "max_turn": 0.5,
    "sequence_training": 4,
}
n_steps = 2000
max_runtime = 3600
history_freq = 100
monitor_batch_size = 128
batch_size = 32
optimiser = "Adam"
optimiser_params = {"lr": 3e-3}
schedules = {"lr": {"dec": 0.95, "every": 100}}


def create_model(patch_size=(5, 11, 11), width=1.0):
    import ekn_core.neuromancer as nm

    def n(f):
        return max(1, round(f * width))

    inp = nm.Input((None, 1, *patch_size), "b,f,z,y,x", name="raw")
    out = nm.Conv(inp, n(8), (1, 3, 3))
    out = nm.Conv(out, n(16), (3, 3, 3))
    out = nm.Perceptron(out, n(48), flatten=True)
    direction = nm.Perceptron(out, 3, activation_func="lin", name="direction")
    target = nm.Input_like(direction, name="target")
    loss = nm.AggregateLoss(nm.CosineDistance(direction, target), name="loss")
    model = nm.model_manager.getmodel()
    # the directions are also a debug output: sequence_training moves the agents along them
    model.designate_nodes(input_node=inp, target_node=target, loss_node=loss, prediction_node=direction,
                          prediction_ext=[loss, direction], debug_outputs=[direction])
    return model


if __name__ == "__main__":
    model = create_model()
    print(model.summary())
    print(model.test_run_prediction()[0].shape)
