"""Model-level meta-parameters (``model.lr``, ``mom``, ``wd``, ``beta2``): optimisers start at their
documented defaults unless a value was set (on the model, by ``optimiser_params``, by a model
file); values are validated; runs without an lr resume exactly; batch-normalisation statistics are
training state that checkpoints keep."""

import os
import re

import numpy as np
import pytest

import ekn_core.neuromancer as nm
from ekn_core.errors import ConfigError
from ekn_core.persistence import modelload, saved_meta

pytest.importorskip("tensorflow")

from toy_training import TOY, assert_same_params, params, train  # noqa: E402

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "optimisers.md")


def documented_defaults():
    """``{config name: {meta-parameter: default}}`` from the table in docs/optimisers.md."""
    table = {}
    for line in open(DOCS, encoding="utf-8"):
        match = re.match(r"\| `'(\w+)'` \| `\w+` \| (.*?) \|", line)
        if match:
            table[match.group(1)] = {k: float(v) for k, v in re.findall(r"`(\w+)` \((?:[^,)]*, )?([\d.e-]+)\)",
                                                                          match.group(2))}
    return table


def small_model(name):
    model = nm.model_manager.newmodel(name)
    inp = nm.Input((None, 4), "b,f", name="x")
    probs = nm.Softmax(nm.Perceptron(inp, 3, activation_func="lin"))
    target = nm.Input_like(probs, override_f=1, dtype="int16", name="target")
    loss = nm.AggregateLoss(nm.MultinoulliNLL(probs, target, target_is_sparse=True))
    model.designate_nodes(input_node=inp, target_node=target, loss_node=loss, prediction_node=probs)
    return model


def test_optimisers_of_a_model_start_at_their_documented_defaults():
    table = documented_defaults()
    assert set(table) == {"SGD", "AdaGrad", "AdaDelta", "RMSProp", "Adam", "AdamW"}
    model = small_model("defaults")
    assert model.lr is None and model.meta_overrides == {}  # no optimiser yet, nothing set
    for name, defaults in table.items():
        assert model.get_optimiser(name).get_meta() == pytest.approx(defaults), name
    assert model.lr == table["SGD"]["lr"]  # the optimiser in use: the first one built
    model.trainingstep(np.ones((2, 4), "float32"), np.zeros((2, 1), "int16"), optimiser="AdaGrad")
    assert model.lr == table["AdaGrad"]["lr"] and model.mom is None  # AdaGrad has no momentum


def test_values_set_on_the_model_reach_every_optimiser_and_are_validated():
    model = small_model("set")
    model.mom = 0.5
    adam = model.get_optimiser("Adam")
    assert adam.mom == 0.5 and adam.lr == 0.001
    model.lr = 0.02
    assert adam.lr == 0.02 and model.get_optimiser("AdaGrad").lr == 0.02  # built before and after
    for key, bad in (("lr", -5), ("mom", 1.0), ("beta2", float("nan")), ("wd", "x")):
        with pytest.raises(ConfigError, match=f"model 'set': {key} must be"):
            setattr(model, key, bad)
    assert (model.lr, model.mom, adam.lr, adam.mom) == (0.02, 0.5, 0.02, 0.5)  # nothing changed
    assert model.meta_overrides == {"lr": 0.02, "mom": 0.5}

    class Strict(type(adam)):  # a plugin optimiser with a stricter rule: lr in [0, 1)
        _UNIT_INTERVAL = frozenset({"mom", "beta2", "lr"})

    model.optimisers["strict"] = Strict()
    with pytest.raises(ConfigError, match="Strict: lr must be in"):
        model.lr = 2.0
    assert (model.lr, adam.lr, model.optimisers["strict"].lr) == (0.02, 0.02, 0.001)  # all or nothing
    del model.optimisers["strict"]
    model.lr = None  # back to each optimiser's own default
    assert adam.lr == 0.001 and model.get_optimiser("AdaGrad").lr == 0.01 and "lr" not in model.meta_overrides


def test_set_opt_meta_params_takes_the_models_names_for_every_optimiser_and_checks_all_first():
    """ELEKTRONN2's lr, mom, wd and beta2 are taken for any optimiser (the model keeps them, as its
    shared values; beta2 with SGD was a KeyError there, so `--set optimiser=SGD` on a config written
    for Adam works); a name neither the model's nor the optimiser's changes nothing."""
    from ekn_core.errors import UnknownPluginError

    model = small_model("set_opt_meta_params")
    for name, defaults in documented_defaults().items():
        optimiser = model.set_opt_meta_params(name, {"lr": 0.25, "mom": 0.5, "wd": 0.125, "beta2": 0.75})
        assert model.beta2 == 0.75 and optimiser.get_meta().get("beta2", 0.75) == 0.75
        with pytest.raises(ConfigError, match=rf"^model 'set_opt_meta_params': \['beta3'\] are not meta-parameters "
                                              rf"of {name} \(did you mean 'beta2'\?\); it takes lr, mom, wd, beta2"):
            model.set_opt_meta_params(name, {"lr": 0.5, "beta3": 0.9})
        assert model.lr == 0.25  # nothing changed
    with pytest.raises(UnknownPluginError, match="no optimisers plugin named 'adma'. Did you mean 'adam'"):
        model.set_opt_meta_params("Adma", {"lr": 0.5})


def test_model_files_keep_only_the_values_that_were_set(tmp_path):
    model = small_model("saved")
    model.wd = 1e-4
    path = model.save(str(tmp_path / "m.mdl"))
    loaded = modelload(path)
    assert loaded.meta_overrides == {"wd": 1e-4}
    assert loaded.get_optimiser("Adam").get_meta() == {"lr": 0.001, "mom": 0.9, "beta2": 0.999, "wd": 1e-4}
    # files of earlier versions held ELEKTRONN2's global defaults for values never set
    assert saved_meta({"lr": 1.0, "mom": 0.9, "wd": 0.0, "beta2": 0.999, "iterations": 3}) == {}
    assert saved_meta({"lr": 0.05, "mom": 0.9, "wd": 1e-4, "beta2": 0.999}) == {"lr": 0.05, "wd": 1e-4}


def test_the_trainer_sets_and_checkpoints_the_meta_parameters_the_model_has():
    from ekn_core import model
    from ekn_core.trainer import training_state

    assert model.META_PARAMETERS is training_state.META_PARAMETERS  # one list


@pytest.mark.parametrize("optimiser, lr", [("Adam", 0.001), ("SGD", 0.01)])  # SGD: no beta2 in the checkpoint
def test_a_config_without_lr_trains_at_the_optimisers_default_and_resumes_exactly(tmp_path, optimiser, lr):
    common = (f"optimiser={optimiser!r}", "optimiser_params={}", "schedules={}", "history_freq=0")
    whole = train(tmp_path / "whole", "n_steps=4", *common)[0]
    assert whole.model.lr == lr and whole.optimiser.lr == lr  # the optimiser's own default
    assert train(tmp_path / "parts", "n_steps=2", *common)[1] == "finished"
    resumed = train(tmp_path / "parts", "n_steps=4", *common, resume=True)[0]
    assert resumed.step == 4 and resumed.optimiser.get_meta() == whole.optimiser.get_meta()
    assert_same_params(params(whole), params(resumed))


BN_CONFIG = """
exec(open({toy!r}).read())
data_class = ({data!r}, "ToyData")

def create_model():
    import ekn_core.neuromancer as nm

    inp = nm.Input((None, 4), "b,f", name="x")
    out = nm.Perceptron(inp, 8, batch_normalisation="train")
    probs = nm.Softmax(nm.Perceptron(out, 3, activation_func="lin"))
    target = nm.Input_like(probs, override_f=1, dtype="int16", name="target")
    loss = nm.AggregateLoss(nm.MultinoulliNLL(probs, target, target_is_sparse=True, name="nll"), name="loss")
    model = nm.model_manager.getmodel()
    model.designate_nodes(input_node=inp, target_node=target, loss_node=loss, prediction_node=probs)
    return model
"""


def bn_run(folder, name, n_steps, *overrides, resume=False):
    """The trainer of a finished run of BN_CONFIG in ``folder/name`` (closed)."""
    from ekn_core.trainer.config import ExperimentConfig
    from ekn_core.trainer.loop import Trainer

    config = folder / "bn_config.py"
    config.write_text(BN_CONFIG.format(toy=TOY, data=os.path.join(os.path.dirname(TOY), "toy_data.py")))
    cfg = ExperimentConfig.from_file(str(config), [f"save_path={str(folder)!r}", f"save_name={name!r}",
                                                   f"n_steps={n_steps}", "history_freq=2", *overrides])
    trainer = Trainer(cfg, run_dir=str(folder / name) if resume else None, resume=resume)
    try:
        assert trainer.run() == "finished"
    finally:
        trainer.close()
    return trainer


def test_batch_normalisation_statistics_are_checkpointed_and_resume_exactly(tmp_path, caplog):
    import shutil

    import h5py

    from ekn_core.trainer.checkpoint import latest_checkpoint, read_checkpoint

    whole, _ = bn_run(tmp_path, "whole", 4), bn_run(tmp_path, "parts", 2)
    checkpoint = latest_checkpoint(os.path.join(str(tmp_path), "parts", "checkpoints"))
    saved = read_checkpoint(checkpoint).params
    for key in ("mean", "std", "bn_count", "bn_m2", "bn_momentum"):
        assert f"dot/{key}" in saved
    assert saved["dot/bn_count"] > 0
    shutil.copytree(tmp_path / "parts", tmp_path / "old")  # as an ekn before bn_momentum wrote it:
    with h5py.File(checkpoint.replace(os.sep + "parts" + os.sep, os.sep + "old" + os.sep), "r+") as f:
        del f["params/dot/bn_momentum"]
    resumed = bn_run(tmp_path, "parts", 4, resume=True)
    assert_same_params(params(whole), params(resumed))
    with caplog.at_level("INFO", logger="ekn.trainer"):
        old = bn_run(tmp_path, "old", 4, resume=True)  # the default momentum, which the run had
    assert "before ekn had the parameter(s) bn_momentum: dot/bn_momentum keep the model's values" in caplog.text
    assert_same_params(params(whole), params(old))


def test_model_files_for_inference_hold_the_statistics_of_their_weights_and_training_keeps_its_own(tmp_path):
    """final.mdl and best.mdl: the batch-normalisation statistics pooled over bn_statistics_batches
    training batches for the saved weights (numpy reference); the live model and latest.mdl: the
    moving averages of training."""
    from ekn_core.trainer.checkpoint import latest_checkpoint, read_checkpoint
    from ekn_plugins.layers.normalisation import BN_EPSILON

    trainer = bn_run(tmp_path, "run", 4, "bn_statistics_batches=3")
    live = params(trainer)
    assert_same_params(live, read_checkpoint(latest_checkpoint(trainer.run_dir.checkpoints)).params)
    batches = [trainer.get_batch("train", step=i, stream="model_file") for i in range(3)]
    x = np.concatenate([b[0] for b in batches]).astype(np.float64)
    files = {which: modelload(trainer.run_dir.model_path(which)) for which in ("final", "best", "latest")}
    for which in ("final", "best"):
        saved = {k: p.get_value() for k, p in files[which].all_params.items()}
        pre = x @ saved["dot/w"].astype(np.float64)  # the layer's output before batch normalisation
        np.testing.assert_allclose(saved["dot/mean"], pre.mean(axis=0), rtol=1e-5, atol=1e-6, err_msg=which)
        np.testing.assert_allclose(saved["dot/std"], np.sqrt(pre.var(axis=0) + BN_EPSILON), rtol=1e-5, err_msg=which)
        assert float(saved["dot/bn_count"]) == len(x)
    np.testing.assert_array_equal(files["latest"].all_params["dot/mean"].get_value(), live["dot/mean"])
    assert not np.allclose(files["final"].all_params["dot/mean"].get_value(), live["dot/mean"])
    trainer.config.bn_statistics_batches = 0  # off: the file holds the moving averages
    trainer.save_model("final")
    np.testing.assert_array_equal(modelload(trainer.run_dir.model_path("final")).all_params["dot/mean"].get_value(),
                                  live["dot/mean"])


def test_the_optimiser_in_use_is_that_of_the_last_training_step_not_of_the_last_step_function_got():
    model, batch = small_model("in_use"), (np.ones((2, 4), "float32"), np.zeros((2, 1), "int16"))
    for name in ("SGD", "Adam", "SGD"):
        model.trainingstep(*batch, optimiser=name)
    model.train_function("Adam").get_loss_scale()  # as checkpoints read every optimiser's loss scale
    assert model.lr == 0.01  # SGD's
    step = model.train_function("Adam")
    model.trainingstep_prepared(step.check_arrays(batch), optimiser="Adam")
    assert model.lr == 0.001


def test_checkpoints_keep_the_optimiser_in_use_and_the_values_set_on_the_model(tmp_path):
    """Saving and restoring a checkpoint of an SGD run whose model also has Adam leave ``model.lr``
    SGD's; a resumed run sets on the model the values the uninterrupted run set, no others."""
    from ekn_core.trainer.checkpoint import read_checkpoint

    common = ("optimiser='SGD'", "optimiser_params={'wd': 1e-4}", "schedules={}", "history_freq=0")
    whole = train(tmp_path / "whole", "n_steps=4", *common)[0]
    assert whole.model.meta_overrides == {"wd": 1e-4}
    assert train(tmp_path / "parts", "n_steps=2", *common)[1] == "finished"
    resumed = train(tmp_path / "parts", "n_steps=4", *common, resume=True)[0]
    assert resumed.model.meta_overrides == whole.model.meta_overrides
    files = [modelload(t.run_dir.model_path("final")) for t in (whole, resumed)]
    assert files[0].meta_overrides == files[1].meta_overrides == {"wd": 1e-4}
    assert files[1].get_optimiser("Adam").get_meta() == {"lr": 0.001, "mom": 0.9, "beta2": 0.999, "wd": 1e-4}
    assert_same_params(params(whole), params(resumed))

    whole.model.get_optimiser("Adam")  # built after SGD: checkpoints read both loss scales
    path = whole.save_checkpoint()
    assert whole.model.lr == 0.01 and read_checkpoint(path).state["meta_overrides"] == {"wd": 1e-4}
    whole.model.lr = 0.5
    whole.restore(read_checkpoint(path))
    assert whole.model.lr == 0.01 and whole.model.meta_overrides == {"wd": 1e-4}
    old = read_checkpoint(path)
    del old.state["meta_overrides"]  # as ekn wrote checkpoints before: the values in effect are set
    whole.restore(old)
    assert whole.model.meta_overrides == {"lr": 0.01, "mom": 0.9, "wd": 1e-4}
