"""Tests of ekn-plugin-example: discovery through entry points, conformance, behaviour."""

import subprocess
import sys

import numpy as np
import pytest

from ekn_core.plugins import registry


@pytest.mark.parametrize("kind,name", [("layers", "example.scale"), ("losses", "example.log_cosh"),
                                       ("augmenters", "example.invert"), ("commands", "example_hello"),
                                       ("plugins", "ekn_plugin_example")])
def test_registered_under_its_distribution(kind, name):
    entry = registry(kind).info(name)
    assert entry.distribution == "ekn-plugin-example"
    registry(kind).get(name)


def test_layer_passes_conformance_checks():
    from ekn_core.testing import check_node

    check_node("example.scale", input_shape=(1, 2, 3, 5, 5), tags="b,f,z,y,x", init_value=1.5)


def test_loss_matches_numpy():
    from ekn_core.node import model_manager

    model_manager.newmodel(None)
    Input = registry("layers").get("input")
    pred, target = Input((2, 3, 4), "b,f,x"), Input((2, 3, 4), "b,f,x", name="target")
    loss = registry("losses").get("example.log_cosh")(pred, target)
    rng = np.random.default_rng(0)
    p, t = rng.normal(size=(2, 3, 4)).astype("float32") * 30, rng.normal(size=(2, 3, 4)).astype("float32")
    expected = np.log(np.cosh((p - t).astype("float64"))).mean(axis=1, keepdims=True)
    np.testing.assert_allclose(loss(p, t), expected, rtol=1e-5, atol=1e-5)


def test_augmenter_twice_is_identity():
    from ekn_plugins.augmenters.base import PatchContext, Pipeline

    pipe = Pipeline.from_config([{"type": "example.invert"}, {"type": "example.invert"}])
    img = np.random.default_rng(1).random((2, 3, 4, 4)).astype("float32")
    out = pipe.augment_image(img.copy(), np.random.default_rng(0), PatchContext((3, 4, 4)))
    np.testing.assert_allclose(out, img, atol=1e-6)


def test_command_runs_through_ekn_cli():
    result = subprocess.run([sys.executable, "-m", "ekn_core.cli", "example-hello", "plugin"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "hello, plugin"


def _config(tmp_path, text="", overrides=()):
    from ekn_core.trainer.config import ExperimentConfig

    path = tmp_path / "exp.py"
    path.write_text("data_class = 'MNISTData'\nn_steps = 10\nmodel_load_path = 'm.mdl'\n" + text)
    return ExperimentConfig.from_file(str(path), overrides)


def test_hooks_reach_the_host(tmp_path):
    from types import SimpleNamespace

    from ekn_core.hooks import host
    from ekn_plugin_example.hooks import STEPS_SEEN

    assert "ekn-plugin-example 0.1.0 active" in host().report_header({})
    trainer = SimpleNamespace(config=_config(tmp_path, overrides=["example_count_every=2"]))
    STEPS_SEEN.clear()
    for step in range(1, 6):
        host().train_step_end(trainer=trainer, step=step, metrics={"loss": 1.0})
    assert list(STEPS_SEEN) == [2, 4]
    for step in range(6, 2 * STEPS_SEEN.maxlen + 6):
        host().train_step_end(trainer=trainer, step=step, metrics={"loss": 1.0})
    assert len(STEPS_SEEN) == STEPS_SEEN.maxlen and STEPS_SEEN[-1] == 2 * STEPS_SEEN.maxlen + 4  # the last ones


def test_config_setting_is_declared_defaulted_and_checked(tmp_path):
    from ekn_core.errors import ConfigError

    assert _config(tmp_path).example_count_every == 1
    assert _config(tmp_path, "example_count_every = 10\n").example_count_every == 10
    with pytest.raises(ConfigError, match="example_count_every must be an integer >= 1, got 0"):
        _config(tmp_path, overrides=["example_count_every=0"])
    with pytest.raises(ConfigError, match="unknown setting 'example_count_evry' \\(did you mean 'example_count_every'"):
        _config(tmp_path, "example_count_evry = 10\n")
