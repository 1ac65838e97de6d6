"""Tiny 3-D img-img config for the batch-picture tests: a strided conv net on PictureData
(``model_load_args={"conv_mode": "same", "last_filter": (3, 5, 5)}``: the mode and filter of its last
convolution).

The target is a known function of the raw (``picture_data.py``), so the picture's alignment
can be checked. Override ``data_class`` with ``("picture_data.py", "GlobalRandomData")`` for a
source that draws from numpy's global generator and takes neither ``rng`` nor ``force_dense``.
"""

data_class = ("picture_data.py", "PictureData")
data_init_kwargs = {}
n_steps = 3
history_freq = 3
monitor_batch_size = 2
batch_size = 2
optimiser = "Adam"
optimiser_params = {"lr": 0.01}
tensorboard = False
plot_on = False
background_processes = False


def create_model(conv_mode="valid", last_filter=(3, 3, 3)):
    import ekn_core.neuromancer as nm

    inp = nm.Input((None, 1, 5, 15, 15), "b,f,z,x,y", name="raw")
    out = nm.Conv(inp, 3, (1, 4, 4), (1, 2, 2))
    out = nm.Conv(out, 2, last_filter, activation_func="lin", conv_mode=conv_mode)
    probs = nm.Softmax(out)
    target = nm.Input_like(probs, override_f=1, dtype="int16", name="target")
    loss = nm.AggregateLoss(nm.MultinoulliNLL(probs, target, target_is_sparse=True, name="nll"), name="loss")
    model = nm.model_manager.getmodel()
    model.designate_nodes(input_node=inp, target_node=target, loss_node=loss, prediction_node=probs)
    return model
