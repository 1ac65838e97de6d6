"""A recurrent (GRU or LSTM) sequence classifier on synthetic EM data.

ELEKTRONN2's ``examples/wip/gru.py`` / ``lstm.py`` (which needed private piano-roll data) for
ekn: the sequence is a column of sections through the volume (``examples/sequence_data.py``), and
the net predicts whether the centre voxel of the last section is a barrier. The step of the
recurrence is written once (``GRU`` or ``LSTM`` on one section) and repeated by ``Scan``.

    ekn data synth ~/ekn_data/neuro_data_zxy
    ekn train sequence_rnn                                   # GRU
    ekn train sequence_rnn --set "model_load_args={'cell': 'lstm'}"
"""

import logging
import os

_data = os.environ.get("EKN_DATA_DIR", "~/ekn_data/neuro_data_zxy")
if __name__ == "ekn_config" and not os.path.isfile(os.path.join(os.path.expanduser(_data), "raw_0.h5")):
    logging.getLogger("ekn.config").warning(  # ekn train reads this config: say how to get its data
        "no training data in %s (raw_0.h5 is missing): make synthetic volumes with `ekn data synth %s`, or set "
        "EKN_DATA_DIR to the folder of your raw_<i>.h5 and barrier_int16_<i>.h5", _data, _data)

save_path = "~/ekn_training/"
data_class = ("sequence_data.py", "ZColumns")
data_init_kwargs = {
    "d_path": _data,
    "raw_files": [f"raw_{i}.h5:raw" for i in range(3)],
    "label_files": [f"barrier_int16_{i}.h5:lab" for i in range(3)],
    "valid_index": 2,
}
n_steps = 20000
max_runtime = 3600
history_freq = 200
monitor_batch_size = 200
optimiser = "Adam"
optimiser_params = {"lr": 1.4e-3, "mom": 0.9, "wd": 0.5e-3}
batch_size = 40


def create_model(cell="gru", n_tap=12, n_mem=64, patch=3):
    """``cell`` is ``'gru'`` or ``'lstm'`` (``model_load_args = {'cell': 'lstm'}``)."""
    import ekn_core.neuromancer as nm

    inp = nm.Input((n_tap, None, patch * patch), "r,b,f", name="columns")
    inp0, _ = nm.split(inp, "r", index=1, strip_singleton_dims=True)
    if cell == "gru":
        mem = nm.InitialState_like(inp0, n_mem)
        step = nm.GRU(inp0, mem, n_mem)
    elif cell == "lstm":
        mem = nm.InitialState_like(inp0, 2 * n_mem)  # [h, c]
        step = nm.LSTM(inp0, mem, n_mem)
    else:
        raise ValueError(f"cell must be 'gru' or 'lstm', got {cell!r}")
    last = nm.Scan(step, mem, in_iterate=inp, in_iterate_0=inp0, last_only=True)
    out = nm.Perceptron(last, 2, activation_func="lin")
    probs = nm.Softmax(out)
    target = nm.Input_like(probs, override_f=1, dtype="int16", name="target")
    loss = nm.AggregateLoss(nm.MultinoulliNLL(probs, target, target_is_sparse=True, name="nll"), name="loss")
    errors = nm.Errors(probs, target, target_is_sparse=True)
    model = nm.model_manager.getmodel()
    model.designate_nodes(input_node=inp, target_node=target, loss_node=loss, prediction_node=probs,
                          prediction_ext=[loss, errors, probs], error_node=errors)
    return model


if __name__ == "__main__":
    model = create_model()
    print(model.summary())
