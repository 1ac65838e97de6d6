"""Tiny experiment config for trainer tests: a perceptron on ToyData (runs in seconds)."""

data_class = ("toy_data.py", "ToyData")
data_init_kwargs = {}
n_steps = 4
history_freq = 2
monitor_batch_size = 16
batch_size = 8
optimiser = "Adam"
optimiser_params = {"lr": 0.01}
schedules = {"lr": {"dec": 0.5, "every": 3}}
tensorboard_freq = 1
background_processes = False


def create_model(n_hidden=8):
    import ekn_core.neuromancer as nm

    inp = nm.Input((None, 4), "b,f", name="x")
    out = nm.Perceptron(inp, n_hidden, dropout_rate=0.1)
    out = nm.Perceptron(out, 3, activation_func="lin")
    probs = nm.Softmax(out)
    target = nm.Input_like(probs, override_f=1, dtype="int16", name="target")
    loss = nm.AggregateLoss(nm.MultinoulliNLL(probs, target, target_is_sparse=True, name="nll"), name="loss")
    errors = nm.Errors(probs, target, target_is_sparse=True)
    model = nm.model_manager.getmodel()
    model.designate_nodes(input_node=inp, target_node=target, loss_node=loss, prediction_node=probs,
                          prediction_ext=[loss, errors, probs], error_node=errors)
    return model
