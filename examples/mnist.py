"""MNIST-style digit classification (img-scalar, 2-D) on scikit-learn's bundled 8×8 digits.

ELEKTRONN2's ``examples/mnist.py`` for ekn: the data needs no download (``data_class =
'MNISTData'`` maps to ekn's digits source, 7×7 crops with one-pixel shift augmentation).

    ekn train mnist
    python examples/mnist.py        # build the model and test-run it on random input
"""

save_path = "~/ekn_training/"
data_class = "MNISTData"
data_init_kwargs = {}
data_batch_args = {}
background_processes = 2
n_steps = 3000
max_runtime = 600
history_freq = 250
monitor_batch_size = 200
optimiser = "Adam"
optimiser_params = {"lr": 2e-3, "mom": 0.9, "beta2": 0.99, "wd": 0.5e-3}
batch_size = 20


def create_model():
    import ekn_core.neuromancer as nm

    inp = nm.Input((None, 1, 7, 7), "b,f,y,x", name="raw")
    out = nm.Conv(inp, 12, (3, 3), batch_normalisation="train")
    out = nm.Conv(out, 36, (3, 3), batch_normalisation="train")
    out = nm.Perceptron(out, 200, flatten=True)
    out = nm.Perceptron(out, 10, activation_func="lin")
    out = nm.Softmax(out)
    target = nm.Input_like(out, override_f=1, dtype="int16", name="target")
    loss = nm.MultinoulliNLL(out, target, target_is_sparse=True, name="nll")
    loss = nm.AggregateLoss(loss, name="loss")
    errors = nm.Errors(out, target, target_is_sparse=True)
    model = nm.model_manager.getmodel()
    model.designate_nodes(input_node=inp, target_node=target, loss_node=loss, prediction_node=out,
                          prediction_ext=[loss, errors, out], error_node=errors)
    return model


if __name__ == "__main__":
    import ekn_core.neuromancer as nm

    nm.model_manager.newmodel("mnist")
    print(create_model().summary())
    create_model.__globals__  # noqa: B018 - configs are plain Python files
    print(nm.model_manager.current.test_run_prediction()[0].shape)
