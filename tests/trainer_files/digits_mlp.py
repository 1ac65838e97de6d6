"""The tiny digits classifier (7×7 images, 16 hidden units) of the shell and distributed tests."""


def create_model():
    import ekn_core.neuromancer as nm

    inp = nm.Input((None, 1, 7, 7), "b,f,y,x", name="raw")
    out = nm.Perceptron(inp, 16, flatten=True, name="hidden")
    out = nm.Perceptron(out, 10, activation_func="lin", name="logits")
    out = nm.Softmax(out)
    target = nm.Input_like(out, override_f=1, dtype="int16", name="target")
    loss = nm.AggregateLoss(nm.MultinoulliNLL(out, target, target_is_sparse=True, name="nll"), name="loss")
    model = nm.model_manager.getmodel()
    model.designate_nodes(input_node=inp, target_node=target, loss_node=loss, prediction_node=out)
    return model
