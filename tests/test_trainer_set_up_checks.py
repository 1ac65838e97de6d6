"""Set-up checks of ``ekn train`` that concern the batches: the config's ``class_weights`` for a
loss without a class-weights input (and fed to each of several), ``data_batch_args`` the patch source cannot serve the net
(``force_dense`` on a strided net), and the start-up log of the augmentation they build. Refused
set-ups leave no run directory."""

import logging
import os

import pytest

from ekn_core.errors import ConfigError
from ekn_core.trainer.config import ExperimentConfig

pytest.importorskip("tensorflow")

HERE = os.path.dirname(os.path.abspath(__file__))
TOY = os.path.join(HERE, "trainer_files", "toy_config.py")
TINY2D = os.path.join(HERE, "trainer_files", "tiny2d_config.py")


def trainer(config, tmp_path, *overrides):
    from ekn_core.trainer.loop import Trainer

    return Trainer(ExperimentConfig.from_file(config, [f"save_path={str(tmp_path / 'runs')!r}", "save_name='run'",
                                                       *overrides]))


@pytest.fixture
def em_data(tmp_path, monkeypatch):
    from ekn_plugins.data.synth import write_dataset

    write_dataset(str(tmp_path / "data"), n_volumes=3, shape=(6, 48, 48), label_margin=(2, 8, 8), seed=0)
    monkeypatch.setenv("EKN_TEST_DATA", str(tmp_path / "data"))


def test_class_weights_for_a_loss_without_a_class_weights_input_are_refused_at_set_up(tmp_path):
    with pytest.raises(ConfigError) as err:
        trainer(TOY, tmp_path, "class_weights=[0.3, 0.3, 0.4]")
    assert str(err.value).startswith("class_weights = [0.3, 0.3, 0.4] (a config setting) feeds the loss's "
                                     "class-weights input, but loss 'loss' has none (it takes 'x', 'target';")
    assert "class_weights=[0.3, 0.3, 0.4]); or give the loss a class-weights input" in str(err.value)
    assert "nm.Input((3,), 'f', name='class_weights')" in str(err.value)
    assert not os.path.exists(tmp_path / "runs" / "run")


def test_class_weights_of_another_length_than_the_input_are_refused():
    import ekn_core.neuromancer as nm
    from ekn_core.trainer.batch_feeding import check_class_weights

    nm.model_manager.newmodel(None)
    inp = nm.Input((None, 4), "b,f", name="x")
    probs = nm.Softmax(nm.Perceptron(inp, 3, activation_func="lin"))
    target = nm.Input_like(probs, override_f=1, dtype="int16", name="target")
    weights = nm.Input((3,), "f", name="cw")
    loss = nm.MultinoulliNLL(probs, target, target_is_sparse=True, class_weights=weights, name="nll")
    check_class_weights([0.2, 0.3, 0.5], loss)
    check_class_weights(None, loss)
    with pytest.raises(ConfigError, match=r"has 2 entries, but the loss's class-weights input 'cw' takes shape "
                                          r"\(3,\): give one weight per class"):
        check_class_weights([0.3, 0.7], loss)


TWO_WEIGHTED_LOSSES = """
data_class = ({toy_data!r}, "ToyData")
n_steps, history_freq, batch_size, monitor_batch_size = 1, 1, 8, 8
optimiser = "Adam"
background_processes = False
class_weights = [1.0, 2.0, 3.0]


def create_model():
    import ekn_core.neuromancer as nm

    inp = nm.Input((None, 4), "b,f", name="x")
    hidden = nm.Perceptron(inp, 8)
    probs_a = nm.Softmax(nm.Perceptron(hidden, 3, activation_func="lin"), name="probs_a")
    probs_b = nm.Softmax(nm.Perceptron(hidden, {n_class_b}, activation_func="lin"), name="probs_b")
    target = nm.Input_like(probs_a, override_f=1, dtype="int16", name="target")
    nll_a = nm.MultinoulliNLL(probs_a, target, target_is_sparse=True, class_weights=nm.Input((3,), "f", name="cw_a"))
    nll_b = nm.MultinoulliNLL(probs_b, target, target_is_sparse=True,
                              class_weights=nm.Input(({n_class_b},), "f", name="cw_b"))
    model = nm.model_manager.getmodel()
    model.designate_nodes(input_node=inp, target_node=target, loss_node=nm.AggregateLoss([nll_a, nll_b], name="loss"),
                          prediction_node=probs_a)
    return model
"""


def two_weighted_losses(tmp_path, n_class_b):
    path = tmp_path / "two_weighted_losses.py"
    path.write_text(TWO_WEIGHTED_LOSSES.format(toy_data=os.path.join(HERE, "trainer_files", "toy_data.py"),
                                               n_class_b=n_class_b))
    return str(path)


def test_class_weights_feed_every_class_weights_input_of_the_loss(tmp_path):
    import numpy as np

    run = trainer(two_weighted_losses(tmp_path, 3), tmp_path)
    try:
        batch = run.get_batch("train")
        assert [a.shape for a in batch] == [(8, 4), (8, 1), (3,), (3,)]
        weights = np.array([1.0, 2.0, 3.0])
        np.testing.assert_array_equal(batch[2], weights)
        np.testing.assert_array_equal(batch[3], weights)
        # reference: ELEKTRONN2's AggregateLoss (mean of the components) of two weighted NLLs, in numpy
        acts, labels = run.model.activations(*batch), batch[1][:, 0]
        probs = [np.exp(acts[name]) / np.exp(acts[name]).sum(1, keepdims=True) for name in ("dot1", "dot2")]  # heads
        nll = [np.mean(weights[labels] * -np.log(p[np.arange(8), labels])) for p in probs]
        np.testing.assert_allclose(run.model.loss(*batch), np.mean(nll), rtol=1e-5)
        assert np.isfinite(run.train_step())
    finally:
        run.close()


def test_class_weights_for_class_weights_inputs_of_another_length_are_refused_at_set_up(tmp_path):
    with pytest.raises(ConfigError) as err:
        trainer(two_weighted_losses(tmp_path, 2), tmp_path)
    assert str(err.value) == (
        "class_weights = [1.0, 2.0, 3.0] (a config setting) has 3 entries, but the loss's class-weights input 'cw_b' "
        "takes shape (2,): give one weight per class (the setting feeds each of its class-weights inputs, 'cw_a', "
        "'cw_b': a loss of another number of classes takes its own weights, e.g. nm.MultinoulliNLL(probs, target, "
        "target_is_sparse=True, class_weights=[...]))")
    assert not os.path.exists(tmp_path / "runs" / "run")


def test_force_dense_on_a_strided_net_is_refused_at_set_up(tmp_path, em_data):
    with pytest.raises(ConfigError, match=r"^data_batch_args force_dense=True gives targets at every voxel of the "
                                          r"output region, \(13, 13\), but the net's output has strides \(2, 2\)"):
        trainer(TINY2D, tmp_path, "data_batch_args={'force_dense': True}")
    assert not os.path.exists(tmp_path / "runs" / "run")


def test_the_start_up_log_names_the_augmenters_of_elektronn2s_batch_args(tmp_path, em_data, caplog):
    caplog.set_level(logging.INFO, logger="ekn")
    run = trainer(TINY2D, tmp_path, "data_init_kwargs.augmenters=None",
                  "data_batch_args={'warp': 0.5, 'warp_args': {'perspective': True}, 'grey_augment_channels': [0]}")
    run.close()
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("data: ")]
    assert "augmenters from data_batch_args: Flip, Warp(p=0.5), Grey, in_memory=True)" in line
